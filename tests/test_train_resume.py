"""Exact resume: N steps straight equals N/2 steps, an interruption, and ``--resume`` — bit for bit on CPU."""

from __future__ import annotations

import pytest
import torch
from train_support import centre_crops, tiny_config

from facecli.errors import UsageError
from facecli.train.callbacks import Callback
from facecli.train.trainer import Trainer, resolve_run_config


class Interrupt(Callback):
    """Stops the job right after step ``at`` (as a killed process would, after its last checkpoint)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def faces(shared_dir, tmp_path_factory):
    return centre_crops(shared_dir / "data" / "lfw-sample", tmp_path_factory.mktemp("lfw112"))


def _compare_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def run_split(faces, tmp_path, steps: int, **options) -> None:
    straight = tiny_config(faces, tmp_path / "straight", steps=steps, **options)
    Trainer(straight).fit()
    half = steps // 2
    split = tiny_config(faces, tmp_path / "split", steps=steps, checkpoint_every=half, **options)
    with pytest.raises(KeyboardInterrupt):
        Trainer(split, callbacks=[Interrupt(half)]).fit()
    resumed_cfg = resolve_run_config(tmp_path / "split", {"data.workers": 1})  # workers must not matter
    resumed = Trainer(resumed_cfg, resume=True)
    summary = resumed.fit()
    assert summary["steps"] == steps
    one = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    _compare_states(one["backbone"], two["backbone"])
    _compare_states(one["classifier"], two["classifier"])
    _compare_states(one["head"], two["head"])
    for s1, s2 in zip(one["optimizer"]["state"].values(), two["optimizer"]["state"].values()):
        assert torch.equal(s1["momentum_buffer"], s2["momentum_buffer"])
    assert torch.equal(one["rng"]["torch"], two["rng"]["torch"])
    # the metrics file of the resumed run continues the interrupted one, without duplicate rows
    rows = (tmp_path / "split" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, steps + 1))
    straight_rows = (tmp_path / "straight" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[2] for r in rows] == [r.split(",")[2] for r in straight_rows]  # same losses


def test_resume_is_bit_identical(faces, tmp_path):
    """10 + 10 steps equal 20 straight, with Partial FC sampling (RNG) and a head with a buffer (SphereFace λ)."""
    run_split(faces, tmp_path, 20, head__name="sphereface", head__partial_fc=0.5, schedule__warmup_steps=3)


@pytest.mark.slow
def test_resume_is_bit_identical_over_2000_steps(faces, tmp_path):
    """The issue's protocol: 2k steps straight vs 1k + resume 1k."""
    run_split(faces, tmp_path, 2000, head__partial_fc=0.3)


def test_fresh_run_refuses_to_overwrite_and_resume_needs_a_run(faces, tmp_path):
    cfg = tiny_config(faces, tmp_path / "run", steps=1)
    Trainer(cfg).fit()
    with pytest.raises(UsageError, match="--resume"):
        Trainer(tiny_config(faces, tmp_path / "run", steps=1)).fit()
    with pytest.raises(UsageError, match="nothing to resume"):
        resolve_run_config(tmp_path / "nothing", {})


def test_resume_refuses_incompatible_changes_and_allows_more_steps(faces, tmp_path, run_cli):
    run = tmp_path / "run"
    Trainer(tiny_config(faces, run, steps=2, checkpoint_every=1)).fit()
    config = (run / "config.toml").read_bytes()
    for key, value in [("head.name", "cosface"), ("batch_size", 4), ("seed", 7), ("model.backbone", "iresnet18"),
                       ("optim.lr", 0.5), ("head.m", 0.3), ("schedule.name", "cosine"), ("amp", "bf16")]:
        with pytest.raises(UsageError, match=f"--resume cannot change {key.replace('head.m', 'head.options')}"):
            resolve_run_config(run, {key: value})
    res = run_cli("train", "--resume", str(run), "--head", "cosface")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "facecli: error: --resume cannot change head.name (the run has 'arcface', asked 'cosface'): the saved state "
        "belongs to the old setting; start a new run (--out, --init to reuse the weights) instead"]
    assert (run / "config.toml").read_bytes() == config  # nothing rewritten
    cfg = resolve_run_config(run, {"steps": 3, "data.workers": 0, "log_every": 2})
    assert Trainer(cfg, resume=True).fit()["steps"] == 3
