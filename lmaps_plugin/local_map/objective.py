"""Eq. 13 and the operator products its solvers share.

    x0* = argmin (1 − r)·½‖x0 − x̂0‖² + r·k2·½·loss(x0),

where ``loss`` is the operator's own data-consistency loss (‖y − H(x0)‖² by default), so the
data gradient is half of ``forward_op.gradient`` (docs/conventions.md: η·k2 = 1 projects
observed pixels onto y in one step at r ≈ 1).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..operators.base import GramEigenbasis, LinearOperator

Tensor = torch.Tensor


def batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ⟨a_i, b_i⟩, shaped ``(batch, 1, ..., 1)`` to broadcast."""
    dot = (a * b).flatten(start_dim=1).sum(dim=1)
    return dot.view(-1, *([1] * (a.ndim - 1)))


def half_data_gradient(forward_op, x: Tensor, y: Tensor) -> Tensor:
    """½∇loss(x) through the operator's own ``gradient``; for the default loss, Jᵀ(H(x) − y)."""
    return 0.5 * forward_op.gradient(x, y)


def data_loss(forward_op, x: Tensor, y: Tensor) -> Tensor:
    """The operator's per-sample loss at ``x``, detached, shape ``(batch,)``."""
    with torch.no_grad():
        return forward_op.loss(x, y).detach().reshape(-1)


def local_map_objective(x0: Tensor, x0_hat: Tensor, loss: Tensor, r: float, k2: float) -> Tensor:
    """Eq. 13 per sample: (1 − r)·½‖x0 − x̂0‖² + r·k2·½·loss(x0)."""
    prior = 0.5 * (x0 - x0_hat).flatten(1).square().sum(1)
    return (1.0 - r) * prior + 0.5 * r * k2 * loss.to(prior.dtype)


def offset(forward_op, like: Tensor) -> Tensor | None:
    """H(0) of an affine operator with an adjoint; None for our own :class:`LinearOperator` s (c = 0)."""
    if isinstance(forward_op, LinearOperator):
        return None
    with torch.no_grad():
        return forward_op.forward(torch.zeros_like(like[:1]))


def gram_map(forward_op, offset: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """v ↦ AᵀA v for an operator with an ``adjoint`` of its linear part A: the operator's own ``gram``
    when it offers one (one fused product, e.g. the MRI adapter's), else ``adjoint(H(v) − offset)``
    with ``offset`` = H(0) (None for a linear H)."""
    fused = getattr(forward_op, "gram", None)
    if callable(fused):
        return fused
    if offset is None:
        return lambda v: forward_op.adjoint(forward_op.forward(v))
    return lambda v: forward_op.adjoint(forward_op.forward(v) - offset)


def combine_in_basis(basis: GramEigenbasis, x0_hat: Tensor, hty_coeffs: Tensor, keep: Tensor,
                      pull: Tensor) -> Tensor:
    """``V[keep·Vᵀx̂0 + pull·VᵀHᵀy]`` with per-eigenvalue ``keep`` and ``pull`` (float64, cast to the
    coefficients' dtype: a basis may return float64 coefficients of float32 images), in x̂0's dtype."""
    coeffs = basis.to_basis(x0_hat)
    return basis.from_basis(keep.to(coeffs.dtype) * coeffs + pull.to(hty_coeffs.dtype) * hty_coeffs).to(x0_hat.dtype)


__all__ = ["batch_dot", "half_data_gradient", "data_loss", "local_map_objective", "offset", "gram_map",
           "combine_in_basis"]
