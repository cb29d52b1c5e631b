"""``facecli.eval.run(EvalRequest(...))`` as a Python user calls it: the CLI's numbers, files and errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facecli.cli.app import app
from facecli.errors import UsageError
from facecli.eval import EvalRequest, EvalResult, run
from facecli.eval.kinds import BENCHMARK_KINDS
from facecli.eval.pairs import read_pairs

REPO = Path(__file__).resolve().parents[1]
LFW = REPO / "examples" / "data" / "lfw-sample"
MODEL = REPO / "examples" / "models" / "mobilefacenet.onnx"
IMAGENET = ("123.675,116.28,103.53", "58.395,57.12,57.375")  # how the bundled model was trained


def cli_json(*args: object) -> dict:
    """``facecli eval ARGS --json`` in process (the process boundary is not what these tests compare)."""
    result = CliRunner().invoke(app, ["eval", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def as_json(result: EvalResult) -> dict:
    """The library's result as the CLI prints it (JSON turns tuples into lists)."""
    return json.loads(json.dumps(result.to_dict()))


class Recorder:
    """Events that keep what they are told."""

    def __init__(self) -> None:
        self.progress_calls: list[tuple[str, int | None, int]] = []
        self.warnings: list[str] = []
        self.infos: list[str] = []
        self.details: list[str] = []

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n

        yield advance
        self.progress_calls.append((description, total, done[0]))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def info(self, message: str) -> None:
        self.infos.append(message)

    def detail(self, message: str) -> None:
        self.details.append(message)


def test_pairs_on_the_bundled_photos_equal_the_cli(tmp_path, capsys):
    request = EvalRequest(models=[MODEL], pairs=LFW / "pairs_sample.txt", images=str(LFW), mean=IMAGENET[0],
                          std=IMAGENET[1], workers=2, cache=tmp_path / "cache", bootstrap=20)
    feedback = Recorder()
    result = run(request, feedback=feedback)
    assert capsys.readouterr() == ("", "")  # the library prints nothing; the feedback hear it all
    (entry,) = result.entries
    assert (entry.model, entry.benchmark) == ("mobilefacenet.onnx", "pairs_sample")
    assert entry.verification is not None and entry.verification.n_pairs == 200 and entry.verification.nfolds == 2
    assert result.models_info[0]["model"] == str(MODEL) and result.models_info[0]["mean"] == [123.675, 116.28, 103.53]
    photos = len(read_pairs(LFW / "pairs_sample.txt", LFW).unique_paths)  # each embedded once
    assert feedback.progress_calls == [("mobilefacenet.onnx · pairs_sample.txt", None, photos)]
    assert feedback.warnings == [f"{photos} photo(s) are not 112x112 face crops and were resized; pass --align for "
                               "unaligned photos"]
    assert result.written == []
    # the CLI on the same input (its features come from the library's cache: same model, same photos)
    cli = cli_json("-m", MODEL, "--pairs", LFW / "pairs_sample.txt", "--images", LFW, "--mean", IMAGENET[0],
                   "--std", IMAGENET[1], "--workers", "2", "--cache", tmp_path / "cache", "--bootstrap", "20")
    assert as_json(result) == cli
    assert cli["results"][0]["intervals_95"]["auc"][0] <= cli["results"][0]["auc"]


