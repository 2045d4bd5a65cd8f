"""The exact local MAP solve, its operator checks, the calibrated weights and the solver's edges.

Independent truths: the Gaussian posterior E[x0 | x_σ, y] in closed form, Eq. 15, and hand-made
operators that are (or are not) affine with a least-squares loss.
"""
import math
import warnings

import pytest
import torch

import hand_operators

from lmaps_plugin import LMAPS, sample_lmaps
from lmaps_plugin.weighting import Calibration, calibrate, prior_variance
from lmaps_plugin.local_map import (NotLinearError, cg_local_map, conjugate_gradient, exact_local_map,
                                    linear_system, probe_operator)
from lmaps_plugin.operators import MatrixOperator, operator_matrix
from lmaps_plugin.operators.base import Operator
from lmaps_plugin.operators.registry import build_operator
from lmaps_plugin.priors.gmm import GaussianMixturePrior
from lmaps_plugin.schedules import poly_sigmas
from lmaps_plugin.local_map import DIVERGENCE_MARGIN, InnerSettings, LMAPSDivergenceError

DT = torch.float64
SHAPE = (1, 4, 5)
D = 20


def dense(m=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, D, generator=gen, dtype=DT) / math.sqrt(D)


def eq15(x_hat, a, y, r, k2):
    """The minimiser of Eq. 13 (half convention) by a dense solve."""
    m = x_hat.flatten(1)
    lhs = (1 - r) * torch.eye(D, dtype=DT) + r * k2 * a.T @ a
    rhs = (1 - r) * m + r * k2 * y @ a
    return torch.linalg.solve(lhs, rhs.T).T.reshape(x_hat.shape)


class Affine(hand_operators.Affine):
    """An InverseBench-style operator (no base class, no ``is_linear``): H(x) = A x + c, sigma_noise 0.1 by default."""

    def __init__(self, a, c, sigma_noise=0.1, weight=None):
        super().__init__(a, c, weight=weight, sigma_noise=sigma_noise)


class Squared(Affine):
    """Not linear: H(x) = (A x + c)²."""

    def __init__(self, a, c, **kwargs):
        super().__init__(a, c, **kwargs)
        self.square = True


class DeclaredNonLinear(Operator):
    is_linear = False

    def __init__(self, a):
        super().__init__(sigma_noise=0.1)
        self.a = a

    def forward(self, x, **kwargs):
        return x.flatten(1) @ self.a.T


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- the exact solve ------------------------------------------------------------------------------

def test_cg_on_an_undeclared_affine_operator_matches_eq15_with_the_offset_removed():
    a = dense()
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(1, 12, generator=gen, dtype=DT)
    x_hat = torch.randn(2, *SHAPE, generator=gen, dtype=DT)
    y = torch.randn(2, 12, generator=gen, dtype=DT)
    op = Affine(a, c)
    probe = probe_operator(op, x_hat, y)
    assert probe.affine_error < 1e-12 and probe.least_squares_error < 1e-12
    x, _, report = cg_local_map(x_hat, y, op, 0.9, 20.0, tol=1e-12, max_iter=200)
    assert report.converged and report.relative_residual <= 1e-12
    assert rel(x, eq15(x_hat, a, y - c, 0.9, 20.0)) < 1e-9


def test_probe_flags_non_linear_and_weighted_operators():
    a = dense()
    gen = torch.Generator().manual_seed(11)
    x_hat = torch.randn(1, *SHAPE, generator=gen, dtype=DT)
    y = torch.randn(1, 12, generator=gen, dtype=DT)
    assert probe_operator(Squared(a, 0.0), x_hat, y).affine_error > 0.1
    weighted = Affine(a, 0.0, weight=torch.linspace(0.2, 5.0, 12, dtype=DT))
    assert probe_operator(weighted, x_hat, y).least_squares_error > 1e-2


def test_cg_stops_at_its_own_cap_and_reports_the_residual():
    a = dense(m=18) * 30                                 # ill-conditioned: CG needs many iterations
    op = MatrixOperator(a, SHAPE)
    x_hat = torch.randn(1, *SHAPE, dtype=DT)
    y = torch.randn(1, 18, dtype=DT)
    system = linear_system(op, y, x_hat, use_eigenbasis=False)
    capped, report = exact_local_map(x_hat, system, 0.999, 50.0, tol=1e-10, max_iter=3)
    assert report.iterations == 3 and not report.converged
    truth = eq15(x_hat, a, y, 0.999, 50.0)
    start_residual = (x_hat - truth).norm()
    # the reported residual is the true one of the returned point, relative to the residual at x̂0
    lhs = 0.001 * torch.eye(D, dtype=DT) + 0.999 * 50.0 * a.T @ a
    true_residual = (lhs @ (truth - capped).flatten()).norm() / (lhs @ (truth - x_hat).flatten()).norm()
    assert report.relative_residual == pytest.approx(true_residual.item(), rel=1e-6)
    assert 1e-10 < report.relative_residual < 1
    full, report = exact_local_map(x_hat, system, 0.999, 50.0, tol=1e-10, max_iter=500)
    assert report.converged and rel(full, truth) < 1e-7 < (capped - truth).norm() / start_residual


