"""Fine-tuning a pretrained backbone (``--init``) on a few hundred or thousand images: the defaults and why.

A pretrained face model already separates millions of people; a small data set can only nudge it. Training it
like a new network (SGD at 0.1, every layer, BatchNorm on batch statistics) destroys what it knew: measured on
the pretrained MobileFaceNet, SGD at 1e-2 cost 7–10 points of full-resolution accuracy (benchmarks/README.md).
So when ``--init`` is given and the user does not say otherwise:

- ``model.freeze_backbone_steps = 50``: the new classification head (class centres for *these* people, random at
  first) trains alone on the frozen backbone first, so its random gradients never reach the pretrained weights;
- ``model.unfreeze = 0.3``: only the last ~30% of the backbone's parameters train (on MobileFaceNet: the 7x7
  stage and the embedding layers); the early layers' generic features stay as they are;
- ``optim.name = adamw``, ``optim.lr = 1e-3`` for the head and ``model.backbone_lr_scale = 0.05`` (backbone
  5e-5): a small, per-parameter-scaled step, in the range that helped in the measurements;
- ``schedule.name = cosine``: the steps shrink smoothly to zero at the end;
- ``model.batchnorm = frozen``: BatchNorm layers keep the statistics of the original training set (batch
  statistics of 32 faces of a few people are noisy and would shift every layer after them; an imported ONNX
  graph has its BatchNorm folded or fixed anyway);
- ``model.distill = 4``: 4 x mean(1 - cos) between the embedding of the (augmented) training image and the
  original model's embedding of the clean image. With ``--augment lowres`` it teaches the network to map a small
  face to where the original model puts the sharp one, and it keeps the embedding space near the original.
  Measured on the LFW-sample split of ``benchmarks/bench_finetune.py`` (300 steps): 16 px accuracy +3.5 points
  with it, +2.6 without; 24 px +1.9 and +1.1; full resolution -0.3 either way.

Every one of these is an ordinary config key, overridable on the command line or in a config file.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from facecli.nn.backbones.onnx_graph import ImportedBackbone

#: The config values ``--init`` implies unless the user set them (the module docstring gives the reasons).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "model.freeze_backbone_steps": 50,
    "model.unfreeze": 0.3,
    "model.backbone_lr_scale": 0.05,
    "model.batchnorm": "frozen",
    "optim.name": "adamw",
    "optim.lr": 1e-3,
    "schedule.name": "cosine",
    "model.distill": 4.0,
}


def apply_finetune_defaults(cfg: Any, given: set[str]) -> None:
    """Set every :data:`FINETUNE_DEFAULTS` key that no config layer gave (``given`` holds the dotted keys)."""
    for key, value in FINETUNE_DEFAULTS.items():
        if key in given:
            continue
        section, leaf = key.split(".")
        setattr(getattr(cfg, section), leaf, value)


def backbone_layers(backbone: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters grouped by layer, in execution order.

    An imported ONNX graph knows its node order (``parameter_layers()``); facecli's own backbones register their
    modules in the order they run, so the modules that own parameters directly are the layers.
    """
    if isinstance(backbone, ImportedBackbone):
        return backbone.parameter_layers()
    return [params for module in backbone.modules() if (params := list(module.parameters(recurse=False)))]


def unfreeze_last(backbone: nn.Module, fraction: float) -> tuple[int, int]:
    """Train only the last layers holding ``fraction`` of the parameters (at least one layer); freeze the rest.

    Parameters that were not trainable to begin with (e.g. IResNet's fixed ``features`` scale) stay frozen.
    Returns ``(trainable, total)`` parameter counts.
    """
    layers = backbone_layers(backbone)
    total = sum(p.numel() for layer in layers for p in layer)
    if fraction >= 1.0:
        return sum(p.numel() for p in backbone.parameters() if p.requires_grad), total
    budget, used, cut = fraction * total, 0, len(layers)
    for index in range(len(layers) - 1, -1, -1):
        size = sum(p.numel() for p in layers[index])
        if used + size > budget and cut < len(layers):
            break
        used += size
        cut = index
    trainable = 0
    for index, layer in enumerate(layers):
        for p in layer:
            p.requires_grad_(p.requires_grad and index >= cut)
            trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def freeze_batchnorm(backbone: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: normalise with, and keep, its running statistics."""
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
