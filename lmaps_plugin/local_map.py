"""Inner solvers of LMAPS: the local MAP problem of Eq. 13,

    x0* = argmin (1 − r)·½‖x0 − x̂0‖² + r·k2·½·loss(x0),

where ``loss`` is the operator's own data-consistency loss (‖y − H(x0)‖² by default), so the
data gradient is half of ``forward_op.gradient`` (DESIGN.md §1: η·k2 = 1 projects observed
pixels onto y in one step at r ≈ 1).

* :func:`gd_local_map` — K steps of gradient descent (the paper's solver), summed in closed
  form by :func:`gd_closed_form` when the operator offers an eigenbasis of HᵀH.
* :func:`cg_local_map` — conjugate gradient on the normal equations
  ((1 − r)·I + r·k2·HᵀH) x = (1 − r)·x̂0 + r·k2·Hᵀy, exact for linear H; solved directly in the
  Gram eigenbasis (:func:`exact_closed_form`) when the operator offers one.
* :func:`estimate_gram_norm` — λ_max(JᵀJ) by power iteration, for the step-size guard.
"""
from __future__ import annotations

from typing import Callable

import torch

from .operators.base import LinearOperator, Operator

Tensor = torch.Tensor


def batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product ⟨a_i, b_i⟩, shaped ``(batch, 1, ..., 1)`` to broadcast."""
    dot = (a * b).flatten(start_dim=1).sum(dim=1)
    return dot.view(-1, *([1] * (a.ndim - 1)))


def half_data_gradient(forward_op, x: Tensor, y: Tensor) -> Tensor:
    """½∇loss(x) through the operator's own ``gradient``; for the default loss, Jᵀ(H(x) − y)."""
    return 0.5 * forward_op.gradient(x, y)


def gd_local_map(x0_hat: Tensor, y: Tensor, forward_op, r: float, k2: float, lr: float,
                 steps: int, closed_form: bool = True) -> tuple[Tensor, Tensor]:
    """Gradient descent on Eq. 13 from ``x̂0`` (Alg. 4, lines 6–10).

    Returns the local MAP estimate and its per-sample data loss. For a linear operator that
    exposes an orthogonal eigenbasis of HᵀH (``gram_eigenbasis``: masks, super-resolution,
    separable blurs) and ``closed_form=True``, the ``steps`` iterates are summed in closed form
    (:func:`gd_closed_form`: the same point, to rounding, at the cost of ~3 operator calls);
    otherwise they are run one by one. ``x0_hat`` is never modified.
    """
    basis = _gram_eigenbasis(forward_op, x0_hat) if closed_form else None
    if basis is not None:
        x0 = gd_closed_form(x0_hat, y, forward_op, basis, r, k2, lr, steps)
    else:
        x0 = _gd_iterations(x0_hat, y, forward_op, r, k2, lr, steps)
    with torch.no_grad():
        loss = forward_op.loss(x0, y).detach().reshape(-1)
    return x0, loss


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


def _gram_eigenbasis(forward_op, like: Tensor):
    """The operator's Gram eigenbasis when the closed form is valid for it, else None.

    Valid means: a :class:`~lmaps_plugin.operators.base.LinearOperator` whose ``loss`` and
    ``gradient`` are the base class's (so ``gradient = 2Hᵀ(Hx − y)`` exactly, the quadratic
    the closed form sums), and which offers ``gram_eigenbasis``. An operator that overrides
    ``loss`` or ``gradient`` (a weighted or rescaled misfit) runs the plain iterations.
    """
    if not (isinstance(forward_op, LinearOperator) and forward_op.is_linear):
        return None
    cls = type(forward_op)
    if cls.gradient is not LinearOperator.gradient or cls.loss is not Operator.loss:
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


def gd_closed_form(x0_hat: Tensor, y: Tensor, forward_op, basis, r: float, k2: float, lr: float,
                   steps: int) -> Tensor:
    """K steps of :func:`gd_local_map`'s gradient descent, evaluated in the Gram eigenbasis.

    For linear H the objective is quadratic with Hessian ``A = (1 − r)I + r·k2·HᵀH`` and
    ``b = (1 − r)·x̂0 + r·k2·Hᵀy``; in the eigenbasis ``V`` of HᵀH every coordinate follows
    :func:`gd_step_coefficients`, so ``x_K = V[qᴷ·Vᵀx̂0 + (1 − qᴷ)/a · Vᵀb]``, computed as
    ``V[(qᴷ + (1 − r)·g)·Vᵀx̂0 + r·k2·g·VᵀHᵀy]`` with ``g = (1 − qᴷ)/a``: two transforms in,
    one out, one adjoint. Divergent step sizes (``|q| > 1``) blow up as the iteration would.
    """
    qk, gain = gd_step_coefficients(basis.eigenvalues, r, k2, lr, steps)
    return _combine_in_basis(basis, x0_hat, forward_op.adjoint(y), keep=qk + (1.0 - r) * gain,
                             pull=(r * k2) * gain)


