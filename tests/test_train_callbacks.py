"""The trainer's contracts: callbacks at named stages in any order, the trainer's best-so-far, and ``facecli.train.run``
as the one library entry point that does what ``facecli train`` does."""

from __future__ import annotations

import json
import random
from types import MappingProxyType

import pytest
import torch
from train_support import TINY_BACKBONE, centre_crops, tiny_config
from typer.testing import CliRunner

from facecli.train import TrainRequest, heldout, resolve, run
from facecli.train.callbacks import STAGES, Callback
from facecli.train.trainer import Trainer


@pytest.fixture(scope="module")
def faces(shared_dir, tmp_path_factory):
    return centre_crops(shared_dir / "data" / "lfw-sample", tmp_path_factory.mktemp("lfw112"))


class Recorder(Callback):
    """Every stage call with what it was handed."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_train_start(self, trainer):
        self.calls.append(("on_train_start", trainer.step))

    def on_validation_end(self, trainer, result):
        self.calls.append(("on_validation_end", result))

    def on_step_end(self, trainer, metrics):
        self.calls.append(("on_step_end", metrics))

    def on_train_end(self, trainer, summary):
        self.calls.append(("on_train_end", summary["steps"]))


def _train(faces, out, arrange) -> tuple[Recorder, dict]:
    """4 steps validated on held-out people at steps 0, 2 and 4, rows logged at 3 and 4; ``arrange`` reorders
    the built-in and the user's callbacks once the trainer has set them up."""

    class Arranged(Trainer):
        def setup(self) -> None:
            super().setup()
            self.callbacks = arrange(self.callbacks)

    recorder = Recorder()
    cfg = tiny_config(faces, out, steps=4, log_every=3, data__val_split=0.25, data__val_every=2)
    with pytest.MonkeyPatch.context() as patch:  # 30 + 30 pairs: validation takes a fraction of the run
        patch.setattr(heldout, "MAX_GENUINE_PAIRS", 30)
        summary = Arranged(cfg, callbacks=[recorder]).fit()
    return recorder, summary


@pytest.fixture(scope="module")
def built(faces, tmp_path_factory):
    """The run with the callbacks in the order the trainer builds them: (recorder, summary, run folder)."""
    out = tmp_path_factory.mktemp("built") / "run"
    return (*_train(faces, out, list), out)


def _rows(path) -> list[list[str]]:
    """metrics.csv without its samples_per_s column (wall-clock speed)."""
    lines = [line.split(",") for line in path.read_text().splitlines()]
    speed = lines[0].index("samples_per_s")
    return [line[:speed] + line[speed + 1:] for line in lines]


def test_callback_order_does_not_matter(faces, tmp_path, built):
    def shuffle(callbacks: list) -> list:
        shuffled = random.Random(5).sample(callbacks, len(callbacks))
        assert [type(c) for c in shuffled] != [type(c) for c in callbacks]
        return shuffled

    runs = {"shuffled": _train(faces, tmp_path / "shuffled", shuffle)}
    recorder, summary, out = built
    rows = _rows(out / "metrics.csv")
    assert rows[0] == ["step", "epoch", "loss", "lr", "val_heldout_people"]
    assert [r[0] for r in rows[1:]] == ["0", "2", "3", "4"]  # before training, validations, logged steps
    assert all(r[4] for r in rows[1:] if r[0] != "3") and rows[3][4] == ""
    best = torch.load(out / "best.pt", weights_only=True)
    validations = [arg for stage, arg in recorder.calls if stage == "on_validation_end"]
    assert [v.step for v in validations] == [2, 4]
    top = max(validations, key=lambda v: v.mean)
    assert best["step"] == top.step and best["val_accuracy"] == top.accuracies
    assert summary["best_accuracy"] == top.mean and validations[0].is_best
    assert validations[1].is_best == (validations[1].mean > validations[0].mean)
    for name in runs:
        assert _rows(tmp_path / name / "metrics.csv") == rows, name
        other = torch.load(tmp_path / name / "best.pt", weights_only=True)
        assert other["step"] == best["step"] and other["val_accuracy"] == best["val_accuracy"]
        assert all(torch.equal(other["backbone"][k], v) for k, v in best["backbone"].items())
        # the user's callback saw the same complete metrics wherever it stood
        steps = [dict(m) for stage, m in runs[name][0].calls if stage == "on_step_end"]
        assert [{k: v for k, v in m.items() if k != "samples_per_s"} for m in steps] == [
            {k: v for k, v in dict(m).items() if k != "samples_per_s"} for stage, m in recorder.calls
            if stage == "on_step_end"]