def test_bin_benchmark_and_out_files_equal_the_cli(shared_dir, tmp_path):
    tiny = shared_dir / "golden" / "verification" / "tiny.bin"
    foamliu = shared_dir / "models" / "mobilefacenet_foamliu.onnx"
    result = run(EvalRequest(models=(foamliu,), benchmarks=str(tiny), nfolds=2, flip="concat", mean=IMAGENET[0],
                             std=IMAGENET[1], out=tmp_path / "lib", worst=2))
    names = {p.name for p in result.written}
    assert names == {"report.json", "report.csv", "roc.png", "pairs.csv", "worst_mobilefacenet_foamliu.onnx_tiny.jpg"}
    cli = cli_json("-m", foamliu, "--bench", tiny, "--nfolds", "2", "--flip", "concat", "--mean", IMAGENET[0],
                   "--std", IMAGENET[1], "--out", tmp_path / "cli", "--worst", "2")
    assert as_json(result) == cli
    assert cli["results"][0]["flip"] == "concat" and cli["results"][0]["n_pairs"] == 40
    for name in ("report.json", "report.csv", "pairs.csv"):
        assert (tmp_path / "lib" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name


def test_precomputed_embeddings_and_ijb_features_need_no_model(shared_dir):
    golden = shared_dir / "golden" / "verification"
    expected = json.loads((golden / "expected.json").read_text())
    ijb = shared_dir / "golden" / "ijb"
    request = EvalRequest(embeddings=golden / "embeddings.npy", embeddings_flip=golden / "embeddings_flip.npy",
                          issame=golden / "issame.npy", benchmarks=["ijbc"], data_root=ijb,
                          features=ijb / "img_feats.npy", ijb_mode="closed", quality_threshold=10.0)
    result = run(request)
    verification, ijbc = result.to_dict()["results"]
    assert verification["accuracy"] == pytest.approx(expected["flip_fused"]["accuracy_mean"], abs=1e-9)
    assert verification["fold_thresholds"] == expected["flip_fused"]["best_threshold_per_fold"]
    assert verification["flip"] == "sum" and verification["quality"]["threshold"] == 10.0
    assert ijbc["benchmark"] == "ijbc" and ijbc["model"] == "img_feats" and ijbc["one_to_n"]["mode"] == "closed"
    assert result.models_info == []
    cli = cli_json("--embeddings", golden / "embeddings.npy", "--embeddings-flip", golden / "embeddings_flip.npy",
                   "--issame", golden / "issame.npy", "--bench", "ijbc", "--data-root", ijb, "--features",
                   ijb / "img_feats.npy", "--ijb-mode", "closed", "--quality-threshold", "10")
    assert as_json(result) == cli


@pytest.mark.parametrize(("options", "message"), [
    ({"flip": "mean", "embeddings": "e.npy", "issame": "i.npy"}, "--flip must be one of sum, concat, none"),
    ({"embeddings": "e.npy", "issame": "i.npy", "worst": 3}, "--worst needs --out DIR"),
    ({"pairs": "pairs.txt"}, "--pairs and --images go together"),
    ({"embeddings_flip": "f.npy", "issame": "i.npy"}, "--embeddings-flip needs --embeddings"),
    ({"embeddings": "e.npy"}, "--embeddings and --issame go together"),
    ({"benchmarks": ["nope"]}, "unknown benchmark 'nope'"),
    ({"benchmarks": ["lfw"], "data_root": "/nonexistent"}, "benchmark file not found: /nonexistent/lfw.bin"),
    ({}, "nothing to evaluate"),
    ({"pairs": "pairs.txt", "images": "photos"}, "--model is required to embed images"),
    ({"models": ["m.onnx"], "pairs": "p.txt", "images": "photos", "mean": "1,2"}, "mean needs one value or one per"),
    ({"models": ["m.onnx"], "pairs": "p.txt", "images": "photos", "workers": 0}, "--workers must be at least 1"),
])
def test_bad_requests_are_usage_errors_before_anything_runs(options, message, tmp_path, monkeypatch):
    monkeypatch.delenv("FACECLI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=message):
        EvalRequest(**options)
    assert list(tmp_path.iterdir()) == []


def test_ijb_checks_come_from_the_request(shared_dir):
    ijb = shared_dir / "golden" / "ijb"
    given = {"benchmarks": ["ijb-c"], "data_root": ijb, "features": ijb / "img_feats.npy"}
    with pytest.raises(UsageError, match=r"IJB uses --flip sum or --flip none"):
        EvalRequest(**given, flip="concat")
    with pytest.raises(UsageError, match="--ijb-mode must be one of open, closed, got 'both'"):
        EvalRequest(**given, ijb_mode="both")
    with pytest.raises(UsageError, match="--features is for IJB"):
        EvalRequest(features=ijb / "img_feats.npy", embeddings="e.npy", issame="i.npy")
    request = EvalRequest(**given)
    assert [b.kind for b in request.resolved] == ["ijb"] and request.benchmarks == ("ijb-c",)
    with pytest.raises(UsageError, match="--model is required"):  # without features, IJB embeds the crops
        dataclasses.replace(request, features=None)


def test_the_cli_reports_the_request_error_in_one_line(run_cli, tmp_path):
    res = run_cli("eval", "--pairs", tmp_path / "pairs.txt", "--json")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "facecli: error: --pairs and --images go together\n"


def test_benchmark_kinds_are_registered():
    assert BENCHMARK_KINDS.names() == ["bin", "embeddings", "ijb", "pairs"]
    request = EvalRequest(models=["m.onnx"], pairs="p.txt", images="photos")
    kinds = [BENCHMARK_KINDS.build(b.kind, bench=b, request=request) for b in request.resolved]
    assert [type(k).__name__ for k in kinds] == ["PairsBenchmark"] and kinds[0].uses_model()
