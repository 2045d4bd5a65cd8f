"""Surrogate gradients for non-differentiable forward operators (paper Sec. 4.3).

For a non-differentiable H (rounding, clipping, JPEG) the data gradient is approximated by
that of a differentiable surrogate H' (paper Eq. 17):

    ∇ₓ‖y − H(x)‖² ≈ 2 · J_H'(x)ᵀ (H(x) − y).

:func:`straight_through` builds exactly this into autograd: its value is H(x), its backward
is the vector-Jacobian product of H' at x. Operators use it as their ``forward``, so the
operator's own ``loss``/``gradient`` and every algorithm that differentiates through
``forward_op.forward`` (DPS, DAPS, ΠGDM, RED-diff, LMAPS) receive the surrogate gradient.

What a non-differentiable operator provides (the contract; see
:class:`lmaps_plugin.operators.non_differentiable.NonDifferentiableOperator`)
-------------------------------------------------------------------------------------------
* ``is_differentiable = False`` (class attribute; differentiable operators may lack it:
  read it as ``getattr(op, "is_differentiable", True)``).
* ``surrogate``: the registry name of the surrogate in use (a ``str``; chosen with the
  constructor keyword ``surrogate=``, default the class attribute ``default_surrogate``).
* ``forward_exact(x)``: the true H(x), no useful gradient.
* ``forward_surrogate(x)``: H'(x), differentiable, same output shape as ``forward_exact``.
* ``linear_part(x)``: H with its non-differentiable stage replaced by the identity.
* ``forward(x)``: equals ``forward_exact(x)`` in value (bitwise) and has the Jacobian of
  ``forward_surrogate`` at x. Hence ``gradient(x, y) == 2·J_H'(x)ᵀ(forward_exact(x) − y)``
  and ``loss(x, y) == ‖forward_exact(x) − y‖²`` per sample.

Surrogates and the registry
---------------------------
A surrogate is a function ``surrogate(op, x) -> H'(x)``, differentiable in ``x``. Surrogates
are found through the entry-point group ``lmaps_plugin.surrogates`` (any installed
distribution can add one, no change to this package). Ours:

* ``identity`` -- H'(x) = x, J = I (paper Eq. 18); the paper's choice for JPEG and
  quantization. Needs an operator whose output has the input's shape.
* ``linear_part`` -- H'(x) = ``op.linear_part(x)``: the operator with its non-differentiable
  stage replaced by the identity. Quantization: x (same as ``identity``); HDR:
  ``scale·x`` (the default for HDR); JPEG: the same map as ``jpeg_linear``.
* ``jpeg_linear`` -- the JPEG codec at ``op.quality`` with only the rounding (and the 8-bit
  clamps) replaced by the identity: colour transform, 4:2:0 chroma subsampling, blockwise
  DCT, quantization scaling, IDCT, chroma upsampling and the inverse colour transform are
  kept. Division and multiplication by the table cancel, as do DCT and IDCT, so the map is
  linear: it equals x with its chroma (Cb, Cr) resampled to half resolution and back.
* ``jpeg_kornia`` -- ``kornia.enhance.jpeg_codec_differentiable`` at ``op.quality`` (a
  smoothed-rounding differentiable JPEG, Reich et al. 2024); kornia is imported lazily.
"""
from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from .registry import load_registered, registered
from .jpeg_codec import jpeg_codec

__all__ = [
    "GROUP", "Surrogate", "available_surrogates", "get_surrogate", "resolve_surrogate",
    "straight_through", "identity", "linear_part", "jpeg_linear", "jpeg_kornia",
]

#: Entry-point group that registers surrogates.
GROUP = "lmaps_plugin.surrogates"

#: A surrogate maps (operator, x) to H'(x), differentiably in x.
Surrogate = Callable[[object, torch.Tensor], torch.Tensor]


# -- registry ------------------------------------------------------------------------------
def available_surrogates() -> dict[str, EntryPoint]:
    """``{name: EntryPoint}`` of every surrogate registered under :data:`GROUP`, sorted by
    name, not loaded (same shape as :func:`lmaps_plugin.operators.available_operators`).
    """
    return registered(GROUP)


