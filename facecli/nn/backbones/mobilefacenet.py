"""MobileFaceNet as arcface_torch defines it (``backbones/mobilefacenet.py``: ``get_mbf``), same key names.

A depthwise-separable body (width ``scale`` × 64/128 channels) ending in ``conv_sep`` (1x1 to 512) and the GDC
neck: a 7x7 depthwise "global depthwise convolution" + BN, flatten, FC without bias, BatchNorm1d. The neck runs in
float32 under autocast, as arcface_torch does with ``fp16=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from facecli.nn.backbones import BACKBONES
from facecli.nn.backbones.precision import full_precision

Pair = tuple[int, int]


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class ConvBlock(nn.Module):
    """Conv → BN → PReLU."""

    def __init__(self, in_c: int, out_c: int, kernel: Pair = (1, 1), stride: Pair = (1, 1),
                 padding: Pair = (0, 0), groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, groups=groups, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(num_features=out_c),
            nn.PReLU(num_parameters=out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv → BN (no activation)."""

    def __init__(self, in_c: int, out_c: int, kernel: Pair = (1, 1), stride: Pair = (1, 1),
                 padding: Pair = (0, 0), groups: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(num_features=out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` channels, depthwise conv, 1x1 project; optional residual."""

    def __init__(self, in_c: int, out_c: int, residual: bool = False, kernel: Pair = (3, 3), stride: Pair = (2, 2),
                 padding: Pair = (1, 1), groups: int = 1) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
            ConvBlock(groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride),
            LinearBlock(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    def __init__(self, c: int, num_block: int, groups: int, kernel: Pair = (3, 3), stride: Pair = (1, 1),
                 padding: Pair = (1, 1)) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, kernel, stride, padding, groups) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution neck: 512x7x7 → embedding."""

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, groups=512, kernel=(7, 7), stride=(1, 1), padding=(0, 0)),
            Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_size: int = 512, blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
                 scale: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ConvBlock(3, 64 * scale, kernel=(3, 3), stride=(2, 2), padding=(1, 1))])
        if blocks[0] == 1:
            self.layers.append(
                ConvBlock(64 * scale, 64 * scale, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64)
            )
        else:
            self.layers.append(Residual(64 * scale, num_block=blocks[0], groups=128))
        self.layers.extend([
            DepthWise(64 * scale, 64 * scale, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128),
            Residual(64 * scale, num_block=blocks[1], groups=128),
            DepthWise(64 * scale, 128 * scale, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256),
            Residual(128 * scale, num_block=blocks[2], groups=256),
            DepthWise(128 * scale, 128 * scale, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512),
            Residual(128 * scale, num_block=blocks[3], groups=256),
        ])
        self.conv_sep = ConvBlock(128 * scale, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.features = GDC(embedding_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        x, fp32 = full_precision(x)
        with fp32:
            return self.features(self.conv_sep(x))


@BACKBONES.register("mobilefacenet")
def mobilefacenet(embedding_size: int = 512, dropout: float = 0.0, blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
                  scale: int = 2) -> MobileFaceNet:
    """arcface_torch's ``mbf``: blocks (1, 4, 6, 2), width scale 2 (the GDC neck has no dropout layer).

    ``blocks=[1, 1, 1, 1], scale=1`` (``model.backbone_options``) gives a 0.5M-parameter network for CPU smoke runs.
    """
    if dropout:
        raise ValueError("mobilefacenet's GDC neck has no dropout; leave model.dropout at 0")
    first, second, third, fourth = blocks  # a list from a config file, or a tuple
    return MobileFaceNet(embedding_size=embedding_size, blocks=(first, second, third, fourth), scale=int(scale))


@BACKBONES.register("mobilefacenet-large")
def mobilefacenet_large(embedding_size: int = 512, dropout: float = 0.0) -> MobileFaceNet:
    """arcface_torch's ``mbf_large``: blocks (2, 8, 12, 4), width scale 4."""
    return mobilefacenet(embedding_size, dropout, blocks=(2, 8, 12, 4), scale=4)
