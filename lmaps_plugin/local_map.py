"""Inner solvers of LMAPS: the local MAP problem of Eq. 13,

    x0* = argmin (1 − r)·½‖x0 − x̂0‖² + r·k2·½·loss(x0),

where ``loss`` is the operator's own data-consistency loss (‖y − H(x0)‖² by default), so the
data gradient is half of ``forward_op.gradient`` (docs/conventions.md: η·k2 = 1 projects
observed pixels onto y in one step at r ≈ 1).

* :func:`gd_local_map` — K steps of gradient descent (the paper's solver), summed in closed
  form by :func:`gd_closed_form` when the operator offers an eigenbasis of HᵀH.
* :func:`exact_local_map` — the minimiser for a linear (or affine) H: the normal equations
  ((1 − r)·I + r·k2·AᵀA) x = (1 − r)·x̂0 + r·k2·Aᵀ(y − c) with H(x) = A x + c, solved in the
  operator's Gram eigenbasis when it offers one (:func:`exact_closed_form`), otherwise by
  conjugate gradient (:func:`conjugate_gradient`), warm-started by the caller from the previous
  step's solution. CG has its own tolerance and iteration cap and reports the residual it reached
  (:class:`CGReport`).
* :func:`linear_system` — what the exact solve needs of an operator (Gram map, Aᵀ(y − c),
  eigenbasis), built once per run; the Gram map (:func:`gram_map`) is the operator's own
  ``gram`` when it offers one (a fused AᵀA product), else ``adjoint`` after ``forward``.
  :func:`probe_operator` checks on the first step that an operator which does not declare
  itself linear is affine with a least-squares loss.
* :func:`estimate_gram_norm` — λ_max(JᵀJ) by power iteration, for the step-size guard.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .operators.base import GramEigenbasis, LinearOperator, Operator

Tensor = torch.Tensor


def batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ⟨a_i, b_i⟩, shaped ``(batch, 1, ..., 1)`` to broadcast."""
    dot = (a * b).flatten(start_dim=1).sum(dim=1)
    return dot.view(-1, *([1] * (a.ndim - 1)))


def half_data_gradient(forward_op, x: Tensor, y: Tensor) -> Tensor:
    """½∇loss(x) through the operator's own ``gradient``; for the default loss, Jᵀ(H(x) − y)."""
    return 0.5 * forward_op.gradient(x, y)


# -- gradient descent (Alg. 4, lines 6–10) -----------------------------------------------------

def gd_local_map(x0_hat: Tensor, y: Tensor, forward_op, r: float, k2: float, lr: float,
                 steps: int, closed_form: bool = True,
                 system: "LinearSystem | None" = None) -> tuple[Tensor, Tensor]:
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
        basis = _gram_eigenbasis(forward_op, x0_hat)
        hty_coeffs = basis.to_basis(forward_op.adjoint(y)) if basis is not None else None
    if basis is not None:
        x0 = gd_closed_form(x0_hat, hty_coeffs, basis, r, k2, lr, steps)
    else:
        x0 = _gd_iterations(x0_hat, y, forward_op, r, k2, lr, steps)
    return x0, data_loss(forward_op, x0, y)


def data_loss(forward_op, x: Tensor, y: Tensor) -> Tensor:
    """The operator's per-sample loss at ``x``, detached, shape ``(batch,)``."""
    with torch.no_grad():
        return forward_op.loss(x, y).detach().reshape(-1)


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


def _has_plain_least_squares(forward_op) -> bool:
    """True for one of our :class:`LinearOperator` s whose ``loss``/``gradient`` are the base
    class's: ``gradient = 2Hᵀ(Hx − y)`` exactly (an operator that overrides them has a weighted
    or rescaled misfit, which the closed forms do not sum)."""
    if not (isinstance(forward_op, LinearOperator) and forward_op.is_linear):
        return False
    cls = type(forward_op)
    return cls.gradient is LinearOperator.gradient and cls.loss is Operator.loss


