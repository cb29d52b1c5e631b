"""IResNet (ArcFace's improved ResNet) with arcface_torch's exact layer layout and state-dict key names.

The same module names (``conv1``, ``bn1``, ``prelu``, ``layerN.i.{bn1,conv1,bn2,prelu,conv2,bn3,downsample}``,
``bn2``, ``fc``, ``features``) as ``insightface/recognition/arcface_torch/backbones/iresnet.py``, so the published
``backbone.pth`` files load with ``strict=True`` and ``--init`` can fine-tune them.

Block: BN → conv3x3 → BN → PReLU → conv3x3(stride) → BN, plus the (strided 1x1 conv + BN) shortcut. Neck:
BN2d → flatten → Dropout → FC(512·7·7 → E) → BatchNorm1d with its scale fixed at 1 (the "features" layer).
"""

from __future__ import annotations

import torch
from torch import nn

from facecli.nn.backbones import BACKBONES
from facecli.nn.backbones.checkpointing import Checkpointable, run_block
from facecli.nn.backbones.precision import full_precision

#: Blocks per stage, as in arcface_torch.
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """The pre-activation-style residual block of IResNet."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class IResNet(nn.Module, Checkpointable):
    """IResNet for 112x112 inputs; ``forward`` returns raw ``(B, embedding_size)`` embeddings.

    With ``grad_checkpoint`` each residual block is checkpointed in training (as arcface_torch's
    ``using_checkpoint``): activation memory of one block per stage instead of all, for a second forward pass.
    """

    fc_scale = 7 * 7

    def __init__(self, layers: tuple[int, ...], embedding_size: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-5),
        )
        layers = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = run_block(block, x, self.grad_checkpoint)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        x, fp32 = full_precision(x)
        with fp32:
            return self.features(self.fc(x))


def _register(name: str) -> None:
    @BACKBONES.register(name)
    def build(embedding_size: int = 512, dropout: float = 0.0) -> IResNet:
        return IResNet(DEPTHS[name], embedding_size=embedding_size, dropout=dropout)

    build.__doc__ = f"{name}: IResNet with {DEPTHS[name]} blocks per stage."


for _name in DEPTHS:
    _register(_name)
