"""K gradient steps on Eq. 13 evaluated by Lanczos (lmaps_plugin.local_map.krylov) against the K steps run one by
one, the closed form in an eigenbasis, and the sampler's choice of evaluation."""
from __future__ import annotations

import pytest
import torch

from hand_operators import Affine, AffineWithAdjoint, AffineWithBasis
from lmaps_plugin.local_map import InnerSettings, InnerSolve, gd_closed_form
from lmaps_plugin.local_map.exact import LinearSystem, linear_system
from lmaps_plugin.local_map.krylov import gd_by_lanczos, lanczos_polynomial

IMG = (1, 6, 6)
N = 36


def gd_one_by_one(x0_hat, system, r, k2, lr, steps):
    x = x0_hat.clone()
    for _ in range(steps):
        x = x - lr * ((1 - r) * (x - x0_hat) + r * k2 * (system.gram(x) - system.hty))
    return x


def dense_system(seed, rows=30, dtype=torch.float64, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, N, generator=g, dtype=dtype) * scale
    y = torch.randn(2, rows, generator=g, dtype=dtype)
    op = AffineWithAdjoint(a, img_shape=IMG)
    x0_hat = torch.randn(2, *IMG, generator=g, dtype=dtype)
    return op, linear_system(op, y, x0_hat, use_eigenbasis=False), x0_hat, y


def relative(a, b):
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


@pytest.mark.parametrize("r,k2,lr,steps", [(0.9, 10.0, 0.01, 100), (0.5, 100.0, 0.002, 50),
                                           (0.99, 1.0, 0.5, 200), (0.2, 3.0, 0.3, 7)])
def test_lanczos_lands_where_the_k_steps_land(r, k2, lr, steps):
    _, system, x0_hat, _ = dense_system(0)
    reference = gd_one_by_one(x0_hat, system, r, k2, lr, steps)
    x, report = gd_by_lanczos(x0_hat, system, r, k2, lr, steps, tol=1e-6)
    assert report.converged and report.iterations <= steps
    # the error is measured on the correction x_K − x̂0, the part the steps compute
    assert relative(x - x0_hat, reference - x0_hat) < 1e-5


def test_at_degree_k_the_evaluation_is_exact_to_rounding():
    _, system, x0_hat, _ = dense_system(1)
    r, k2, lr, steps = 0.7, 20.0, 0.01, 9
    x, report = gd_by_lanczos(x0_hat, system, r, k2, lr, steps, tol=0.0)
    assert report.iterations == steps and report.converged
    assert relative(x - x0_hat, gd_one_by_one(x0_hat, system, r, k2, lr, steps) - x0_hat) < 1e-11


def test_agrees_with_the_eigenbasis_closed_form_in_float32():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(30, N, generator=g) * 0.3
    op = AffineWithBasis(a, img_shape=IMG)
    y = torch.randn(3, 30, generator=g)
    x0_hat = torch.randn(3, *IMG, generator=g)
    with_basis = linear_system(op, y, x0_hat, use_eigenbasis=True)
    r, k2, lr, steps = 0.95, 3.0, 0.01, 100
    closed = gd_closed_form(x0_hat, with_basis.hty_coeffs, with_basis.eigenbasis, r, k2, lr, steps)
    x, report = gd_by_lanczos(x0_hat, linear_system(op, y, x0_hat, use_eigenbasis=False), r, k2, lr, steps)
    assert x.dtype == torch.float32 and report.converged
    assert relative(x - x0_hat, closed - x0_hat) < 1e-3


def test_a_projector_is_exhausted_after_two_products_and_exact():
    # G = mask (eigenvalues 0 and 1): the Krylov space of any v has dimension ≤ 2
    mask = (torch.arange(N) % 3 == 0).double().view(1, *IMG)
    system = LinearSystem(gram=lambda v: mask * v, hty=mask * torch.full((1, *IMG), 0.5, dtype=torch.float64))
    x0_hat = torch.linspace(-1, 1, N, dtype=torch.float64).view(1, *IMG)
    r, k2, lr, steps = 0.8, 50.0, 0.01, 100
    x, report = gd_by_lanczos(x0_hat, system, r, k2, lr, steps)
    assert report.iterations <= 4
    assert relative(x - x0_hat, gd_one_by_one(x0_hat, system, r, k2, lr, steps) - x0_hat) < 1e-10


