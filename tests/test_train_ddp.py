"""Multi-process training (DDP, gloo on CPU) computes what one process with the same global batch computes.

Two tests: a precise one (in-process ``torch.multiprocessing`` ranks, a backbone without BatchNorm so that the
per-rank batch statistics cannot differ: losses and weights must agree to float rounding, which checks the
gradient averaging, Partial FC's sharding, gathering and distributed cross-entropy), and the real launch path
(``torchrun -m facecli train``) with the stock backbone, where per-rank BatchNorm allows only a loose match.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from train_support import TINY_BACKBONE, centre_crops, tiny_config


def _register_test_backbone() -> None:
    from facecli.nn.backbones import BACKBONES

    if "test-nobn" in BACKBONES:
        return

    @BACKBONES.register("test-nobn")
    def build(embedding_size: int = 32, dropout: float = 0.0) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.PReLU(8), nn.Flatten(), nn.Linear(8 * 14 * 14,
                                                                                                  embedding_size))


def _rank_main(rank: int, world: int, port: int, overrides: dict, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    _register_test_backbone()
    from facecli.train.trainer import Trainer

    cfg = tiny_config(Path(overrides.pop("data")), Path(out), **overrides)
    Trainer(cfg).fit()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def faces(shared_dir, tmp_path_factory):
    return centre_crops(shared_dir / "data" / "lfw-sample", tmp_path_factory.mktemp("lfw112"))


@pytest.mark.parametrize("partial_fc", [pytest.param(0.0, marks=pytest.mark.slow), 1.0])
def test_two_ranks_equal_one_process_exactly_without_batchnorm(faces, tmp_path, partial_fc):
    common = {"data": str(faces), "steps": 3, "model__backbone": "test-nobn", "model__embedding_size": 32,
              "head__name": "cosface", "head__partial_fc": partial_fc, "optim__lr": 0.05, "seed": 1}
    mp.spawn(_rank_main, args=(1, _free_port(), {**common, "batch_size": 16}, str(tmp_path / "one")), nprocs=1)
    mp.spawn(_rank_main, args=(2, _free_port(), {**common, "batch_size": 8}, str(tmp_path / "two")), nprocs=2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, rel=1e-4)
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["backbone"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["backbone"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    if partial_fc:  # rank r holds classes [20r, 20r+20): together they are the single process's centres
        c1 = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["classifier"]["weight"]
        r0 = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["classifier"]["weight"]
        r1 = torch.load(tmp_path / "two" / "checkpoint.rank1.pt", weights_only=True)["classifier"]["weight"]
        assert r0.shape == r1.shape == (20, 32)
        torch.testing.assert_close(torch.cat([r0, r1]), c1, rtol=1e-4, atol=1e-6)


def test_torchrun_launch_with_partial_fc(faces, tmp_path):
    """``torchrun --nproc_per_node 2 -m facecli train`` with the stock (BatchNorm) backbone and Partial FC."""
    args = [str(faces), "--steps", "2", "--workers", "0", "--log-every", "1", "--lr", "0.01", "--head", "cosface",
            "--partial-fc", "1.0", "-q", "model.backbone_options={blocks=[1,1,1,1],scale=1}",
            *[f"{k}={v}" for k, v in TINY_BACKBONE.items() if k != "model.backbone_options"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "facecli", "train", *args, "--out", str(tmp_path / "one"),
                             "--batch-size", "16"], capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "facecli", "train", *args, "--out", str(tmp_path / "two"), "--batch-size", "8", "--json"],
                           capture_output=True, text=True, env=env, timeout=600)
    assert multi.returncode == 0, multi.stderr[-2000:]
    import json

    summary = json.loads(multi.stdout)  # rank 0 alone prints the summary
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert (tmp_path / "two" / "checkpoint.rank1.pt").is_file()
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    # the first step sees the same weights and global batch; only per-rank BatchNorm statistics differ
    assert two[0] == pytest.approx(one[0], rel=0.03)
