"""LMAPS against independent truths: Eq. 15's closed form, the one-step projection, App. A's toy."""
import math
import warnings

import pytest
import torch

from lmaps_plugin import LMAPS, sample_lmaps
from lmaps_plugin.local_map import cg_local_map, estimate_gram_norm, gd_local_map
from lmaps_plugin.operators import MatrixOperator
from lmaps_plugin.operators.base import Operator
from lmaps_plugin.priors.gmm import GaussianMixturePrior
from lmaps_plugin.schedules import poly_sigmas, prior_weight, renoise
from lmaps_plugin.local_map import InnerSettings, LMAPSDivergenceError

DT = torch.float64
SHAPE = (1, 4, 5)          # one 4×5 image, d = 20


def random_problem(m=12, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    a = scale * torch.randn(m, 20, generator=gen, dtype=DT) / math.sqrt(20)
    x_hat = torch.randn(2, *SHAPE, generator=gen, dtype=DT)
    y = torch.randn(2, m, generator=gen, dtype=DT)
    return MatrixOperator(a, SHAPE), a, x_hat, y


def eq15(x_hat, a, y, r, k2):
    """Eq. 15 with Σ = I/(1 − r), σ_y² = 1/(r·k2): the minimiser of Eq. 13 (half convention)."""
    d = a.shape[1]
    cov = torch.eye(d, dtype=DT) / (1 - r)
    noise = torch.eye(a.shape[0], dtype=DT) / (r * k2)
    m = x_hat.flatten(1)
    gain = cov @ a.T @ torch.linalg.inv(a @ cov @ a.T + noise)
    return (m + (y - m @ a.T) @ gain.T).reshape(x_hat.shape)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("r,k2", [(0.3, 5.0), (0.9, 100.0), (0.999, 20.0)])
def test_exact_solver_matches_eq15(r, k2):
    op, a, x_hat, y = random_problem()
    x_cg, _, _ = cg_local_map(x_hat, y, op, r, k2, max_iter=200, tol=1e-12)
    assert rel_err(x_cg, eq15(x_hat, a, y, r, k2)) < 1e-4


def test_exact_solver_without_adjoint_uses_vjp():
    """An operator with only autograd (no adjoint) reaches the same closed form."""
    op, a, x_hat, y = random_problem(seed=1)

    class AutogradOnly(Operator):
        def forward(self, x, **kw):
            return x.flatten(1) @ a.T

    x_cg, _, _ = cg_local_map(x_hat, y, AutogradOnly(), 0.8, 10.0, max_iter=200, tol=1e-12)
    assert rel_err(x_cg, eq15(x_hat, a, y, 0.8, 10.0)) < 1e-4


def test_gradient_descent_converges_to_the_closed_form():
    op, a, x_hat, y = random_problem(seed=2)
    r, k2 = 0.9, 50.0
    truth = eq15(x_hat, a, y, r, k2)
    lam = torch.linalg.eigvalsh(a.T @ a).max().item()
    lr = 1.0 / ((1 - r) + r * k2 * lam)
    errors = [rel_err(gd_local_map(x_hat, y, op, r, k2, lr, k)[0], truth) for k in (10, 100, 3000)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4


def test_one_gd_step_with_lr_k2_one_projects_observed_pixels_onto_y():
    """docs/conventions.md: with half the operator's gradient, η·k2 = 1 at r ≈ 1 puts masked pixels on y."""
    gen = torch.Generator().manual_seed(3)
    keep = torch.randperm(20, generator=gen)[:8]
    mask = torch.eye(20, dtype=DT)[keep]              # observe 8 of 20 pixels
    op = MatrixOperator(mask, SHAPE)
    x_hat = torch.randn(1, *SHAPE, generator=gen, dtype=DT)
    y = torch.randn(1, 8, generator=gen, dtype=DT)
    k2 = 50.0
    r = prior_weight(100.0, 0.0)                      # σ = 100, k1 = 0: r = 1 − 1e-10
    x0, _ = gd_local_map(x_hat, y, op, r, k2, lr=1 / k2, steps=1)
    assert torch.allclose(op.forward(x0), y, atol=1e-8)
    unobserved = torch.ones(20, dtype=torch.bool)
    unobserved[keep] = False
    assert torch.equal(x0.flatten()[unobserved], x_hat.flatten()[unobserved])


def gaussian_prior(seed=4):
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(1, 20, generator=gen, dtype=DT)
    f = torch.randn(20, 20, generator=gen, dtype=DT) / math.sqrt(20)
    cov = f @ f.T + 0.2 * torch.eye(20, dtype=DT)
    return GaussianMixturePrior.from_covariances([1.0], mean, cov[None], img_shape=SHAPE), mean, cov


def test_full_lmaps_step_reproduces_tweedie_and_eq15():
    """One annealing step end to end: x̂0 is the Gaussian posterior mean, x0 is Eq. 15 around it."""
    prior, mean, cov = gaussian_prior()
    op, a, _, y = random_problem(seed=5)
    seen = {}
    solver = LMAPS(prior, op, num_steps=1, sigma_max=2.0, sigma_min=2.0, k1=1.5, k2=30.0,
                   inner_solver="cg", inner_steps=200, cg_tol=1e-12, verbose=False)
    out = solver.inference(y[:1].clone(), callback=seen.update)
    x = seen["x"].flatten(1)
    tweedie = mean + (x - mean) @ torch.linalg.inv(cov + 4.0 * torch.eye(20, dtype=DT)).T @ cov.T
    assert torch.allclose(seen["denoised"].flatten(1), tweedie, atol=1e-10)
    r = prior_weight(2.0, 1.5)
    assert rel_err(out, eq15(seen["denoised"], a, y[:1], r, 30.0)) < 1e-4


# -- App. A: mode seeking versus mode averaging ---------------------------------------------------

MODES = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=DT)
MODE_VAR = 0.3 ** 2
SIGMA_Y = 0.5


class FirstCoordinateSquared(Operator):
    """H(x) = x₁²: sees |x₁|, not its sign, so the posterior has two modes."""

    def forward(self, x, **kwargs):
        return x.flatten(1)[:, :1] ** 2


def exact_posterior_mean(x, sigma, y):
    """E[x0 | x_σ, y] for the two-mode prior and H(x) = x₁², by 1-D quadrature over x₁.

    Each component's p(x0 | x_σ, k) is isotropic Gaussian, so x₂ keeps its Gaussian mean and
    only x₁ meets the likelihood N(y; x₁², σ_y²).
    """
    grid = torch.linspace(-6, 6, 1201, dtype=DT)
    step = grid[1] - grid[0]
    flat = x.flatten(1)
    likelihood = torch.exp(-0.5 * (y.flatten()[:, None] - grid[None] ** 2) ** 2 / SIGMA_Y ** 2)
    post_var = 1 / (1 / MODE_VAR + 1 / sigma ** 2)
    log_w, first, second = [], [], []
    for mode in MODES:
        mean = post_var * (mode / MODE_VAR + flat / sigma ** 2)
        density = torch.exp(-0.5 * (grid[None] - mean[:, :1]) ** 2 / post_var)
        evidence = (density * likelihood).sum(1) * step
        log_w.append(-0.5 * ((flat - mode) ** 2).sum(1) / (MODE_VAR + sigma ** 2) + torch.log(evidence + 1e-300))
        first.append((density * likelihood * grid).sum(1) * step / (evidence + 1e-300))
        second.append(mean[:, 1])
    w = torch.softmax(torch.stack(log_w, 1), 1)
    return torch.stack([(w * torch.stack(first, 1)).sum(1), (w * torch.stack(second, 1)).sum(1)], 1).reshape(x.shape)


def between_modes_fraction(samples):
    return (samples.flatten(1)[:, 0].abs() < 1.0).to(DT).mean().item()


def noise_only_between_fraction(sigma):
    """P(|x₁| < 1) for x₁ = ±2 + σ·ε: the between-mode fraction of states x = estimate + σ·ε whose
    estimates sit exactly on the modes (closed form, standard normal ε)."""
    phi = lambda t: 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))  # noqa: E731
    return phi(-1.0 / sigma) - phi(-3.0 / sigma)


