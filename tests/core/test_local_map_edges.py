"""The local MAP solvers' edges against independent truths: dense Jacobians of K gradient steps (autograd through
the iterations), dense normal equations, conjugate gradient's stopping rule and per-sample batches, the operator
probe's scale-free errors and tolerances (docs/calibration.md), and power iteration on non-linear operators
against the dense JᵀJ."""
from __future__ import annotations

import math

import pytest
import torch

import hand_operators
from hand_operators import Affine, eigh_basis

from lmaps_plugin.local_map import (OperatorProbe, cg_local_map, conjugate_gradient, estimate_gram_norm, gd_local_map,
                                    normal_equation_ops, probe_operator)
from lmaps_plugin.operators import MatrixOperator
from lmaps_plugin.operators.base import Operator
from lmaps_plugin.operators.linear import RandomInpainting

DT = torch.float64
SHAPE = (1, 3, 4)
D = 12


def dense(m=7, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(m, D, generator=gen, dtype=DT) / math.sqrt(D)


# -- K gradient steps, differentiated -----------------------------------------------------------------

@pytest.mark.parametrize("wrt", ["x0_hat", "y", "both"])
def test_autograd_through_the_gradient_steps_gives_their_dense_jacobian(wrt):
    """x_K after K steps of x ← x − η[(1 − r)(x − x̂0) + r·k2·Aᵀ(Ax − y)] is affine in (x̂0, y):
    x_K = Qᴷx̂0 + (I − Qᴷ)M⁻¹[(1 − r)x̂0 + r·k2·Aᵀy], Q = I − ηM, M = (1 − r)I + r·k2·AᵀA."""
    a = dense()
    op = MatrixOperator(a, SHAPE)
    gen = torch.Generator().manual_seed(1)
    x_hat = torch.randn(1, *SHAPE, generator=gen, dtype=DT).requires_grad_(wrt in ("x0_hat", "both"))
    y = torch.randn(1, 7, generator=gen, dtype=DT).requires_grad_(wrt in ("y", "both"))
    r, k2, lr, steps = 0.8, 4.0, 0.05, 9
    x_k, _ = gd_local_map(x_hat, y, op, r, k2, lr, steps, closed_form=False)
    m = (1 - r) * torch.eye(D, dtype=DT) + r * k2 * a.T @ a
    qk = torch.linalg.matrix_power(torch.eye(D, dtype=DT) - lr * m, steps)
    solve = (torch.eye(D, dtype=DT) - qk) @ torch.linalg.inv(m)
    truth = (qk @ x_hat.detach().flatten() + solve @ ((1 - r) * x_hat.detach().flatten() + r * k2 * a.T @ y.detach()[0]))
    torch.testing.assert_close(x_k.detach().flatten(), truth, rtol=1e-12, atol=1e-12)
    weights = torch.randn(D, generator=gen, dtype=DT)
    grads = torch.autograd.grad((x_k.flatten() * weights).sum(), [t for t in (x_hat, y) if t.requires_grad])
    expected = {"x0_hat": (qk + (1 - r) * solve).T @ weights, "y": (r * k2 * solve @ a.T).T @ weights}
    names = [n for n, t in (("x0_hat", x_hat), ("y", y)) if t.requires_grad]
    for name, grad in zip(names, grads):
        torch.testing.assert_close(grad.flatten(), expected[name], rtol=1e-10, atol=1e-12)


def test_gradient_descent_in_closed_form_calls_no_gradient(monkeypatch):
    """Our plain least-squares operators with an eigenbasis: K steps are summed without calling ``gradient``."""
    op = RandomInpainting(drop_fraction=0.5, seed=0, resolution=8, channels=1)
    calls = []
    original = op.gradient
    monkeypatch.setattr(op, "gradient", lambda *a, **k: calls.append(1) or original(*a, **k))
    gen = torch.Generator().manual_seed(2)
    x_hat, y = torch.randn(1, 1, 8, 8, generator=gen, dtype=DT), torch.randn(1, 1, 8, 8, generator=gen, dtype=DT)
    fast, _ = gd_local_map(x_hat, y, op, 0.9, 5.0, 0.1, 7, closed_form=True)
    assert calls == []
    slow, _ = gd_local_map(x_hat, y, op, 0.9, 5.0, 0.1, 7, closed_form=False)
    assert len(calls) == 7
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


# -- the normal equations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,offset", [("ours", 0.0), ("undeclared", 0.0), ("undeclared", 0.7)])
def test_normal_equation_ops_are_the_dense_gram_map_and_the_shifted_adjoint(kind, offset):
    a = dense(seed=3)
    op = MatrixOperator(a, SHAPE) if kind == "ours" else Affine(a, offset)
    gen = torch.Generator().manual_seed(4)
    v, y = torch.randn(2, *SHAPE, generator=gen, dtype=DT), torch.randn(2, 7, generator=gen, dtype=DT)
    gram, hty = normal_equation_ops(op, y, v)
    torch.testing.assert_close(gram(v).flatten(1), v.flatten(1) @ (a.T @ a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hty.flatten(1), (y - offset) @ a, rtol=1e-12, atol=1e-12)


# -- conjugate gradient -------------------------------------------------------------------------------------

def spd(n=D, seed=5, cond=1e3):
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT)).Q
    return q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=DT)) @ q.T


