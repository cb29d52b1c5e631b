"""ONNX graphs of facecli's own architectures (facecli exports, arcface_torch / insightface model packs) loaded
weight by weight into facecli's IResNet and MobileFaceNet classes.

Such a graph is the trace of the very module facecli defines: its Conv, BatchNormalization, PRelu and Gemm/MatMul
nodes appear in the order the module's layers run. The exporter folds each BatchNorm that directly follows a
convolution into that convolution (weight scaled, bias added), so the folded BatchNorm gets the identity
statistics (mean 0, variance 1 - eps, scale 1) and the convolution's bias as its shift: the same function, exactly.
The result is an ordinary facecli backbone (its architecture name, its state dict), so a fine-tuned model is a
normal facecli run. A graph that does not match layer for layer (another architecture, other input normalisation)
is left to the generic importer (``facecli.nn.onnx_import``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from facecli.nn.backbones.iresnet import DEPTHS
from facecli.nn.inference import build_backbone, model_info

#: Operators a graph of facecli's architectures consists of (anything else: not one of them).
ARCHITECTURE_OPS = {"Conv", "BatchNormalization", "PRelu", "Add", "Flatten", "Reshape", "Shape", "Gather",
                    "Unsqueeze", "Concat", "Gemm", "MatMul", "Identity", "Dropout", "Cast"}
#: arcface_torch's MobileFaceNets: (blocks, width scale).
MOBILEFACENETS = {"mobilefacenet": ((1, 4, 6, 2), 2), "mobilefacenet-large": ((2, 8, 12, 4), 4)}


def candidates(ops: list[str], first_conv_channels: int, meta: dict[str, str]) -> list[tuple[str, dict]]:
    """Architectures (name, backbone options) the graph may be: from facecli metadata, else by convolution count."""
    if "facecli.architecture" in meta:
        options = json.loads(meta.get("facecli.backbone_options", "{}"))
        return [(meta["facecli.architecture"], options)]
    convs = ops.count("Conv")
    found: list[tuple[str, dict]] = [(name, {}) for name, depth in DEPTHS.items() if 1 + 2 * sum(depth) + 4 == convs]
    for name, (blocks, scale) in MOBILEFACENETS.items():
        first = 1 if blocks[0] == 1 else 3 * blocks[0]
        if 1 + first + 9 + 3 * sum(blocks[1:]) + 2 == convs and first_conv_channels == 64 * scale:
            found.append((name, {}))
    return found


def _execution_order(model: nn.Module) -> list[tuple[nn.Module, Any, Any]]:
    """Every parameterised leaf module with its input and output tensors, in the order they run."""
    calls: list[tuple[nn.Module, Any, Any]] = []
    kinds = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.PReLU, nn.Linear)
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0], out)))
             for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, 112, 112))
    finally:
        for hook in hooks:
            hook.remove()
    return calls


_BatchNorm = nn.modules.batchnorm._BatchNorm
#: The graph's node kinds that carry weights, in the order :meth:`_Layers.counts` lists the model's layers.
_WEIGHT_KINDS = ("Conv", "BatchNormalization", "PRelu", "Linear")


@dataclass
class _Layers:
    """A model's parameterised layers by kind, each list in running order: the order the graph lists their nodes."""

    convs: list[nn.Conv2d]
    folded: dict[int, _BatchNorm]  # id of a convolution → the BatchNorm the exporter folded into it
    batchnorms: list[_BatchNorm]  # the others, which stay BatchNormalization nodes
    prelus: list[nn.PReLU]
    linears: list[nn.Linear]

    def counts(self) -> list[int]:
        return [len(self.convs), len(self.batchnorms), len(self.prelus), len(self.linears)]


def _layers(model: nn.Module) -> _Layers:
    """The layers of ``model``; a BatchNorm is folded when it reads exactly the output of the convolution before it."""
    calls = _execution_order(model)
    folded = {id(prev): cur for (prev, _, prev_out), (cur, cur_in, _) in zip(calls, calls[1:], strict=False)
              if isinstance(prev, nn.Conv2d) and isinstance(cur, _BatchNorm) and cur_in is prev_out}
    folded_ids = {id(bn) for bn in folded.values()}
    return _Layers(convs=[m for m, _, _ in calls if isinstance(m, nn.Conv2d)], folded=folded,
                   batchnorms=[m for m, _, _ in calls if isinstance(m, _BatchNorm) and id(m) not in folded_ids],
                   prelus=[m for m, _, _ in calls if isinstance(m, nn.PReLU)],
                   linears=[m for m, _, _ in calls if isinstance(m, nn.Linear)])


def _nodes_by_kind(nodes: list[dict]) -> dict[str, list[dict]]:
    """The graph's nodes by operator, in graph order; Gemm and MatMul both as ``Linear``."""
    by_kind: dict[str, list[dict]] = {kind: [] for kind in _WEIGHT_KINDS}
    for node in nodes:
        by_kind.setdefault("Linear" if node["op"] in ("Gemm", "MatMul") else node["op"], []).append(node)
    return by_kind


def _optional_input(node: dict, index: int, values: dict[str, np.ndarray]) -> np.ndarray | None:
    """The constant at optional input ``index`` of ``node`` (a bias); None when the input is absent or unnamed."""
    return values.get(node["inputs"][index]) if len(node["inputs"]) > index and node["inputs"][index] else None


