"""Exact posteriors of a Gaussian-mixture prior, operators as dense matrices, and the ensemble functions fed exact
posterior draws.

Independent truths: the textbook Gaussian posterior in the other (precision or gain) form; numerical integration on
a 2-D grid; the same prior built from dense covariances; sample moments; and, for the ensemble machinery, finite-M
facts: the ensemble mean's error variance is (posterior variance)/M; the Student-t prediction interval covers a fresh
draw with probability exactly ``level`` for Gaussian marginals; the interval between the i-th and j-th of M order
statistics covers it with probability (j−i)/(M+1) for any continuous marginal; E[T²] = (M−1)/(M−3) for Student's t with
M−1 degrees of freedom. Tolerances are 4 standard errors; each test states its count of independent units.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from lmaps_plugin import ensemble as ens
from lmaps_plugin.operators import MatrixOperator, Operator, build_operator, operator_matrix
from lmaps_plugin.priors.gmm import GaussianMixturePrior

DT = torch.float64
TIGHT = dict(rtol=1e-9, atol=1e-10)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dense_mixture(d: int, k: int, seed: int, spread: float = 2.0):
    g = gen(seed)
    weights = torch.rand(k, generator=g, dtype=DT) + 0.3
    means = spread * torch.randn(k, d, generator=g, dtype=DT)
    factors = torch.randn(k, d, d, generator=g, dtype=DT) / math.sqrt(d)
    covs = factors @ factors.transpose(1, 2) + 0.1 * torch.eye(d, dtype=DT)
    return weights / weights.sum(), means, covs


def low_rank_prior(d: int, k: int, q: int, seed: int, img_shape=None, spread: float = 1.0) -> GaussianMixturePrior:
    g = gen(seed)
    basis = torch.linalg.qr(torch.randn(k, d, q, generator=g, dtype=DT)).Q
    return GaussianMixturePrior(torch.rand(k, generator=g, dtype=DT) + 0.3,
                                spread * torch.randn(k, d, generator=g, dtype=DT), basis,
                                0.1 + 2 * torch.rand(k, q, generator=g, dtype=DT),
                                0.05 + 0.1 * torch.rand(k, generator=g, dtype=DT), img_shape or (d, 1, 1))


def mixing_observation(prior, a):
    """y = A (prior mean): an observation between the components, so the posterior mixes them."""
    return a @ (prior.log_weights.exp() @ prior.means)


def observe(prior, a, sigma_y, seed):
    """A truth drawn from the prior and its noisy observation y = A x + σ_y ε."""
    g = gen(seed)
    x = prior.sample(1, g)[0]
    return x, a @ x.reshape(-1) + sigma_y * torch.randn(a.shape[0], generator=g, dtype=DT)


# ---------------------------------------------------------------------------------------------------------------
# operator_matrix
# ---------------------------------------------------------------------------------------------------------------
RES, CH = 8, 2
OPERATORS = [("sr4", {}), ("gaussian_deblur", dict(kernel_size=5, std=1.2)), ("motion_deblur", dict(kernel_size=5)),
             ("inpaint_box", {}), ("inpaint_random", {})]


def image_operators():
    ops = [build_operator(name, resolution=RES, channels=CH, **extra) for name, extra in OPERATORS]
    matrix = torch.randn(37, CH * RES * RES, generator=gen(3), dtype=DT)
    return ops + [MatrixOperator(matrix, (CH, RES, RES))]


@pytest.mark.parametrize("op", image_operators(), ids=[n for n, _ in OPERATORS] + ["matrix"])
def test_operator_matrix_reproduces_the_forward_and_the_adjoint(op):
    a = operator_matrix(op, (CH, RES, RES), batch_size=7)          # 7 does not divide d = 128: a ragged last batch
    g = gen(4)
    x = torch.randn(3, CH, RES, RES, generator=g, dtype=DT)
    forward = op.forward(x)
    assert a.shape == (forward[0].numel(), CH * RES * RES) and a.dtype == DT
    torch.testing.assert_close(x.reshape(3, -1) @ a.T, forward.reshape(3, -1), rtol=1e-12, atol=1e-12)
    y = torch.randn(forward.shape, generator=g, dtype=DT)
    torch.testing.assert_close(y.reshape(3, -1) @ a, op.adjoint(y).reshape(3, -1), rtol=1e-12, atol=1e-12)
    if isinstance(op, MatrixOperator):
        torch.testing.assert_close(a, op.matrix, rtol=0, atol=0)


def test_operator_matrix_refuses_bad_input():
    with pytest.raises(ValueError, match="needs a linear operator; PhaseRetrieval"):
        operator_matrix(build_operator("phase_retrieval", resolution=RES, channels=1), (1, RES, RES))
    op = build_operator("sr4", resolution=RES, channels=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        operator_matrix(op, (1, RES, RES), batch_size=0)
    with pytest.raises(ValueError, match=r"img_shape must be positive sizes \(C, H, W\); got \(1, 0, 8\)"):
        operator_matrix(op, (1, 0, RES))
    assert issubclass(type(op), Operator)


# ---------------------------------------------------------------------------------------------------------------
# The exact posterior against independent truths
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [4, 9], ids=["m<d:gain-form", "m>d:precision-form"])
def test_single_component_posterior_is_the_textbook_gaussian(m):
    """K = 1: the implementation's form (gain for m ≤ d, precision for m > d) against the other one, written with
    dense inverses; the evidence against torch's multivariate normal."""
    d, sigma_y = 6, 0.3
    _, means, covs = dense_mixture(d, 1, seed=10)
    prior = GaussianMixturePrior.from_covariances([1.0], means, covs, img_shape=(1, 2, 3))
    a = torch.randn(m, d, generator=gen(11), dtype=DT)
    _, y = observe(prior, a, sigma_y, seed=12)
    post = prior.posterior(a, y, sigma_y)

    mu, sigma, eye_m = means[0], covs[0], torch.eye(m, dtype=DT)
    if m <= d:   # truth in precision form
        cov = torch.linalg.inv(torch.linalg.inv(sigma) + a.T @ a / sigma_y ** 2)
        mean = cov @ (torch.linalg.solve(sigma, mu) + a.T @ y / sigma_y ** 2)
    else:        # truth in gain form
        gain = sigma @ a.T @ torch.linalg.inv(a @ sigma @ a.T + sigma_y ** 2 * eye_m)
        mean, cov = mu + gain @ (y - a @ mu), sigma - gain @ a @ sigma
    evidence = torch.distributions.MultivariateNormal(a @ mu, a @ sigma @ a.T + sigma_y ** 2 * eye_m).log_prob(y)

    torch.testing.assert_close(post.weights, torch.ones(1, dtype=DT), rtol=0, atol=1e-15)
    torch.testing.assert_close(post.mean(), mean.reshape(1, 2, 3), **TIGHT)
    torch.testing.assert_close(post.covariance(), cov, **TIGHT)
    torch.testing.assert_close(post.variance(), cov.diagonal().reshape(1, 2, 3), **TIGHT)
    assert post.mmse() == pytest.approx(float(cov.trace()) / d, rel=1e-10)
    assert post.log_evidence == pytest.approx(float(evidence), rel=1e-10)


