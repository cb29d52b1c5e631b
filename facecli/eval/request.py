"""What one evaluation is asked to do: ``facecli eval``'s options as one checked, immutable object.

``EvalRequest(...)`` checks itself when it is made, with the CLI's messages (a :class:`~facecli.errors.UsageError`
naming the option), so a bad combination fails before any model loads, whether it came from the command line or
from Python. Paths may be given as strings; they are kept as :class:`~pathlib.Path`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from facecli.errors import UsageError
from facecli.eval import ijb
from facecli.eval.embed import FLIP_MODES
from facecli.eval.kinds import BENCHMARK_KINDS
from facecli.eval.runner import Benchmark, RunOptions, resolve_benchmarks
from facecli.normalisation import check_normalisation, parse_channels
from facecli.requests import PathFields


@dataclass(frozen=True)
class EvalRequest(PathFields):
    """Models × benchmarks to evaluate, and how; one field per ``facecli eval`` option, with the CLI's defaults.

    ``models``: ONNX files, facecli checkpoints or run directories. ``benchmarks``: names (``lfw``, ``cfp-fp``,
    ``ijbc``, comma lists allowed) found under ``data_root`` (default ``$FACECLI_DATA``), or paths to ``.bin``
    files. ``pairs``/``images``/``align``: an LFW pairs file over a photo folder. ``embeddings``/``issame``
    (/``embeddings_flip``): precomputed pairs, no model. ``features``/``faceness``: precomputed IJB features.
    ``flip``: ``sum``, ``concat`` or ``none``. ``out``: folder for report.json, report.csv, roc.png, pairs.csv
    (and ``worst`` contact sheets).
    """

    models: Sequence[Path] = ()
    benchmarks: Sequence[str] = ()
    data_root: Path | None = None
    pairs: Path | None = None
    images: Path | None = None
    align: bool = False
    embeddings: Path | None = None
    embeddings_flip: Path | None = None
    issame: Path | None = None
    features: Path | None = None
    faceness: Path | None = None
    norm_score: bool = True
    detector_score: bool = True
    flip: str = "sum"
    ijb_mode: str = "open"
    nfolds: int | None = None
    mean: str | float | Sequence[float] | None = None
    std: str | float | Sequence[float] | None = None
    bgr: bool | None = None
    device: str = "cpu"
    batch_size: int | None = None
    workers: int = 4
    cache: Path | None = None
    out: Path | None = None
    worst: int = 0
    bootstrap: int = 0
    quality_threshold: float | None = None
    #: the benchmarks in the order they are evaluated (embeddings, then ``benchmarks``, then the pairs file)
    resolved: tuple[Benchmark, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "models", tuple(Path(m) for m in _entries(self.models)))
        object.__setattr__(self, "benchmarks", tuple(str(b) for b in _entries(self.benchmarks)))
        object.__setattr__(self, "resolved", tuple(self._check()))

    def _check(self) -> list[Benchmark]:
        """The CLI's cross-checks, in its order; returns the benchmarks to evaluate."""
        self._check_values()
        if self.worst and not self.out:
            raise UsageError("--worst needs --out DIR (the contact sheets are written there)")
        if (self.pairs is None) != (self.images is None):
            raise UsageError("--pairs and --images go together")
        if self.embeddings_flip is not None and self.embeddings is None:
            raise UsageError("--embeddings-flip needs --embeddings")
        if (self.embeddings is None) != (self.issame is None):
            raise UsageError("--embeddings and --issame go together")
        named = resolve_benchmarks(self.benchmarks, self.data_root)
        has_ijb = any(b.kind == "ijb" for b in named)
        if self.features is not None and not has_ijb:
            raise UsageError("--features is for IJB: add --bench ijbc (or ijbb) and --data-root")
        if not (named or self.pairs or self.embeddings):
            raise UsageError("nothing to evaluate: give --bench, --pairs/--images or --embeddings/--issame")
        resolved = self._in_order(named)
        if not self.models and any(BENCHMARK_KINDS.build(b.kind, bench=b, request=self).uses_model() for b in resolved):
            raise UsageError("--model is required to embed images")
        check_normalisation(parse_channels(self.mean, "mean"), parse_channels(self.std, "std"))
        if has_ijb and self.flip == "concat":
            raise UsageError("IJB uses --flip sum or --flip none (insightface sums the two halves)")
        if has_ijb and self.ijb_mode not in ijb.IDENTIFICATION_MODES:
            raise UsageError(f"--ijb-mode must be one of {', '.join(ijb.IDENTIFICATION_MODES)}, got {self.ijb_mode!r}")
        return resolved

    def _check_values(self) -> None:
        """Single values the CLI's option parser bounds (a Python caller gets the same limits)."""
        if self.flip not in FLIP_MODES:
            raise UsageError(f"--flip must be one of {', '.join(FLIP_MODES)}, got {self.flip!r}")
        for name, least in (("workers", 1), ("worst", 0), ("bootstrap", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise UsageError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")

    def _in_order(self, named: list[Benchmark]) -> list[Benchmark]:
        """``named`` with the precomputed embeddings before them and the pairs file after them."""
        ordered = []
        if self.embeddings is not None and self.issame is not None:
            ordered.append(Benchmark(self.issame.stem, "embeddings", self.embeddings))
        ordered += named
        if self.pairs is not None and self.images is not None:
            ordered.append(Benchmark(self.pairs.stem, "pairs", self.pairs, self.images, self.align))
        return ordered

    def run_options(self) -> RunOptions:
        """The settings each model × benchmark run shares."""
        return RunOptions(self.flip, self.nfolds, self.workers, self.cache, self.bootstrap, self.quality_threshold)


def _entries(value: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None) -> list[str | os.PathLike[str]]:
    """A sequence field as a list: one path or name alone counts as one entry, None as none."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)