def test_lmaps_lands_between_modes_less_often_than_posterior_mean_updates():
    """App. A (Eqs. 29–30): the reverse process driven by the local MAP stays in high-density regions; the one
    driven by the posterior mean E[x0 | x_σ, y] (mode-averaging, exact here by quadrature) falls between modes.

    Measured on the trajectory, not only on the last estimate (which alone separates the modes, whatever fed
    the trajectory): the state at each step is the previous step's estimate plus that step's noise, so where the
    estimates sit on the modes the states' between-mode fraction is the noise's alone (closed form below); the
    posterior-mean trajectory exceeds it by ~0.1 at σ ≤ 2 (measured 0.33 against 0.21). A sampler that re-noised
    around x̂0 instead of the local MAP follows the posterior-mean trajectory here (≈ 0.32)."""
    prior = GaussianMixturePrior.from_covariances([0.5, 0.5], MODES, torch.stack([torch.eye(2, dtype=DT) * MODE_VAR] * 2),
                                                  img_shape=(2, 1, 1))
    n = 1000
    y = torch.full((n, 1), 4.0, dtype=DT)
    sigmas = poly_sigmas(20, 1.0, 40.0, 7.0)
    start = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(1), dtype=DT) * sigmas[0]
    lmaps_states = {}
    lmaps = sample_lmaps(prior, start.clone(), sigmas, y, FirstCoordinateSquared(), k1=1.0, k2=1.0,
                         inner=InnerSettings(lr=0.05, steps=50), disable=True, generator=torch.Generator().manual_seed(2),
                         callback=lambda info: lmaps_states.__setitem__(info["i"], info["x"]))
    noise = torch.Generator().manual_seed(2)           # the same noise draws
    x, mean_states = start.clone(), {}
    for i in range(len(sigmas) - 1):
        mean_states[i] = x
        x0 = exact_posterior_mean(x, float(sigmas[i]), y)
        x = renoise(x0, x, float(sigmas[i]), float(sigmas[i + 1]), torch.randn(x0.shape, generator=noise, dtype=DT))
    late = [i for i in range(len(sigmas) - 1) if float(sigmas[i]) <= 2.1]           # σ = 2.07, 1.64, 1.29, 1.0
    assert len(late) == 4

    def mean_over_late(values):
        return sum(values) / len(values)

    floor = mean_over_late([noise_only_between_fraction(float(sigmas[i])) for i in late])
    lmaps_traj = mean_over_late([between_modes_fraction(lmaps_states[i]) for i in late])
    mean_traj = mean_over_late([between_modes_fraction(mean_states[i]) for i in late])
    lmaps_frac, mean_frac = between_modes_fraction(lmaps), between_modes_fraction(x0)
    print(f"\nbetween-mode fraction of the states at σ ≤ 2.1: LMAPS {lmaps_traj:.4f}, posterior-mean updates "
          f"{mean_traj:.4f}, estimates on the modes {floor:.4f}; of the samples: LMAPS {lmaps_frac:.4f}, "
          f"posterior-mean updates {mean_frac:.4f}")
    # the trajectory: LMAPS's states are estimates on the modes plus noise; the posterior mean's are not
    assert abs(lmaps_traj - floor) < 0.03
    assert mean_traj > floor + 0.07
    # the samples
    assert mean_frac > 0.03
    assert lmaps_frac < mean_frac / 5


