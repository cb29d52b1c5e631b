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


def map_weights(model: nn.Module, nodes: list[dict], values: dict[str, np.ndarray]) -> dict[str, torch.Tensor] | None:
    """The state dict that makes ``model`` compute the graph, or None when the two do not match layer for layer."""
    calls = _execution_order(model)
    BatchNorm = nn.modules.batchnorm._BatchNorm
    convs = [m for m, _, _ in calls if isinstance(m, nn.Conv2d)]
    bn_after: dict[int, nn.modules.batchnorm._BatchNorm] = {}  # convolution → the BatchNorm the exporter folded into it
    folded: set[int] = set()
    for (prev, _, prev_out), (cur, cur_in, _) in zip(calls, calls[1:], strict=False):
        if isinstance(prev, nn.Conv2d) and isinstance(cur, BatchNorm) and cur_in is prev_out:
            bn_after[id(prev)] = cur
            folded.add(id(cur))
    plain_bns = [m for m, _, _ in calls if isinstance(m, BatchNorm) and id(m) not in folded]
    prelus = [m for m, _, _ in calls if isinstance(m, nn.PReLU)]
    linears = [m for m, _, _ in calls if isinstance(m, nn.Linear)]
    by_op: dict[str, list[dict]] = {}
    for node in nodes:
        by_op.setdefault("Linear" if node["op"] in ("Gemm", "MatMul") else node["op"], []).append(node)
    if [len(by_op.get(k, [])) for k in ("Conv", "BatchNormalization", "PRelu", "Linear")] != [
            len(convs), len(plain_bns), len(prelus), len(linears)]:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def put(module: nn.Module, key: str, array: np.ndarray) -> bool:
        target = state[f"{names[id(module)]}.{key}"]
        if array.size != target.numel():
            return False
        state[f"{names[id(module)]}.{key}"] = torch.from_numpy(np.ascontiguousarray(array, np.float32)).reshape(
            target.shape).to(target.dtype)
        return True

    ok = True
    for conv, node in zip(convs, by_op.get("Conv", []), strict=True):
        weight = values.get(node["inputs"][1])
        bias = values.get(node["inputs"][2]) if len(node["inputs"]) > 2 and node["inputs"][2] else None
        if weight is None or tuple(weight.shape) != tuple(conv.weight.shape) or node["attrs"].get("group", 1) != \
                conv.groups:
            return None
        ok &= put(conv, "weight", weight)
        bn = bn_after.get(id(conv))
        if bn is None:
            if bias is not None:
                return None
            continue
        channels = int(bn.num_features)
        ok &= put(bn, "weight", np.ones(channels, np.float32)) and put(bn, "running_mean", np.zeros(channels))
        ok &= put(bn, "running_var", np.full(channels, 1.0 - float(bn.eps), np.float32))
        ok &= put(bn, "bias", bias if bias is not None else np.zeros(channels, np.float32))
    for bn, node in zip(plain_bns, by_op.get("BatchNormalization", []), strict=True):
        arrays = [values[name] for name in node["inputs"][1:5] if name in values]
        if len(arrays) != 4 or abs(node["attrs"].get("epsilon", 1e-5) - bn.eps) > 1e-7:
            return None
        for key, array in zip(("weight", "bias", "running_mean", "running_var"), arrays, strict=True):
            ok &= put(bn, key, array)
    for prelu, node in zip(prelus, by_op.get("PRelu", []), strict=True):
        slope = values.get(node["inputs"][1])
        if slope is None:
            return None
        ok &= put(prelu, "weight", slope)
    for linear, node in zip(linears, by_op.get("Linear", []), strict=True):
        weight = values.get(node["inputs"][1])
        if weight is None:
            return None
        if node["op"] == "MatMul" or not node["attrs"].get("transB", 0):
            weight = weight.T
        ok &= tuple(weight.shape) == tuple(linear.weight.shape) and put(linear, "weight", weight)
        bias = values.get(node["inputs"][2]) if len(node["inputs"]) > 2 and node["inputs"][2] else None
        if (bias is None) != (linear.bias is None):
            return None
        if bias is not None:
            ok &= put(linear, "bias", bias)
    return state if ok else None


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
