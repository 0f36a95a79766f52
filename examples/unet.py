"""A compact U-Net for consistency training on small images (CIFAR-10, MNIST), written for reading.

The layout follows the DDPM++ family used by EDM / ECT, reduced to its essentials: a sinusoidal embedding of
the noise label feeds every residual block (scale and shift after the second GroupNorm), dropout sits inside
the blocks, self-attention runs at the resolutions listed in ``attention``, and the output convolution starts
at zero so the preconditioned denoiser begins as D(x, sigma) = c_skip(sigma) x.

    >>> net = UNet(in_channels=3, channels=32, channel_mult=(1, 2), num_blocks=1)
    >>> net(torch.zeros(2, 3, 32, 32), torch.zeros(2)).shape
    torch.Size([2, 3, 32, 32])

``build_network("diffusers", ...)`` returns diffusers' ``UNet2DModel`` behind the same call signature when
the ``diffusers`` package is installed.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "DiffusersUNet", "build_network"]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels, eps=1e-6)


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the scalar noise label c_noise, then a two-layer MLP."""

    def __init__(self, channels: int, out_channels: int, max_period: float = 10_000.0):
        super().__init__()
        half = channels // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, out_channels), nn.SiLU(), nn.Linear(out_channels, out_channels))

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = c_noise.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return (self.skip(x) + h) / math.sqrt(2)


class Attention(nn.Module):
    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return (x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))) / math.sqrt(2)


class UNet(nn.Module):
    """U-Net F(x, c_noise) -> (N, C, H, W) for the EDM / ECT preconditioned denoiser.

    Args:
        in_channels: image channels (3 for CIFAR-10, 1 for MNIST); the output has the same number.
        channels: width of the first level.
        channel_mult: width multiplier of each level; the image is halved between levels (H and W must be
            divisible by 2^(levels - 1)).
        num_blocks: residual blocks per level on the way down (one more on the way up).
        attention: resolutions (e.g. ``(16,)``) at which a self-attention layer follows each block.
        dropout: dropout probability inside residual blocks (ECT on CIFAR-10: 0.2).
        resolution: input size, used to place attention layers.

    Shape:
        x: (N, in_channels, H, W); c_noise: (N,); output like x.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 2,
        attention: Sequence[int] = (16,),
        dropout: float = 0.1,
        resolution: int = 32,
    ):
        super().__init__()
        emb_ch = 4 * channels
        self.embed = NoiseEmbedding(channels, emb_ch)
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down, skips, ch, res = nn.ModuleList(), [channels], channels, resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.down.append(self._block(ch, channels * mult, emb_ch, dropout, res in attention))
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([self._block(ch, ch, emb_ch, dropout, True), self._block(ch, ch, emb_ch, dropout, False)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.up.append(self._block(ch + skips.pop(), channels * mult, emb_ch, dropout, res in attention))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        self.head = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @staticmethod
    def _block(in_ch: int, out_ch: int, emb_ch: int, dropout: float, attend: bool) -> nn.ModuleList:
        layers = [ResBlock(in_ch, out_ch, emb_ch, dropout)]
        if attend:
            layers.append(Attention(out_ch))
        return nn.ModuleList(layers)

    @staticmethod
    def _run(block: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if isinstance(block, nn.ModuleList):
            h = block[0](h, emb)
            for layer in block[1:]:
                h = layer(h)
            return h
        return block(h)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.embed(c_noise)
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            skips.append(h)
        for block in self.mid:
            h = self._run(block, h, emb)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(block, h, emb)
        return self.head(h)


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` called as F(x, c_noise) (optional dependency: ``pip install diffusers``)."""

    def __init__(self, in_channels: int, channels: int, channel_mult: Sequence[int], num_blocks: int,
                 dropout: float, resolution: int):
        super().__init__()
        try:
            from diffusers import UNet2DModel
        except ImportError as err:
            raise ImportError("--arch diffusers needs the diffusers package: pip install diffusers") from err
        levels = len(channel_mult)
        self.net = UNet2DModel(
            sample_size=resolution, in_channels=in_channels, out_channels=in_channels, layers_per_block=num_blocks,
            block_out_channels=tuple(channels * m for m in channel_mult), dropout=dropout,
            down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
            up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
            norm_num_groups=min(32, channels // 4),
        )

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        return self.net(x, c_noise).sample


def build_network(arch: str, **kwargs) -> nn.Module:
    """``"unet"`` (this file's U-Net) or ``"diffusers"`` (diffusers' UNet2DModel), with UNet's keyword arguments.

    Raises:
        ValueError: unknown arch. ImportError: ``"diffusers"`` without the package.
    """
    if arch == "unet":
        return UNet(**kwargs)
    if arch == "diffusers":
        kwargs.pop("attention", None)
        return DiffusersUNet(**kwargs)
    raise ValueError(f"unknown network {arch!r}; choose 'unet' or 'diffusers'")