# -- the solver contract ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_problem():
    prior, _, _ = gaussian_prior(seed=6)
    op, _, _, y = random_problem(seed=7)
    return prior, op, y


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_shapes_dtype_determinism(small_problem, num_samples, dtype):
    prior, op, y = small_problem
    solver = LMAPS(prior, op, num_steps=8, inner_steps=5, lr=0.01, k1=0.5, k2=10.0, verbose=False)
    obs = y[:1].to(dtype)
    torch.manual_seed(0)
    a = solver.inference(obs, num_samples=num_samples)
    torch.manual_seed(0)
    b = solver.inference(obs, num_samples=num_samples)
    assert a.shape == (num_samples, *SHAPE)
    assert a.dtype == dtype and a.device == obs.device
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()
    if num_samples > 1:
        assert not torch.equal(a[0], a[1])


def test_batched_observations_keep_sample_order(small_problem):
    prior, op, y = small_problem
    solver = LMAPS(prior, op, num_steps=6, inner_steps=3, lr=0.01, k1=0.5, k2=10.0, inner_solver="cg",
                   verbose=False)
    out = solver.inference(y, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, *SHAPE)
    fit = [op.loss(out[i:i + 1], y[j:j + 1]).item() for i, j in [(0, 0), (2, 0), (3, 1), (5, 1)]]
    cross = [op.loss(out[i:i + 1], y[j:j + 1]).item() for i, j in [(0, 1), (3, 0)]]
    assert max(fit) < min(cross)


