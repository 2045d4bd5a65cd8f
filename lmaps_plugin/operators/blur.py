"""Blurs (docs/operators.md): Gaussian and motion deblurring, as convolutions with reflect padding whose adjoint is
exact, computed by FFT or, for separable kernels, by two banded matrices whose Kronecker eigenbasis diagonalises HᵀH.

Kernels are drawn once per operator (seeded CPU ``torch.Generator``) for the first resolution seen or the one given;
sizes for 256² scale to other resolutions by the rule of :mod:`lmaps_plugin.operators.image_conventions`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import GramEigenbasis
from .image_conventions import check_positive_int, scaled_odd_size, scaled_width, seeded_generator
from .linear import ImageLinearOperator, cached_per_device, cast_like, fast_fft_length, kronecker_gram_eigenbasis

__all__ = ["KernelBlur", "GaussianBlur", "MotionBlur", "gaussian_kernel", "motion_blur_kernel", "reflect_pad_adjoint",
           "reflect_blur_matrix", "rank_one_factors"]


# ---------------------------------------------------------------------------------------
# Blur with reflection padding (FFT convolution, exact adjoint)
# ---------------------------------------------------------------------------------------
def gaussian_kernel(size: int, std: float) -> torch.Tensor:
    """A ``size × size`` float64 Gaussian sampled at integer offsets and normalized to sum 1."""
    size = check_positive_int(size, "kernel_size")
    if size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {size}")
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-0.5 * (offsets / std) ** 2)
    kernel = torch.outer(g, g)
    return kernel / kernel.sum()


def _splat_bilinear(points: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear splatting of ``points`` ((n, 2) pixel coordinates, row/col) onto a grid."""
    grid = torch.zeros(size, size, dtype=torch.float64)
    base = points.floor()
    frac = points - base
    base = base.long()
    for di in (0, 1):
        for dj in (0, 1):
            wi = frac[:, 0] if di else 1.0 - frac[:, 0]
            wj = frac[:, 1] if dj else 1.0 - frac[:, 1]
            rows = (base[:, 0] + di).clamp(0, size - 1)
            cols = (base[:, 1] + dj).clamp(0, size - 1)
            grid.index_put_((rows, cols), wi * wj, accumulate=True)
    return grid


def motion_blur_kernel(size: int, intensity: float = 0.5, seed: int = 0,
                       nodes: int = 64) -> torch.Tensor:
    """A seeded random camera-shake kernel (``size × size``, float64, non-negative, sum 1).

    The trajectory is a random walk in the plane with momentum, drawn in resolution-free
    units so the same ``seed`` gives the same shape at every kernel size:

    * ``nodes`` unit steps; the heading turns by ``N(0, (π·intensity/√nodes)²)`` per step
      (total drift of ≈ ``π·intensity`` radians), and with probability ``intensity/10`` per
      step an impulsive jerk turns it by a uniform angle in ``[-π·intensity, π·intensity]``;
    * step lengths are ``|1 + intensity·N(0, 1)|`` (speed changes, pauses);
    * the path is centred on its bounding box and scaled so that its larger half-extent is
      ``(0.5 + 0.5·intensity)`` of the kernel radius ``(size − 1)/2``;
    * it is densified to ``8·size`` points per node span (by linear interpolation) and
      splatted bilinearly, then normalized to sum 1.

    ``intensity ∈ [0, 1]``: 0 gives a straight line over half the kernel, 1 a long, jerky
    path. (Written for this project after the random-trajectory model of Boracchi & Foi,
    2012; the peers' ``motionblur`` package is not on PyPI, so kernels are not bit-identical
    to theirs.)
    """
    size = check_positive_int(size, "kernel_size")
    if size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {size}")
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity must be in [0, 1], got {intensity}")
    if size == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    gen = seeded_generator(seed)
    heading0 = 2 * math.pi * torch.rand((), generator=gen, dtype=torch.float64)
    turns = torch.randn(nodes, generator=gen, dtype=torch.float64) * (
        math.pi * intensity / math.sqrt(nodes))
    jerks = torch.rand(nodes, generator=gen, dtype=torch.float64) < intensity / 10.0
    jerk_angles = (2 * torch.rand(nodes, generator=gen, dtype=torch.float64) - 1) * (
        math.pi * intensity)
    turns = turns + jerks.to(torch.float64) * jerk_angles
    lengths = (1.0 + intensity * torch.randn(nodes, generator=gen, dtype=torch.float64)).abs()
    heading = heading0 + torch.cumsum(turns, 0)
    steps = torch.stack([lengths * torch.sin(heading), lengths * torch.cos(heading)], dim=1)
    path = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.cumsum(steps, 0)], 0)
    lo, hi = path.min(0).values, path.max(0).values
    path = path - (lo + hi) / 2
    half_extent = (hi - lo).max() / 2
    radius = (size - 1) / 2
    scale = (0.5 + 0.5 * intensity) * radius / half_extent.clamp_min(1e-12)
    path = path * scale + radius
    # densify: linear interpolation between consecutive nodes
    per_span = 8 * size
    t = torch.arange(per_span, dtype=torch.float64) / per_span
    dense = path[:-1, None, :] + t[None, :, None] * (path[1:] - path[:-1])[:, None, :]
    dense = torch.cat([dense.reshape(-1, 2), path[-1:]], 0)
    kernel = _splat_bilinear(dense, size)
    return kernel / kernel.sum()