class _State:
    """A copy of a model's state dict, filled parameter by parameter from the graph's arrays."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.tensors = {k: v.clone() for k, v in model.state_dict().items()}

    def put(self, module: nn.Module, key: str, array: np.ndarray) -> bool:
        """Set ``module``'s ``key`` to ``array`` (reshaped, in the parameter's dtype); False when the sizes differ."""
        name = f"{self.names[id(module)]}.{key}"
        target = self.tensors[name]
        if array.size != target.numel():
            return False
        self.tensors[name] = torch.from_numpy(np.ascontiguousarray(array, np.float32)).reshape(
            target.shape).to(target.dtype)
        return True


def _put_conv(state: _State, conv: nn.Conv2d, node: dict, values: dict[str, np.ndarray],
              folded: _BatchNorm | None) -> bool:
    """A Conv node into ``conv``. The BatchNorm the exporter folded into it (``folded``) gets identity statistics
    and the node's bias (zero when it has none) as its shift; a convolution with no BatchNorm after it has no bias."""
    weight = values.get(node["inputs"][1])
    bias = _optional_input(node, 2, values)
    if weight is None or tuple(weight.shape) != tuple(conv.weight.shape):
        return False
    if node["attrs"].get("group", 1) != conv.groups:
        return False
    if folded is None:
        return bias is None and state.put(conv, "weight", weight)
    channels = int(folded.num_features)
    return (state.put(conv, "weight", weight) and state.put(folded, "weight", np.ones(channels, np.float32))
            and state.put(folded, "running_mean", np.zeros(channels))
            and state.put(folded, "running_var", np.full(channels, 1.0 - float(folded.eps), np.float32))
            and state.put(folded, "bias", bias if bias is not None else np.zeros(channels, np.float32)))


def _put_batchnorm(state: _State, bn: _BatchNorm, node: dict, values: dict[str, np.ndarray]) -> bool:
    """A BatchNormalization node into ``bn``: scale, shift, mean and variance, with the same epsilon."""
    arrays = [values[name] for name in node["inputs"][1:5] if name in values]
    if len(arrays) != 4 or abs(node["attrs"].get("epsilon", 1e-5) - bn.eps) > 1e-7:
        return False
    return all(state.put(bn, key, array)
               for key, array in zip(("weight", "bias", "running_mean", "running_var"), arrays, strict=True))


def _put_prelu(state: _State, prelu: nn.PReLU, node: dict, values: dict[str, np.ndarray]) -> bool:
    """A PRelu node's slopes into ``prelu`` (one per channel, however the graph shapes them for broadcasting)."""
    slope = values.get(node["inputs"][1])
    return slope is not None and state.put(prelu, "weight", slope)


def _put_linear(state: _State, linear: nn.Linear, node: dict, values: dict[str, np.ndarray]) -> bool:
    """A Gemm or MatMul node into ``linear``: ONNX stores the weight as (in, out) unless Gemm says ``transB``."""
    weight = values.get(node["inputs"][1])
    if weight is None:
        return False
    if node["op"] == "MatMul" or not node["attrs"].get("transB", 0):
        weight = weight.T
    bias = _optional_input(node, 2, values)
    if tuple(weight.shape) != tuple(linear.weight.shape) or (bias is None) != (linear.bias is None):
        return False
    return state.put(linear, "weight", weight) and (bias is None or state.put(linear, "bias", bias))


def map_weights(model: nn.Module, nodes: list[dict], values: dict[str, np.ndarray]) -> dict[str, torch.Tensor] | None:
    """The state dict that makes ``model`` compute the graph, or None when the two do not match layer for layer."""
    layers = _layers(model)
    by_kind = _nodes_by_kind(nodes)
    if [len(by_kind[kind]) for kind in _WEIGHT_KINDS] != layers.counts():
        return None
    state = _State(model)
    mapped = (
        all(_put_conv(state, conv, node, values, layers.folded.get(id(conv)))
            for conv, node in zip(layers.convs, by_kind["Conv"], strict=True))
        and all(_put_batchnorm(state, bn, node, values)
                for bn, node in zip(layers.batchnorms, by_kind["BatchNormalization"], strict=True))
        and all(_put_prelu(state, prelu, node, values)
                for prelu, node in zip(layers.prelus, by_kind["PRelu"], strict=True))
        and all(_put_linear(state, linear, node, values)
                for linear, node in zip(layers.linears, by_kind["Linear"], strict=True))
    )
    return state.tensors if mapped else None


def load_facecli_backbone(spec: dict[str, Any], state: dict[str, torch.Tensor], meta: dict[str, str],
                          embedding_size: int) -> tuple[nn.Module, dict[str, Any]] | None:
    """A facecli backbone computing the graph ``spec`` (weights in ``state``, as
    :func:`facecli.onnxtorch.graph_spec` returns them), or None when the graph is not one of facecli's
    architectures."""
    ops = [node["op"] for node in spec["nodes"]]
    if not set(ops) <= ARCHITECTURE_OPS or "Conv" not in ops:
        return None
    values = {t["name"]: state[f"t{i}"].numpy() for i, t in enumerate(spec["tensors"])}
    for node in spec["nodes"]:  # the exporter shares equal weights (e.g. fresh PReLU slopes) through Identity nodes
        if node["op"] == "Identity" and node["inputs"][0] in values:
            values[node["outputs"][0]] = values[node["inputs"][0]]
    first = next(node for node in spec["nodes"] if node["op"] == "Conv")
    first_weight = values.get(first["inputs"][1])
    if first["inputs"][0] != spec["inputs"][0] or first_weight is None:
        return None  # something (e.g. a normalisation) runs before the first convolution
    for name, options in candidates(ops, int(first_weight.shape[0]), meta):
        info = model_info(name, embedding_size, backbone_options=options or None)
        try:
            model = build_backbone(info).eval()
        except Exception:  # noqa: BLE001 - an unknown name or options in foreign metadata: not ours
            continue
        mapped = map_weights(model, spec["nodes"], values)
        if mapped is not None:
            model.load_state_dict(mapped)
            return model, info
    return None
