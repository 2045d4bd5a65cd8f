"""Gradient descent on Eq. 13 (Alg. 4, lines 6–10): K steps one by one, or summed in closed form in the
operator's Gram eigenbasis; and the step-size guard that keeps them stable (docs/step_guard.md)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..operators.base import GramEigenbasis
from ..operators.capabilities import has_plain_least_squares
from .exact import LinearSystem
from .objective import combine_in_basis, data_loss

Tensor = torch.Tensor


#: the guard acts when η·((1−r) + r·k2·λ_max) exceeds this (2 is the stability limit; the margin
#: covers power iteration's slight underestimate of λ_max).
GUARD_LIMIT = 1.9



def gd_local_map(x0_hat: Tensor, y: Tensor, forward_op, r: float, k2: float, lr: float,
                 steps: int, closed_form: bool = True,
                 system: LinearSystem | None = None) -> tuple[Tensor, Tensor]:
    """Gradient descent on Eq. 13 from ``x̂0`` (Alg. 4, lines 6–10).

    Returns the local MAP estimate and its per-sample data loss. For a linear operator with an
    orthogonal eigenbasis of HᵀH (masks, super-resolution, separable blurs, a factorised
    scattering geometry) and ``closed_form=True``, the ``steps`` iterates are summed in closed
    form (:func:`gd_closed_form`: the same point, to rounding, at the cost of ~3 operator calls);
    otherwise they are run one by one. The basis comes from ``system`` (a validated
    :class:`LinearSystem`) when given, else from one of our own plain least-squares
    :class:`LinearOperator` s. ``x0_hat`` is never modified.
    """
    basis, hty_coeffs = None, None
    if closed_form and system is not None:
        basis, hty_coeffs = system.eigenbasis, system.hty_coeffs
    elif closed_form:
        basis = gram_eigenbasis(forward_op, x0_hat)
        hty_coeffs = basis.to_basis(forward_op.adjoint(y)) if basis is not None else None
    if basis is not None:
        x0 = gd_closed_form(x0_hat, hty_coeffs, basis, r, k2, lr, steps)
    else:
        x0 = _gd_iterations(x0_hat, y, forward_op, r, k2, lr, steps)
    return x0, data_loss(forward_op, x0, y)


def _gd_iterations(x0_hat: Tensor, y: Tensor, forward_op, r: float, k2: float, lr: float,
                   steps: int) -> Tensor:
    """``steps`` plain gradient steps on Eq. 13, updating one buffer in place.

    When autograd is recording through the inputs (a caller differentiating the local MAP
    with respect to x̂0 or y), the same update runs out of place instead.
    """
    prior_step, data_step = -lr * (1.0 - r), -0.5 * lr * r * k2
    x0 = x0_hat.clone()
    if torch.is_grad_enabled() and (x0_hat.requires_grad or y.requires_grad):
        for _ in range(steps):
            x0 = x0 + prior_step * (x0 - x0_hat) + data_step * forward_op.gradient(x0, y)
        return x0
    offset = torch.empty_like(x0)
    for _ in range(steps):
        data_grad = forward_op.gradient(x0, y)
        # x0 ← x0 − η·[(1 − r)(x0 − x̂0) + r·k2·½∇loss(x0)], in place (x0 and offset are ours).
        # The offset is taken before x0 moves, and the gradient is added first, so a gradient
        # that aliases x0 (an operator returning its input) still gives the out-of-place step.
        torch.sub(x0, x0_hat, out=offset)
        x0.add_(data_grad, alpha=data_step).add_(offset, alpha=prior_step)
    return x0


def gram_eigenbasis(forward_op, like: Tensor) -> GramEigenbasis | None:
    """The operator's Gram eigenbasis when the closed form of gradient descent is valid for
    it (:func:`has_plain_least_squares`), else None."""
    if not has_plain_least_squares(forward_op):
        return None
    return forward_op.gram_eigenbasis(like)


def gd_step_coefficients(eigenvalues: Tensor, r: float, k2: float, lr: float,
                         steps: int) -> tuple[Tensor, Tensor]:
    """Per-eigenvalue ``(qᴷ, (1 − qᴷ)/a)`` of K gradient steps on a quadratic (float64).

    With curvature ``a = (1 − r) + r·k2·λ`` and ``q = 1 − η·a``, K steps of
    ``c ← c − η(a·c − b)`` from ``c₀`` give ``cᴷ = qᴷ·c₀ + b·(1 − qᴷ)/a``. Both come from
    ``L = K·log|q|`` (``log1p(−η·a)`` near q = 1, so ``1 − qᴷ = −expm1(L)`` keeps its digits for
    small η·a; ``(1 − qᴷ)/a → η·K`` at a = 0); a negative q (η·a > 1) flips the sign of qᴷ for
    odd K. Divergent steps (|q| > 1) give the huge (or infinite) values the iteration reaches.
    """
    lam = eigenvalues.to(torch.float64)
    a = (r * k2) * lam + (1.0 - r)
    step = lr * a
    flips = step > 1.0                                # q < 0
    # log|q| by log1p(−η·a) for q ≥ 0 and log(η·a − 1) for q < 0 (the unused branch sees a
    # harmless argument: log of 0 or of a negative number is slow on CPU)
    log_abs_q = torch.where(flips, torch.log(torch.where(flips, step - 1.0, 1.0)),
                            torch.log1p(-torch.where(flips, 0.0, step)))
    exponent = steps * log_abs_q
    power = torch.exp(exponent)                       # |q|ᴷ
    if steps % 2:
        qk = torch.where(flips, -power, power)
        one_minus_qk = torch.where(flips, 1.0 + power, -torch.expm1(exponent))
    else:
        qk, one_minus_qk = power, -torch.expm1(exponent)
    gain = torch.where(a == 0, lr * steps, one_minus_qk / torch.where(a == 0, 1.0, a))
    return qk, gain


def gd_closed_form(x0_hat: Tensor, hty_coeffs: Tensor, basis: GramEigenbasis, r: float, k2: float,
                   lr: float, steps: int) -> Tensor:
    """K steps of :func:`gd_local_map`'s gradient descent, evaluated in the Gram eigenbasis.

    For linear H the objective is quadratic with Hessian ``M = (1 − r)I + r·k2·HᵀH`` and
    ``b = (1 − r)·x̂0 + r·k2·Hᵀy``; in the eigenbasis ``V`` of HᵀH every coordinate follows
    :func:`gd_step_coefficients`, so ``x_K = V[qᴷ·Vᵀx̂0 + (1 − qᴷ)/a · Vᵀb]``, computed as
    ``V[(qᴷ + (1 − r)·g)·Vᵀx̂0 + r·k2·g·VᵀHᵀy]`` with ``g = (1 − qᴷ)/a``: one transform in,
    one out (``hty_coeffs`` = VᵀHᵀy is given: it is the same at every step of a run). Divergent
    step sizes (``|q| > 1``) blow up as the iteration would.
    """
    qk, gain = gd_step_coefficients(basis.eigenvalues, r, k2, lr, steps)
    return combine_in_basis(basis, x0_hat, hty_coeffs, keep=qk + (1.0 - r) * gain, pull=(r * k2) * gain)


@dataclass
class StepGuard:
    """Caps the inner learning rate where gradient descent on Eq. 13 would diverge.

    The local MAP objective has curvature at most L = (1 − r) + r·k2·λ_max(JᵀJ); gradient
    descent is stable iff η·L < 2. Where η·L exceeds :data:`GUARD_LIMIT` the step uses η = 1/L,
    the step that solves the stiffest direction exactly.
    """
    gram_norm: float

    def curvature(self, r: float, k2: float) -> float:
        return (1.0 - r) + r * k2 * self.gram_norm

    def safe_lr(self, lr: float, r: float, k2: float) -> float:
        curvature = self.curvature(r, k2)
        return 1.0 / curvature if lr * curvature > GUARD_LIMIT else lr


__all__ = ["gd_local_map", "gd_step_coefficients", "gd_closed_form", "gram_eigenbasis", "StepGuard", "GUARD_LIMIT"]
