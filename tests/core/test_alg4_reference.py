"""LMAPS end to end against Alg. 4 written out with dense linear algebra.

Independent truth: a Gaussian prior N(μ, C), whose exact denoiser is Tweedie's x̂0 = μ + C(C + σ²I)⁻¹(x − μ),
and a dense linear operator A. The reference below runs Alg. 4 with nothing from the package but the operator:
the poly-ρ grid of Karras et al. (Eq. 5), r = σ²/(σ² + k1² + 1e-6), K gradient steps of Eq. 13 (half
convention, docs/conventions.md) or its dense minimiser, the step-size guard's η = 1/L where η·L > 1.9
(docs/step_guard.md), lmaps_auto's weights (docs/calibration.md), and DDIM re-noising with η_DDIM. It draws
its noise as the sampler does (the start, then one draw per step, from the same generator), so every setting
of ``LMAPS`` must reach the same samples to float64 rounding.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from lmaps_plugin import LMAPS
from lmaps_plugin.operators import MatrixOperator
from lmaps_plugin.operators.base import GramEigenbasis
from lmaps_plugin.priors.gmm import GaussianMixturePrior

DT = torch.float64
SHAPE = (1, 3, 4)
D = 12
M = 7


class DenseEighOperator(MatrixOperator):
    """A dense operator that offers its Gram eigenbasis (dense eigh), so λ_max is exact."""

    def gram_eigenbasis(self, like):
        values, vectors = torch.linalg.eigh(self.matrix.T @ self.matrix)
        v = vectors.to(like.dtype)
        return GramEigenbasis(values.clamp_min(0.0), to_basis=lambda x: x.flatten(1) @ v,
                              from_basis=lambda c: (c @ v.T).reshape(c.shape[0], *SHAPE))


def setup(seed=0, sigma_noise=0.1, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    mu = 0.3 * torch.randn(1, D, generator=gen, dtype=DT)
    f = torch.randn(D, D, generator=gen, dtype=DT) / math.sqrt(D)
    cov = 0.2 * (f @ f.T) + 0.05 * torch.eye(D, dtype=DT)
    prior = GaussianMixturePrior.from_covariances([1.0], mu, cov[None], img_shape=SHAPE)
    a = scale * torch.randn(M, D, generator=gen, dtype=DT) / math.sqrt(D)
    y = torch.randn(2, M, generator=gen, dtype=DT)
    return prior, mu, cov, a, y, sigma_noise


def karras_grid(n, lo, hi, rho, final):
    i = torch.arange(n, dtype=DT)
    ramp = i / (n - 1) if n > 1 else i
    return [float(s) for s in (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho] + [final]


def reference(mu, cov, a, y, *, n, sigma_max, sigma_min, rho, sigma_final, k1, k2, lr, steps, solver, eta, guard,
              calibrate_sigma_y=None, sigma_data=0.5, variance="gaussian", lam=1.0, generator=None, num_samples=1, dtype=DT):
    """Alg. 4 by hand. Returns the final local MAP and, per step, (σ, r, η) as the sampler reports them."""
    ys = y.repeat_interleave(num_samples, dim=0)
    sigmas = karras_grid(n, sigma_min, sigma_max, rho, sigma_final)
    shape = (ys.shape[0], *SHAPE)
    x = (torch.randn(shape, generator=generator, dtype=dtype) if generator is not None
         else torch.randn(shape, dtype=dtype)) * sigmas[0]
    x = x.flatten(1)
    gram = a.T @ a
    lam_max = float(torch.linalg.eigvalsh(gram).max())
    eye = torch.eye(D, dtype=DT)
    log = []
    for i in range(n):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        x_hat = mu + (x - mu) @ torch.linalg.solve(cov + sigma ** 2 * eye, cov)             # Tweedie (C symmetric)
        if calibrate_sigma_y is None:
            r, w2 = sigma ** 2 / (sigma ** 2 + k1 ** 2 + 1e-6), k2
        else:
            v = sigma ** 2 * sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2) if variance == "gaussian" else sigma ** 2
            w = v / (lam * calibrate_sigma_y ** 2)
            r, w2 = w / (1 + w), 1.0
        if solver == "exact":
            lhs = (1 - r) * eye + r * w2 * gram
            x0 = torch.linalg.solve(lhs, ((1 - r) * x_hat + r * w2 * ys @ a).T).T
            step = 0.0
        else:
            curvature = (1 - r) + r * w2 * lam_max
            step = 1.0 / curvature if lr is None or (guard and lr * curvature > 1.9) else lr
            x0 = x_hat.clone()
            for _ in range(steps):
                x0 = x0 - step * ((1 - r) * (x0 - x_hat) + r * w2 * (x0 @ a.T - ys) @ a)
        log.append((sigma, r, step))
        noise = (torch.randn(shape, generator=generator, dtype=dtype) if generator is not None
                 else torch.randn(shape, dtype=dtype)).flatten(1)
        if nxt == 0:
            x = x0
        elif eta == 1.0:
            x = x0 + nxt * noise
        else:
            x = x0 + nxt * (math.sqrt(1 - eta ** 2) * (x - x0) / sigma + eta * noise)
    return x0.reshape(-1, *SHAPE), log


GRID = dict(num_steps=4, sigma_max=5.0, sigma_min=0.2, rho=3.0, sigma_final=0.05)


def ref_kwargs(grid):
    return dict(n=grid["num_steps"], sigma_max=grid["sigma_max"], sigma_min=grid["sigma_min"], rho=grid["rho"],
                sigma_final=grid["sigma_final"])


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("case", [
    dict(inner_solver="gd", lr=0.03, inner_steps=7, k1=0.4, k2=6.0, ddim_eta=0.6, step_guard=False, closed=True),
    dict(inner_solver="gd", lr=0.03, inner_steps=7, k1=0.4, k2=6.0, ddim_eta=0.6, step_guard=False, closed=False),
    dict(inner_solver="gd", lr=0.2, inner_steps=5, k1=0.3, k2=9.0, ddim_eta=1.0, step_guard=True, closed=True),
    dict(inner_solver="gd", lr=None, inner_steps=3, k1=0.3, k2=9.0, ddim_eta=0.0, step_guard=True, closed=False,
         power_iters=400),              # no eigenbasis: λ_max by power iteration, run to convergence
    dict(inner_solver="cg", lr=0.01, inner_steps=1, k1=0.25, k2=40.0, ddim_eta=0.9, step_guard=True, closed=True),
    dict(inner_solver="cg", lr=0.01, inner_steps=1, k1=0.25, k2=40.0, ddim_eta=0.9, step_guard=True, closed=False),
], ids=["gd-closed", "gd-iterations", "gd-guarded", "gd-lr-none", "cg-eigenbasis", "cg-conjugate-gradient"])
@pytest.mark.parametrize("num_samples", [1, 2])
def test_lmaps_equals_alg4_by_hand(case, num_samples):
    prior, mu, cov, a, y, _ = setup()
    op = DenseEighOperator(a, SHAPE)
    case = dict(case)
    closed = case.pop("closed")
    case.setdefault("power_iters", 20)
    solver = LMAPS(prior, op, **GRID, **case, gd_closed_form=closed, cg_tol=1e-14, cg_max_iter=500, verbose=False)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = solver.inference(y, num_samples=num_samples, generator=torch.Generator().manual_seed(11),
                               callback=lambda info: seen.append((info["i"], info["sigma"], info["r"], info["lr"])))
    truth, log = reference(mu, cov, a, y, **ref_kwargs(GRID), k1=case["k1"], k2=case["k2"], lr=case["lr"],
                           steps=case["inner_steps"], eta=case["ddim_eta"], guard=case["step_guard"],
                           solver="exact" if case["inner_solver"] == "cg" else "gd",
                           generator=torch.Generator().manual_seed(11), num_samples=num_samples)
    assert out.shape == (2 * num_samples, *SHAPE) and out.dtype == DT
    assert rel(out, truth) < 1e-9
    assert [s[0] for s in seen] == list(range(GRID["num_steps"]))
    for (_, sigma, r, lr), (sigma_ref, r_ref, lr_ref) in zip(seen, log):
        assert sigma == pytest.approx(sigma_ref, rel=1e-12) and r == pytest.approx(r_ref, rel=1e-12)
        assert lr == pytest.approx(lr_ref, rel=1e-12, abs=0)
    stats = solver.last_run_stats
    assert stats["exact_solve"] == int(case["inner_solver"] == "cg")
    if case["inner_solver"] == "gd" and (case["step_guard"] or case["lr"] is None):
        assert stats["gram_norm"] == pytest.approx(float(torch.linalg.eigvalsh(a.T @ a).max()), rel=1e-12)
    guarded = sum(1 for _, _, lr in log if case["lr"] is not None and lr != case["lr"])
    assert stats["guard_steps"] == (guarded if case["inner_solver"] == "gd" else 0)
    guard_warnings = [str(w.message) for w in caught if "step_guard: λ_max" in str(w.message)]
    assert len(guard_warnings) == (1 if guarded and case["inner_solver"] == "gd" else 0)
    if guard_warnings:   # the warning's numbers: the smallest η, how many steps, the σ range
        smallest = min(lr for _, _, lr in log)
        guarded_sigmas = [s for s, _, lr in log if lr != case["lr"]]
        assert f"down to {smallest:.4g}" in guard_warnings[0]
        assert f"on {guarded} of {GRID['num_steps']} steps" in guard_warnings[0]
        assert f"σ from {max(guarded_sigmas):.3g} to {min(guarded_sigmas):.3g}" in guard_warnings[0]


def test_the_guarded_case_really_guards_some_steps_and_not_others():
    """The 'gd-guarded' case above must exercise both sides of the guard (η·L > 1.9 at large σ only)."""
    _, mu, cov, a, y, _ = setup()
    _, log = reference(mu, cov, a, y, **ref_kwargs(GRID), k1=0.3, k2=9.0, lr=0.2, steps=5, eta=1.0, guard=True,
                       solver="gd", generator=torch.Generator().manual_seed(11))
    kinds = {lr == 0.2 for _, _, lr in log}
    assert kinds == {True, False}


def test_global_generator_path_matches_the_reference():
    """generator=None: the start and the noise come from torch's global generator, in the same order."""
    prior, mu, cov, a, y, _ = setup(seed=2)
    op = DenseEighOperator(a, SHAPE)
    solver = LMAPS(prior, op, **GRID, inner_solver="cg", k1=0.3, k2=5.0, ddim_eta=0.7, verbose=False)
    torch.manual_seed(5)
    out = solver.inference(y[:1])
    torch.manual_seed(5)
    truth, _ = reference(mu, cov, a, y[:1], **ref_kwargs(GRID), k1=0.3, k2=5.0, lr=None, steps=0, eta=0.7,
                         guard=True, solver="exact")
    assert rel(out, truth) < 1e-9


