"""Linear image-restoration operators (docs/operators.md): super-resolution and inpainting, and what every linear
image operator shares (:class:`ImageLinearOperator`, per-device caches, Kronecker eigenbases); the blurs are in
:mod:`lmaps_plugin.operators.blur`.

Every operator here is a :class:`~lmaps_plugin.operators.base.LinearOperator`: ``forward(x)``
maps a batch ``(B, C, r, r)`` of images in ``[-1, 1]`` to observations, ``adjoint(y)`` is the
exact transpose (checked by ``tests/operators/test_operators_contract.py``), and ``gradient`` is the
analytic ``2 Aᵀ(Ax − y)``. Kernels and masks are drawn once per operator (seeded CPU
``torch.Generator``), shared by every image of a batch and by every call; they are stored in
float64 and cast to the input's dtype and device on use, so the output dtype follows the input.

Resolution: pass ``resolution`` to build kernels/masks at construction, or leave it ``None``
to build them from the first input (after which other sizes are rejected). Parameters given
for 256² are scaled to other resolutions by the rule of :mod:`lmaps_plugin.operators.image_conventions`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import GramEigenbasis, LinearOperator
from .image_conventions import check_image_batch, check_positive_int, scaled_length, seeded_generator

__all__ = [
    "ImageLinearOperator", "SuperResolution", "BoxInpainting", "RandomInpainting", "bicubic_downsampling_matrix",
    "fast_fft_length", "kronecker_gram_eigenbasis", "cast_like", "cached_per_device",
]


def cast_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tensor.to(device=like.device, dtype=like.dtype)


def cached_per_device(op, key, like: torch.Tensor, make):
    """``make()`` computed once per (key, dtype, device) and kept on the operator.

    Operators store their state (kernels, masks, matrices) in float64; the inner loops of the
    samplers call them thousands of times in float32, so the casts (and kernel spectra) are
    cached instead of redone on every call.
    """
    cache = op.__dict__.setdefault("_like_cache", {})
    full_key = (key, like.dtype, like.device)
    if full_key not in cache:
        cache[full_key] = make()
    return cache[full_key]


def _symmetric_eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at 0) and orthonormal eigenvectors of a PSD float64 matrix."""
    values, vectors = torch.linalg.eigh(0.5 * (gram + gram.T))
    return values.clamp_min(0.0), vectors


def kronecker_gram_eigenbasis(rows: torch.Tensor, cols: torch.Tensor,
                              like: torch.Tensor) -> GramEigenbasis:
    """The eigenbasis of HᵀH for the separable map ``H X = rows · X · colsᵀ`` (per channel).

    ``HᵀH X = (rowsᵀrows) X (colsᵀcols)``, so with ``rowsᵀrows = U diag(s) Uᵀ`` and
    ``colsᵀcols = W diag(t) Wᵀ`` the eigenvectors are ``U Eᵢⱼ Wᵀ`` with eigenvalues ``sᵢ·tⱼ``.
    ``rows``/``cols`` are float64; the transforms run in ``like``'s dtype and device.
    """
    s, u = _symmetric_eigh(rows.T @ rows)
    t, w = _symmetric_eigh(cols.T @ cols)
    u, w = cast_like(u, like), cast_like(w, like)
    u_t, w_t = u.T.contiguous(), w.T.contiguous()
    eigenvalues = (s[:, None] * t[None, :]).to(like.device)
    return GramEigenbasis(eigenvalues=eigenvalues,
                          to_basis=lambda v: torch.matmul(torch.matmul(u_t, v), w),
                          from_basis=lambda c: torch.matmul(torch.matmul(u, c), w_t))


def fast_fft_length(n: int) -> int:
    """The smallest 5-smooth integer (factors 2, 3, 5 only) that is at least ``n``.

    FFT cost jumps at lengths with large prime factors (316 = 4·79 is ~3× slower than 320).
    """
    length = max(1, int(n))
    while True:
        rest = length
        for factor in (2, 3, 5):
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return length
        length += 1