def test_lmaps_warns_once_per_run_when_cg_stops_above_tolerance():
    prior = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, D, dtype=DT), torch.eye(D, dtype=DT)[None],
                                                  img_shape=SHAPE)
    op = MatrixOperator(dense(m=18) * 30, SHAPE)
    y = torch.randn(1, 18, dtype=DT)
    solver = LMAPS(prior, op, num_steps=6, inner_solver="cg", k1=0.0, k2=50.0, cg_tol=1e-12, cg_max_iter=2,
                   verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solver.inference(y)
    messages = [str(w.message) for w in caught if "conjugate gradient stopped above" in str(w.message)]
    assert len(messages) == 1
    assert "cg_tol=1e-12" in messages[0] and "cg_max_iter=2" in messages[0] and "6 of 6 steps" in messages[0]
    stats = solver.last_run_stats
    assert stats["exact_solve"] == 1 and stats["cg_steps_above_tol"] == 6 and stats["cg_iterations_mean"] == 2
    assert stats["cg_relative_residual_max"] > 1e-12


def test_cg_refuses_declared_and_detected_non_linear_operators_naming_gd():
    a = dense()
    prior = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, D, dtype=DT), torch.eye(D, dtype=DT)[None],
                                                  img_shape=SHAPE)
    y = torch.rand(1, 12, dtype=DT)
    for op, reason in [(DeclaredNonLinear(a), "declares itself non-linear"),
                       (Squared(a, 0.0), "is not linear"),
                       (Affine(a, 0.0, weight=torch.linspace(0.5, 2.0, 12, dtype=DT)), "not the plain sum of squares")]:
        solver = LMAPS(prior, op, num_steps=3, inner_solver="cg", verbose=False)
        with pytest.raises(NotLinearError, match=reason) as info:
            solver.inference(y)
        assert "inner_solver='gd'" in str(info.value)
        auto = LMAPS(prior, op, num_steps=3, inner_solver="auto", k2=1.0, verbose=False)
        out = auto.inference(y)
        assert torch.isfinite(out).all() and auto.last_run_stats["exact_solve"] == 0


def test_auto_solves_linear_operators_exactly():
    a = dense()
    prior = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, D, dtype=DT), torch.eye(D, dtype=DT)[None],
                                                  img_shape=SHAPE)
    y = torch.rand(1, 12, dtype=DT)
    seen = {}
    solver = LMAPS(prior, Affine(a, 0.3), num_steps=2, sigma_max=1.0, sigma_min=0.5, inner_solver="auto",
                   k1=0.5, k2=10.0, cg_tol=1e-12, cg_max_iter=500, verbose=False)
    solver.inference(y, callback=lambda info: seen.setdefault(info["i"], info))
    assert solver.last_run_stats["exact_solve"] == 1
    r = seen[1]["r"]
    assert rel(seen[1]["local_map"], eq15(seen[1]["denoised"], a, y - 0.3, r, 10.0)) < 1e-9


def test_warm_started_cg_reaches_the_same_solution():
    a = dense()
    op = MatrixOperator(a, SHAPE)
    gen = torch.Generator().manual_seed(5)
    x_hat = torch.randn(1, *SHAPE, generator=gen, dtype=DT)
    y = torch.randn(1, 12, generator=gen, dtype=DT)
    system = linear_system(op, y, x_hat, use_eigenbasis=False)
    elsewhere = torch.randn(1, *SHAPE, generator=gen, dtype=DT)
    cold, _ = exact_local_map(x_hat, system, 0.8, 30.0, tol=1e-12, max_iter=500)
    warm, _ = exact_local_map(x_hat, system, 0.8, 30.0, tol=1e-12, max_iter=500, x_init=elsewhere)
    assert rel(warm, cold) < 1e-9 and rel(cold, eq15(x_hat, a, y, 0.8, 30.0)) < 1e-9


