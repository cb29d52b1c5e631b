"""Face-embedding models behind one interface: ONNX files (facecli exports, insightface-style models, others) on
onnxruntime and facecli checkpoints / run directories on torch.

Every model carries its preprocessing, because a wrong colour order or normalisation costs accuracy silently:

1. ``--mean/--std/--bgr`` given by the user win;
2. else the model's own metadata: a facecli checkpoint's ``info`` or a facecli ONNX export's ``facecli.color``,
   ``facecli.mean``, ``facecli.std`` metadata_props (0–255 pixel units);
3. else insightface's rule for recognition ONNX models (``ArcFaceONNX``): if one of the graph's first 8 nodes is
   named ``Sub*``/``_minus*`` and one ``Mul*``/``_mul*``, the graph normalises itself (mean 0, std 1); otherwise
   mean 127.5, std 127.5. Channel order RGB (insightface feeds ``blobFromImages(..., swapRB=True)``).

The input to the network is always ``(pixel - mean) / std`` per channel, NCHW float32. ``mean``/``std`` are
given per colour in R, G, B order whatever order the network takes its channels in.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facecli import onnxsession
from facecli.errors import CorruptFileError, UsageError
from facecli.fileio import sha256_file
from facecli.normalisation import (
    INSIGHTFACE_MEAN,
    INSIGHTFACE_STD,
    check_normalisation,
    parse_channels,
    resolve_onnx_preprocessing,
)
from facecli.registry import Registry

# Faces per network call when the user does not say. On a CPU, small batches keep each layer's activations in
# cache and embed faster than large ones on onnxruntime (benchmarks/README.md has the figures). Accelerators want
# large batches to fill the device.
CPU_BATCH_SIZE = 8
ACCELERATOR_BATCH_SIZE = 64


class EmbeddingModel(ABC):
    """A network that maps aligned RGB uint8 faces to raw (unnormalised) float32 embeddings."""

    kind: str = ""

    def __init__(
        self,
        source: Path,
        weights_file: Path,
        input_size: int,
        embedding_size: int,
        color: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        preprocessing_from: str,
        batch_size: int,
        architecture: str | None = None,
        quality: str | None = None,
    ) -> None:
        self.source = source
        self.weights_file = weights_file
        self.input_size = int(input_size)
        self.embedding_size = int(embedding_size)
        self.color = color.upper()
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.preprocessing_from = preprocessing_from
        self.batch_size = max(1, int(batch_size))
        self.architecture = architecture
        #: "feature-norm" when the model was trained so its raw embedding norm is a face-quality score (MagFace,
        #: AdaFace).
        self.quality = quality
        self._fingerprint: str | None = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def fingerprint(self) -> str:
        """Short sha256 over the weights file and the preprocessing: names feature caches and reports."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(sha256_file(self.weights_file).encode())
            digest.update(f"|{self.color}|{self.mean}|{self.std}|{self.input_size}".encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {
            "model": str(self.source),
            "kind": self.kind,
            "architecture": self.architecture,
            "input_size": self.input_size,
            "embedding_size": self.embedding_size,
            "color": self.color,
            "mean": list(self.mean),
            "std": list(self.std),
            "preprocessing_from": self.preprocessing_from,
            "quality": self.quality,
            "fingerprint": self.fingerprint,
        }

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """RGB uint8 (N, H, W, 3) to the network input: channel order, ``(x - mean) / std``, NCHW float32."""
        images = self._check_images(images)
        channels = (2, 1, 0) if self.color == "BGR" else (0, 1, 2)
        n, h, w, _ = images.shape
        blob = np.empty((n, 3, h, w), dtype=np.float32)
        for out_c, in_c in enumerate(channels):  # mean/std are per colour, in R, G, B order
            np.subtract(images[..., in_c], np.float32(self.mean[in_c]), out=blob[:, out_c], dtype=np.float32)
            blob[:, out_c] /= np.float32(self.std[in_c])
        return blob

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UsageError(f"expected images of shape (N, H, W, 3), got {images.shape}")
        if images.shape[1:3] != (self.input_size, self.input_size):
            import cv2

            size = (self.input_size, self.input_size)
            images = np.stack([cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in images])
        return images

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Raw float32 embeddings (N, D) of RGB uint8 faces (N, 112, 112, 3), in batches of ``batch_size``."""
        images = np.asarray(images)
        if len(images) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        outputs = []
        for start in range(0, len(images), self.batch_size):
            out = self.forward(self.preprocess(images[start : start + self.batch_size]))
            if out.shape[1:] != (self.embedding_size,):  # e.g. a feature map (N, C, H, W) flattened by forward
                raise UsageError(f"{self.source}: the model gives {out.shape[1]} values per image, not one "
                                 f"{self.embedding_size}-value embedding; is its output an embedding layer (N, D)?")
            outputs.append(out)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    @abstractmethod
    def forward(self, blob: np.ndarray) -> np.ndarray:
        """Network output for a preprocessed NCHW float32 batch of any size."""


def device_kind(device: str) -> str:
    """``cpu``, ``cuda`` or ``tensorrt`` from a ``--device`` value such as ``CUDA:1``."""
    return device.split(":")[0].lower()


def default_batch_size(device: str) -> int:
    """Faces per network call for ``device`` (``cpu``, ``cuda[:N]``, ``tensorrt``) when none is given."""
    return CPU_BATCH_SIZE if device_kind(device) == "cpu" else ACCELERATOR_BATCH_SIZE


class OnnxEmbeddingModel(EmbeddingModel):
    """An ONNX recognition model on onnxruntime; a fixed batch dimension is honoured by padding the last batch."""

    kind = "onnx"

    def __init__(
        self, path: Path, session: Any, fixed_batch: int | None, declared_batch: int | str | None = None, **kwargs: Any
    ) -> None:
        self.session = session
        self.fixed_batch = fixed_batch  # None: any batch size runs in one call
        self.declared_batch = declared_batch  # the batch dimension the file declares
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        super().__init__(source=path, weights_file=path, **kwargs)

    def forward(self, blob: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None:
            return self.session.run([self.output_name], {self.input_name: blob})[0].reshape(len(blob), -1)
        outputs = []
        size = self.fixed_batch
        for start in range(0, len(blob), size):
            part = blob[start : start + size]
            count = len(part)
            if count < size:  # pad with copies of the last face; the extra outputs are dropped
                part = np.concatenate([part, np.repeat(part[-1:], size - count, axis=0)])
            out = self.session.run([self.output_name], {self.input_name: part})[0].reshape(size, -1)
            outputs.append(out[:count])
        return np.concatenate(outputs)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "declared_batch": self.declared_batch,
            "fixed_batch": self.fixed_batch,
            "providers": self.session.get_providers(),
        }


def load_onnx(
    path: Path,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    bgr: bool | None,
    device: str,
    batch_size: int,
) -> OnnxEmbeddingModel:
    """An ONNX model with its preprocessing decided as the module docstring says."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CorruptFileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    net_mean, net_std, color, found_from = resolve_onnx_preprocessing(proto, mean, std, bgr)
    providers = onnxsession.device_providers(device)
    opened = onnxsession.open_session(proto, providers=providers, name=path)
    proto, session = opened.model, opened.session
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape
    if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3:
        raise UsageError(f"{path}: expected one NCHW image input with 3 channels, found {shape}")
    if not isinstance(shape[2], int) or shape[2] != shape[3]:
        raise UsageError(f"{path}: expected a square input of fixed size, found {shape}")
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    declared_batch = shape[0]
    if fixed_batch is not None:
        dynamic = _dynamic_batch_session(path, proto, fixed_batch, session, providers)
        if dynamic is not None:
            session, fixed_batch = dynamic, None
    out_shape = outputs[0].shape
    if len(out_shape) != 2 and any(isinstance(d, int) and d > 1 for d in out_shape[2:]):
        raise UsageError(f"{path}: the model's output has shape {out_shape}; facecli needs one embedding per image, "
                         "(N, D)")
    declared = int(np.prod(out_shape[1:])) if all(isinstance(d, int) and d > 0 for d in out_shape[1:]) else 0
    embedding_size = int(meta.get("facecli.embedding_size", declared))
    if embedding_size <= 0:  # unknown statically: ask the model
        probe = np.zeros((fixed_batch or 1, 3, shape[2], shape[3]), dtype=np.float32)
        embedding_size = int(session.run(None, {inputs[0].name: probe})[0].reshape(fixed_batch or 1, -1).shape[1])
    return OnnxEmbeddingModel(
        path,
        session,
        fixed_batch,
        declared_batch,
        input_size=shape[2],
        embedding_size=embedding_size,
        color=color,
        mean=net_mean,
        std=net_std,
        preprocessing_from=found_from,
        batch_size=batch_size,
        architecture=meta.get("facecli.architecture"),
        quality=meta.get("facecli.quality"),
    )


def _dynamic_batch_session(path: Path, proto: Any, fixed: int, session: Any, providers: list[str]) -> Any | None:
    """A session of the same graph with a free batch dimension, or None when the graph does not allow it.

    Exports with batch size 1 usually hard-code it only in the input/output shapes and in ``Reshape`` targets
    such as ``[1, -1]``; turning those into a symbolic dimension and ``[0, -1]`` (keep the batch) lets one call
    embed a whole batch. The rewrite is kept only if it gives the fixed graph's outputs on a test batch.
    """
    import onnx
    from onnx import numpy_helper

    variant = onnx.ModelProto()
    variant.CopyFrom(proto)
    graph = variant.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.attribute}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        target = node.input[1]
        tensor = initializers.get(target)
        if tensor is None and target in constants:
            tensor = constants[target].attribute[0].t
        if tensor is None:
            continue
        shape = numpy_helper.to_array(tensor).copy()
        if shape.ndim == 1 and len(shape) and shape[0] == fixed:
            shape[0] = 0  # 0 = copy the input's batch dimension
            tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
    for value in list(graph.input[:1]) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "batch"
    del graph.value_info[:]
    try:
        dynamic = onnxsession.open_session(variant, providers=providers, rewrites=False, name=path).session
        size = int(session.get_inputs()[0].shape[2])
        probe = np.random.default_rng(0).standard_normal((fixed * 3, 3, size, size)).astype(np.float32)
        name = session.get_inputs()[0].name
        expected = np.concatenate(
            [session.run(None, {name: probe[i : i + fixed]})[0] for i in range(0, len(probe), fixed)]
        )
        got = dynamic.run(None, {name: probe})[0]
    except Exception:  # noqa: BLE001 - any failure means: keep the fixed-batch graph
        return None
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return None
    return dynamic