def reflect_pad_adjoint(z: torch.Tensor, pad: int) -> torch.Tensor:
    """The transpose of ``F.pad(x, (pad,)*4, mode='reflect')`` on the last two dimensions.

    Reflection padding copies ``x[m]`` (``1 ≤ m ≤ pad``) to both its own place and the mirrored
    margin; the transpose keeps the centre and adds each margin back onto its source pixels.
    """
    if pad == 0:
        return z
    for dim in (-2, -1):
        n = z.shape[dim] - 2 * pad
        centre = z.narrow(dim, pad, n).clone()
        left = z.narrow(dim, 0, pad).flip(dim)
        right = z.narrow(dim, pad + n, pad).flip(dim)
        centre.narrow(dim, 1, pad).add_(left)
        centre.narrow(dim, n - 1 - pad, pad).add_(right)
        z = centre
    return z


def reflect_blur_matrix(taps: torch.Tensor, n: int) -> torch.Tensor:
    """The ``(n, n)`` float64 matrix of 1-D reflection padding then cross-correlation with
    ``taps`` (odd length ``2p + 1``, ``p < n``), output cropped to ``n`` samples."""
    pad = taps.shape[-1] // 2
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]
    padded = F.pad(eye, (pad, pad), mode="reflect") if pad else eye
    taps = taps.detach().to(device="cpu", dtype=torch.float64)
    return F.conv1d(padded, taps[None, None]).squeeze(1).T.contiguous()


