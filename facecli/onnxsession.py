"""Every onnxruntime session facecli runs is made here: options, providers for a device, and the graph rewrites.

Embedding models (eval, gallery), the MTCNN detector, SCRFD's options, the ONNX import and export checks all ask
this module, so that a session means the same thing everywhere:

* **Options** (:func:`session_options`): full graph optimisation, warnings and below not logged. A caller that
  runs one session per process (align's workers) gives ``threads``: exactly that many intra-op threads, one
  inter-op thread, and idle threads that sleep instead of spinning, as a spinning thread would burn a core another
  process needs. Without ``threads`` onnxruntime's defaults stand (a thread per core).
* **Providers** (:func:`device_providers`): ``cpu``; ``cuda`` or ``cuda:N`` (that GPU, the CPU for what CUDA lacks);
  ``tensorrt`` (TensorRT, then CUDA, then the CPU); a one-line error when this onnxruntime lacks the first.
* **Rewrites** (:func:`open_session`): on the CPU provider alone, the graph first goes through
  :mod:`facecli.onnxgraph`: narrow first layers widened to whole channel blocks (MTCNN, bit-identical),
  MobileFaceNet's 2-channel groups split by parity (about 1e-7 relative), and every ``PRelu`` written with
  operators that stay in onnxruntime's blocked layout (bit for bit alone; about 1e-6 relative on iresnet, where
  onnxruntime then folds a BatchNorm differently); benchmarks/README.md measures the gain. Other providers have a fast PRelu of
  their own and get the graph as it is; so does a graph whose shapes onnx cannot infer or that onnxruntime will
  not load once rewritten.

The rewrites can be turned off, to debug a difference or to run a model layout they might not suit: the keyword
``rewrites=False``, or for a whole run (worker processes included) the environment variable
``FACECLI_ONNX_REWRITES=0`` (also ``false``, ``no``, ``off``). The keyword wins over the variable; the default is
on. Sessions are then the plain onnxruntime session of the graph as given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from facecli.errors import CorruptFileError, UsageError

REWRITES_ENV = "FACECLI_ONNX_REWRITES"
_OFF = ("0", "false", "no", "off")

_PROVIDER_CHAINS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def rewrites_enabled(rewrites: bool | None = None) -> bool:
    """Whether the CPU rewrites apply: ``rewrites`` when given, else ``FACECLI_ONNX_REWRITES`` (default on)."""
    if rewrites is not None:
        return rewrites
    return os.environ.get(REWRITES_ENV, "1").strip().lower() not in _OFF


def session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` as the module docstring says; ``threads`` for one session per process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not burn cores
    return options


def device_providers(device: str = "cpu") -> list[Any]:
    """onnxruntime's providers for ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``tensorrt``), best first, those
    this onnxruntime has; :class:`UsageError` for another device or when it lacks the first."""
    import onnxruntime as ort

    kind, _, index = str(device).strip().lower().partition(":")
    if kind not in _PROVIDER_CHAINS or (index and not index.isdigit()):
        raise UsageError(f"unknown device {device!r}; choose cpu, cuda, cuda:N or tensorrt")
    available = ort.get_available_providers()
    wanted = _PROVIDER_CHAINS[kind]
    if wanted[0] not in available:
        raise UsageError(f"onnxruntime here has no {wanted[0]} (available: {', '.join(available)})")
    chain: list[Any] = [p for p in wanted if p in available]
    if index:
        chain = [(p, {"device_id": int(index)}) if p != "CPUExecutionProvider" else p for p in chain]
    return chain


class Opened(NamedTuple):
    session: Any  # onnxruntime.InferenceSession
    model: Any  # what it runs: the rewritten onnx.ModelProto, or the model as given
    rewritten: bool


def rewrite_for_cpu(model: Any) -> Any | None:
    """A copy of ``model`` (an ``onnx.ModelProto``) rewritten for onnxruntime's CPU provider, or None when no
    rewrite applies or its shapes cannot be inferred (the rewrites need to know which tensors are 4-D)."""
    import onnx

    from facecli import onnxgraph

    try:
        rewritten = onnx.shape_inference.infer_shapes(model)
        changed = onnxgraph.fill_channel_blocks(rewritten.graph) + onnxgraph.split_pair_groups(rewritten.graph)
        if changed:  # the new tensors' shapes, for rewrite_prelu
            rewritten = onnx.shape_inference.infer_shapes(rewritten)
    except Exception:  # noqa: BLE001 - no shapes, no rewrite
        return None
    changed += onnxgraph.rewrite_prelu(rewritten.graph)
    return rewritten if changed else None


def open_session(
    model: Any,
    *,
    providers: list[Any] | None = None,
    threads: int | None = None,
    rewrites: bool | None = None,
    name: str | Path | None = None,
) -> Opened:
    """A session of ``model`` (an ``onnx.ModelProto``, serialised bytes, or a path) on ``providers`` (default:
    the CPU, see :func:`device_providers`), rewritten for the CPU provider unless turned off (see the module
    docstring). A graph onnxruntime cannot load is a one-line :class:`CorruptFileError` naming ``name``."""
    import onnx
    import onnxruntime as ort

    chosen = providers or ["CPUExecutionProvider"]
    options = session_options(threads)
    shown = name if name is not None else (model if isinstance(model, (str, Path)) else "ONNX model")

    def load(graph: Any) -> Any:
        source = str(graph) if isinstance(graph, (str, Path)) else graph
        if isinstance(source, onnx.ModelProto):
            source = source.SerializeToString()
        try:
            return ort.InferenceSession(source, options, providers=chosen)
        except Exception as exc:
            raise CorruptFileError(f"{shown}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None

    if chosen == ["CPUExecutionProvider"] and rewrites_enabled(rewrites):
        proto = model if isinstance(model, onnx.ModelProto) else _as_proto(model)
        rewritten = rewrite_for_cpu(proto) if proto is not None else None
        if rewritten is not None:
            try:
                return Opened(load(rewritten), rewritten, True)
            except CorruptFileError:
                pass
    return Opened(load(model), model, False)


def _as_proto(model: bytes | str | Path) -> Any | None:
    """The graph in ``model``, or None when onnx cannot read it (onnxruntime then says why, in one line)."""
    import onnx

    try:
        return onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    except Exception:  # noqa: BLE001 - reported by the session's own load
        return None
