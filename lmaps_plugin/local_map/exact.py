"""The exact local MAP for a linear (or affine) H(x) = A x + c: the normal equations

    ((1 − r)·I + r·k2·AᵀA) x = (1 − r)·x̂0 + r·k2·Aᵀ(y − c),

solved in the operator's Gram eigenbasis when it offers one (:func:`exact_closed_form`), otherwise by conjugate
gradient (:func:`conjugate_gradient`), warm-started by the caller from the previous step's solution. CG has its own
tolerance and iteration cap and reports the residual it reached (:class:`CGReport`). :func:`linear_system` is what
the solve needs of an operator (Gram map, Aᵀ(y − c), eigenbasis), built once per run.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..operators.base import GramEigenbasis, LinearOperator
from ..operators.capabilities import has_plain_least_squares, operator_capabilities
from .objective import batch_dot, combine_in_basis, data_loss, gram_map, half_data_gradient, offset

Tensor = torch.Tensor


@dataclass
class LinearSystem:
    """What the exact solve needs of an affine operator H(x) = A x + c for one observation y.

    ``gram(v) = AᵀA v``; ``hty = Aᵀ(y − c)``; ``eigenbasis`` of AᵀA (or None) and ``hty_coeffs``,
    ``hty`` in that basis (computed once: the observation is fixed for the run).
    """
    gram: Callable[[Tensor], Tensor]
    hty: Tensor
    eigenbasis: GramEigenbasis | None = None
    hty_coeffs: Tensor | None = None


def linear_system(forward_op, y: Tensor, like: Tensor, use_eigenbasis: bool = True) -> LinearSystem:
    """Build the :class:`LinearSystem` of ``forward_op`` at observation ``y`` (images like ``like``).

    With an ``adjoint`` (the transpose of the linear part A), the offset c = H(0) is measured
    once (our own :class:`LinearOperator` s have c = 0) and the Gram map is :func:`gram_map`
    (the operator's ``gram`` when it offers one, else ``adjoint(H(v) − c)``). Without one, Aᵀ
    comes from vector-Jacobian products through the operator's ``gradient`` (½∇loss(v) =
    Aᵀ(Av + c − y) for the plain least-squares loss), which is exact for affine H; the Gram map is ½∇ of the loss
    against the observation H(0), which gives AᵀA v without subtracting two image-sized vectors (a Lanczos or CG
    direction is small next to Aᵀy). The caller has established that H is affine with a least-squares loss
    (:func:`probe_operator`).
    """
    adjoint = getattr(forward_op, "adjoint", None)
    if callable(adjoint):
        shift = offset(forward_op, like)
        gram = gram_map(forward_op, shift)
        hty = adjoint(y if shift is None else y - shift)
        eigenbasis = None
        offers_basis = operator_capabilities(forward_op).eigenbasis
        if use_eigenbasis and offers_basis and (has_plain_least_squares(forward_op)
                                                or not isinstance(forward_op, LinearOperator)):
            eigenbasis = forward_op.gram_eigenbasis(like)
    else:
        zero = torch.zeros_like(like)
        hty = -half_data_gradient(forward_op, zero, y)
        shift = offset(forward_op, like)         # c = H(0): the loss against c is ‖A v‖², whose half gradient is AᵀA v
        gram = lambda v: half_data_gradient(forward_op, v, shift)  # noqa: E731
        eigenbasis = None
    hty_coeffs = eigenbasis.to_basis(hty) if eigenbasis is not None else None
    return LinearSystem(gram=gram, hty=hty, eigenbasis=eigenbasis, hty_coeffs=hty_coeffs)


def normal_equation_ops(forward_op, y: Tensor, like: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """The Gram map v ↦ AᵀAv and the vector Aᵀ(y − c) of an affine operator (see :func:`linear_system`)."""
    system = linear_system(forward_op, y, like, use_eigenbasis=False)
    return system.gram, system.hty


def exact_closed_form(x0_hat: Tensor, hty_coeffs: Tensor, basis: GramEigenbasis, r: float, k2: float) -> Tensor:
    """The minimiser of Eq. 13 in the Gram eigenbasis (the K → ∞ limit of :func:`gd_closed_form`).

    ``x* = V[((1 − r)·Vᵀx̂0 + r·k2·VᵀHᵀy) / a]`` with ``a = (1 − r) + r·k2·λ`` (``hty_coeffs`` =
    VᵀHᵀy). Where ``a = 0``
    (r = 1 on the null space of H) the objective is flat and x̂0's coordinate is kept, as
    conjugate gradient started from x̂0 keeps it.
    """
    a = (r * k2) * basis.eigenvalues.to(torch.float64) + (1.0 - r)
    flat = a == 0
    inverse = torch.where(flat, 0.0, 1.0 / torch.where(flat, 1.0, a))
    keep = torch.where(flat, 1.0, (1.0 - r) * inverse)
    return combine_in_basis(basis, x0_hat, hty_coeffs, keep=keep, pull=(r * k2) * inverse)


@dataclass(frozen=True)
class CGReport:
    """How a conjugate-gradient solve ended: the worst relative residual ‖b − Mx‖/‖b‖ over the
    batch, the iterations run, and whether every sample reached the tolerance. An eigenbasis
    solve reports residual 0 after 0 iterations. ``residual`` (the final b − Mx) and
    ``gram_solution`` (AᵀA x of an exact local MAP solve, for the next step's warm start) are
    carried along for the caller, not compared or printed."""
    relative_residual: float
    iterations: int
    converged: bool
    residual: Tensor | None = field(default=None, repr=False, compare=False)
    gram_solution: Tensor | None = field(default=None, repr=False, compare=False)


EXACT = CGReport(relative_residual=0.0, iterations=0, converged=True)


def conjugate_gradient(apply: Callable[[Tensor], Tensor], rhs: Tensor, x: Tensor, *, tol: float,
                       max_iter: int, residual: Tensor | None = None) -> tuple[Tensor, CGReport]:
    """Solve ``apply(x) = rhs`` (symmetric positive definite, per sample of the batch) from ``x``.

    Stops when every sample's relative residual ‖rhs − apply(x)‖/‖rhs‖ is at most ``tol`` (a zero
    ``rhs`` is solved by x = 0 at once) or after ``max_iter`` iterations. Samples that have
    converged stop moving while the others go on. ``residual``, when the caller knows it, is
    ``rhs − apply(x)`` at the start (saves one ``apply``); the final one is in the report.
    """
    tiny = torch.finfo(rhs.dtype).tiny
    residual = rhs - apply(x) if residual is None else residual
    direction = residual.clone()
    threshold = (tol ** 2) * batch_dot(rhs, rhs).clamp_min(tiny)
    rr = batch_dot(residual, residual)
    iterations, converged = 0, False
    while iterations < max_iter:
        if bool((rr <= threshold).all()):             # the stopping test: one host synchronisation
            converged = True
            break
        active = rr > threshold
        m_dir = apply(direction)
        alpha = torch.where(active, rr / batch_dot(direction, m_dir).clamp_min(tiny), torch.zeros_like(rr))
        x = x + alpha * direction
        residual = residual - alpha * m_dir
        rr_new = batch_dot(residual, residual)
        direction = residual + (rr_new / rr.clamp_min(tiny)) * direction
        rr = rr_new
        iterations += 1
    else:
        converged = bool((rr <= threshold).all())
    relative = (rr / batch_dot(rhs, rhs).clamp_min(tiny)).sqrt().max()
    report = CGReport(relative_residual=float(relative), iterations=iterations, converged=converged,
                      residual=residual)
    return x, report


def exact_local_map(x0_hat: Tensor, system: LinearSystem, r: float, k2: float, *, tol: float = 1e-5,
                    max_iter: int = 100, x_init: Tensor | None = None,
                    gram_init: Tensor | None = None) -> tuple[Tensor, CGReport]:
    """The minimiser of Eq. 13 for an affine operator: in its eigenbasis when it has one (exact
    to rounding), otherwise by conjugate gradient.

    CG solves for the correction δ = x − x̂0, M δ = r·k2·(Aᵀ(y − c) − AᵀA x̂0) with
    M = (1 − r)·I + r·k2·AᵀA, from ``x_init − x̂0`` (0 by default), until the residual is at most
    ``tol`` times its value at x̂0 (the data correction is solved to that relative accuracy), at
    most ``max_iter`` iterations. A warm start that also passes ``gram_init`` = AᵀA·x_init (the
    previous solve's ``report.gram_solution``) saves one Gram product; the report carries AᵀA x
    of the solution, recovered from CG's final residual without another product.
    """
    if system.eigenbasis is not None:
        return exact_closed_form(x0_hat, system.hty_coeffs, system.eigenbasis, r, k2), EXACT
    a, b = 1.0 - r, r * k2

    def apply(v: Tensor) -> Tensor:
        return a * v + b * system.gram(v)

    gram_hat = system.gram(x0_hat)
    rhs = b * (system.hty - gram_hat)
    start = torch.zeros_like(x0_hat) if x_init is None else x_init - x0_hat
    residual = None
    if x_init is None:
        residual = rhs
    elif gram_init is not None:
        residual = rhs - a * start - b * (gram_init - gram_hat)
    correction, report = conjugate_gradient(apply, rhs, start, tol=tol, max_iter=max_iter, residual=residual)
    gram_solution = None
    if b > 0:  # M δ = rhs − residual, so AᵀA δ = (rhs − residual − a·δ)/b
        gram_solution = gram_hat + (rhs - report.residual - a * correction) / b
    return x0_hat + correction, replace(report, gram_solution=gram_solution)


def cg_local_map(x0_hat: Tensor, y: Tensor, forward_op, r: float, k2: float, max_iter: int = 100,
                 tol: float = 1e-5, x_init: Tensor | None = None,
                 closed_form: bool = True) -> tuple[Tensor, Tensor, CGReport]:
    """Solve ((1 − r)I + r·k2·AᵀA) x = (1 − r)x̂0 + r·k2·Aᵀ(y − c) for an affine operator.

    Builds the operator's :class:`LinearSystem` and calls :func:`exact_local_map` (with
    ``closed_form=False`` the eigenbasis is not used). Returns the solution, its data loss and
    the :class:`CGReport`. The operator must be affine with a least-squares loss (LMAPS checks
    this once per run; see :func:`probe_operator`).
    """
    system = linear_system(forward_op, y, x0_hat, use_eigenbasis=closed_form)
    x, report = exact_local_map(x0_hat, system, r, k2, tol=tol, max_iter=max_iter, x_init=x_init)
    return x, data_loss(forward_op, x, y), report


__all__ = ["LinearSystem", "linear_system", "normal_equation_ops", "exact_closed_form", "CGReport", "EXACT",
           "conjugate_gradient", "exact_local_map", "cg_local_map"]
