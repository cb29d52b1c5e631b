"""arcface_torch's Vision Transformers (``vit_t``, ``vit_s``, ``vit_b``) with its parameter names and shapes.

The layout of ``insightface/recognition/arcface_torch/backbones/vit.py``, so its ``backbone.pth`` files load with
``strict=True`` (and ``--init`` fine-tunes them): a 9x9/stride-9 patch convolution (``patch_embed.proj``) turns a
112x112 face into 12x12 = 144 tokens, plus a learned ``pos_embed`` (no class token); ``blocks.i`` are pre-norm
transformer blocks (``norm1``, ``attn.qkv`` without bias, ``attn.proj``, ``norm2``, ``mlp.fc1``/``mlp.fc2`` with
ReLU6); ``norm`` is the final LayerNorm; ``feature`` flattens all 144 tokens into Linear → BatchNorm1d → Linear →
BatchNorm1d (no biases on the Linears, eps 2e-5).

Training regularisers, as arcface_torch uses them: stochastic depth (``drop_path_rate``, rising linearly over the
blocks) and random token masking (``mask_ratio`` of the tokens skip the blocks and come back as the learned
``mask_token`` before the feature head). Both are off in eval mode, so exports and embeddings are deterministic.

Attention runs through ``scaled_dot_product_attention`` (flash/memory-efficient kernels on GPUs, which
accumulate the softmax in float32 as arcface_torch's explicit float32 attention does); the feature head runs in
float32 under autocast like every facecli backbone's embedding layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facecli.nn.backbones import BACKBONES
from facecli.nn.backbones.checkpointing import Checkpointable, run_block
from facecli.nn.backbones.precision import full_precision

#: name → (embedding width, depth, heads), arcface_torch's ``get_model`` settings (patch 9, 112x112 input).
VIT_SIZES: dict[str, tuple[int, int, int]] = {"vit_t": (256, 12, 8), "vit_s": (512, 12, 8), "vit_b": (512, 24, 8)}
PATCH = 9
IMAGE = 112


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a random subset of the samples."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, width)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, width * 3, bias=False)
        self.proj = nn.Linear(width, width)
        self.attn_dropout = float(dropout)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, width)))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)), each with stochastic depth."""

    def __init__(self, width: int, heads: int, drop_path: float, dropout: float, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module, Checkpointable):
    """ViT for 112x112 faces; ``forward`` returns raw ``(B, embedding_size)`` embeddings."""

    def __init__(self, width: int, depth: int, heads: int, embedding_size: int = 512, dropout: float = 0.0,
                 drop_path_rate: float = 0.1, mask_ratio: float = 0.1) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.num_patches = (IMAGE // PATCH) ** 2
        self.mask_ratio = float(mask_ratio)
        self.patch_embed = PatchEmbed(width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, width))
        self.pos_drop = nn.Dropout(dropout)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # 0 .. drop_path_rate
        self.blocks = nn.ModuleList(Block(width, heads, rate, dropout) for rate in rates)
        self.norm = nn.LayerNorm(width)
        self.feature = nn.Sequential(
            nn.Linear(width * self.num_patches, width, bias=False),
            nn.BatchNorm1d(width, eps=2e-5),
            nn.Linear(width, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _keep_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random ``1 - mask_ratio`` of each sample's tokens, and each sample's token order that restores them."""
        batch, tokens, width = x.shape
        keep = int(tokens * (1.0 - self.mask_ratio))
        order = torch.rand(batch, tokens, device=x.device).argsort(dim=1)
        kept = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, width))
        return kept, order.argsort(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, restore = self._keep_tokens(x)
        for block in self.blocks:
            x = run_block(block, x, self.grad_checkpoint)
        x = self.norm(x.float())
        if masking:  # masked tokens return as the learned mask token, in their original places
            fill = self.mask_token.to(x.dtype).expand(x.shape[0], self.num_patches - x.shape[1], -1)
            x = torch.gather(torch.cat([x, fill], dim=1), 1, restore[:, :, None].expand(-1, -1, x.shape[2]))
        x, fp32 = full_precision(x.flatten(1))
        with fp32:
            return self.feature(x)


def _register(name: str) -> None:
    width, depth, heads = VIT_SIZES[name]

    @BACKBONES.register(name)
    def build(embedding_size: int = 512, dropout: float = 0.0, drop_path_rate: float = 0.1,
              mask_ratio: float = 0.1) -> VisionTransformer:
        return VisionTransformer(width, depth, heads, embedding_size=embedding_size, dropout=dropout,
                                 drop_path_rate=float(drop_path_rate), mask_ratio=float(mask_ratio))

    build.__doc__ = (f"{name}: arcface_torch's ViT, width {width}, {depth} blocks, {heads} heads, 9x9 patches "
                     "(options drop_path_rate=0.1, mask_ratio=0.1).")


for _name in VIT_SIZES:
    _register(_name)