def test_stages_come_in_order_with_read_only_metrics(built):
    recorder = built[0]
    stages = [stage for stage, _ in recorder.calls]
    assert stages == ["on_train_start", "on_step_end", "on_validation_end", "on_step_end", "on_step_end",
                      "on_validation_end", "on_step_end", "on_train_end"]
    assert set(stages) == set(STAGES)
    metrics = [m for stage, m in recorder.calls if stage == "on_step_end"]
    assert all(isinstance(m, MappingProxyType) for m in metrics)
    with pytest.raises(TypeError):
        metrics[0]["logged"] = True  # type: ignore[index]
    assert [m["logged"] for m in metrics] == [False, True, True, True]  # step 2: a validation makes a row
    assert "val_heldout_people" in metrics[1] and "samples_per_s" not in metrics[1]
    assert "samples_per_s" in metrics[2] and "val_heldout_people" not in metrics[2]


def test_report_validation_keeps_the_best_so_far(faces, tmp_path):
    trainer = Trainer(tiny_config(faces, tmp_path / "run", steps=1))
    first = trainer.report_validation({"a": 0.6, "b": 0.8})
    trainer.step = 5
    worse = trainer.report_validation({"a": 0.7, "b": 0.6})
    better = trainer.report_validation({"a": 0.9, "b": 0.8})
    assert (first.mean, first.is_best, worse.is_best, better.is_best) == (pytest.approx(0.7), True, False, True)
    assert trainer.best_accuracy == pytest.approx(0.85) and better.step == 5


def test_callbacks_may_implement_some_stages(faces, tmp_path):
    """Any object with some of the stage methods is a callback (the trainer calls what it has)."""
    ends = []

    class OnlyEnd:
        def on_train_end(self, trainer, summary):
            ends.append(summary["steps"])

    run(tiny_config(faces, tmp_path / "run", steps=1), callbacks=[OnlyEnd()])
    assert ends == [1]


def test_run_with_a_request_is_the_cli(faces, tmp_path):
    """``run(TrainRequest(...))`` resolves the options exactly as ``facecli train`` and trains that config."""
    from facecli.cli.app import app

    options = {"head": "cosface", "steps": 2, "batch_size": 8, "workers": 0, "embedding_size": 32,
               "head_opt": ["m=0.3"], "overrides": ["model.backbone_options={blocks=[1,1,1,1], scale=1}"]}
    request = TrainRequest(data=str(faces), out=str(tmp_path / "lib"), **options)
    cli = CliRunner().invoke(app, [
        "train", str(faces), "--out", str(tmp_path / "lib"), "--head", "cosface", "--steps", "2", "--batch-size", "8",
        "--workers", "0", "--embedding-size", "32", "--head-opt", "m=0.3", options["overrides"][0], "--dry-run",
        "--json"])
    assert cli.exit_code == 0, cli.output
    cfg = resolve(request)
    assert json.loads(cli.stdout) == cfg.to_dict()
    assert cfg.model.backbone_options == TINY_BACKBONE["model.backbone_options"]
    summary = run(request)
    assert summary["steps"] == 2 and (tmp_path / "lib" / "model.pt").is_file()
    assert (tmp_path / "lib" / "config.toml").read_text().count('name = "cosface"') == 1
    resumed = run(TrainRequest(data=str(tmp_path / "lib"), resume=True, overrides=["steps=3"]))
    assert resumed["steps"] == 3