def test_conjugate_gradient_solves_each_sample_of_a_batch_on_its_own():
    m = spd()
    gen = torch.Generator().manual_seed(6)
    rhs = torch.randn(3, D, generator=gen, dtype=DT) * torch.tensor([[1.0], [1e3], [1e-3]], dtype=DT)
    x, report = conjugate_gradient(lambda v: v @ m, rhs, torch.zeros_like(rhs), tol=1e-12, max_iter=200)
    torch.testing.assert_close(x, torch.linalg.solve(m, rhs.T).T, rtol=1e-9, atol=0)
    assert report.converged and report.relative_residual <= 1e-12


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_conjugate_gradient_stops_at_the_first_iterate_within_the_relative_tolerance(scale):
    """The stopping rule is relative (‖rhs − Mx‖ ≤ tol·‖rhs‖), whatever the size of rhs: the run stops at the
    first iteration whose residual (measured by capped runs) is within tol."""
    m = spd(seed=7)
    rhs = scale * torch.randn(1, D, generator=torch.Generator().manual_seed(8), dtype=DT)
    tol = 1e-4
    _, report = conjugate_gradient(lambda v: v @ m, rhs, torch.zeros_like(rhs), tol=tol, max_iter=200)
    residuals = []
    for k in range(1, report.iterations + 1):
        xk, _ = conjugate_gradient(lambda v: v @ m, rhs, torch.zeros_like(rhs), tol=0.0, max_iter=k)
        residuals.append(float((rhs - xk @ m).norm() / rhs.norm()))
    assert residuals[-1] <= tol * (1 + 1e-6) and all(res > tol for res in residuals[:-1])
    assert report.relative_residual == pytest.approx(residuals[-1], rel=1e-6)


def test_cg_starts_where_it_is_told():
    """x_init is CG's starting point: started at the solution it runs no iteration."""
    a = dense(seed=9, scale=3.0)
    op = MatrixOperator(a, SHAPE)
    gen = torch.Generator().manual_seed(10)
    x_hat, y = torch.randn(1, *SHAPE, generator=gen, dtype=DT), torch.randn(1, 7, generator=gen, dtype=DT)
    solution, _, cold = cg_local_map(x_hat, y, op, 0.9, 10.0, tol=1e-10, max_iter=300)
    again, _, warm = cg_local_map(x_hat, y, op, 0.9, 10.0, tol=1e-10, max_iter=300, x_init=solution)
    assert cold.iterations > 3 and warm.iterations == 0 and torch.equal(again, solution)
    elsewhere = x_hat + torch.randn(1, *SHAPE, generator=gen, dtype=DT)
    _, _, far = cg_local_map(x_hat, y, op, 0.9, 10.0, tol=1e-10, max_iter=300, x_init=elsewhere)
    assert far.iterations > 0


# -- the operator probe ------------------------------------------------------------------------------------