def rank_one_factors(kernel: torch.Tensor, rtol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(u, v)`` with ``kernel = outer(u, v)`` when the float64 kernel has rank one (to ``rtol``
    relative singular-value size), else None."""
    u, s, vh = torch.linalg.svd(kernel.detach().to(device="cpu", dtype=torch.float64))
    if s.numel() > 1 and s[1] > rtol * s[0]:
        return None
    root = s[0].sqrt()
    return u[:, 0] * root, vh[0] * root


class KernelBlur(ImageLinearOperator):
    """``y = k ⋆ pad_reflect(x)``: per-channel 2-D cross-correlation with a fixed odd kernel,
    output the size of the input (``F.conv2d`` on a reflection-padded image, as the peers).

    Two exact evaluations, chosen once per kernel:

    * rank-one (separable, e.g. Gaussian) kernels ``k = u vᵀ``: reflection padding is
      separable too, so ``H X = A_u X A_vᵀ`` with the ``r × r`` matrices of 1-D padding and
      correlation (:func:`reflect_blur_matrix`); two small matrix products per channel, and
      HᵀH has the Kronecker eigenbasis of :func:`kronecker_gram_eigenbasis`;
    * any other kernel: FFTs of a 5-smooth size ``≥ r + 2p`` (``p`` = kernel radius), exact
      since no wrap-around reaches the kept outputs, with the kernel spectrum cached. The
      adjoint is the full convolution with ``k`` followed by :func:`reflect_pad_adjoint`.

    Subclasses set ``self.kernel`` (float64, odd square, ``radius < resolution``) in ``_setup``
    and call ``_check_kernel``.
    """

    kernel: torch.Tensor

    def _check_kernel(self, resolution: int) -> None:
        size = self.kernel.shape[-1]
        if size // 2 >= resolution:
            raise ValueError(f"{type(self).__name__}: kernel_size={size} is too large for "
                             f"resolution={resolution} (reflection padding needs "
                             f"kernel_size < 2·resolution + 1)")
        self.__dict__.pop("_like_cache", None)
        factors = rank_one_factors(self.kernel)
        self.separable_matrices = None if factors is None else tuple(
            reflect_blur_matrix(taps, resolution) for taps in factors)

    def _fft_length(self, n: int) -> int:
        return fast_fft_length(n + 2 * (self.kernel.shape[-1] // 2))

    def _kernel_spectrum(self, like: torch.Tensor, length: int) -> torch.Tensor:
        return cached_per_device(self, ("spectrum", length), like, lambda: torch.fft.rfft2(
            cast_like(self.kernel, like), s=(length, length)))

    def _separable(self, like: torch.Tensor):
        def make():
            rows, cols = (cast_like(m, like) for m in self.separable_matrices)
            return rows, rows.T.contiguous(), cols, cols.T.contiguous()
        return cached_per_device(self, "separable", like, make)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.separable_matrices is not None:
            rows, _, _, cols_t = self._separable(x)
            return torch.matmul(torch.matmul(rows, x), cols_t)
        pad = self.kernel.shape[-1] // 2
        n = x.shape[-1]
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
        length = self._fft_length(n)
        spectrum = torch.fft.rfft2(padded, s=(length, length)) * self._kernel_spectrum(x, length).conj()
        return torch.fft.irfft2(spectrum, s=(length, length))[..., :n, :n]

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if self.separable_matrices is not None:
            _, rows_t, cols, _ = self._separable(y)
            return torch.matmul(torch.matmul(rows_t, y), cols)
        pad = self.kernel.shape[-1] // 2
        padded_length = y.shape[-1] + 2 * pad
        length = self._fft_length(y.shape[-1])
        spectrum = torch.fft.rfft2(y, s=(length, length)) * self._kernel_spectrum(y, length)
        full = torch.fft.irfft2(spectrum, s=(length, length))[..., :padded_length, :padded_length]
        return reflect_pad_adjoint(full, pad)

    def gram_eigenbasis(self, like: torch.Tensor) -> GramEigenbasis | None:
        """The Kronecker eigenbasis for separable kernels; None for the others."""
        if self.resolution is None or self.separable_matrices is None:
            return None
        return cached_per_device(self, "eigenbasis", like,
                       lambda: kronecker_gram_eigenbasis(*self.separable_matrices, like))


class GaussianBlur(KernelBlur):
    """Gaussian deblurring: 61×61 kernel, std 3.0 at 256² (scaled with the resolution), with
    reflection padding. ``kernel_size`` / ``std`` override the scaled defaults.

    The kernel is the Gaussian sampled on the full ``kernel_size²`` grid and normalized to 1
    (the peers' ``scipy.ndimage.gaussian_filter`` kernel truncates at 4 std; at 61×61, std 3
    the two differ by at most 1.5e-6 per tap, peak 1.8e-2, 1.1e-4 of the mass in total).
    """

    def __init__(self, kernel_size: int | None = None, std: float | None = None,
                 resolution: int | None = None, channels: int = 3, **kwargs):
        self.kernel_size_arg = None if kernel_size is None else check_positive_int(
            kernel_size, "kernel_size")
        if std is not None and not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.std_arg = std
        super().__init__(resolution=resolution, channels=channels, **kwargs)

    def _setup(self, resolution: int) -> None:
        size = self.kernel_size_arg or scaled_odd_size(61, resolution)
        self.std = self.std_arg if self.std_arg is not None else scaled_width(3.0, resolution)
        self.kernel = gaussian_kernel(size, self.std).to(self.device)
        self._check_kernel(resolution)


class MotionBlur(KernelBlur):
    """Motion deblurring: a seeded random-trajectory kernel (:func:`motion_blur_kernel`),
    61×61 at 256² (scaled with the resolution), intensity 0.5, reflection padding.
    ``kernel_size`` overrides the scaled default.
    """

    def __init__(self, kernel_size: int | None = None, intensity: float = 0.5, seed: int = 0,
                 resolution: int | None = None, channels: int = 3, **kwargs):
        self.kernel_size_arg = None if kernel_size is None else check_positive_int(
            kernel_size, "kernel_size")
        if not 0.0 <= intensity <= 1.0:
            raise ValueError(f"intensity must be in [0, 1], got {intensity}")
        self.intensity = float(intensity)
        self.seed = int(seed)
        super().__init__(resolution=resolution, channels=channels, **kwargs)

    def _setup(self, resolution: int) -> None:
        size = self.kernel_size_arg or scaled_odd_size(61, resolution)
        self.kernel = motion_blur_kernel(size, self.intensity, self.seed).to(self.device)
        self._check_kernel(resolution)