def test_conjugate_gradient_leaves_converged_samples_alone():
    mats = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=DT)
    rhs = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=DT)
    x, report = conjugate_gradient(lambda v: v @ mats, rhs, torch.zeros_like(rhs), tol=1e-12, max_iter=10)
    assert torch.equal(x[1], torch.zeros(2, dtype=DT)) and torch.allclose(x[0], torch.full((2,), 0.5, dtype=DT))
    assert report.converged and report.iterations == 1


# -- calibration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_calibrated_local_map_is_the_exact_gaussian_posterior_mean(sigma):
    """Prior N(μ, σ_d²·I), linear H, noise σ_y: with λ = 1 and the 'gaussian' variance model, x̂0 and
    v_σ are the exact moments of x0 | x_σ, so LMAPS' local MAP is E[x0 | x_σ, y] exactly."""
    sigma_d, sigma_y = 0.5, 0.1
    gen = torch.Generator().manual_seed(7)
    mu = torch.randn(1, D, generator=gen, dtype=DT) * 0.3
    prior = GaussianMixturePrior.from_covariances([1.0], mu, (sigma_d ** 2 * torch.eye(D, dtype=DT))[None],
                                                  img_shape=SHAPE)
    prior.sigma_data = sigma_d
    a = dense(seed=8)
    op = MatrixOperator(a, SHAPE, sigma_noise=sigma_y)
    y = op(mu.reshape(1, *SHAPE) + 0.2 * torch.randn(1, *SHAPE, generator=gen, dtype=DT))
    seen = {}
    solver = LMAPS(prior, op, num_steps=1, sigma_max=sigma, sigma_min=sigma, inner_solver="cg", calibrate=True,
                   calib_lambda=1.0, calib_variance="gaussian", cg_tol=1e-13, cg_max_iter=500, verbose=False)
    solver.inference(y, callback=seen.update)
    x = seen["x"].flatten(1)
    precision = (1 / sigma_d ** 2 + 1 / sigma ** 2) * torch.eye(D, dtype=DT) + a.T @ a / sigma_y ** 2
    mean = torch.linalg.solve(precision, (mu / sigma_d ** 2 + x / sigma ** 2 + y @ a / sigma_y ** 2).T).T
    assert rel(seen["local_map"].flatten(1), mean) < 1e-10
    # the paper's v_σ = σ² weighs the data differently: the test above pins the 'gaussian' model
    assert Calibration(sigma_y=sigma_y, variance="sigma2").data_weight(sigma) > 1.2 * Calibration(
        sigma_y=sigma_y).data_weight(sigma)


def test_calibration_numbers():
    cal = Calibration(sigma_y=0.05, lam=2.0, sigma_data=0.5)
    assert prior_variance(0.5, 0.5) == pytest.approx(0.125)
    assert cal.data_weight(0.5) == pytest.approx(0.125 / (2.0 * 0.0025))
    r, k2 = cal.weights(0.5)
    assert k2 == 1.0 and r / (1 - r) == pytest.approx(cal.data_weight(0.5))
    assert cal.equivalent_k1(100.0) ** 2 == pytest.approx(2.0 * 0.0025 * 100.0)
    with pytest.raises(ValueError, match="lam=0"):
        Calibration(sigma_y=0.05, lam=0)


def test_calibrate_reads_the_operator_noise_and_halves_complex_variance():
    op = MatrixOperator(dense(), SHAPE, sigma_noise=0.2)
    real = calibrate(op, torch.ones(1, 12, dtype=DT))
    assert real.sigma_y == pytest.approx(0.2)
    cplx = calibrate(op, torch.ones(1, 12, dtype=torch.complex128))
    assert cplx.sigma_y == pytest.approx(0.2 / math.sqrt(2))
    noiseless = calibrate(MatrixOperator(dense(), SHAPE, sigma_noise=0.0), torch.full((1, 12), 3.0, dtype=DT))
    assert noiseless.sigma_y == pytest.approx(3e-3)
    op.sigma_noise = float("nan")
    with pytest.raises(ValueError, match="sigma_noise"):
        calibrate(op, torch.ones(1, 12, dtype=DT))


def test_calibration_falls_back_to_k1_k2_for_a_non_least_squares_loss():
    a = dense()
    prior = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, D, dtype=DT), torch.eye(D, dtype=DT)[None],
                                                  img_shape=SHAPE)
    weighted = Affine(a, 0.0, weight=torch.linspace(0.5, 2.0, 12, dtype=DT))
    solver = LMAPS(prior, weighted, num_steps=2, inner_solver="auto", calibrate=True, k1=0.4, k2=3.0, verbose=False)
    with pytest.warns(RuntimeWarning, match="using the configured k1=0.4, k2=3"):
        weighting = solver.weighting(torch.rand(1, 12, dtype=DT))
    assert weighting(1.0) == (pytest.approx(1 / (1 + 0.16 + 1e-6)), 3.0)