@pytest.mark.parametrize("variance", ["gaussian", "sigma2"])
def test_calibrated_lmaps_equals_the_rule_by_hand(variance):
    """lmaps_auto: r = w/(1 + w) with w = v_σ/(λ·σ_y²), k2 = 1; λ defaults to 1 (Bayes); σ_d from the prior."""
    prior, mu, cov, a, y, sigma_y = setup(seed=3)
    prior.sigma_data = 0.7
    op = DenseEighOperator(a, SHAPE, sigma_noise=sigma_y)
    solver = LMAPS(prior, op, **GRID, inner_solver="cg", calibrate=True, calib_variance=variance, k1=5.0, k2=0.01,
                   verbose=False)
    seen = []
    out = solver.inference(y, generator=torch.Generator().manual_seed(4), callback=lambda info: seen.append(info["r"]))
    truth, log = reference(mu, cov, a, y, **ref_kwargs(GRID), k1=0.0, k2=0.0, lr=None, steps=0, eta=1.0,
                           guard=True, solver="exact", calibrate_sigma_y=sigma_y, sigma_data=0.7, lam=1.0,
                           variance=variance,
                           generator=torch.Generator().manual_seed(4))
    assert rel(out, truth) < 1e-9
    assert seen == pytest.approx([r for _, r, _ in log], rel=1e-12)


def test_constructor_defaults_are_table4_and_the_daps_grid():
    """LMAPS's defaults: the annealing grid of the paper (DAPS: σ 100 → 0.1, ρ = 7, N = 200, then 0) and
    Table 4's Gaussian-deblur row (K = 100, η = 0.01, k1 = 0.22, k2 = 100), Alg. 4's fresh noise (η_DDIM = 1),
    the paper's gradient descent, and lmaps_auto's Bayes weight (λ = 1) — as configs/algorithm/lmaps.yaml says."""
    prior, _, _, a, _, _ = setup()
    s = LMAPS(prior, MatrixOperator(a, SHAPE))
    assert (s.num_steps, s.sigma_max, s.sigma_min, s.rho, s.sigma_final) == (200, 100.0, 0.1, 7.0, 0.0)
    assert (s.inner_steps, s.lr, s.k1, s.k2) == (100, 0.01, 0.22, 100.0)
    assert (s.inner_solver, s.ddim_eta, s.step_guard, s.calibrate, s.calib_lambda) == ("gd", 1.0, True, False, 1.0)
    assert s.calib_variance == "gaussian"
    grid = s.sigmas()
    assert grid.shape == (201,) and grid[0].item() == pytest.approx(100.0) and grid[-1].item() == 0.0