def test_probe_tolerances_are_1e8_in_float64_and_1e3_otherwise():
    assert OperatorProbe.tolerance(torch.float64) == 1e-8
    assert OperatorProbe.tolerance(torch.float32) == OperatorProbe.tolerance(torch.float16) == 1e-3
    edge64, edge32 = OperatorProbe(1e-8, 1e-8), OperatorProbe(1e-3, 1e-3)
    assert edge64.is_affine(DT) and edge64.is_least_squares(DT)                        # "within": ≤
    assert edge32.is_affine(torch.float32) and edge32.is_least_squares(torch.float32)
    assert not OperatorProbe(2e-8, 0.0).is_affine(DT) and not OperatorProbe(0.0, 2e-8).is_least_squares(DT)
    assert not OperatorProbe(2e-3, 0.0).is_affine(torch.float32)
    assert not OperatorProbe(0.0, 2e-3).is_least_squares(torch.float32)


def test_probe_errors_are_relative_so_scale_free():
    """Scaling H and y by 10 changes neither relative error; a non-linear H and a weighted loss are far off in
    float32 too."""
    a = dense(seed=11)
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(12), dtype=DT)
    y = torch.randn(1, 7, generator=torch.Generator().manual_seed(13), dtype=DT)
    weight = torch.linspace(0.5, 2.0, 7, dtype=DT)
    for make in (lambda s: Affine(s * a, square=True), lambda s: Affine(s * a, weight=weight)):
        small, large = probe_operator(make(1.0), x, y), probe_operator(make(10.0), x, 10.0 * y)
        assert large.affine_error == pytest.approx(small.affine_error, rel=1e-9, abs=1e-15)
    small = probe_operator(Affine(a, weight=weight), x, y)
    large = probe_operator(Affine(10.0 * a, weight=weight), x, 10.0 * y)
    assert large.least_squares_error == pytest.approx(small.least_squares_error, rel=1e-9)
    assert 1e-2 < small.least_squares_error < 1
    curved = probe_operator(Affine(a.float(), square=True), x.float(), y.float())
    assert curved.affine_error > 0.05 and not curved.is_affine(torch.float32)


def test_probe_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    probe_operator(Affine(dense()), torch.zeros(1, *SHAPE, dtype=DT), torch.zeros(1, 7, dtype=DT))
    assert torch.equal(torch.rand(3), expected)


# -- λ_max(JᵀJ) by power iteration ------------------------------------------------------------------------

class Tanh(Operator):
    """H(x) = tanh(A x): non-linear; JᵀJ at x is Aᵀ diag(1 − tanh²(Ax))² A."""

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward(self, x, **kwargs):
        return torch.tanh(x.flatten(1) @ self.a.T)


class TanhSurrogate(Operator):
    """A non-differentiable operator (rounds its output) whose gradient uses the tanh surrogate."""
    is_differentiable = False

    def __init__(self, a):
        super().__init__()
        self.a = a

    def forward_surrogate(self, x):
        return torch.tanh(x.flatten(1) @ self.a.T)

    def forward(self, x, **kwargs):
        return torch.round(self.forward_surrogate(x) * 4) / 4


def dense_gram_norm(a, x):
    d = 1 - torch.tanh(x.flatten() @ a.T) ** 2
    j = d[:, None] * a
    return float(torch.linalg.eigvalsh(j.T @ j).max())


@pytest.mark.parametrize("cls", [Tanh, TanhSurrogate])
def test_power_iteration_measures_the_jacobian_of_a_non_linear_operator_at_x(cls):
    a = dense(seed=14, scale=2.0)
    x = 0.7 * torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(15), dtype=DT)
    truth = dense_gram_norm(a, x)
    # central differences with step 1e-3·(‖x‖ + 1): O(step²) ≈ 3e-5 relative here
    assert estimate_gram_norm(cls(a), x, iters=300) == pytest.approx(truth, rel=1e-4)
    # at another point the Jacobian, and λ_max, differ
    assert abs(dense_gram_norm(a, 3 * x) - truth) > 0.05 * truth


