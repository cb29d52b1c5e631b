"""The NaN/Inf guard, fine-tuning (--init, frozen backbone, backbone LR), gradient accumulation, AdamW."""

from __future__ import annotations

import pytest
import torch
from train_support import centre_crops, tiny_config

from facecli.train.trainer import NonFiniteError, Trainer


@pytest.fixture(scope="module")
def faces(shared_dir, tmp_path_factory):
    return centre_crops(shared_dir / "data" / "lfw-sample", tmp_path_factory.mktemp("lfw112"))


class PoisonAt:
    """Puts a NaN into a class centre after step ``step``: the next loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_start(self, trainer):
        pass

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.step:
            with torch.no_grad():
                trainer.model.classifier.weight[0, 0] = float("nan")

    def on_train_end(self, trainer, summary):
        pass


def test_nonfinite_loss_stops_with_diagnosis_and_the_state_before(faces, tmp_path):
    cfg = tiny_config(faces, tmp_path / "run", steps=5, head__name="arcface")
    trainer = Trainer(cfg, callbacks=[PoisonAt(2)])
    with pytest.raises(NonFiniteError) as err:
        trainer.fit()
    message = str(err.value)
    assert "non-finite loss at step 3" in message and "head arcface" in message and "largest |logit|" in message
    saved = tmp_path / "run" / "nonfinite-step3.pt"
    assert saved.is_file() and str(saved) in message
    state = torch.load(saved, weights_only=True)
    assert state["step"] == 2  # the state before the bad step: the poisoned centre, untouched backbone
    assert torch.isnan(state["classifier"]["weight"][0, 0])
    assert all(torch.isfinite(t).all() for t in state["backbone"].values() if t.is_floating_point())


def test_skip_bad_batches_goes_on(faces, tmp_path):
    cfg = tiny_config(faces, tmp_path / "run", steps=4, head__name="cosface", nonfinite="skip")

    class PoisonOnce(PoisonAt):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 1:
                self.saved = trainer.model.classifier.weight[0, 0].item()
                with torch.no_grad():
                    trainer.model.classifier.weight[0, 0] = float("nan")
            if trainer.step == 2:  # the skipped step changed nothing; repair it and continue
                with torch.no_grad():
                    trainer.model.classifier.weight[0, 0] = self.saved

    summary = Trainer(cfg, callbacks=[PoisonOnce(1)]).fit()
    assert summary["skipped_batches"] == 1 and summary["steps"] == 4
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert rows[1].split(",")[2] == "nan" and rows[3].split(",")[2] != "nan"


def test_init_freeze_and_backbone_lr(faces, tmp_path):
    base = tiny_config(faces, tmp_path / "base", steps=2)
    Trainer(base).fit()
    source = torch.load(tmp_path / "base" / "model.pt", weights_only=True)["backbone"]
    # an arcface_torch-style file: a bare state dict
    bare = tmp_path / "backbone.pth"
    torch.save(source, bare)

    class Watch:
        def on_train_start(self, trainer):
            self.snapshots = {}

        def on_step_end(self, trainer, metrics):
            self.snapshots[trainer.step] = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}

        def on_train_end(self, trainer, summary):
            pass

    watch = Watch()
    cfg = tiny_config(faces, tmp_path / "tune", steps=4, model__init=str(bare), model__freeze_backbone_steps=2,
                      model__backbone_lr_scale=0.1, head__name="cosface")
    trainer = Trainer(cfg, callbacks=[watch])
    trainer.fit()
    for step in (1, 2):  # frozen: weights and BatchNorm statistics untouched
        for key, value in source.items():
            assert torch.equal(watch.snapshots[step][key], value), key
    changed = [k for k in source if not torch.equal(watch.snapshots[4][k], source[k])]
    assert "conv_sep.layers.0.weight" in changed
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["head"])
    from facecli.errors import UsageError

    with pytest.raises(UsageError, match="iresnet18"):
        Trainer(tiny_config(faces, tmp_path / "bad", steps=1, model__init=str(bare),
                            model__backbone="iresnet18")).fit()


def test_accumulation_adamw_and_bf16_autocast(faces, tmp_path):
    cfg = tiny_config(faces, tmp_path / "run", steps=3, optim__accumulate=2, optim__name="adamw", optim__lr=1e-3,
                      schedule__name="cosine", head__weight_decay=0.0, amp="bf16")
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert summary["steps"] == 3
    assert summary["epochs"] == pytest.approx(3 * 2 * 8 / (237 // 8 * 8))
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    decays = {g["name"]: g["weight_decay"] for g in trainer.optimizer.param_groups}
    assert decays == {"backbone": 5e-4, "head": 0.0}


def test_adaptiveface_margins_get_no_weight_decay(faces, tmp_path):
    """Weight decay would pull the learnable margins towards 0 on top of the paper's loss: they get their own group."""
    trainer = Trainer(tiny_config(faces, tmp_path / "run", steps=1, head__name="adaptiveface",
                                  head__weight_decay=1e-3))
    trainer.fit()
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    margins = trainer.model.head.margins
    assert groups["head-no-decay"]["weight_decay"] == 0.0
    assert [id(p) for p in groups["head-no-decay"]["params"]] == [id(margins)]
    assert groups["head"]["weight_decay"] == 1e-3 and all(p is not margins for p in groups["head"]["params"])
    assert trainer.optimizer.param_groups[-1]["name"] == "head"  # the logged LR stays the head's


