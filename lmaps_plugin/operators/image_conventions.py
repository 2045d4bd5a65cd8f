"""Shared helpers of the image-restoration operators: input checks and resolution scaling.

Parameter scaling rule
----------------------
The task parameters (docs/operators.md) are stated for 256×256 images. At another resolution
``r`` every *length* (kernel size, box size, margin) and every *width* (Gaussian std) is
multiplied by ``r / 256``; lengths are rounded half-up to an integer, kernel sizes to the
nearest odd integer (at least 1) so that kernels stay centred. Examples: the 61×61 blur
kernel becomes 31×31 at 128², 15×15 at 64² and 7×7 at 32²; the 128×128 inpainting box with
margin 32 becomes 32×32 with margin 8 at 64². Scale-free parameters (SR factor, dropped
fraction, phase-retrieval oversampling, motion-blur intensity) do not change.
"""
from __future__ import annotations

import math

import torch

#: The resolution at which the operator parameters are stated (docs/operators.md).
REFERENCE_RESOLUTION = 256


def scaled_length(length_at_reference: float, resolution: int, minimum: int = 1) -> int:
    """``length_at_reference · resolution / 256`` rounded half-up, at least ``minimum``."""
    value = length_at_reference * resolution / REFERENCE_RESOLUTION
    return max(minimum, int(math.floor(value + 0.5)))


def scaled_odd_size(size_at_reference: int, resolution: int) -> int:
    """The odd integer nearest to ``size_at_reference · resolution / 256`` (at least 1)."""
    value = size_at_reference * resolution / REFERENCE_RESOLUTION
    half = int(math.floor((value - 1.0) / 2.0 + 0.5))
    return 2 * max(0, half) + 1


def scaled_width(width_at_reference: float, resolution: int) -> float:
    """A continuous width (e.g. a Gaussian std) scaled by ``resolution / 256``."""
    return float(width_at_reference) * resolution / REFERENCE_RESOLUTION


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as an ``int`` or raise naming the argument."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_image_batch(x: torch.Tensor, channels: int, resolution: int | None,
                      owner: str, argument: str = "x") -> int:
    """Check that ``x`` is a ``(batch, channels, r, r)`` floating tensor; return ``r``.

    ``resolution=None`` accepts any square size. Errors name the operator and the argument.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: {argument} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{owner}: {argument} must be 4-D (batch, channels, height, width), "
                         f"got shape {tuple(x.shape)}")
    if not (x.is_floating_point() and not x.is_complex()):
        raise TypeError(f"{owner}: {argument} must be a real floating tensor, got {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{owner}: {argument} has {x.shape[1]} channels, the operator was "
                         f"built for channels={channels} (shape {tuple(x.shape)})")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{owner}: {argument} must be square, got {x.shape[-2]}×{x.shape[-1]}")
    if resolution is not None and x.shape[-1] != resolution:
        raise ValueError(f"{owner}: {argument} is {x.shape[-2]}×{x.shape[-1]} but the operator was "
                         f"built for resolution={resolution} (expected {resolution}×{resolution})")
    return int(x.shape[-1])


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (masks/kernels are drawn on the CPU)."""
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return torch.Generator(device="cpu").manual_seed(int(seed))