def test_power_iteration_of_a_zero_operator_is_zero_and_of_a_nan_adjoint_is_nan():
    zero = MatrixOperator(torch.zeros(5, D, dtype=DT), SHAPE)
    assert estimate_gram_norm(zero, torch.ones(1, *SHAPE, dtype=DT)) == 0.0

    class NaNAdjoint(MatrixOperator):
        def adjoint(self, y):
            return super().adjoint(y) * float("nan")

    assert math.isnan(estimate_gram_norm(NaNAdjoint(dense(), SHAPE), torch.ones(1, *SHAPE, dtype=DT)))


def test_power_iteration_reports_the_magnitude_of_the_leading_eigenvalue():
    """abs(λ): an operator whose "Gram map" is negative definite (a sign error upstream) still gives a step size."""
    a = dense(seed=16)

    class Negative(MatrixOperator):
        def adjoint(self, y):
            return -super().adjoint(y)

    truth = float(torch.linalg.eigvalsh(a.T @ a).max())
    assert estimate_gram_norm(Negative(a, SHAPE), torch.zeros(1, *SHAPE, dtype=DT), iters=300) == pytest.approx(
        truth, rel=1e-9)


class AffineWithAdjoint(hand_operators.AffineWithAdjoint):
    """InverseBench's scattering operator in miniature: H(x) = A x + c with ``adjoint`` the transpose of A."""

    img_shape = SHAPE


def test_power_iteration_of_an_affine_operator_removes_its_offset():
    a = dense(seed=17)
    truth = float(torch.linalg.eigvalsh(a.T @ a).max())
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(18), dtype=DT)
    assert estimate_gram_norm(AffineWithAdjoint(a, c=3.0), x, iters=300) == pytest.approx(truth, rel=1e-10)


def test_power_iteration_estimates_never_exceed_lambda_max_and_leave_the_global_random_state_alone():
    """Each estimate is a Rayleigh quotient of a unit vector, so it lies in (0, λ_max] for any number of
    iterations; the random start comes from the function's own seeded generator."""
    a = dense(seed=19)
    op = MatrixOperator(a, SHAPE)
    truth = float(torch.linalg.eigvalsh(a.T @ a).max())
    x = torch.zeros(1, *SHAPE, dtype=DT)
    for iters in (1, 2, 5):
        assert 0 < estimate_gram_norm(op, x, iters=iters) <= truth * (1 + 1e-12)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = estimate_gram_norm(op, x, iters=3)
    assert torch.equal(torch.rand(3), expected)
    assert estimate_gram_norm(op, x, iters=3) == first


def test_power_iteration_measures_the_first_sample_at_any_norm():
    """λ_max(JᵀJ) at x[:1], the first sample of a batch; ‖x‖ = 1 included (the difference step stays > 0)."""
    a = dense(seed=14, scale=2.0)
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(20), dtype=DT)
    x = x / x.norm()
    steep = torch.zeros_like(x)                              # tanh' = 1 at 0: the largest Jacobian
    for cls in (Tanh, TanhSurrogate):
        got = estimate_gram_norm(cls(a), torch.cat([x, steep]), iters=300)
        assert got == pytest.approx(dense_gram_norm(a, x), rel=1e-4)
        assert dense_gram_norm(a, steep) > 1.1 * got


def test_power_iteration_differentiates_what_the_gradient_differentiates():
    """The surrogate's Jacobian only for operators that say they are not differentiable and offer one; any other
    operator is measured through its own gradient (its forward's Jacobian); a non-differentiable operator
    without a surrogate is measured through its gradient too."""
    a = dense(seed=21, scale=2.0)
    x = 0.5 * torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(22), dtype=DT)

    class TanhWithOtherSurrogate(Tanh):
        def forward_surrogate(self, v):          # not what forward (or the gradient) uses
            return 3.0 * (v.flatten(1) @ self.a.T)

    class Declared(TanhWithOtherSurrogate):
        is_differentiable = True

    class NoSurrogate(Tanh):
        is_differentiable = False

    for cls in (TanhWithOtherSurrogate, Declared, NoSurrogate):
        assert estimate_gram_norm(cls(a), x, iters=300) == pytest.approx(dense_gram_norm(a, x), rel=1e-4)


# -- the linear system of an operator ----------------------------------------------------------------------