class TorchEmbeddingModel(EmbeddingModel):
    """A facecli checkpoint or run directory (or an arcface_torch state dict) on torch."""

    kind = "checkpoint"

    def __init__(self, module: Any, device: str, **kwargs: Any) -> None:
        self.module = module
        self.device = device
        super().__init__(**kwargs)

    def forward(self, blob: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(blob).to(self.device))
        return out.float().cpu().numpy().reshape(len(blob), -1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device}


def load_checkpoint(
    path: Path,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
    bgr: bool | None,
    device: str,
    batch_size: int,
) -> TorchEmbeddingModel:
    """A facecli run directory / checkpoint through ``facecli.nn.inference.load_backbone``."""
    import torch

    from facecli.nn.inference import load_backbone, resolve_model_file

    module, info = load_backbone(path)
    device = device.lower()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA device here")
    module = module.to(device)
    size = info.get("input_size", (112, 112))
    return TorchEmbeddingModel(
        module,
        device,
        source=path,
        weights_file=resolve_model_file(path),
        input_size=int(size[0] if isinstance(size, (list, tuple)) else size),
        embedding_size=int(info["embedding_size"]),
        color="BGR" if bgr else ("RGB" if bgr is False else info.get("color", "RGB")),
        mean=mean or tuple(info.get("mean", (INSIGHTFACE_MEAN,) * 3)),
        std=std or tuple(info.get("std", (INSIGHTFACE_STD,) * 3)),
        preprocessing_from="user options" if (mean or std or bgr is not None) else "checkpoint info",
        batch_size=batch_size,
        architecture=info.get("architecture"),
        quality=info.get("quality"),
    )