def test_embedding_loss_uses_pk_batches_and_center_loss_is_auxiliary(faces, tmp_path):
    """``--head triplet`` trains on P×K batches (no classifier); ``head.aux=center`` adds L_C to a margin head."""
    seen = []

    class Labels:
        def on_train_start(self, trainer):
            self.plan = trainer.plan

        def on_step_end(self, trainer, metrics):
            seen.append(metrics["loss"])

        def on_train_end(self, trainer, summary):
            pass

    cb = Labels()
    trainer = Trainer(tiny_config(faces, tmp_path / "triplet", steps=2, head__name="triplet",
                                  head__samples_per_identity=4), callbacks=[cb])
    trainer.fit()
    assert trainer.model.classifier is None and len(seen) == 2
    for batch in cb.plan.epoch(0)[:3]:
        labels = [int(trainer.dataset.labels[i]) for i, _ in batch]
        assert len(labels) == 8 and len(set(labels)) == 2 and all(labels.count(x) == 4 for x in set(labels))
    centre = Trainer(tiny_config(faces, tmp_path / "center", steps=2, head__name="cosface", head__aux="center"))
    centre.fit()
    assert centre.model.aux_weight == 0.003  # Wen et al.'s λ is the default weight
    assert centre.model.aux.centers.abs().sum() > 0  # the centres moved by their own update rule
    state = torch.load(tmp_path / "center" / "checkpoint.pt", weights_only=True)
    assert torch.equal(state["aux"]["centers"], centre.model.aux.centers.cpu())
    from facecli.errors import UsageError

    with pytest.raises(UsageError, match="auxiliary loss"):
        Trainer(tiny_config(faces, tmp_path / "bad", steps=1, head__name="center")).fit()


def test_neck_option_wraps_the_backbone_and_reloads(faces, tmp_path):
    """``--neck groupface``: the wrapper's own loss joins the step, and the saved model rebuilds with its neck."""
    from facecli.nn.inference import load_backbone

    cfg = tiny_config(faces, tmp_path / "run", steps=1, model__neck="groupface", model__neck_options={"groups": 4})
    trainer = Trainer(cfg)
    trainer.fit()
    assert type(trainer.model.backbone).__name__ == "GroupFace"
    model, info = load_backbone(tmp_path / "run")
    assert info["neck"] == "groupface" and info["neck_options"] == {"groups": 4}
    with torch.no_grad():
        assert model(torch.randn(2, 3, 112, 112)).shape == (2, 32)


