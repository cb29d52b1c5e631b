"""The ``facecli train`` command line: config layering, --dry-run, --list-heads, errors as one line."""

from __future__ import annotations

import tomllib

import pytest

from facecli.errors import UsageError
from facecli.train.config import build_config, parse_overrides, read_config_file, to_toml


def test_layers_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.2\n  name: adamw\nhead:\n  name: cosface\n  m: 0.3\n")
    cfg = build_config(read_config_file(tmp_path / "c.yaml"), {"batch_size": 64},
                       parse_overrides(["optim.lr=0.05", "head.s=30", "data.val=['a.bin', 'b.bin']",
                                        "model.backbone=iresnet50"]))
    assert cfg.optim.lr == 0.05 and cfg.optim.name == "adamw" and cfg.batch_size == 64
    assert cfg.head.name == "cosface" and cfg.head.options == {"m": 0.3, "s": 30}
    assert cfg.data.val == ["a.bin", "b.bin"] and cfg.model.backbone == "iresnet50"
    again = build_config(tomllib.loads(to_toml(cfg)))
    assert again == cfg
    with pytest.raises(UsageError, match="unknown config key 'optim.lrr'"):
        build_config({"optim.lrr": 1})
    with pytest.raises(UsageError, match="amp must be one of"):
        build_config({"amp": "fp8"})
    with pytest.raises(UsageError, match="not a valid int"):
        build_config({"batch_size": "many"})


def test_dry_run_prints_the_resolved_config(tmp_path, run_cli):
    (tmp_path / "c.toml").write_text('[optim]\nlr = 0.3\n[head]\nname = "arcface"\n')
    res = run_cli("train", tmp_path / "data", "--out", tmp_path / "run", "--config", tmp_path / "c.toml",
                  "--backbone", "iresnet100", "--partial-fc", "0.2", "--easy-margin", "--head-opt", "m=0.45",
                  "schedule.warmup_steps=7", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    cfg = res.json()
    assert cfg["optim"]["lr"] == 0.3 and cfg["model"]["backbone"] == "iresnet100"
    assert cfg["head"]["partial_fc"] == 0.2 and cfg["head"]["options"] == {"easy_margin": True, "m": 0.45}
    assert cfg["schedule"]["warmup_steps"] == 7 and cfg["data"]["path"] == str(tmp_path / "data")
    text = run_cli("train", "d", "--out", "r", "--dry-run")
    assert text.returncode == 0 and 'backbone = "mobilefacenet"' in text.stdout
    assert not (tmp_path / "run").exists()


def test_list_heads_json(run_cli):
    res = run_cli("train", "--list-heads", "--json")
    assert res.returncode == 0
    heads = {h["name"]: h for h in res.json()}
    assert {"softmax", "sphereface", "cosface", "arcface", "combined"} <= set(heads)
    assert heads["arcface"]["defaults"] == {"s": 64.0, "m": 0.5, "easy_margin": False}
    assert heads["cosface"]["defaults"] == {"s": 64.0, "m": 0.35}
    assert heads["arcface"]["year"] == 2019 and "ArcFace" in heads["arcface"]["paper"]


@pytest.mark.parametrize("args,message,code", [
    (["--out", "r"], "missing DATA", 2),
    (["DATA_MISSING", "--out", "r"], "training data not found", 2),
    (["d", "--out", "r", "--head", "nohead", "--dry-run"], "unknown head 'nohead'", 2),
    (["d", "--out", "r", "--steps", "3", "--epochs", "1"], "--steps or --epochs", 2),
    (["d", "--out", "r", "optim.lr"], "then key=value overrides", 2),
    (["d", "--out", "r", "optim.lr=", "--dry-run"], "is not a valid float", 2),
    (["--resume", "nowhere"], "nothing to resume", 2),
])
def test_errors_are_one_line(args, message, code, run_cli, tmp_path):
    res = run_cli("train", *args, cwd=tmp_path)
    assert res.returncode == code
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_partial_fc_refused_for_incompatible_heads(shared_dir, tmp_path, run_cli):
    from facecli.nn.heads import HEADS, MarginHead

    refused = [n for n in HEADS.names() if getattr(HEADS.get(n), "partial_fc_incompatible", None)
               and issubclass(HEADS.get(n), MarginHead)]
    if not refused:
        pytest.skip("no registered margin head declares itself incompatible with Partial FC")
    res = run_cli("train", shared_dir / "data" / "lfw-sample", "--out", tmp_path / "r", "--head", refused[0],
                  "--partial-fc", "0.5", "--steps", "1")
    assert res.returncode == 2
    assert f"--partial-fc cannot be used with head {refused[0]}:" in res.stderr


def test_train_and_resume_from_the_command_line(shared_dir, tmp_path, run_cli):
    from train_support import centre_crops

    faces = centre_crops(shared_dir / "data" / "lfw-sample", tmp_path / "faces",
                         {"Al_Gore", "Ana_Palacio", "George_Clooney", "Mary_Carey"})
    tiny = ["model.backbone_options={blocks=[1,1,1,1],scale=1}", "model.embedding_size=16"]
    res = run_cli("train", faces, "--out", tmp_path / "run", "--steps", "2", "--batch-size", "4", "--workers", "0", *tiny,
                  "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["steps"] == 2 and res.json()["num_classes"] == 4
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["model"]["embedding_size"] == 16 and saved["steps"] == 2
    again = run_cli("train", "--resume", tmp_path / "run", "--steps", "3", "--json")
    assert again.returncode == 0, again.stderr
    assert again.json()["steps"] == 3
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["2", "3"]  # logged at the end of each invocation


def test_center_loss_as_the_main_head_is_a_usage_error(shared_dir, tmp_path, run_cli):
    """Center loss alone collapses every embedding onto one point: it is only accepted as head.aux."""
    res = run_cli("train", shared_dir / "data" / "lfw-sample", "--out", tmp_path / "r", "--head", "center",
                  "--steps", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "center is an auxiliary loss: add it to a margin head with head.aux=center" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