class ModelFormat(ABC):
    """One way an embedding model is stored: which paths it claims, and how to load them. A new format is one
    subclass registered in :data:`MODEL_FORMATS`; :func:`load_model` asks each which one claims a path."""

    #: what the format's paths look like, for the message naming the formats a path matches none of
    description: str = ""

    @abstractmethod
    def matches(self, path: Path) -> bool:
        """Whether ``path`` (an existing file or directory) is stored in this format."""

    @abstractmethod
    def load(
        self,
        path: Path,
        mean: tuple[float, float, float] | None,
        std: tuple[float, float, float] | None,
        bgr: bool | None,
        device: str,
        batch_size: int,
    ) -> EmbeddingModel:
        """The model at ``path``; ``mean``/``std``/``bgr`` (None: the model's own) override its preprocessing."""


MODEL_FORMATS: Registry[ModelFormat] = Registry("model format")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@MODEL_FORMATS.register("onnx")
class OnnxFormat(ModelFormat):
    """An ONNX file, run on onnxruntime (:func:`load_onnx`)."""

    description = "a .onnx file"
    load = staticmethod(load_onnx)

    def matches(self, path: Path) -> bool:
        return not path.is_dir() and path.suffix.lower() == ".onnx"


@MODEL_FORMATS.register("checkpoint")
class CheckpointFormat(ModelFormat):
    """A facecli checkpoint or run directory (or an arcface_torch state dict) on torch (:func:`load_checkpoint`)."""

    description = f"a {'/'.join(CHECKPOINT_SUFFIXES)} checkpoint or a run directory"
    load = staticmethod(load_checkpoint)

    def matches(self, path: Path) -> bool:
        return path.is_dir() or path.suffix.lower() in CHECKPOINT_SUFFIXES


def model_format(path: Path) -> str:
    """The name of the format in :data:`MODEL_FORMATS` that claims ``path``."""
    formats = {name: MODEL_FORMATS.build(name) for name in MODEL_FORMATS.names()}
    for name, entry in formats.items():
        if entry.matches(path):
            return name
    expected = ", or ".join(entry.description for entry in formats.values())
    raise UsageError(f"{path}: unknown model format; expected {expected}")


def load_model(
    spec: str | os.PathLike,
    mean: str | float | Sequence[float] | None = None,
    std: str | float | Sequence[float] | None = None,
    bgr: bool | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
) -> EmbeddingModel:
    """Load an embedding model from a path (ONNX, checkpoint or run directory) with its preprocessing.

    ``mean``/``std`` (0–255 pixel units, one value or three) and ``bgr`` override what the model says;
    ``batch_size`` (faces per network call) defaults to :func:`default_batch_size` for ``device``.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"model not found: {path}")
    means, stds = parse_channels(mean, "mean"), parse_channels(std, "std")
    check_normalisation(means, stds)
    return MODEL_FORMATS.build(model_format(path)).load(
        path, means, stds, bgr, device, batch_size or default_batch_size(device)
    )