def test_generator_makes_runs_reproducible(small_problem):
    prior, op, y = small_problem
    solver = LMAPS(prior, op, num_steps=5, inner_steps=3, lr=0.01, k1=0.5, k2=10.0, verbose=False)
    a = solver.inference(y[:1], generator=torch.Generator().manual_seed(9))
    b = solver.inference(y[:1], generator=torch.Generator().manual_seed(9))
    c = solver.inference(y[:1], generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- divergence and the step-size guard ------------------------------------------------------------

def test_divergent_learning_rate_raises_a_clear_error(small_problem):
    prior, op, y = small_problem
    solver = LMAPS(prior, op, num_steps=3, inner_steps=50, lr=50.0, k1=0.5, k2=10.0, step_guard=False,
                   max_backoffs=0, verbose=False)
    with pytest.raises(LMAPSDivergenceError, match="Lower lr or k2"):
        solver.inference(y[:1])


def test_divergent_learning_rate_recovers_by_backoff_with_a_warning(small_problem):
    prior, op, y = small_problem
    # λ_max(HᵀH) ≈ 3 here, so lr·k2·λ_max ≈ 60: five halvings make it stable
    solver = LMAPS(prior, op, num_steps=3, inner_steps=50, lr=2.0, k1=0.5, k2=10.0, step_guard=False,
                   verbose=False)
    with pytest.warns(RuntimeWarning, match="recovered with lr="):
        out = solver.inference(y[:1])
    assert torch.isfinite(out).all()


def lis_like_operator(gram_norm=5.7e-4, seed=8):
    """A dense operator with λ_max(HᵀH) of InverseBench's scattering operator at 64×64 (docs/results/lis_lambda_max.md)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(30, 20, generator=gen, dtype=DT)
    a = a * math.sqrt(gram_norm / torch.linalg.eigvalsh(a.T @ a).max().item())
    return MatrixOperator(a, SHAPE), a


def test_power_iteration_estimates_gram_norm():
    op, a = lis_like_operator()
    x = torch.zeros(1, *SHAPE, dtype=DT)
    assert estimate_gram_norm(op, x, iters=50) == pytest.approx(5.7e-4, rel=1e-3)

    class AutogradOnly(Operator):
        def forward(self, v, **kw):
            return v.flatten(1) @ a.T

    assert estimate_gram_norm(AutogradOnly(), x, iters=50) == pytest.approx(5.7e-4, rel=1e-3)


def test_guard_rescues_the_table4_lis_row_that_diverges_at_64px():
    """LIS NR=360 (η=1, k1=0, k2=5000): η·k2·λ_max = 2.85 ≥ 2 at 64×64 — diverges without the guard."""
    prior, _, _ = gaussian_prior(seed=9)
    op, a = lis_like_operator()
    clean = op.forward(prior.sample(1, generator=torch.Generator().manual_seed(0)))
    y = clean + 0.1 * clean.std() * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    row = dict(num_steps=4, inner_steps=50, lr=1.0, k1=0.0, k2=5000.0, verbose=False)
    with pytest.raises(LMAPSDivergenceError):
        LMAPS(prior, op, step_guard=False, max_backoffs=0, **row).inference(y)
    with pytest.warns(RuntimeWarning, match=r"step_guard: λ_max\(JᵀJ\) ≈ 0\.00057|step_guard: λ_max\(JᵀJ\) ≈ 0\.000569"):
        out = LMAPS(prior, op, step_guard=True, **row).inference(y)
    assert torch.isfinite(out).all()
    # the guarded run converges to the local MAP: its data fit matches the exact solve's
    exact = LMAPS(prior, op, inner_solver="cg", **{**row, "inner_steps": 200}).inference(y)
    assert op.loss(out, y).item() == pytest.approx(op.loss(exact, y).item(), rel=0.05)
    assert op.loss(out, y).item() < 0.5 * op.loss(torch.zeros_like(out), y).item()


def test_guard_leaves_stable_rows_alone(small_problem):
    prior, op, y = small_problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LMAPS(prior, op, num_steps=3, inner_steps=2, lr=0.01, k1=0.5, k2=10.0, verbose=False).inference(y[:1])


# -- configuration errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,fragment", [
    ("lr", 0.0, "lr=0.0 is invalid; lr must be > 0"),
    ("lr", -1.0, "lr must be > 0"),
    ("k1", -0.1, "k1 must be >= 0"),
    ("k2", 0.0, "k2 must be > 0"),
    ("num_steps", 0, "num_steps must be an integer >= 1"),
    ("inner_steps", 2.5, "inner_steps must be an integer"),
    ("sigma_min", 0.0, "sigma_min must be > 0"),
    ("sigma_max", 0.01, "sigma_max must be >= sigma_min"),
    ("ddim_eta", 1.5, "ddim_eta must be in [0, 1]"),
    ("inner_solver", "adam", "inner_solver must be one of ('gd', 'cg', 'auto')"),
    ("lr", float("nan"), "lr must be a finite number"),
])
def test_bad_configuration_names_the_key(small_problem, key, value, fragment):
    prior, op, _ = small_problem
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        LMAPS(prior, op, **{key: value})


def test_bad_inference_arguments(small_problem):
    prior, op, y = small_problem
    solver = LMAPS(prior, op, num_steps=2, inner_steps=1, verbose=False)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        solver.inference(y[:1], num_samples=0)
    with pytest.raises(TypeError, match="observation must be a torch.Tensor"):
        solver.inference(y[:1].numpy())


def test_observation_that_does_not_fit_the_operator_is_refused(small_problem):
    prior, op, y = small_problem
    solver = LMAPS(prior, op, num_steps=2, inner_steps=1, verbose=False)
    with pytest.raises(ValueError, match=r"observation has shape \(1, 7\) but MatrixOperator maps images"):
        solver.inference(y[:1, :7])
    with pytest.raises(ValueError, match="observation is complex"):
        solver.inference(y[:1].to(torch.complex128))


def test_prior_of_the_wrong_size_is_refused():
    prior, _, _ = gaussian_prior()                      # images of shape (1, 4, 5)
    op = MatrixOperator(torch.eye(30, dtype=DT), (1, 5, 6))
    with pytest.raises(ValueError, match=r"cannot measure an image of the prior's shape \(1, 4, 5\)"):
        LMAPS(prior, op, num_steps=2, inner_steps=1, verbose=False).inference(torch.zeros(1, 30, dtype=DT))


@pytest.mark.parametrize("name,kwargs,expected", [
    ("jpeg", dict(quality=10, surrogate="identity"), 1.0),        # J' = I
    ("quantization", dict(bits=2), 1.0),                           # identity surrogate
    ("hdr", dict(), 4.0),                                          # linear part 2x: (2)² = 4
])
def test_guard_measures_the_surrogate_jacobian_of_non_differentiable_operators(name, kwargs, expected):
    """The exact H is piecewise constant; the guard must see the Jacobian the gradient uses."""
    from lmaps_plugin.operators.registry import build_operator

    op = build_operator(name, **kwargs)
    x = 0.3 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=DT)
    assert estimate_gram_norm(op, x, iters=30) == pytest.approx(expected, rel=1e-3)


def test_guard_on_jpeg_linear_matches_autograd_power_iteration():
    from lmaps_plugin.operators.registry import build_operator

    op = build_operator("jpeg", quality=10, surrogate="jpeg_linear")
    x = 0.3 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=DT)
    # independent: dense Jacobian of the (linear) surrogate, largest eigenvalue of JᵀJ
    jac = torch.autograd.functional.jacobian(lambda v: op.forward_surrogate(v).flatten(), x).reshape(768, 768)
    truth = torch.linalg.eigvalsh(jac.T @ jac).max().item()
    assert estimate_gram_norm(op, x, iters=100) == pytest.approx(truth, rel=1e-2)


def test_divergence_message_names_the_last_learning_rate_tried(small_problem):
    prior, op, y = small_problem
    solver = LMAPS(prior, op, num_steps=2, inner_steps=50, lr=1e4, k1=0.5, k2=10.0, step_guard=False,
                   max_backoffs=2, verbose=False)
    with pytest.raises(LMAPSDivergenceError, match=r"even after 2 halvings of lr \(last 2500\)"):
        solver.inference(y[:1])
    solver.max_backoffs = 0
    with pytest.raises(LMAPSDivergenceError) as info:
        solver.inference(y[:1])
    assert "halvings" not in str(info.value)
