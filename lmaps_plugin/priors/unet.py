"""A small UNet for 64×64-ish images, the network inside the embedded EDM priors.

The network maps ``(x_in, c_noise) -> F`` where ``x_in = c_in·x`` and ``c_noise = ln(σ)/4`` come from
:class:`lmaps_plugin.priors.edm.EDMPrecond`; it knows nothing about σ otherwise. Architecture (all sizes are
constructor arguments, so a checkpoint stores them as plain JSON): a Fourier embedding of ``c_noise`` feeding an MLP,
residual blocks with adaptive group-norm (scale/shift from the noise embedding), average-pool downsampling,
nearest-neighbour upsampling, skip connections by concatenation, and single-head self-attention at the coarsest
resolutions listed in ``attn_resolutions``. Output convolutions are zero-initialised, so an untrained network is the
EDM skip connection alone.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def _group_norm(channels: int) -> nn.GroupNorm:
    """Group norm with up to 8 groups that divide ``channels``."""
    groups = math.gcd(8, channels)
    return nn.GroupNorm(groups, channels, eps=1e-5)


def _zero_init(module: nn.Module) -> nn.Module:
    """Set a layer's weights and bias to zero (the block starts as the identity / skip path)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class FourierNoiseEmbedding(nn.Module):
    """Sinusoidal features of the scalar noise label ``c_noise`` at fixed, log-spaced frequencies.

    ``c_noise = ln(σ)/4`` spans about [-2, 1.5] for σ in [0.002, 80]; frequencies from ``min_freq`` to ``max_freq``
    (angular, per unit of ``c_noise``) resolve that range both coarsely and finely.
    """

    def __init__(self, dim: int, min_freq: float = 0.5, max_freq: float = 64.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """Pre-activation residual block; the noise embedding modulates the second norm (scale and shift)."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int):
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = _group_norm(out_ch)
        self.conv2 = _zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return (h + self.skip(x)) / math.sqrt(2)


class SelfAttention(nn.Module):
    """Single-head self-attention over spatial positions, residual, zero-initialised output projection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, hw, c)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) / math.sqrt(2)


class SmallUNet(nn.Module):
    """UNet ``F(x_in, c_noise)`` with ``len(channel_mult)`` resolution levels.

    Args:
        img_channels: image channels in and out.
        img_resolution: square image side; must be divisible by ``2**(len(channel_mult)-1)``.
        model_channels: channels at full resolution.
        channel_mult: channel multiplier per level (level ``l`` runs at ``img_resolution / (patch_size·2**l)``).
        num_blocks: residual blocks per level in the encoder (the decoder uses the same number).
        attn_resolutions: feature-map sides (after the stem) that get a self-attention layer after each block;
            the middle block always has one.
        emb_channels: width of the noise embedding MLP (default ``4·model_channels``).
        patch_size: space-to-depth factor of the stem (``pixel_unshuffle``); the UNet then runs at
            ``img_resolution / patch_size`` and ``pixel_shuffle`` restores full resolution at the end. 2 cuts the
            cost of the full-resolution layers by 4 (what makes CPU training of the shipped priors affordable).
    """

    def __init__(self, img_channels: int = 1, img_resolution: int = 64, model_channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2, 2), num_blocks: int = 1,
                 attn_resolutions: tuple[int, ...] = (16,), emb_channels: int | None = None,
                 patch_size: int = 1):
        super().__init__()
        if img_channels < 1:
            raise ValueError(f"img_channels must be >= 1, got {img_channels}")
        if not channel_mult or any(int(m) < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {channel_mult}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        factor = patch_size * 2 ** (len(channel_mult) - 1)
        if img_resolution % factor:
            raise ValueError(f"img_resolution={img_resolution} must be divisible by {factor} "
                             f"(patch_size={patch_size}, {len(channel_mult)} levels, "
                             f"channel_mult={tuple(channel_mult)})")
        emb_channels = emb_channels or 4 * model_channels
        self.img_channels = img_channels
        self.img_resolution = img_resolution
        self.config = dict(img_channels=img_channels, img_resolution=img_resolution,
                           model_channels=model_channels, channel_mult=[int(m) for m in channel_mult],
                           num_blocks=num_blocks, attn_resolutions=[int(r) for r in attn_resolutions],
                           emb_channels=emb_channels, patch_size=patch_size)
        self.patch_size = patch_size

        self.noise_embed = nn.Sequential(FourierNoiseEmbedding(model_channels),
                                         nn.Linear(model_channels, emb_channels), nn.SiLU(),
                                         nn.Linear(emb_channels, emb_channels), nn.SiLU())
        self.conv_in = nn.Conv2d(img_channels * patch_size ** 2, model_channels, 3, padding=1)

        widths = [model_channels * int(m) for m in channel_mult]
        self.enc = nn.ModuleList()
        skip_widths = []
        ch, res = model_channels, img_resolution // patch_size
        for level, width in enumerate(widths):
            for _ in range(num_blocks):
                self.enc.append(self._block(ch, width, emb_channels, res in attn_resolutions))
                ch = width
                skip_widths.append(ch)
            if level < len(widths) - 1:
                self.enc.append(nn.AvgPool2d(2))
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_channels), SelfAttention(ch), ResBlock(ch, ch, emb_channels)])
        self.dec = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(num_blocks):
                self.dec.append(self._block(ch + skip_widths.pop(), widths[level], emb_channels,
                                            res in attn_resolutions))
                ch = widths[level]
            if level > 0:
                self.dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
                res *= 2
        out_conv = nn.Conv2d(ch, img_channels * patch_size ** 2, 3, padding=1)
        self.out = nn.Sequential(_group_norm(ch), nn.SiLU(), _zero_init(out_conv))

    @staticmethod
    def _block(in_ch: int, out_ch: int, emb_ch: int, attention: bool) -> nn.ModuleList:
        layers = [ResBlock(in_ch, out_ch, emb_ch)]
        if attention:
            layers.append(SelfAttention(out_ch))
        return nn.ModuleList(layers)

    @staticmethod
    def _run_block(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, H, W) preconditioned input; ``c_noise``: (B,) or scalar noise labels."""
        c_noise = c_noise.reshape(-1).expand(x.shape[0]) if c_noise.numel() == 1 else c_noise.reshape(-1)
        emb = self.noise_embed(c_noise)
        h = self.conv_in(F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x)
        skips = []
        for layer in self.enc:
            if isinstance(layer, nn.ModuleList):
                h = self._run_block(layer, h, emb)
                skips.append(h)
            else:
                h = layer(h)
        h = self.mid[0](h, emb)
        h = self.mid[1](h)
        h = self.mid[2](h, emb)
        for layer in self.dec:
            if isinstance(layer, nn.ModuleList):
                h = self._run_block(layer, torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        h = self.out(h)
        return F.pixel_shuffle(h, self.patch_size) if self.patch_size > 1 else h