def normal_equation_ops(forward_op, y: Tensor, like: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """The Gram map v ↦ HᵀHv and the vector Hᵀy of a linear operator.

    Uses the operator's ``adjoint`` when it has one; otherwise vector-Jacobian products through
    the operator's own ``gradient`` (½∇loss(v) = HᵀHv − Hᵀy for the default loss), which is
    exact for linear H.
    """
    if callable(getattr(forward_op, "adjoint", None)):
        return (lambda v: forward_op.adjoint(forward_op.forward(v))), forward_op.adjoint(y)
    zero = torch.zeros_like(like)
    hty = -half_data_gradient(forward_op, zero, y)
    return (lambda v: half_data_gradient(forward_op, v, y) + hty), hty


def exact_closed_form(x0_hat: Tensor, y: Tensor, forward_op, basis, r: float, k2: float) -> Tensor:
    """The minimiser of Eq. 13 in the Gram eigenbasis (the K → ∞ limit of :func:`gd_closed_form`).

    ``x* = V[((1 − r)·Vᵀx̂0 + r·k2·VᵀHᵀy) / a]`` with ``a = (1 − r) + r·k2·λ``. Where ``a = 0``
    (r = 1 on the null space of H) the objective is flat and x̂0's coordinate is kept, as
    conjugate gradient started from x̂0 keeps it.
    """
    a = (r * k2) * basis.eigenvalues.to(torch.float64) + (1.0 - r)
    flat = a == 0
    inverse = torch.where(flat, 0.0, 1.0 / torch.where(flat, 1.0, a))
    keep = torch.where(flat, 1.0, (1.0 - r) * inverse)
    return _combine_in_basis(basis, x0_hat, forward_op.adjoint(y), keep=keep, pull=(r * k2) * inverse)


def _combine_in_basis(basis, x0_hat: Tensor, hty: Tensor, keep: Tensor, pull: Tensor) -> Tensor:
    """``V[keep·Vᵀx̂0 + pull·VᵀHᵀy]`` with per-eigenvalue ``keep`` and ``pull`` (float64, cast here)."""
    coeffs = keep.to(x0_hat.dtype) * basis.to_basis(x0_hat) + pull.to(x0_hat.dtype) * basis.to_basis(hty)
    return basis.from_basis(coeffs)


def cg_local_map(x0_hat: Tensor, y: Tensor, forward_op, r: float, k2: float, max_iter: int = 100,
                 tol: float = 1e-6, x_init: Tensor | None = None,
                 closed_form: bool = True) -> tuple[Tensor, Tensor]:
    """Solve ((1 − r)I + r·k2·HᵀH) x = (1 − r)x̂0 + r·k2·Hᵀy by conjugate gradient, per sample.

    Exact (to ``tol`` relative residual) for linear H. Returns the solution and its data loss.
    With ``closed_form=True`` and an operator that offers a Gram eigenbasis (see
    :func:`gd_local_map`), the system is solved in that basis instead (:func:`exact_closed_form`:
    exact to rounding, ~3 operator calls; ``max_iter``, ``tol`` and ``x_init`` are then unused).
    """
    basis = _gram_eigenbasis(forward_op, x0_hat) if closed_form else None
    if basis is not None:
        x = exact_closed_form(x0_hat, y, forward_op, basis, r, k2)
        return x, forward_op.loss(x, y).detach().reshape(-1)
    gram, hty = normal_equation_ops(forward_op, y, x0_hat)

    def system(v: Tensor) -> Tensor:
        return (1.0 - r) * v + (r * k2) * gram(v)

    rhs = (1.0 - r) * x0_hat + (r * k2) * hty
    x = (x0_hat if x_init is None else x_init).clone()
    residual = rhs - system(x)
    direction = residual.clone()
    rs = batch_dot(residual, residual)
    threshold = (tol ** 2) * batch_dot(rhs, rhs).clamp_min(torch.finfo(rhs.dtype).tiny)
    for _ in range(max_iter):
        if bool((rs <= threshold).all()):
            break
        a_dir = system(direction)
        curvature = batch_dot(direction, a_dir)
        alpha = torch.where(rs > threshold, rs / curvature.clamp_min(torch.finfo(rs.dtype).tiny),
                            torch.zeros_like(rs))
        x = x + alpha * direction
        residual = residual - alpha * a_dir
        rs_new = batch_dot(residual, residual)
        beta = rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny)
        direction = residual + beta * direction
        rs = rs_new
    loss = forward_op.loss(x, y).detach().reshape(-1)
    return x, loss


def estimate_gram_norm(forward_op, x: Tensor, iters: int = 20, seed: int = 0) -> float:
    """λ_max(JᵀJ) at ``x`` by power iteration, for the step-size guard.

    * Linear operators with an ``adjoint``: HᵀH exactly.
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
        def gram(u: Tensor) -> Tensor:
            return forward_op.adjoint(forward_op.forward(u))
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
    lam = 0.0
    for _ in range(iters):
        w = gram(v)
        lam = float((v * w).sum())
        norm = w.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        v = w / norm
    return abs(lam)