# -- divergence, guard and argument edges ---------------------------------------------------------

def small_setup():
    prior = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, D, dtype=DT), torch.eye(D, dtype=DT)[None],
                                                  img_shape=SHAPE)
    a = dense(seed=3)
    lam = torch.linalg.eigvalsh(a.T @ a).max().item()
    return prior, MatrixOperator(a, SHAPE), lam


def test_a_guard_off_run_that_raises_the_objective_is_caught():
    """η·L = 2.02 with the guard off: the iterates grow by 1.02 per step in the stiffest direction, so the
    data loss ends ~11x above its start after K = 150 steps (the old 1000x test let such runs through)."""
    prior, op, lam = small_setup()
    k2 = 100.0
    lr = 2.02 / (k2 * lam)
    y = torch.rand(1, 12, generator=torch.Generator().manual_seed(12), dtype=DT)
    torch.manual_seed(0)                             # the sampler's start and noise
    solver = LMAPS(prior, op, num_steps=1, sigma_max=50.0, sigma_min=50.0, k1=0.0, k2=k2, lr=lr, inner_steps=150,
                   step_guard=False, max_backoffs=0, verbose=False, gd_closed_form=False)
    with pytest.raises(LMAPSDivergenceError, match=r"objective above 2× its start.*enable step_guard"):
        solver.inference(y)
    assert DIVERGENCE_MARGIN == 1.0


def test_nan_lambda_max_warns_and_falls_back_to_a_safe_step():
    prior, op, lam = small_setup()

    class NaNGram(MatrixOperator):
        def adjoint(self, y):
            out = super().adjoint(y)
            return out if self._calls_left() else out * float("nan")

        def _calls_left(self):
            self.calls = getattr(self, "calls", 0) + 1
            return False

    bad = NaNGram(op.matrix, SHAPE)
    y = torch.rand(1, 12, dtype=DT)
    # the adjoint is only used by the power iteration once the closed form is off and gradients come from autograd
    bad.gradient = lambda pred, obs, return_loss=False: Operator.gradient(bad, pred, obs, return_loss)
    solver = LMAPS(prior, bad, num_steps=4, k1=0.0, k2=100.0, lr=10.0 / (100.0 * lam), inner_steps=5,
                   verbose=False, gd_closed_form=False)
    with pytest.warns(RuntimeWarning, match="could not measure λ_max.*safe step"):
        out = solver.inference(y)
    assert torch.isfinite(out).all() and solver.last_run_stats["backoff_steps"] >= 1


@pytest.mark.parametrize("num_samples", [True, False, 1.5, 0, "2"])
def test_num_samples_must_be_a_positive_integer(num_samples):
    prior, op, _ = small_setup()
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        LMAPS(prior, op, num_steps=2, verbose=False).inference(torch.rand(1, 12, dtype=DT), num_samples=num_samples)


def test_bad_observations_are_refused_with_their_own_messages():
    prior, op, _ = small_setup()
    solver = LMAPS(prior, op, num_steps=2, verbose=False)
    with pytest.raises(TypeError, match="floating-point or complex.*torch.bool"):
        solver.inference(torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="'meta' device"):
        solver.inference(torch.ones(1, 12, dtype=DT, device="meta"))
    for bad in (float("nan"), float("inf")):
        y = torch.rand(1, 12, dtype=DT)
        y[0, 3] = bad
        with pytest.raises(ValueError, match="1 non-finite value.*sigma_noise"):
            solver.inference(y)


def test_exact_path_of_a_blur_without_eigenbasis_matches_a_dense_solve():
    op = build_operator("motion_deblur", resolution=16, channels=1, sigma_noise=0.05)
    gen = torch.Generator().manual_seed(9)
    x_hat = torch.randn(1, 1, 16, 16, generator=gen, dtype=DT)
    y = torch.randn(1, 1, 16, 16, generator=gen, dtype=DT)
    dense_h = operator_matrix(op, (1, 16, 16))
    x, _, report = cg_local_map(x_hat, y, op, 0.95, 100.0, tol=1e-12, max_iter=2000)
    assert report.converged
    lhs = 0.05 * torch.eye(256, dtype=DT) + 95.0 * dense_h.T @ dense_h
    truth = torch.linalg.solve(lhs, 0.05 * x_hat.flatten() + 95.0 * dense_h.T @ y.flatten())
    assert rel(x.flatten(), truth) < 1e-8


