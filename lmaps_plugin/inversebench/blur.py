"""InverseBench's Gaussian blur (``inverse_problems.image_restore.GaussialBlur``) applied as two 1-D convolutions.

Upstream convolves a reflection-padded image with a 61×61 kernel made by ``scipy.ndimage.gaussian_filter`` of a
centred delta: an outer product ``col ⊗ row`` of two 1-D Gaussians (to rounding), so the same map is a vertical
then a horizontal 1-D convolution of the same padded image, 2·61 instead of 61² multiply-adds per pixel. Its
gradient and adjoint come from autograd through this forward, as upstream's do through its own.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

#: a kernel is treated as separable when its second singular value is below this many rounding units of its
#: dtype times the first (a float32 Gaussian kernel: about 1e-8)
SEPARABLE_ULPS = 64


def separable_factors(kernel: Tensor, tol: float | None = None) -> tuple[Tensor, Tensor] | None:
    """``(col, row)`` (float64) with ``kernel = col ⊗ row`` when the 2-D kernel has rank one to ``tol`` (relative;
    default :data:`SEPARABLE_ULPS` rounding units of the kernel's dtype), else None."""
    if tol is None:
        dtype = kernel.dtype if torch.is_tensor(kernel) and kernel.is_floating_point() else torch.float64
        tol = SEPARABLE_ULPS * torch.finfo(dtype).eps
    matrix = torch.as_tensor(kernel, dtype=torch.float64)
    if matrix.ndim != 2:
        return None
    u, s, vh = torch.linalg.svd(matrix)
    if s[0] <= 0 or (s.numel() > 1 and s[1] > tol * s[0]):
        return None
    scale = s[0].sqrt()
    col, row = u[:, 0] * scale, vh[0] * scale
    if col.sum() < 0:
        col, row = -col, -row
    return col, row


def kernel_support(kernel: Tensor) -> tuple[slice, slice]:
    """The rows and columns of a 2-D kernel between its first and last non-zero ones (a truncated Gaussian's 61×61
    kernel is non-zero on 25×25 only)."""
    rows = torch.nonzero(kernel.abs().sum(dim=1)).flatten()
    cols = torch.nonzero(kernel.abs().sum(dim=0)).flatten()
    if rows.numel() == 0:
        return slice(0, kernel.shape[0]), slice(0, kernel.shape[1])
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def separable_blur(images: Tensor, col: Tensor, row: Tensor, size: int, support: tuple[slice, slice]) -> Tensor:
    """Reflection-pad by ``size // 2`` and cross-correlate each channel with the ``size × size`` kernel that is
    ``col ⊗ row`` on ``support`` and zero elsewhere, as two 1-D passes over the padded pixels the support reaches
    (``images``: ``(B, C, H, W)``; the output has the input's size)."""
    channels, pad = images.shape[1], size // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    (top, bottom), (left, right) = ((support[0].start, size - support[0].stop),
                                    (support[1].start, size - support[1].stop))
    padded = padded[..., top:padded.shape[-2] - bottom, left:padded.shape[-1] - right]
    vertical = col.to(images.dtype).view(1, 1, -1, 1).expand(channels, 1, col.numel(), 1)
    horizontal = row.to(images.dtype).view(1, 1, 1, -1).expand(channels, 1, 1, row.numel())
    return F.conv2d(F.conv2d(padded, vertical, groups=channels), horizontal, groups=channels)


@functools.cache
def separable_gaussian_blur_class(upstream: type) -> type:
    """A subclass of InverseBench's ``GaussialBlur`` whose ``forward`` is :func:`separable_blur` when the kernel has
    rank one (upstream's Gaussian kernels do), and upstream's 2-D convolution otherwise. ``is_linear = True``."""

    class SeparableGaussianBlur(upstream):
        is_linear = True

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            weight = self.conv.seq[1].weight.detach()[0, 0]        # the float32 kernel upstream convolves with
            self._size, self._support = weight.shape[0], kernel_support(weight)
            factors = separable_factors(weight[self._support])
            self.separable = factors is not None and weight.shape[0] == weight.shape[1]
            self._factors = None if not self.separable else tuple(f.to(weight.dtype) for f in factors)

        def forward(self, data: Tensor, **kwargs: Any) -> Tensor:
            if self._factors is None:
                return super().forward(data, **kwargs)
            col, row = (f.to(data.device) for f in self._factors)
            return separable_blur(data, col, row, self._size, self._support)

    SeparableGaussianBlur.__name__ = SeparableGaussianBlur.__qualname__ = f"Separable{upstream.__name__}"
    return SeparableGaussianBlur


__all__ = ["SEPARABLE_ULPS", "kernel_support", "separable_factors", "separable_blur", "separable_gaussian_blur_class"]