@pytest.mark.parametrize("m", [1, 3], ids=["m=1<d", "m=3>d"])
def test_mixture_posterior_matches_numerical_integration_on_a_grid(m):
    """d = 2, K = 3: weights, mean, per-pixel variance, covariance and evidence against Riemann sums of
    prior × likelihood on a 1201² grid over [−12, 12]² (spacing 0.02, ≥ 15 points per standard deviation; Riemann
    sums of Gaussians converge faster than any power of the spacing)."""
    sigma_y = 0.6
    weights, means, covs = dense_mixture(2, 3, seed=20)
    prior = GaussianMixturePrior.from_covariances(weights, means, covs)
    a = torch.randn(m, 2, generator=gen(21), dtype=DT)
    y = mixing_observation(prior, a)
    post = prior.posterior(a, y, sigma_y)

    axis = torch.linspace(-12, 12, 1201, dtype=DT)
    cell = float(axis[1] - axis[0]) ** 2
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    log_lik = -0.5 * ((grid @ a.T - y).square().sum(-1) / sigma_y ** 2 + m * math.log(2 * math.pi * sigma_y ** 2))
    joint = torch.stack([w * torch.distributions.MultivariateNormal(mu, c).log_prob(grid).exp()
                         for w, mu, c in zip(weights, means, covs)]) * log_lik.exp()          # (K, points)
    evidence = joint.sum() * cell
    density = joint.sum(0) / joint.sum()
    mean = density @ grid
    centred = grid - mean
    cov = (density[:, None] * centred).T @ centred

    assert post.weights.min() > 0.01, "the case must mix components to test the weights"
    torch.testing.assert_close(post.weights, joint.sum(1) / joint.sum(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(post.mean().reshape(2), mean, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(post.variance().reshape(2), cov.diagonal(), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(post.covariance(), cov, rtol=1e-8, atol=1e-10)
    assert post.log_evidence == pytest.approx(math.log(evidence), abs=1e-8)


@pytest.mark.parametrize("m", [7, 20], ids=["m<d", "m>d"])
def test_low_rank_prior_posterior_equals_the_dense_covariance_prior(m):
    """q = 3 < d = 12 (Σ_k = U diag(s) Uᵀ + τ² I) against the same Σ_k given densely (a full eigenbasis, another τ²)."""
    d, sigma_y = 12, 0.2
    low = low_rank_prior(d, 3, 3, seed=30, img_shape=(3, 2, 2), spread=0.5)
    dense = GaussianMixturePrior.from_covariances(low.log_weights.exp(), low.means, low.covariances(), (3, 2, 2))
    a = torch.randn(m, d, generator=gen(31), dtype=DT) / math.sqrt(d)
    y = mixing_observation(low, a)
    got, want = low.posterior(a, y, sigma_y), dense.posterior(a, y, sigma_y)
    assert got.weights.min() > 1e-3, "the case must mix components"
    torch.testing.assert_close(got.weights, want.weights, **TIGHT)
    torch.testing.assert_close(got.component_means, want.component_means, **TIGHT)
    torch.testing.assert_close(got.component_covariances, want.component_covariances, **TIGHT)
    torch.testing.assert_close(got.mean(), want.mean(), **TIGHT)
    torch.testing.assert_close(got.variance(), want.variance(), **TIGHT)
    assert got.log_evidence == pytest.approx(want.log_evidence, rel=1e-10)


def test_posterior_draws_have_the_exact_mean_and_covariance():
    """40 000 draws of a mixed 4-pixel posterior: every mean and covariance entry within 4 standard errors (the
    errors estimated from the draws), and a seeded generator repeats its draws."""
    prior = low_rank_prior(4, 3, 2, seed=40, spread=1.0)
    a = torch.randn(2, 4, generator=gen(41), dtype=DT)
    y = mixing_observation(prior, a)
    post = prior.posterior(a, y, 0.8)
    assert post.weights.min() > 0.01, "the case must mix components"
    n = 40_000
    draws = post.sample(n, gen(43)).reshape(n, 4)
    mean, cov = post.mean().reshape(4), post.covariance()
    assert ((draws.mean(0) - mean).abs() / (cov.diagonal() / n).sqrt()).max() < 4
    products = (draws - mean)[:, :, None] * (draws - mean)[:, None, :]                # (n, 4, 4)
    se = products.std(0) / math.sqrt(n)
    assert ((products.mean(0) - cov).abs() / se).max() < 4
    torch.testing.assert_close(post.sample(5, gen(7)), post.sample(5, gen(7)), rtol=0, atol=0)


def test_posterior_accepts_an_operator_and_an_observation_in_its_shape():
    prior = low_rank_prior(2 * 4 * 4, 2, 3, seed=50, img_shape=(2, 4, 4))
    op = build_operator("sr4", resolution=4, channels=2)
    y = op.forward(prior.sample(1, gen(51)))                                        # (1, 2, 1, 1)
    via_op, via_matrix = prior.posterior(op, y, 0.1), prior.posterior(operator_matrix(op, (2, 4, 4)), y, 0.1)
    torch.testing.assert_close(via_op.mean(), via_matrix.mean(), rtol=0, atol=0)
    assert via_op.mean().shape == (2, 4, 4) and via_op.sample(3).shape == (3, 2, 4, 4)


@pytest.mark.parametrize("matrix,y,sigma_y,message", [
    (torch.ones(2, 4, dtype=torch.complex128), torch.ones(2), 0.1, "real A and y only; got a complex matrix"),
    (torch.ones(2, 4), torch.ones(2, dtype=torch.complex128), 0.1, "got a complex observation y"),
    (torch.ones(2, 5), torch.ones(2), 0.1, r"matrix must have shape \(m, d=4\) for img_shape \(4, 1, 1\); got \(2, 5\)"),
    (torch.ones(2, 4), torch.ones(3), 0.1, r"y must hold m=2 values .* got shape \(3,\) \(3 values\)"),
    (torch.ones(2, 4), torch.ones(2), 0.0, "sigma_y must be a finite number > 0 .* got 0.0"),
    (torch.ones(2, 4), torch.ones(2), float("nan"), "sigma_y must be a finite number > 0 .* got nan"),
], ids=["complex-A", "complex-y", "A-shape", "y-size", "sigma-zero", "sigma-nan"])
def test_posterior_refuses_bad_input(matrix, y, sigma_y, message):
    prior = low_rank_prior(4, 2, 1, seed=60)
    with pytest.raises(ValueError, match=message):
        prior.posterior(matrix, y, sigma_y)


def test_posterior_sample_refuses_a_bad_count():
    post = low_rank_prior(4, 2, 1, seed=61).posterior(torch.eye(4, dtype=DT), torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match="n must be a positive integer; got 0"):
        post.sample(0)


# ---------------------------------------------------------------------------------------------------------------
# The ensemble machinery fed exact posterior draws
# ---------------------------------------------------------------------------------------------------------------
def test_ensemble_mean_error_shrinks_as_one_over_sqrt_m():
    """A mixed 3-component posterior on 64 pixels: the RMS error of the M-draw mean to the exact mean is
    sqrt(mean variance / M) for any distribution. 64 independent ensembles per M; the tolerance on (error/expected)²
    is 4 standard errors of its mean over those ensembles; the log-log slope over M = 16…1024 within ±0.1 of −0.5."""
    prior = low_rank_prior(64, 3, 4, seed=70, img_shape=(1, 8, 8), spread=0.3)
    a = torch.randn(16, 64, generator=gen(71), dtype=DT) / 8
    y = mixing_observation(prior, a)
    post = prior.posterior(a, y, 0.5)
    assert post.weights.max() < 0.95, "the case must mix components"
    exact, mmse = post.mean(), post.mmse()
    g, reps, sizes, rms = gen(73), 64, [16, 64, 256, 1024], []
    for m in sizes:
        ratio2 = torch.tensor([float((ens.ensemble_mean(post.sample(m, g)) - exact).square().mean()) / (mmse / m)
                               for _ in range(reps)], dtype=DT)
        se = float(ratio2.std() / math.sqrt(reps))
        assert se < 0.1 and abs(float(ratio2.mean()) - 1) < 4 * se, (m, float(ratio2.mean()), se)
        rms.append(math.sqrt(float(ratio2.mean()) * mmse / m))
    slope = np.polyfit(np.log(sizes), np.log(rms), 1)[0]
    assert abs(slope + 0.5) < 0.1, slope


def diagonal_gaussian_case(d: int = 256):
    """K = 1, Σ = 0.5 I and a diagonal A with gains 0.2…2: every pixel's posterior is an independent Gaussian."""
    prior = GaussianMixturePrior([1.0], torch.randn(1, d, generator=gen(80), dtype=DT), torch.zeros(1, d, 0, dtype=DT),
                                 torch.zeros(1, 0, dtype=DT), torch.tensor([0.5], dtype=DT), (1, 16, d // 16))
    return prior, torch.diag(torch.linspace(0.2, 2.0, d, dtype=DT))


def exact_gaussian_runs(m: int, reps: int, shrink: float = 1.0, seed: int = 81):
    """``reps`` × (truth from the prior, its observation, m exact posterior draws), the draws optionally shrunk by
    ``shrink`` about the exact posterior mean."""
    prior, a = diagonal_gaussian_case()
    g = gen(seed)
    for r in range(reps):
        x, y = observe(prior, a, 0.3, seed=seed * 1000 + r)
        post = prior.posterior(a, y, 0.3)
        mean = post.mean()
        yield mean + shrink * (post.sample(m, g) - mean), x


def t2_moments(m: int) -> tuple[float, float]:
    """Mean and standard deviation of the corrected z² = T²·(M−3)/(M−1), T ~ Student-t with M−1 dof (M ≥ 6)."""
    nu, c = m - 1, (m - 3) / (m - 1)
    second, fourth = nu / (nu - 2), 3 * nu ** 2 / ((nu - 2) * (nu - 4))
    return c * second, c * math.sqrt(fourth - second ** 2)


def gaussian_order_statistic_coverage(m: int, level: float, n: int = 200_000) -> float:
    """E[Φ(hi) − Φ(lo)] for the linearly interpolated sample quantiles of m standard normals (numpy, by simulation;
    standard error ≈ 2e-4 at n = 200 000)."""
    x = np.sort(np.random.default_rng(0).standard_normal((n, m)), 1)

    def quantile(p):
        pos = (m - 1) * p
        i = int(math.floor(pos))
        return x[:, i] + (pos - i) * (x[:, min(i + 1, m - 1)] - x[:, i])
    return float((stats.norm.cdf(quantile((1 + level) / 2)) - stats.norm.cdf(quantile((1 - level) / 2))).mean())


@pytest.mark.parametrize("m", [8, 32])
def test_coverage_and_z2_of_exact_gaussian_draws(m):
    """Independent Gaussian pixels: 64 repetitions × 256 pixels = 16 384 independent Bernoulli trials. Predictive
    coverage = 0.90 and z2_mean = 1 exactly in expectation at every M; quantile coverage = (j−i)/(M+1) where the
    quantile positions are order statistics (level = 5/7 at M = 8: 5/9; level = 29/31 at M = 32: 29/33) and the
    Gaussian order-statistics value at level 0.9 (0.722 at M = 8)."""
    reps, d = 64, 256
    n = reps * d
    runs = list(exact_gaussian_runs(m, reps))
    pred = np.mean([ens.coverage(s, x, 0.9) for s, x in runs])
    z2 = np.mean([ens.z2_mean(s, x) for s, x in runs])
    exact_level = 1 - 2 / (m - 1)                                                     # quantile positions 1 and M−2
    quant_exact = np.mean([ens.coverage(s, x, exact_level, "quantile") for s, x in runs])
    quant_90 = np.mean([ens.coverage(s, x, 0.9, "quantile") for s, x in runs])

    assert abs(pred - 0.9) < 4 * math.sqrt(0.9 * 0.1 / n), pred                       # ±0.0094
    z2_expected, z2_sd = t2_moments(m)
    assert z2_expected == pytest.approx(1.0)
    assert abs(z2 - 1) < 4 * z2_sd / math.sqrt(n), z2                                 # ±0.0625 at M = 8
    p = (m - 1 - 2) / (m + 1)                                                         # [X(2), X(M−1)]
    assert abs(quant_exact - p) < 4 * math.sqrt(p * (1 - p) / n), quant_exact
    q90 = gaussian_order_statistic_coverage(m, 0.9)
    assert abs(quant_90 - q90) < 4 * math.sqrt(q90 * (1 - q90) / n) + 1e-3, (quant_90, q90)
    lo, hi = (m - 1) * 0.05, (m - 1) * 0.95                                           # 0-based quantile positions
    assert (math.floor(hi) - math.ceil(lo)) / (m + 1) < q90 < (math.ceil(hi) - math.floor(lo)) / (m + 1)


def test_misscaled_draws_are_flagged():
    """Draws shrunk to half their spread about the exact mean (std × 0.5), M = 8, 16 384 independent pixels:
    predictive coverage P(|T₇| ≤ 0.5·t₇(0.95)·√((1+1/M)/(1+1/(4M)))) = 0.645 and z2_mean = 4(M + 1/4)/(M + 1) = 3.67,
    both in closed form."""
    m, reps, d = 8, 64, 256
    n = reps * d
    runs = list(exact_gaussian_runs(m, reps, shrink=0.5, seed=90))
    pred = np.mean([ens.coverage(s, x, 0.9) for s, x in runs])
    z2 = np.mean([ens.z2_mean(s, x) for s, x in runs])
    half = 0.5 * stats.t.ppf(0.95, m - 1) * math.sqrt((1 + 1 / m) / (1 + 0.25 / m))
    p = 2 * stats.t.cdf(half, m - 1) - 1
    z2_expected = 4 * (m + 0.25) / (m + 1)
    assert p == pytest.approx(0.645, abs=1e-3) and z2_expected == pytest.approx(3.667, abs=1e-3)
    assert abs(pred - p) < 4 * math.sqrt(p * (1 - p) / n), pred
    assert abs(z2 - z2_expected) < 4 * z2_expected * t2_moments(m)[1] / math.sqrt(n), z2


def test_quantile_coverage_is_distribution_free_on_a_mixture_and_the_mean_error_is_the_mmse():
    """A correlated 3-component posterior on 64 pixels (non-Gaussian marginals), 60 independent repetitions (truth
    from the prior, a new observation, 1001 exact draws). The interval between order statistics i < j covers the
    truth with probability (j−i)/(M+1) for any marginal: M = 8 at level 5/7 → 5/9, M = 21 at 0.9 → 18/22, M = 1001 at
    0.9 → 900/1002. The posterior mean's squared error averages to the mean posterior variance (Bayes). Pixels within
    a repetition are correlated, so the tolerance is 4 standard errors across repetitions."""
    prior = low_rank_prior(64, 3, 4, seed=100, img_shape=(1, 8, 8), spread=0.3)
    a = torch.randn(16, 64, generator=gen(101), dtype=DT) / 8
    g, cases = gen(102), [(8, 5 / 7, 5 / 9), (21, 0.9, 18 / 22), (1001, 0.9, 900 / 1002)]
    hits, err, mmse, mixed = {c: [] for c in cases}, [], [], []
    for r in range(60):
        x, y = observe(prior, a, 0.5, seed=1000 + r)
        post = prior.posterior(a, y, 0.5)
        draws = post.sample(1001, g)
        for case in cases:
            hits[case].append(ens.coverage(draws[:case[0]], x, case[1], "quantile"))
        err.append(float((post.mean() - x).square().mean()))
        mmse.append(post.mmse())
        mixed.append(float(post.weights.max()) < 0.99)
    assert sum(mixed) >= 10, "the case must give mixed posteriors"
    for case, values in hits.items():
        values = np.asarray(values)
        se = values.std(ddof=1) / math.sqrt(len(values))
        assert se < 0.03 and abs(values.mean() - case[2]) < 4 * se, (case, values.mean(), se)
    diff = np.asarray(err) - np.asarray(mmse)
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / math.sqrt(len(diff)), (np.mean(err), np.mean(mmse))


def test_summary_keys_and_pixels_without_spread():
    """ensemble_summary agrees with the functions; z2_mean leaves out pixels where every draw agrees (observed
    pixels of noiseless inpainting) and is NaN when all do, and for M < 4 in the summary."""
    s = torch.randn(6, 1, 4, 4, generator=gen(110), dtype=DT)
    truth = torch.randn(1, 4, 4, generator=gen(111), dtype=DT)
    summary = ens.ensemble_summary(s, truth, metrics={"mse": lambda p, t: (p - t).square().mean()})
    assert summary["ensemble_size"] == 6
    assert summary["std_mean"] == pytest.approx(float(s.std(0).mean()))
    assert summary["coverage_90"] == ens.coverage(s, truth) and summary["z2_mean"] == ens.z2_mean(s, truth)
    assert summary["ensemble_mse"] == pytest.approx(float((s.mean(0) - truth).square().mean()))
    flat = s.clone()
    flat[:, :, 0, :] = truth[:, 0, :]                                                    # 4 pixels without spread
    kept = (truth - s.mean(0))[:, 1:].square() / (s.var(0)[:, 1:] * (1 + 1 / 6))
    assert ens.z2_mean(flat, truth) == pytest.approx(float(kept.mean()) * 3 / 5)
    assert math.isnan(ens.z2_mean(truth.expand(6, 1, 4, 4), truth))
    assert math.isnan(ens.ensemble_summary(s[:3], truth)["z2_mean"])


@pytest.mark.parametrize("call,error,message", [
    (lambda: ens.ensemble_std(torch.zeros(1, 3)), ValueError, r"ensemble_std needs at least 2 samples .* got 1"),
    (lambda: ens.coverage(torch.zeros(1, 3), torch.zeros(3)), ValueError, r"coverage needs at least 2 samples"),
    (lambda: ens.coverage(torch.zeros(4, 2, 3), torch.zeros(3, 2)), ValueError,
     r"the truth must have one sample's shape \(2, 3\); got \(3, 2\)"),
    (lambda: ens.coverage(torch.zeros(4, 3), torch.zeros(3), level=1.0), ValueError, r"level must be in \(0, 1\); got 1.0"),
    (lambda: ens.coverage(torch.zeros(4, 3), torch.zeros(3), level=0), ValueError, r"level must be in \(0, 1\); got 0.0"),
    (lambda: ens.ensemble_summary(torch.zeros(4, 3), level=90), ValueError, r"level must be in \(0, 1\); got 90.0"),
    (lambda: ens.z2_mean(torch.zeros(3, 5), torch.zeros(5)), ValueError, r"z2_mean needs at least 4 samples .* got 3"),
    (lambda: ens.central_interval(torch.zeros(4, 3), method="hpd"), ValueError,
     r"method must be 'predictive' or 'quantile'; got 'hpd'"),
    (lambda: ens.ensemble_mean(torch.zeros(5)), ValueError, r"at least one pixel dimension; got shape \(5,\)"),
    (lambda: ens.ensemble_std(torch.zeros(4, 3, dtype=torch.complex64)), ValueError, "needs real samples"),
    (lambda: ens.ensemble_mean([[1.0], [2.0]]), TypeError, "needs a tensor of samples, shape \\(M, ...\\); got list"),
], ids=["std-M1", "coverage-M1", "truth-shape", "level-1", "level-0", "level-90", "z2-M3", "method", "no-pixels",
        "complex", "list"])
def test_ensemble_errors_name_the_value_and_what_is_allowed(call, error, message):
    with pytest.raises(error, match=message):
        call()