def test_sample_lmaps_stats_are_plain_numbers():
    prior, op, _ = small_setup()
    stats = {}
    sample_lmaps(prior, torch.randn(1, *SHAPE, dtype=DT) * 10, poly_sigmas(3, 0.1, 10.0), torch.rand(1, 12, dtype=DT),
                 op, k1=0.2, k2=10.0, inner=InnerSettings(lr=0.01, steps=3), disable=True, stats=stats)
    assert stats and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in stats.values())


def test_lmaps_calibrate_prints_the_rule_for_a_problem(capsys):
    from lmaps_plugin.app.calibrate import main

    assert main(["problem=sr4", "algorithm.method.calib_lambda=2.0"]) == 0
    out = capsys.readouterr().out
    assert "operator=SuperResolution sigma_noise=0.05" in out
    assert "local MAP solve: exact: Gram eigenbasis" in out
    assert "sigma_y = 0.05 (per real component), lambda = 2" in out
    # the last grid row: σ = 0.1, v = 0.01·0.25/0.26, w = v/(2·0.05²)
    w = 0.01 * 0.25 / 0.26 / (2 * 0.0025)
    assert f"{w:17.4g}" in out


@pytest.mark.parametrize("value", ["abc", float("nan"), float("inf"), -0.1, True, None])
def test_operator_noise_level_must_be_a_finite_non_negative_number(value):
    with pytest.raises(ValueError, match="sigma_noise=.* is invalid"):
        build_operator("inpaint_random", resolution=8, channels=1, sigma_noise=value)


def test_surrogate_model_error_of_quantization_is_the_uniform_quantizer_variance():
    """Uniform inputs through a 2-bit quantizer with the identity surrogate: e² = Δ²/12, Δ = 2/3."""
    from lmaps_plugin.weighting import surrogate_mismatch

    op = build_operator("quantization", sigma_noise=0.05)
    x = torch.rand(1, 1, 300, 300, generator=torch.Generator().manual_seed(0), dtype=DT) * 2 - 1
    assert surrogate_mismatch(op, x) == pytest.approx((2 / 3) ** 2 / 12, rel=0.02)
    assert surrogate_mismatch(build_operator("inpaint_random", resolution=8, channels=1), x[..., :8, :8]) == 0.0
    # the calibrated weight counts it as extra noise: w = v_σ / (λ·(σ_y² + e²))
    cal = Calibration(sigma_y=0.05, lam=1.0)
    e2 = surrogate_mismatch(op, x)
    assert cal.data_weight(0.3, e2) == pytest.approx(prior_variance(0.3) / (0.05 ** 2 + e2))


def test_lmaps_auto_weighs_a_non_differentiable_operator_by_its_surrogate_error():
    prior = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, 64, dtype=DT), torch.eye(64, dtype=DT)[None],
                                                  img_shape=(1, 8, 8))
    op = build_operator("quantization", sigma_noise=0.05)
    y = op(torch.rand(1, 1, 8, 8, dtype=DT) * 2 - 1)
    solver = LMAPS(prior, op, num_steps=1, calibrate=True, inner_solver="auto", lr=None, verbose=False)
    weighting = solver.weighting(y)
    x0_hat = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=DT) * 2 - 1
    from lmaps_plugin.weighting import surrogate_mismatch

    e2 = surrogate_mismatch(op, x0_hat)
    assert e2 > 0.01
    r, k2 = weighting(0.5, x0_hat)
    assert k2 == 1.0 and r / (1 - r) == pytest.approx(prior_variance(0.5) / (0.05 ** 2 + e2))


def test_warm_start_with_the_carried_gram_product_matches_a_fresh_solve():
    op = build_operator("motion_deblur", resolution=16, channels=1, sigma_noise=0.05)
    gen = torch.Generator().manual_seed(13)
    x_hat, y, previous = (torch.randn(1, 1, 16, 16, generator=gen, dtype=DT) for _ in range(3))
    system = linear_system(op, y, x_hat)
    first, report = exact_local_map(previous, system, 0.9, 30.0, tol=1e-12, max_iter=500)
    assert torch.allclose(report.gram_solution, system.gram(first), atol=1e-9)
    carried, rep_c = exact_local_map(x_hat, system, 0.8, 40.0, tol=1e-12, max_iter=500, x_init=first,
                                     gram_init=report.gram_solution)
    fresh, rep_f = exact_local_map(x_hat, system, 0.8, 40.0, tol=1e-12, max_iter=500)
    assert rep_c.converged and rel(carried, fresh) < 1e-9