def _gram_eigenbasis(forward_op, like: Tensor) -> GramEigenbasis | None:
    """The operator's Gram eigenbasis when the closed form of gradient descent is valid for
    it (:func:`_has_plain_least_squares`), else None."""
    if not _has_plain_least_squares(forward_op):
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
    return _combine_in_basis(basis, x0_hat, hty_coeffs, keep=qk + (1.0 - r) * gain, pull=(r * k2) * gain)


# -- the exact solve for linear (affine) operators ---------------------------------------------

class NotLinearError(ValueError):
    """An exact (normal-equation) solve was asked of an operator that is not linear, or whose
    loss is not the plain sum of squares ‖H(x) − y‖²."""


@dataclass(frozen=True)
class OperatorProbe:
    """How far an operator is from the model the exact solve assumes, measured at one point.

    ``affine_error`` = ‖H(a+b) − H(a) − H(b) + H(0)‖ / ‖H(a+b) − H(0)‖ for random a, b (0 for an
    affine H(x) = A x + c, up to rounding); ``least_squares_error`` = |loss(a, y) − ‖H(a) − y‖²|
    / ‖H(a) − y‖² (0 when the loss is the plain sum of squares).
    """
    affine_error: float
    least_squares_error: float

    @staticmethod
    def tolerance(dtype: torch.dtype) -> float:
        """Relative error accepted as rounding: 1e-3 in single precision, 1e-8 in double."""
        return 1e-8 if dtype == torch.float64 else 1e-3

    def is_affine(self, dtype: torch.dtype) -> bool:
        return self.affine_error <= self.tolerance(dtype)

    def is_least_squares(self, dtype: torch.dtype) -> bool:
        return self.least_squares_error <= self.tolerance(dtype)


def _relative(num: Tensor, den: Tensor) -> float:
    den_norm = float(den.abs().square().sum().sqrt())
    return float(num.abs().square().sum().sqrt()) / max(den_norm, 1e-300)


def probe_operator(forward_op, like: Tensor, y: Tensor, seed: int = 0) -> OperatorProbe:
    """Measure :class:`OperatorProbe` on one image shaped like ``like[:1]`` (random a, b with
    the spread of ``like``, so clipping, rounding or moduli are exercised)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, *like.shape[1:])
    scale = max(float(like.detach().abs().max()), 1.0)
    a, b = (scale * torch.randn(shape, generator=gen, dtype=torch.float64).to(like) for _ in range(2))
    with torch.no_grad():
        h0, ha, hb, hab = (forward_op.forward(v) for v in (torch.zeros_like(a), a, b, a + b))
        residual = ha - y[:1]
        plain = residual.abs().square().flatten(1).sum(1)
        loss = forward_op.loss(a, y[:1]).reshape(-1)
    return OperatorProbe(affine_error=_relative(hab - ha - hb + h0, hab - h0),
                         least_squares_error=_relative(loss.real.to(plain.dtype) - plain, plain))


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
    Aᵀ(Av + c − y) for the plain least-squares loss), which is exact for affine H. The caller has established that H is affine with a least-squares
    loss (:func:`probe_operator`).
    """
    adjoint = getattr(forward_op, "adjoint", None)
    if callable(adjoint):
        offset = _offset(forward_op, like)
        gram = gram_map(forward_op, offset)
        hty = adjoint(y if offset is None else y - offset)
        eigenbasis = None
        offers_basis = callable(getattr(forward_op, "gram_eigenbasis", None))
        if use_eigenbasis and offers_basis and (_has_plain_least_squares(forward_op)
                                                or not isinstance(forward_op, LinearOperator)):
            eigenbasis = forward_op.gram_eigenbasis(like)
    else:
        zero = torch.zeros_like(like)
        hty = -half_data_gradient(forward_op, zero, y)
        gram = lambda v: half_data_gradient(forward_op, v, y) + hty  # noqa: E731
        eigenbasis = None
    hty_coeffs = eigenbasis.to_basis(hty) if eigenbasis is not None else None
    return LinearSystem(gram=gram, hty=hty, eigenbasis=eigenbasis, hty_coeffs=hty_coeffs)