@pytest.mark.parametrize("offset", [0.0, 0.7])
def test_normal_equations_of_an_affine_operator_with_an_adjoint_remove_its_offset(offset):
    """InverseBench's scattering operator in miniature: ``adjoint`` is the transpose of the linear part, the
    offset H(0) is measured once: AᵀA v and Aᵀ(y − c) densely, and the exact solve is Eq. 13's dense minimiser."""
    a = dense(seed=23)
    op = AffineWithAdjoint(a, c=offset)
    gen = torch.Generator().manual_seed(24)
    v, y = torch.randn(2, *SHAPE, generator=gen, dtype=DT), torch.randn(2, 7, generator=gen, dtype=DT)
    gram, hty = normal_equation_ops(op, y, v)
    torch.testing.assert_close(gram(v).flatten(1), v.flatten(1) @ (a.T @ a), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hty.flatten(1), (y - offset) @ a, rtol=1e-12, atol=1e-12)
    r, k2 = 0.7, 5.0
    x, _, report = cg_local_map(v, y, op, r, k2, tol=1e-12, max_iter=300)
    lhs = (1 - r) * torch.eye(D, dtype=DT) + r * k2 * a.T @ a
    truth = torch.linalg.solve(lhs, ((1 - r) * v.flatten(1) + r * k2 * (y - offset) @ a).T).T
    torch.testing.assert_close(x.flatten(1), truth, rtol=1e-9, atol=1e-10)
    assert report.iterations > 0


class AffineWithBasis(hand_operators.AffineWithBasis):
    img_shape = SHAPE


class MatrixWithBasis(MatrixOperator):
    def gram_eigenbasis(self, like):
        return eigh_basis(self.matrix, SHAPE)


class MatrixWithOwnLoss(MatrixWithBasis):
    """Overrides ``loss`` with the same plain sum of squares: not provably plain, so no eigenbasis is trusted."""

    def loss(self, pred, observation, **kwargs):
        return ((self.forward(pred) - observation) ** 2).flatten(1).sum(1)


@pytest.mark.parametrize("make,closed_form,uses_basis", [
    (lambda a: AffineWithBasis(a, c=0.3), True, True),      # an undeclared affine operator's own eigenbasis
    (lambda a: AffineWithBasis(a, c=0.3), False, False),    # closed_form=False: conjugate gradient
    (lambda a: MatrixWithBasis(a, SHAPE), True, True),
    (lambda a: MatrixWithBasis(a, SHAPE), False, False),
    (lambda a: MatrixWithOwnLoss(a, SHAPE), True, False),   # one of ours with its own loss: conjugate gradient
])
def test_the_exact_solve_uses_an_eigenbasis_exactly_when_it_may(make, closed_form, uses_basis):
    a = dense(seed=25)
    op = make(a)
    gen = torch.Generator().manual_seed(26)
    x_hat, y = torch.randn(1, *SHAPE, generator=gen, dtype=DT), torch.randn(1, 7, generator=gen, dtype=DT)
    x, _, report = cg_local_map(x_hat, y, op, 0.8, 6.0, tol=1e-12, max_iter=300, closed_form=closed_form)
    assert (report.iterations == 0) == uses_basis
    c = getattr(op, "c", 0.0)
    lhs = 0.2 * torch.eye(D, dtype=DT) + 4.8 * a.T @ a
    truth = torch.linalg.solve(lhs, (0.2 * x_hat.flatten(1) + 4.8 * (y - c) @ a).T).T
    torch.testing.assert_close(x.flatten(1), truth, rtol=1e-9, atol=1e-10)


def test_an_operator_with_its_own_gradient_is_not_summed_in_closed_form():
    """Overriding ``gradient`` alone (here: twice the plain one) already rules out the closed form."""
    class Steeper(MatrixWithBasis):
        def gradient(self, pred, observation, return_loss=False):
            return 2.0 * super().gradient(pred, observation, return_loss)

    a = dense(seed=27)
    gen = torch.Generator().manual_seed(28)
    x_hat, y = torch.randn(1, *SHAPE, generator=gen, dtype=DT), torch.randn(1, 7, generator=gen, dtype=DT)
    r, k2, lr, steps = 0.9, 2.0, 0.05, 5
    got, _ = gd_local_map(x_hat, y, Steeper(a, SHAPE), r, k2, lr, steps, closed_form=True)
    x = x_hat.flatten(1)
    for _ in range(steps):
        x = x - lr * ((1 - r) * (x - x_hat.flatten(1)) + r * k2 * 2.0 * (x @ a.T - y) @ a)
    torch.testing.assert_close(got.flatten(1), x, rtol=1e-12, atol=1e-12)