class ImageLinearOperator(LinearOperator):
    """Shared plumbing: input checks, lazy resolution, one-time construction of the state.

    Subclasses implement ``_setup(resolution)`` (draw kernels/masks), ``_apply(x)`` and
    ``_apply_adjoint(y)``; observations of size ``_observation_size(r)`` per side.
    """

    def __init__(self, resolution: int | None = None, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.channels = check_positive_int(channels, "channels")
        self.resolution: int | None = None
        if resolution is not None:
            self._build(check_positive_int(resolution, "resolution"))

    # -- hooks ----------------------------------------------------------------------------
    def _setup(self, resolution: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _observation_size(self, resolution: int) -> int:
        return resolution

    def _resolution_from_observation(self, size: int) -> int:
        return size

    # -- plumbing -------------------------------------------------------------------------
    def _build(self, resolution: int) -> None:
        self._setup(resolution)
        self.resolution = resolution

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        size = check_image_batch(x, self.channels, self.resolution, type(self).__name__, "x")
        if self.resolution is None:
            self._build(size)
        return self._apply(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        expected = None if self.resolution is None else self._observation_size(self.resolution)
        size = check_image_batch(y, self.channels, expected, type(self).__name__, "observation y")
        if self.resolution is None:
            self._build(self._resolution_from_observation(size))
        return self._apply_adjoint(y)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(resolution={self.resolution}, channels={self.channels}, "
                f"sigma_noise={self.sigma_noise})")

    def __getstate__(self) -> dict:
        """Pickle without the per-dtype cache (it holds closures; it is rebuilt on use)."""
        state = self.__dict__.copy()
        state.pop("_like_cache", None)
        return state


# ---------------------------------------------------------------------------------------
# Super-resolution
# ---------------------------------------------------------------------------------------
def bicubic_downsampling_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The ``(n_out, n_in)`` float64 matrix ``W`` of 1-D antialiased bicubic resampling.

    ``F.interpolate(x, (n_out, n_out), mode='bicubic', antialias=True)`` is separable and equals
    ``W x Wᵀ`` per channel. ``W`` is read off by resampling basis images that are constant
    along the width (whose rows resample to 1; torch mis-handles a width-1 *output*, so a
    width of ``4·n_in/n_out`` pixels is used).
    """
    width_in = 4 * max(1, math.ceil(n_in / n_out))
    width_out = max(2, round(width_in * n_out / n_in))
    basis = torch.eye(n_in, dtype=torch.float64)[:, None, :, None].expand(n_in, 1, n_in, width_in)
    out = F.interpolate(basis.contiguous(), size=(n_out, width_out), mode="bicubic",
                        antialias=True, align_corners=False)
    return out[:, 0, :, 0].T.contiguous()


class SuperResolution(ImageLinearOperator):
    """``y = downsample_factor(x)``: antialiased bicubic downsampling by an integer ``factor``.

    The map is ``F.interpolate(mode='bicubic', antialias=True)`` (torchvision's antialiased
    bicubic resize, as the peers use), applied as ``W x Wᵀ`` with the 1-D resampling matrix
    ``W`` of :func:`bicubic_downsampling_matrix` (equal to torch's CPU resize to float64
    rounding), so the adjoint ``Wᵀ y W`` is its exact transpose on every device.
    Observations are ``(B, C, r/f, r/f)``; ``resolution`` must be divisible by ``factor``.
    """

    def __init__(self, factor: int = 4, resolution: int | None = None, channels: int = 3,
                 **kwargs):
        self.factor = check_positive_int(factor, "factor")
        super().__init__(resolution=resolution, channels=channels, **kwargs)

    def _observation_size(self, resolution: int) -> int:
        return resolution // self.factor

    def _resolution_from_observation(self, size: int) -> int:
        return size * self.factor

    def _setup(self, resolution: int) -> None:
        if resolution % self.factor:
            raise ValueError(f"SuperResolution: resolution={resolution} is not divisible by "
                             f"factor={self.factor}")
        matrix = bicubic_downsampling_matrix(resolution, resolution // self.factor)
        self.matrix = matrix.to(self.device)

    def _matrices(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def make():
            w = cast_like(self.matrix, like)
            return w, w.T.contiguous()
        return cached_per_device(self, "matrix", like, make)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        w, w_t = self._matrices(x)
        return torch.matmul(torch.matmul(w, x), w_t)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        w, w_t = self._matrices(y)
        return torch.matmul(torch.matmul(w_t, y), w)

    def gram_eigenbasis(self, like: torch.Tensor) -> GramEigenbasis | None:
        """HᵀH = (WᵀW) ⊗ (WᵀW): the eigenbasis of the n×n matrix WᵀW, used on both axes."""
        if self.resolution is None:
            return None
        return cached_per_device(self, "eigenbasis", like,
                       lambda: kronecker_gram_eigenbasis(self.matrix, self.matrix, like))


# ---------------------------------------------------------------------------------------
# Inpainting (diagonal 0/1 masks)
# ---------------------------------------------------------------------------------------
class MaskInpainting(ImageLinearOperator):
    """``y = m ⊙ x`` with a fixed 0/1 mask ``m`` of shape ``(1, 1, r, r)`` (same on every
    channel and image); observations keep the image shape with zeros where pixels are
    dropped. The operator is self-adjoint. Subclasses set ``self.mask`` in ``_setup``.
    """

    mask: torch.Tensor

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        return cached_per_device(self, "mask", like, lambda: cast_like(self.mask, like))

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._mask(x)

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self._mask(y)

    def gram_eigenbasis(self, like: torch.Tensor) -> GramEigenbasis | None:
        """HᵀH = diag(m) (m² = m): the pixel basis itself, eigenvalues the mask."""
        if self.resolution is None:
            return None
        return cached_per_device(self, "eigenbasis", like, lambda: GramEigenbasis(
            eigenvalues=self.mask.to(like.device), to_basis=_same, from_basis=_same))


def _same(v: torch.Tensor) -> torch.Tensor:
    return v


class BoxInpainting(MaskInpainting):
    """Box inpainting: a ``box_size²`` square is dropped at a seeded random position at least
    ``margin`` pixels from every border (128 and 32 at 256², scaled with the resolution).
    The top-left corner is uniform over ``[margin, r − margin − box_size]`` on each axis.
    """

    def __init__(self, box_size: int | None = None, margin: int | None = None, seed: int = 0,
                 resolution: int | None = None, channels: int = 3, **kwargs):
        self.box_size_arg = None if box_size is None else check_positive_int(box_size, "box_size")
        if margin is not None and (int(margin) != margin or margin < 0):
            raise ValueError(f"margin must be a non-negative integer, got {margin!r}")
        self.margin_arg = margin
        self.seed = int(seed)
        super().__init__(resolution=resolution, channels=channels, **kwargs)

    def _setup(self, resolution: int) -> None:
        box = self.box_size_arg or scaled_length(128, resolution)
        margin = int(self.margin_arg) if self.margin_arg is not None else scaled_length(
            32, resolution, minimum=0)
        free = resolution - 2 * margin - box
        if free < 0:
            raise ValueError(f"BoxInpainting: box_size={box} with margin={margin} does not fit "
                             f"in resolution={resolution} (needs box_size + 2·margin ≤ "
                             f"resolution)")
        gen = seeded_generator(self.seed)
        top, left = (margin + torch.randint(0, free + 1, (2,), generator=gen)).tolist()
        mask = torch.ones(1, 1, resolution, resolution, dtype=torch.float64)
        mask[..., top:top + box, left:left + box] = 0.0
        self.box_size, self.margin, self.box = box, margin, (top, left)
        self.mask = mask.to(self.device)


class RandomInpainting(MaskInpainting):
    """Random inpainting: exactly ``round(drop_fraction · r²)`` pixels (70% by default),
    chosen by a seeded permutation, are dropped on every channel."""

    def __init__(self, drop_fraction: float = 0.7, seed: int = 0,
                 resolution: int | None = None, channels: int = 3, **kwargs):
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
        self.drop_fraction = float(drop_fraction)
        self.seed = int(seed)
        super().__init__(resolution=resolution, channels=channels, **kwargs)

    def _setup(self, resolution: int) -> None:
        pixels = resolution * resolution
        dropped = int(math.floor(self.drop_fraction * pixels + 0.5))
        order = torch.randperm(pixels, generator=seeded_generator(self.seed))
        mask = torch.ones(pixels, dtype=torch.float64)
        mask[order[:dropped]] = 0.0
        self.mask = mask.reshape(1, 1, resolution, resolution).to(self.device)
