"""Where a detector's networks run: onnxruntime on the CPU, onnxruntime's CUDA provider, or PyTorch on CUDA.

Users with ``onnxruntime-gpu`` get its CUDA provider; GPU machines that have PyTorch but only the CPU build of
onnxruntime (the common case on training machines) run the same graphs imported into PyTorch
(:mod:`facecli.onnxtorch`). ``auto`` looks for an NVIDIA driver before it imports anything, so on a machine
without one it costs nothing and means the CPU.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from facecli.errors import UsageError

DEVICES = "cpu, cuda, cuda:N or auto"
RUNTIMES = ("onnxruntime", "torch")


class Runtime(NamedTuple):
    name: str  # "onnxruntime" or "torch"
    device: str  # "cpu" or "cuda:N"


def _driver_present() -> bool:
    """An NVIDIA driver is loaded (cheap: no CUDA library is imported to find out)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def _onnxruntime_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _torch_cuda(index: int) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available()) and index < torch.cuda.device_count()


def pick_runtime(device: str = "cpu", runtime: str | None = None) -> Runtime:
    """The runtime for ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``): onnxruntime where it can use the
    device, else PyTorch; ``runtime`` forces one. A CUDA device that is not there is a one-line
    :class:`UsageError`; ``auto`` falls back to the CPU."""
    name = str(device).strip().lower()
    if runtime is not None and runtime not in RUNTIMES:
        raise UsageError(f"detector runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if name == "cpu":
        return Runtime(runtime or "onnxruntime", "cpu")
    index_text = name.partition(":")[2] if name.startswith("cuda:") else "0"
    if not (name in ("auto", "cuda") or (name.startswith("cuda:") and index_text.isdigit())):
        raise UsageError(f"--device must be {DEVICES}, got {device!r}")
    index = int(index_text)
    cuda = f"cuda:{index}"
    if _driver_present():
        if runtime in (None, "onnxruntime") and _onnxruntime_cuda():
            return Runtime("onnxruntime", cuda)
        if runtime in (None, "torch") and _torch_cuda(index):
            return Runtime("torch", cuda)
    if name == "auto":
        return Runtime(runtime or "onnxruntime", "cpu")
    raise UsageError(
        f"--device {device}: no CUDA device found (needs an NVIDIA driver and onnxruntime-gpu or PyTorch with CUDA); "
        "use --device cpu or auto"
    )