def get_surrogate(name: str) -> Surrogate:
    """Load the surrogate registered as ``name``; ``KeyError`` naming the valid names if none."""
    surrogate = load_registered(GROUP, name, "surrogate")
    if not callable(surrogate):
        raise TypeError(f"surrogate {name!r} ({available_surrogates()[name].value}) is not callable")
    return surrogate


def resolve_surrogate(surrogate: str | Surrogate) -> tuple[str, Surrogate]:
    """``(name, function)`` for a registry name or a callable ``surrogate(op, x)``."""
    if isinstance(surrogate, str):
        return surrogate, get_surrogate(surrogate)
    if callable(surrogate):
        return getattr(surrogate, "__name__", repr(surrogate)), surrogate
    raise TypeError("surrogate must be a registered name or a callable surrogate(op, x), "
                    f"got {type(surrogate).__name__}; "
                    f"registered: {', '.join(available_surrogates())}")


# -- straight-through ----------------------------------------------------------------------
class _StraightThrough(torch.autograd.Function):
    """Value ``exact(x)``, backward the VJP of ``surrogate`` at ``x``."""

    @staticmethod
    def forward(ctx, x, exact, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        out = exact(x)
        return out.clone() if out is x else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            out = ctx.surrogate(x_leaf)
            if out.shape != grad_out.shape:
                raise ValueError(
                    f"surrogate output shape {tuple(out.shape)} differs from the operator's "
                    f"output shape {tuple(grad_out.shape)}; choose a surrogate that maps the "
                    "input to the measurement space (e.g. 'identity' needs same shapes)")
            if not out.requires_grad:  # H' constant in x
                return torch.zeros_like(x), None, None
            (grad,) = torch.autograd.grad(out, x_leaf, grad_out, allow_unused=True)
        return (torch.zeros_like(x) if grad is None else grad), None, None


def straight_through(exact: Callable[[torch.Tensor], torch.Tensor],
                     surrogate: Callable[[torch.Tensor], torch.Tensor],
                     x: torch.Tensor) -> torch.Tensor:
    """``exact(x)`` in value, with the Jacobian of ``surrogate`` at ``x`` for autograd.

    The value is computed without a graph and is bitwise ``exact(x)``; the backward pass
    re-evaluates ``surrogate`` at ``x`` and returns its vector-Jacobian product. First-order
    only (no double backward).
    """
    return _StraightThrough.apply(x, exact, surrogate)


# -- the surrogates ------------------------------------------------------------------------
def identity(op, x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 18: H'(x) = x, so the data gradient is 2(H(x) − y)."""
    return x


def linear_part(op, x: torch.Tensor) -> torch.Tensor:
    """H with its non-differentiable stage replaced by the identity: ``op.linear_part(x)``."""
    if not hasattr(op, "linear_part"):
        raise TypeError(f"surrogate 'linear_part' needs an operator with a linear_part(x) "
                        f"method; {type(op).__name__} has none")
    return op.linear_part(x)


def _quality_of(op, name: str) -> int:
    quality = getattr(op, "quality", None)
    if quality is None:
        raise TypeError(f"surrogate {name!r} needs an operator with a JPEG 'quality' "
                        f"attribute; {type(op).__name__} has none")
    return quality


def jpeg_linear(op, x: torch.Tensor) -> torch.Tensor:
    """JPEG at ``op.quality`` with every rounding replaced by the identity (a linear map)."""
    return jpeg_codec(x, _quality_of(op, "jpeg_linear"), rounding=False)


def jpeg_kornia(op, x: torch.Tensor) -> torch.Tensor:
    """kornia's differentiable JPEG (smoothed rounding) at ``op.quality``, on [-1, 1] images.

    Grayscale images are coded as gray RGB (zero chroma) and averaged back to one channel.
    """
    try:
        from kornia.enhance import jpeg_codec_differentiable
    except ImportError as err:  # pragma: no cover - kornia is a test/extra dependency
        raise ImportError("surrogate 'jpeg_kornia' needs kornia (pip install kornia)") from err
    quality = _quality_of(op, "jpeg_kornia")
    gray = x.shape[1] == 1
    rgb = ((x.expand(-1, 3, -1, -1) if gray else x) + 1.0) / 2.0
    q = torch.tensor([float(quality)], device=x.device, dtype=x.dtype)
    out = jpeg_codec_differentiable(rgb, q) * 2.0 - 1.0
    return out.mean(dim=1, keepdim=True) if gray else out
