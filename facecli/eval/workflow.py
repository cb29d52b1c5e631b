"""``facecli.eval.run``: one evaluation, from an :class:`~facecli.eval.request.EvalRequest` to its report.

This is ``facecli eval`` without the command line: the same order of work, numbers, files and errors. The CLI
builds the request from its options, passes its console as the feedback, and renders the result::

    from facecli.eval import EvalRequest, run

    result = run(EvalRequest(models=["model.onnx"], pairs="pairs.txt", images="lfw/", align=True))
    result.to_dict()["results"][0]["accuracy"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facecli.eval import report
from facecli.eval.kinds import BENCHMARK_KINDS
from facecli.eval.models import EmbeddingModel, load_model
from facecli.eval.request import EvalRequest
from facecli.progress import SILENT, Feedback


@dataclass
class EvalResult:
    """Every model × benchmark entry, what each model was (``describe()``), and the ``out`` files written."""

    entries: list[report.Entry]
    models_info: list[dict[str, Any]]
    written: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: what ``facecli eval --json`` prints (``report.json`` adds the ROC curves)."""
        return report.report_dict(self.entries, self.models_info)

    def render(self, console: Any) -> None:
        """The tables ``facecli eval`` prints, on a rich console."""
        report.render(console, self.entries)


def run(request: EvalRequest, feedback: Feedback = SILENT) -> EvalResult:
    """Evaluate ``request``: given features first, then each model on each benchmark in order; ``request.out``
    receives the report files. ``feedback`` hears progress and warnings (default: silence)."""
    kinds = [BENCHMARK_KINDS.build(b.kind, bench=b, request=request) for b in request.resolved]
    entries = [kind.evaluate_given(feedback) for kind in kinds if not kind.uses_model()]
    with_model = [kind for kind in kinds if kind.uses_model()]
    for kind in with_model:
        kind.prepare()
    models_info = []
    for spec in request.models if with_model else ():
        model = _load(request, spec, feedback)
        models_info.append(model.describe())
        label = model_label(spec, request.models)
        if request.quality_threshold is not None and not model.quality:
            feedback.warn(f"{label} has no facecli.quality metadata: its embedding norm may not encode face quality; "
                          f"--quality-threshold {request.quality_threshold:g} is applied anyway")
        entries += [kind.evaluate_model(model, label, feedback) for kind in with_model]
    written = [] if request.out is None else report.write_outputs(request.out, entries, models_info, request.worst)
    return EvalResult(entries, models_info, written)


def _load(request: EvalRequest, spec: Path, feedback: Feedback) -> EmbeddingModel:
    model = load_model(spec, mean=request.mean, std=request.std, bgr=request.bgr, device=request.device,
                       batch_size=request.batch_size)
    feedback.detail(f"{spec}: {model.color}, mean {model.mean}, std {model.std} ({model.preprocessing_from}), "
                    f"{model.fingerprint}")
    return model


def model_label(spec: Path, all_specs: Sequence[Path]) -> str:
    """The model's file name, or its path when two models share a name."""
    names = [s.name for s in all_specs]
    return spec.name if names.count(spec.name) == 1 else str(spec)