def _offset(forward_op, like: Tensor) -> Tensor | None:
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
    return _combine_in_basis(basis, x0_hat, hty_coeffs, keep=keep, pull=(r * k2) * inverse)


def _combine_in_basis(basis: GramEigenbasis, x0_hat: Tensor, hty_coeffs: Tensor, keep: Tensor,
                      pull: Tensor) -> Tensor:
    """``V[keep·Vᵀx̂0 + pull·VᵀHᵀy]`` with per-eigenvalue ``keep`` and ``pull`` (float64, cast to the
    coefficients' dtype: a basis may return float64 coefficients of float32 images)."""
    coeffs = basis.to_basis(x0_hat)
    return basis.from_basis(keep.to(coeffs.dtype) * coeffs + pull.to(hty_coeffs.dtype) * hty_coeffs)


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
    iterations = 0
    while iterations < max_iter and not bool((rr <= threshold).all()):
        active = rr > threshold
        m_dir = apply(direction)
        alpha = torch.where(active, rr / batch_dot(direction, m_dir).clamp_min(tiny), torch.zeros_like(rr))
        x = x + alpha * direction
        residual = residual - alpha * m_dir
        rr_new = batch_dot(residual, residual)
        direction = residual + (rr_new / rr.clamp_min(tiny)) * direction
        rr = rr_new
        iterations += 1
    relative = (rr / batch_dot(rhs, rhs).clamp_min(tiny)).sqrt().max()
    report = CGReport(relative_residual=float(relative), iterations=iterations,
                      converged=bool((rr <= threshold).all()), residual=residual)
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


# -- λ_max(JᵀJ) for the step-size guard -----------------------------------------------------------

def estimate_gram_norm(forward_op, x: Tensor, iters: int = 20, seed: int = 0) -> float:
    """λ_max(JᵀJ) at ``x`` by power iteration, for the step-size guard (NaN if it cannot be measured).

    * Operators with an ``adjoint`` (of their linear part): AᵀA exactly (:func:`gram_map`: the
      operator's ``gram``, or ``adjoint(H(u) − H(0))``).
    * Non-differentiable operators (``is_differentiable = False``): J is the surrogate's
      Jacobian, the one their gradient uses, so JᵀJ u = J'ᵀ(J'u) with J'u by central
      differences of ``forward_surrogate`` and J'ᵀ by autograd. (Differencing the exact H,
      piecewise constant, would measure nothing.)
    * Otherwise: central differences of the operator's gradient with the observation set to
      H(x), where ½∇²loss = JᵀJ exactly.
    """
    x = x[:1].detach()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = v / v.norm()
    scale = 1e-3 * (x.norm().item() + 1.0)
    if callable(getattr(forward_op, "adjoint", None)):
        gram = gram_map(forward_op, _offset(forward_op, x))
    elif (not getattr(forward_op, "is_differentiable", True)
          and callable(getattr(forward_op, "forward_surrogate", None))):
        surrogate = forward_op.forward_surrogate

        def gram(u: Tensor) -> Tensor:
            with torch.no_grad():
                ju = (surrogate(x + scale * u) - surrogate(x - scale * u)) / (2 * scale)
            with torch.enable_grad():
                leaf = x.clone().requires_grad_(True)
                (jtju,) = torch.autograd.grad(surrogate(leaf), leaf, ju)
            return jtju
    else:
        y_at_x = forward_op.forward(x).detach()

        def gram(u: Tensor) -> Tensor:
            plus = half_data_gradient(forward_op, x + scale * u, y_at_x)
            minus = half_data_gradient(forward_op, x - scale * u, y_at_x)
            return (plus - minus) / (2 * scale)
    lam = math.nan
    for _ in range(iters):
        w = gram(v)
        lam = float((v * w).sum())
        norm = w.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        v = w / norm
    return abs(lam)
