"""Benchmark kinds: how each kind of benchmark turns a model (or given features) into a report entry.

``bin`` (insightface's ``.bin`` pairs), ``pairs`` (an LFW pairs file over a photo folder), ``ijb`` (IJB-B/C's
folder layout, embedded by each model or scored from ``--features``) and ``embeddings`` (precomputed ``.npy``
pairs) are entries of :data:`BENCHMARK_KINDS`; :func:`facecli.eval.run` looks a benchmark's kind up there instead
of branching on it, so a new kind is one class here. A kind is built per benchmark of one request
(``BENCHMARK_KINDS.build(bench.kind, bench=bench, request=request)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from facecli.eval import ijb, runner
from facecli.eval.models import EmbeddingModel
from facecli.eval.report import Entry
from facecli.progress import Feedback
from facecli.registry import Registry

if TYPE_CHECKING:
    from facecli.eval.request import EvalRequest


class BenchmarkKind:
    """One benchmark of a request. :meth:`uses_model` decides which of the two ``evaluate`` methods runs:
    ``evaluate_model`` once per model, or ``evaluate_given`` once, before any model loads."""

    def __init__(self, bench: runner.Benchmark, request: EvalRequest) -> None:
        self.bench = bench
        self.request = request
        self.options = request.run_options()

    def uses_model(self) -> bool:
        """Whether each model embeds this benchmark's images (else it is scored from features the user gave)."""
        return True

    def prepare(self) -> None:
        """Read what must be readable before the first model loads (a damaged file fails fast)."""

    def evaluate_model(self, model: EmbeddingModel, label: str, feedback: Feedback) -> Entry:
        """The entry of ``model`` (shown as ``label``) on this benchmark."""
        raise NotImplementedError(f"benchmark kind {self.bench.kind!r} is scored without a model")

    def evaluate_given(self, feedback: Feedback) -> Entry:
        """The entry of the features or embeddings the request names."""
        raise NotImplementedError(f"benchmark kind {self.bench.kind!r} needs a model")


BENCHMARK_KINDS: Registry[BenchmarkKind] = Registry("benchmark kind")


@BENCHMARK_KINDS.register("bin")
class BinBenchmark(BenchmarkKind):
    """An insightface ``.bin``: its images are read before any model loads, then embedded by each model."""

    data: tuple[list[bytes], np.ndarray]

    def prepare(self) -> None:
        self.data = runner.load_benchmark_bin(self.bench)

    def evaluate_model(self, model: EmbeddingModel, label: str, feedback: Feedback) -> Entry:
        with feedback.progress(f"{label} · {self.bench.name}", len(self.data[0])) as advance:
            run = runner.evaluate_bin(model, self.bench, self.data, self.options, advance)
        return verification_entry(feedback, label, run)


@BENCHMARK_KINDS.register("pairs")
class PairsBenchmark(BenchmarkKind):
    """Photos named by an LFW-style pairs file, aligned first with ``--align``."""

    def evaluate_model(self, model: EmbeddingModel, label: str, feedback: Feedback) -> Entry:
        bench = self.bench
        assert bench.images is not None
        with feedback.progress(f"{label} · {bench.path.name}", None) as advance:
            run = runner.evaluate_pairs(model, bench.path, bench.images, bench.align, self.options, advance)
        entry = verification_entry(feedback, label, run)
        if run.resized:
            feedback.warn(f"{run.resized} photo(s) are not {model.input_size}x{model.input_size} face crops and were "
                          "resized; pass --align for unaligned photos")
        if run.no_face:
            feedback.warn(f"no face found in {len(run.no_face)} photo(s); their centre crop was used (see the report)")
        return entry


@BENCHMARK_KINDS.register("embeddings")
class EmbeddingsBenchmark(BenchmarkKind):
    """Precomputed embeddings and pair labels (``--embeddings``/``--issame``): scored once, no model."""

    def uses_model(self) -> bool:
        return False

    def evaluate_given(self, feedback: Feedback) -> Entry:
        embeddings, issame, flipped = self.request.embeddings, self.request.issame, self.request.embeddings_flip
        assert embeddings is not None and issame is not None
        result, quality = runner.evaluate_embeddings(embeddings, issame, flipped, self.options)
        info = {"flip": "sum" if flipped else "none", "quality": quality.to_dict()}
        report_quality(feedback, f"{embeddings.stem} · {issame.stem}", quality)
        return Entry(embeddings.stem, issame.stem, verification=result, info=info)


@BENCHMARK_KINDS.register("ijb")
class IjbBenchmark(BenchmarkKind):
    """IJB-B/C 1:1 and 1:N: each model embeds the loose crops, or the user's ``--features`` are scored once."""

    def uses_model(self) -> bool:
        return self.request.features is None

    def evaluate_model(self, model: EmbeddingModel, label: str, feedback: Feedback) -> Entry:
        protocol = ijb.read_protocol(self.bench.path, self.bench.name)
        with feedback.progress(f"{label} · {self.bench.name} images", protocol.n_images) as advance:
            feats = runner.ijb_image_features(model, protocol, self.options, advance)
        return self._score(feedback, label, feats, protocol)

    def evaluate_given(self, feedback: Feedback) -> Entry:
        features = self.request.features
        assert features is not None
        return self._score(feedback, features.stem, runner.load_npy(features, "features"))

    def _score(
        self, feedback: Feedback, label: str, feats: np.ndarray, protocol: ijb.IJBProtocol | None = None
    ) -> Entry:
        """1:1 and 1:N from per-image features, with a progress bar over the template pairs."""
        request = self.request
        scores = runner.load_npy(request.faceness, "faceness") if request.faceness else None
        flags = ijb.IJBFlags(norm_score=request.norm_score, detector_score=request.detector_score,
                             flip=self.options.flipped)
        protocol = protocol or ijb.read_protocol(self.bench.path, self.bench.name)
        with feedback.progress(f"{label} · {self.bench.name} pairs", len(protocol.pair_t1)) as advance:
            run = runner.evaluate_ijb(protocol, feats, scores, flags, request.ijb_mode, advance)
        return Entry(label, self.bench.name, ijb=run)


def verification_entry(feedback: Feedback, label: str, run: runner.VerificationRun) -> Entry:
    """The report entry of a verification run, with its face-quality summary."""
    info = {"quality": run.quality.to_dict()} if run.quality is not None else {}
    if run.quality is not None:
        report_quality(feedback, f"{label} · {run.benchmark.name}", run.quality)
    return Entry(label, run.benchmark.name, verification=run.result, run=run, info=info)


def report_quality(feedback: Feedback, label: str, quality: runner.QualityReport) -> None:
    """One line on the norms, and on the pairs ``--quality-threshold`` left out of the pooled metrics."""
    q = quality.to_dict()
    feedback.detail(f"{label}: embedding norm min {q['norm_min']:.3f}, median {q['norm_median']:.3f}, "
                    f"max {q['norm_max']:.3f}")
    if quality.threshold is not None:
        feedback.info(
            f"{label}: {quality.n_low_pairs} pair(s) have an image with quality < {quality.threshold:g}; "
            "left out of TAR@FAR/AUC/EER (10-fold accuracy uses all pairs)"
        )