class Snapshots:
    """Every buffer (BatchNorm statistics, head and centre-loss state) at the end of each step."""

    def __init__(self, poison_after: int) -> None:
        self.poison_after = poison_after
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_start(self, trainer):
        self.buffers[0] = {k: v.clone() for k, v in trainer.model.named_buffers()}

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.poison_after:
            with torch.no_grad():
                trainer.model.classifier.weight[0, 0] = float("nan")  # the next loss is NaN, its forward still runs
        self.buffers[trainer.step] = {k: v.clone() for k, v in trainer.model.named_buffers()}

    def on_train_end(self, trainer, summary):
        pass


@pytest.mark.parametrize("head", ["adacos", "curricularface", "adaface", "sphereface"])
def test_a_skipped_batch_leaves_no_trace_in_running_statistics_or_head_state(faces, tmp_path, head):
    cfg = tiny_config(faces, tmp_path / "run", steps=3, head__name=head, head__aux="center", nonfinite="skip")
    watch = Snapshots(poison_after=1)
    summary = Trainer(cfg, callbacks=[watch]).fit()
    assert summary["skipped_batches"] == 2  # the weight stays NaN: steps 2 and 3 are skipped
    before, after = watch.buffers[1], watch.buffers[3]
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    # the accepted step 1 did move them (so the comparison above could fail)
    assert any(not torch.equal(watch.buffers[0][k], before[k]) for k in before if k.startswith("backbone."))
    assert any(not torch.equal(watch.buffers[0][k], before[k]) for k in before if k.startswith(("head.", "aux.")))


def test_the_saved_state_before_a_bad_step_is_the_state_before_it(faces, tmp_path):
    cfg = tiny_config(faces, tmp_path / "run", steps=3, head__name="adacos")
    watch = Snapshots(poison_after=1)
    with pytest.raises(NonFiniteError):
        Trainer(cfg, callbacks=[watch]).fit()
    state = torch.load(tmp_path / "run" / "nonfinite-step2.pt", weights_only=True)
    for key, value in watch.buffers[1].items():
        section, _, name = key.partition(".")
        assert torch.equal(state[section][name], value), key


@pytest.mark.parametrize("nonfinite", ["stop", "skip"])
def test_a_huge_learning_rate_never_leaves_a_non_finite_model(faces, tmp_path, nonfinite):
    cfg = tiny_config(faces, tmp_path / "run", steps=6, optim__lr=1e6, optim__clip_grad_norm=0.0,
                      head__name="arcface", nonfinite=nonfinite)
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    except NonFiniteError:
        assert not (tmp_path / "run" / "model.pt").exists()
    else:
        assert nonfinite == "skip" and trainer.skipped_batches > 0
    saved = sorted((tmp_path / "run").glob("*.pt"))
    assert saved
    for path in saved:
        state = torch.load(path, weights_only=True)
        for section in ("backbone", "classifier", "head"):
            for name, value in state.get(section, {}).items():
                assert not value.is_floating_point() or torch.isfinite(value).all(), (path.name, section, name)


def test_finiteness_check_is_exact_for_huge_finite_values():
    from facecli.train.trainer import _all_finite

    assert _all_finite([torch.full((1000,), 3e38), torch.ones(3), torch.zeros(2, dtype=torch.long)])  # L2 overflows
    assert not _all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert not _all_finite([torch.tensor([float("-inf")]).bfloat16()])


def test_non_finite_running_statistics_reject_the_step_and_say_so(faces, tmp_path):
    class PoisonStatistics:
        def on_train_start(self, trainer):
            pass

        def on_step_end(self, trainer, metrics):
            if trainer.step == 1:  # a running variance overflowed: the next forward keeps it inf, the loss stays finite
                bn = next(m for m in trainer.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
                bn.running_var[0] = float("inf")

        def on_train_end(self, trainer, summary):
            pass

    cfg = tiny_config(faces, tmp_path / "run", steps=3, head__name="arcface")
    with pytest.raises(NonFiniteError, match="non-finite running statistics or head state at step 2"):
        Trainer(cfg, callbacks=[PoisonStatistics()]).fit()