def test_a_zero_gradient_leaves_x0_hat_and_the_other_sample_moves():
    _, system, x0_hat, _ = dense_system(3)
    # sample 0 already fits its data (Gx̂0 = Aᵀ(y − c)): no step moves it
    hty = system.hty.clone()
    hty[0] = system.gram(x0_hat)[0]
    system = LinearSystem(gram=system.gram, hty=hty)
    x, report = gd_by_lanczos(x0_hat, system, 0.9, 10.0, 0.01, 40)
    assert torch.equal(x[0], x0_hat[0])
    assert relative(x[1:] - x0_hat[1:], gd_one_by_one(x0_hat, system, 0.9, 10.0, 0.01, 40)[1:] - x0_hat[1:]) < 1e-5
    assert report.converged


def test_an_unstable_step_blows_up_as_the_iteration_does():
    _, system, x0_hat, _ = dense_system(4, scale=1.0)
    lam_max = float(torch.linalg.eigvalsh(system.gram(torch.eye(N, dtype=torch.float64).view(N, *IMG)).view(N, N)).max())
    r, k2, steps = 0.9, 1.0, 30
    lr = 3.0 / ((1 - r) + r * k2 * lam_max)          # η·a_max = 3 > 2: gradient descent diverges
    reference = gd_one_by_one(x0_hat, system, r, k2, lr, steps)
    x, _ = gd_by_lanczos(x0_hat, system, r, k2, lr, steps)
    assert float(reference.abs().max()) > 1e6
    assert relative(x - x0_hat, reference - x0_hat) < 1e-6


def test_lanczos_polynomial_of_a_zero_vector_is_zero():
    out, report = lanczos_polynomial(lambda v: 2 * v, torch.zeros(2, *IMG), 0.5, 1.0, 0.1, 10)
    assert torch.equal(out, torch.zeros(2, *IMG)) and report.converged and report.iterations <= 4


def test_the_solve_uses_lanczos_without_an_eigenbasis_and_matches_one_by_one():
    op, _, x0_hat, y = dense_system(5, dtype=torch.float32)
    settings = InnerSettings(kind="gd", lr=0.01, steps=100, step_guard=False)
    summed, one_by_one = InnerSolve(settings), InnerSolve(InnerSettings(kind="gd", lr=0.01, steps=100,
                                                                        step_guard=False, closed_form=False))
    x_summed, loss_summed, _ = summed(x0_hat, y, op, 0.9, 10.0, step=0, sigma=1.0)
    op.gradient_calls = 0
    x_steps, loss_steps, _ = one_by_one(x0_hat, y, op, 0.9, 10.0, step=0, sigma=1.0)
    assert op.gradient_calls == 100 and one_by_one.stats().get("krylov_iterations_mean") is None
    assert "by Lanczos" in summed.description and "one by one" in one_by_one.description
    assert summed.stats()["krylov_iterations_mean"] < 100
    assert relative(x_summed - x0_hat, x_steps - x0_hat) < 1e-3
    assert torch.allclose(loss_summed, loss_steps, rtol=1e-3)


def test_the_solve_keeps_one_by_one_steps_when_autograd_records_through_x0_hat():
    op, _, x0_hat, y = dense_system(6)
    solve = InnerSolve(InnerSettings(kind="gd", lr=0.01, steps=5, step_guard=False))
    x0_hat = x0_hat.requires_grad_(True)
    with torch.enable_grad():
        x, _, _ = solve(x0_hat, y, op, 0.9, 10.0, step=0, sigma=1.0)
    (grad,) = torch.autograd.grad(x.sum(), x0_hat)
    assert torch.isfinite(grad).all() and not solve.krylov_reports


def test_an_observation_that_carries_a_graph_does_not_make_the_steps_record_one():
    # an operator with a trainable kernel returns observations that require grad (InverseBench's blurs)
    op, _, x0_hat, y = dense_system(7, dtype=torch.float32)
    y = y * torch.ones((), requires_grad=True)
    solve = InnerSolve(InnerSettings(kind="gd", lr=0.01, steps=20, step_guard=False))
    x, loss, _ = solve(x0_hat, y, op, 0.9, 10.0, step=0, sigma=1.0)
    assert not x.requires_grad and solve.krylov_reports        # summed by Lanczos, no graph kept


def test_the_gram_map_without_an_adjoint_does_not_cancel_against_a_large_observation():
    # ½∇loss(v) + Aᵀy would subtract two vectors of the observation's size from each other
    g = torch.Generator().manual_seed(8)
    a = torch.randn(30, N, generator=g)
    op = Affine(a, c=torch.randn(30, generator=g))           # affine, no adjoint: Aᵀ comes from autograd
    y = 1e4 * torch.randn(1, 30, generator=g)
    q = 1e-3 * torch.randn(1, *IMG, generator=g)
    system = linear_system(op, y, q, use_eigenbasis=False)
    exact = (q.double().flatten(1) @ (a.double().T @ a.double())).view(q.shape)
    assert relative(system.gram(q).double(), exact) < 1e-5