def test_conjugate_gradient_holds_each_sample_to_its_own_relative_tolerance():
    """Two samples of very different size: each must end within tol of its own right-hand side (not of the
    batch's total), and the report gives the worst of the per-sample relative residuals."""
    gen = torch.Generator().manual_seed(29)
    diag = torch.stack([torch.logspace(0, 3, D, dtype=DT), torch.logspace(3, 0, D, dtype=DT)])
    rhs = torch.randn(2, D, generator=gen, dtype=DT) * torch.tensor([[1e3], [1e-3]], dtype=DT)
    tol = 1e-3
    x, report = conjugate_gradient(lambda v: v * diag, rhs, torch.zeros_like(rhs), tol=tol, max_iter=500)
    per_sample = ((rhs - x * diag).norm(dim=1) / rhs.norm(dim=1)).tolist()
    assert max(per_sample) <= tol * (1 + 1e-9)
    assert report.relative_residual == pytest.approx(max(per_sample), rel=1e-9)


def test_gram_map_takes_the_operators_own_fused_gram_when_it_offers_one():
    """local_map.gram_map: an operator's own ``gram`` (one fused product, as the MRI adapter's) is used as is;
    otherwise AᵀA v = adjoint(H(v) − H(0))."""
    from lmaps_plugin.local_map import gram_map

    a = dense(seed=30)

    class Fused(AffineWithAdjoint):
        def gram(self, v):
            return (v.flatten(1) @ (self.a.T @ self.a)).reshape(v.shape)

    fused = Fused(a, c=0.5)
    assert gram_map(fused, offset=torch.zeros(1, 7, dtype=DT)) == fused.gram
    v = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(31), dtype=DT)
    plain = AffineWithAdjoint(a, c=0.5)
    offset = plain.forward(torch.zeros(1, *SHAPE, dtype=DT))
    torch.testing.assert_close(gram_map(plain, offset)(v), fused.gram(v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gram_map(MatrixOperator(a, SHAPE))(v), fused.gram(v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("r,k2", [(0.9, 20.0), (0.5, 1.5)])          # b = r·k2 = 18 and 0.75
def test_the_warm_start_carries_the_gram_product_of_the_solution(r, k2):
    """exact_local_map reports AᵀA x of its solution (recovered from CG's residual); a solve warm-started from a
    capped, far-from-converged solution with that product still reaches the dense minimiser."""
    from lmaps_plugin.local_map import exact_local_map, linear_system

    a = dense(m=9, seed=32, scale=3.0)
    op = MatrixOperator(a, SHAPE)
    gen = torch.Generator().manual_seed(33)
    x_hat, y = torch.randn(1, *SHAPE, generator=gen, dtype=DT), torch.randn(1, 9, generator=gen, dtype=DT)
    system = linear_system(op, y, x_hat, use_eigenbasis=False)
    capped, report = exact_local_map(x_hat, system, r, k2, tol=1e-14, max_iter=2)
    assert not report.converged and report.relative_residual > 1e-3
    torch.testing.assert_close(report.gram_solution.flatten(1), capped.flatten(1) @ (a.T @ a), rtol=1e-9, atol=1e-9)
    x, warm = exact_local_map(x_hat, system, r, k2, tol=1e-12, max_iter=500, x_init=capped,
                              gram_init=report.gram_solution)
    lhs = (1 - r) * torch.eye(D, dtype=DT) + r * k2 * a.T @ a
    truth = torch.linalg.solve(lhs, ((1 - r) * x_hat.flatten(1) + r * k2 * y @ a).T).T
    torch.testing.assert_close(x.flatten(1), truth, rtol=1e-9, atol=1e-10)
    assert warm.converged
