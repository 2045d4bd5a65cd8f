"""The solver's edges, each against an independent truth: Eq. 13 by hand, the divergence rule of
docs/step_guard.md, dense gradient descent, conjugate gradient's warm start, and the documented contract of
``LMAPS`` (progress bar, torch.compile, eval mode, dtypes, refused observations)."""
from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

from hand_operators import AffineWithBasis, eigh_basis

from lmaps_plugin import LMAPS
from lmaps_plugin.operators import MatrixOperator
from lmaps_plugin.operators.base import Operator
from lmaps_plugin.priors.gmm import GaussianMixturePrior
from lmaps_plugin.local_map import (DIVERGENCE_MARGIN, GUARD_LIMIT, InnerSettings, InnerSolve, StepGuard,
                                    local_map_objective)
from lmaps_plugin.local_map.solve import _step_failed


def _diverged(x0, loss, objective, start, margin):
    """The gradient-descent verdict of one step, with x̂0 finite (the step's only host synchronisation)."""
    return bool(_step_failed(torch.zeros_like(x0), x0, loss, objective, start, margin))

DT = torch.float64
SHAPE = (1, 3, 4)
D = 12


def identity_prior(dim=D, shape=SHAPE):
    return GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, dim, dtype=DT), torch.eye(dim, dtype=DT)[None],
                                                 img_shape=shape)


def dense(m=7, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(m, D, generator=gen, dtype=DT) / math.sqrt(D)


# -- Eq. 13 and the divergence rule ---------------------------------------------------------------

def test_local_map_objective_is_eq13_per_sample():
    gen = torch.Generator().manual_seed(1)
    x0, x_hat = torch.randn(3, *SHAPE, generator=gen, dtype=DT), torch.randn(3, *SHAPE, generator=gen, dtype=DT)
    loss = torch.rand(3, generator=gen, dtype=torch.float32)
    r, k2 = 0.3, 7.0
    by_hand = [(1 - r) * 0.5 * float(((x0[i] - x_hat[i]) ** 2).sum()) + r * k2 * 0.5 * float(loss[i]) for i in range(3)]
    got = local_map_objective(x0, x_hat, loss, r, k2)
    assert got.dtype == DT
    assert got.tolist() == pytest.approx(by_hand, rel=1e-7)      # loss is float32; the sum is float64


@pytest.mark.parametrize("start", [4.0, 0.01])
def test_divergence_is_the_objective_strictly_above_its_start_times_one_plus_margin(start):
    """docs/step_guard.md: diverged when the objective ends above (1 + margin)·start, with a rounding allowance
    of 1e-6·max(|start|, 1); non-finite values always diverge."""
    x0, loss = torch.zeros(1, 2), torch.zeros(1)
    s = torch.tensor([start], dtype=DT)
    allowance = 1e-6 * max(start, 1.0)
    for margin in (0.0, DIVERGENCE_MARGIN):
        edge = (1.0 + margin) * s + allowance
        assert not _diverged(x0, loss, edge, s, margin)                                       # "above": strict
        assert not _diverged(x0, loss, (1.0 + margin) * s + 0.9 * allowance, s, margin)
        assert _diverged(x0, loss, (1.0 + margin) * s + 1.1 * allowance, s, margin)
    assert DIVERGENCE_MARGIN == 1.0
    assert not _diverged(x0, loss, 1.999 * s, s, 1.0) and _diverged(x0, loss, 2.001 * s, s, 1.0)
    for bad in (float("nan"), float("inf")):
        assert _diverged(torch.tensor([[0.0, bad]]), loss, s, s, 1.0)
        assert _diverged(x0, torch.tensor([bad]), s, s, 1.0)
        assert _diverged(x0, loss, torch.tensor([bad], dtype=DT), s, 1.0)


def test_step_guard_acts_only_above_its_limit():
    """StepGuard: η·L > 1.9 takes η = 1/L, with L = (1 − r) + r·k2·λ_max; at η·L = 1.9 exactly η stays."""
    guard = StepGuard(gram_norm=1.0)
    assert guard.curvature(0.25, 2.0) == pytest.approx(0.75 + 0.5)
    assert GUARD_LIMIT == 1.9
    assert guard.safe_lr(0.95, 1.0, 2.0) == 0.95                       # 0.95·2 = 1.9: not above the limit
    assert guard.safe_lr(0.96, 1.0, 2.0) == 0.5                        # above: 1/L
    assert StepGuard(3.0).safe_lr(1.0, 0.5, 4.0) == pytest.approx(1 / (0.5 + 6.0))


# -- gradient descent: backoff and the margin ------------------------------------------------------

class NaNPowerIteration(MatrixOperator):
    """λ_max cannot be measured (the adjoint gives NaN); gradients come from autograd through forward."""

    def adjoint(self, y):
        return super().adjoint(y) * float("nan")

    def gradient(self, pred, observation, return_loss=False):
        return Operator.gradient(self, pred, observation, return_loss)


def rank_one(scale):
    gen = torch.Generator().manual_seed(2)
    u = torch.randn(4, 1, generator=gen, dtype=DT)
    v = torch.randn(1, D, generator=gen, dtype=DT)
    a = u @ v
    return a * (scale / float(torch.linalg.matrix_norm(a, 2)))        # λ_max(AᵀA) = scale²


def test_without_a_measured_lambda_max_any_rise_of_the_objective_halves_the_step():
    """docs/step_guard.md: the margin is 0 when the guard could not measure λ_max. Here η·k2·λ_max = 2.02 on a
    rank-one H: K = 5 steps raise Eq. 13's objective by 1.02¹⁰ ≈ 1.22× (below the usual 2×), so only the
    zero margin catches it and the step is halved (η·L = 1.01, stable)."""
    a = rank_one(1.0)
    op = NaNPowerIteration(a, SHAPE)
    gen = torch.Generator().manual_seed(3)
    y = op.forward(torch.randn(1, *SHAPE, generator=gen, dtype=DT)) + 1.0
    k2, lr = 10.0, 0.202
    seen = []
    solver = LMAPS(identity_prior(), op, num_steps=1, sigma_max=100.0, sigma_min=100.0, k1=0.0, k2=k2, lr=lr,
                   inner_steps=5, gd_closed_form=False, verbose=False)
    with pytest.warns(RuntimeWarning, match="could not measure"):
        solver.inference(y, generator=gen, callback=lambda info: seen.append(info["lr"]))
    assert seen == [pytest.approx(lr / 2)]
    assert solver.last_run_stats["backoff_steps"] == 1
    # with the guard off the margin is 1 and the same step is kept (a 1.22× rise is not divergence)
    seen.clear()
    LMAPS(identity_prior(), op, num_steps=1, sigma_max=100.0, sigma_min=100.0, k1=0.0, k2=k2, lr=lr, inner_steps=5,
          gd_closed_form=False, step_guard=False, verbose=False).inference(
        y, generator=torch.Generator().manual_seed(3), callback=lambda info: seen.append(info["lr"]))
    assert seen == [lr]


def test_every_step_that_backs_off_is_counted_once():
    """Guard off, η·k2·λ_max = 3 at r ≈ 1 (k1 = 0): every step diverges, one halving (1.5) recovers it."""
    a = rank_one(1.0)
    op = MatrixOperator(a, SHAPE)
    y = torch.randn(1, 4, generator=torch.Generator().manual_seed(4), dtype=DT)
    k2 = 10.0
    seen = []
    solver = LMAPS(identity_prior(), op, num_steps=3, sigma_max=10.0, sigma_min=1.0, k1=0.0, k2=k2, lr=0.3,
                   inner_steps=40, step_guard=False, verbose=False)
    with pytest.warns(RuntimeWarning, match=r"recovered with lr=0\.15 after 1 halvings"):
        solver.inference(y, generator=torch.Generator().manual_seed(5), callback=lambda info: seen.append(info["lr"]))
    assert seen == [pytest.approx(0.15)] * 3
    assert solver.last_run_stats["backoff_steps"] == 3 and solver.last_run_stats["guard_steps"] == 0


# -- which local MAP solve runs ------------------------------------------------------------------------

class Undeclared(AffineWithBasis):
    """An InverseBench-style operator (no base class, no ``is_linear`` unless given) with an adjoint and a Gram
    eigenbasis of AᵀA; ``square`` makes it non-linear, ``weight`` a weighted (not plain) loss."""

    img_shape = SHAPE


def gd_by_hand(op, x_hat, y, r, k2, lr, steps):
    x = x_hat.clone()
    for _ in range(steps):
        with torch.enable_grad():
            v = x.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(op.loss(v, y).sum(), v)
        x = x - lr * ((1 - r) * (x - x_hat) + 0.5 * r * k2 * g)
    return x


@pytest.mark.parametrize("kind,expect_closed_form", [
    (dict(c=0.4), True),                              # affine, plain least squares: K steps summed in closed form
    (dict(c=0.4, is_linear=True), True),
    (dict(c=0.4, is_linear=False), False),            # declared non-linear: never solved as linear
    (dict(square=True), False),                       # probed: not affine
    (dict(weight=torch.linspace(0.5, 2.0, 7, dtype=DT)), False),   # probed: not the plain sum of squares
])
def test_gradient_descent_is_summed_in_closed_form_only_for_affine_least_squares(kind, expect_closed_form):
    """The K inner steps equal K gradient steps by hand in every case; the closed form (no gradient call) is taken
    exactly when the operator is affine with the plain least-squares loss and offers an eigenbasis."""
    a = dense()
    op = Undeclared(a, **kind)
    gen = torch.Generator().manual_seed(6)
    x_hat = 0.3 * torch.randn(2, *SHAPE, generator=gen, dtype=DT)
    y = op.forward(0.3 * torch.randn(2, *SHAPE, generator=gen, dtype=DT)) + 0.05
    r, k2, lr, steps = 0.9, 3.0, 0.05, 6
    solve = InnerSolve(InnerSettings(kind="gd", lr=lr, steps=steps, step_guard=False))
    x0, loss, used = solve(x_hat, y, op, r, k2, step=0, sigma=1.0)
    assert used == lr
    torch.testing.assert_close(x0, gd_by_hand(op, x_hat, y, r, k2, lr, steps), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, op.loss(x0, y), rtol=1e-12, atol=0)
    assert (op.gradient_calls == 0) == expect_closed_form


def test_conjugate_gradient_starts_from_the_previous_solution():
    """Warm start (docs/calibration.md): solving the same problem again costs no iteration; cold, it costs the same
    iterations again. Both reach the dense minimiser of Eq. 13."""
    a = dense(m=9, scale=3.0)
    op = MatrixOperator(a, SHAPE)
    gen = torch.Generator().manual_seed(7)
    x_hat = torch.randn(1, *SHAPE, generator=gen, dtype=DT)
    y = torch.randn(1, 9, generator=gen, dtype=DT)
    r, k2 = 0.95, 20.0
    lhs = (1 - r) * torch.eye(D, dtype=DT) + r * k2 * a.T @ a
    truth = torch.linalg.solve(lhs, ((1 - r) * x_hat.flatten(1) + r * k2 * y @ a).T).T.reshape(x_hat.shape)
    for warm in (True, False):
        solve = InnerSolve(InnerSettings(kind="cg", cg_tol=1e-11, cg_max_iter=500, warm_start=warm))
        first, _, lr = solve(x_hat, y, op, r, k2, step=0, sigma=1.0)
        second, _, _ = solve(x_hat, y, op, r, k2, step=1, sigma=1.0)
        assert lr == 0.0
        iterations = [rep.iterations for rep in solve.cg_reports]
        assert iterations[0] > 3
        assert iterations[1] == (0 if warm else iterations[0])
        for x in (first, second):
            assert float((x - truth).norm() / truth.norm()) < 1e-9


def test_an_exact_solve_whose_loss_is_not_finite_is_refused():
    class NaNLoss(MatrixOperator):
        """Plain least squares when the solve is set up (the probe), NaN at the solution."""
        calls = 0

        def loss(self, pred, observation, **kwargs):
            self.calls += 1
            return super().loss(pred, observation) * (1.0 if self.calls == 1 else float("nan"))

    from lmaps_plugin.local_map import LMAPSDivergenceError
    op = NaNLoss(dense(), SHAPE)
    with pytest.raises(LMAPSDivergenceError, match=r"\(conjugate gradient\) gave non-finite values at step 0 \(σ=1, r=0\.5"):
        InnerSolve(InnerSettings(kind="cg"))(torch.zeros(1, *SHAPE, dtype=DT), torch.zeros(1, 7, dtype=DT), op, 0.5, 1.0, step=0,
                              sigma=1.0)


# -- the LMAPS wrapper's contract --------------------------------------------------------------------

def small(verbose=True, **kwargs):
    return LMAPS(identity_prior(), MatrixOperator(dense(), SHAPE), num_steps=2, inner_steps=2, lr=0.01, k1=0.5,
                 k2=2.0, verbose=verbose, **kwargs)


def test_progress_bar_follows_verbose(capsys):
    y = torch.zeros(1, 7, dtype=DT)
    for solver, call, shown in [(small(True), {}, True), (small(False), {}, False), (small(True), dict(verbose=False), False),
                                (small(False), dict(verbose=True), True)]:
        solver.inference(y, **call)
        assert bool(re.search(r"(^|\r)LMAPS: ", capsys.readouterr().err)) == shown


def test_compile_net_wraps_the_network_once(monkeypatch):
    compiled = []

    def fake_compile(net):
        def wrapper(x, sigma):
            wrapper.calls += 1
            return net(x, sigma)
        wrapper.calls = 0
        compiled.append((net, wrapper))
        return wrapper

    monkeypatch.setattr(torch, "compile", fake_compile)
    solver = small(False, compile_net=True)
    y = torch.zeros(1, 7, dtype=DT)
    a = solver.inference(y, generator=torch.Generator().manual_seed(0))
    solver.inference(y)
    assert len(compiled) == 1 and compiled[0][0] is solver.net and compiled[0][1].calls == 4
    plain = small(False).inference(y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, plain)                     # the wrapper runs the same network
    uncompiled = small(False)
    assert uncompiled.denoiser() is uncompiled.net and len(compiled) == 1


def test_the_network_is_put_in_eval_mode():
    prior = identity_prior()
    prior.train()
    LMAPS(prior, MatrixOperator(dense(), SHAPE))
    assert prior.training is False


def test_complex_observations_give_float32_samples_unless_a_dtype_is_asked():
    class ComplexMatrix(Operator):
        def __init__(self, a):
            super().__init__()
            self.a = a

        def forward(self, x, **kwargs):
            return x.flatten(1).to(torch.complex128) @ self.a.T

    gen = torch.Generator().manual_seed(8)
    a = torch.randn(5, D, generator=gen, dtype=torch.complex128)
    y = torch.randn(1, 5, generator=gen, dtype=torch.complex128)
    solver = LMAPS(identity_prior(), ComplexMatrix(a), num_steps=2, inner_steps=2, lr=0.001, k1=0.5, k2=1.0,
                   verbose=False)
    assert solver.inference(y).dtype == torch.float32
    assert solver.inference(y, dtype=DT).dtype == DT


def test_observations_that_cannot_be_used_are_refused_with_their_reason():
    solver = small(False)
    with pytest.raises(TypeError, match="floating-point or complex tensor, got dtype torch.int64"):
        solver.inference(torch.zeros(1, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"leading batch dimension, got shape \(\)"):
        solver.inference(torch.tensor(1.0, dtype=DT))
    with pytest.raises(ValueError, match=r"leading batch dimension, got shape \(0, 7\)"):
        solver.inference(torch.zeros(0, 7, dtype=DT))
    y = torch.zeros(1, 7, dtype=DT)
    y[0, 2] = y[0, 5] = float("nan")
    with pytest.raises(ValueError, match="observation holds 2 non-finite value"):
        solver.inference(y)
    with pytest.raises(ValueError, match=r"observation is complex \(torch.complex128\) but MatrixOperator produces "
                                         r"real measurements \(torch.float64\)"):
        solver.inference(torch.zeros(1, 7, dtype=torch.complex128))


def test_one_dimensional_observations_are_a_batch_of_scalars():
    """H(x) = Σx per sample: observations (B,), a batch of scalar measurements."""
    class Total(Operator):
        def forward(self, x, **kwargs):
            return x.flatten(1).sum(1)

        def loss(self, pred, observation, **kwargs):
            return (self.forward(pred) - observation) ** 2

    y = torch.tensor([1.0, -2.0], dtype=DT)
    out = LMAPS(identity_prior(), Total(), num_steps=2, inner_steps=20, lr=0.01, k1=0.1, k2=5.0,
                verbose=False).inference(y)
    assert out.shape == (2, *SHAPE) and torch.isfinite(out).all()


def test_calibration_falls_back_when_the_loss_is_least_squares_only_to_float32_precision():
    """docs/calibration.md: the probe accepts 1e-8 relative in float64; a loss 1e-5 away from the plain sum of
    squares is not plain least squares there, so lmaps_auto keeps k1, k2."""
    op = Undeclared(dense(), weight=torch.full((7,), 1.0 + 1e-5, dtype=DT))
    op.sigma_noise = 0.1
    solver = LMAPS(identity_prior(), op, num_steps=2, inner_solver="gd", calibrate=True, k1=0.4, k2=3.0,
                   verbose=False)
    with pytest.warns(RuntimeWarning, match="using the configured k1=0.4, k2=3"):
        weighting = solver.weighting(torch.rand(1, 7, dtype=DT))
    assert weighting(1.0)[1] == 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = LMAPS(identity_prior(), Undeclared(dense()), num_steps=2, calibrate=True, verbose=False)
        plain.forward_op.sigma_noise = 0.1
        assert plain.weighting(torch.rand(1, 7, dtype=DT))(1.0)[1] == 1.0


def test_denoise_returns_a_normal_tensor_in_the_dtype_of_x():
    """``denoise``: one network call under inference mode, returned as a normal tensor (it can enter autograd
    later) in x's dtype, with σ handed over as a 0-d tensor in x's dtype."""
    from lmaps_plugin.sampler import denoise

    seen = {}

    def net32(x, sigma):                          # a network that computes in float32
        seen["sigma"] = sigma
        return (x * 0.5).float()

    stored = torch.full((1, *SHAPE), 0.25, dtype=torch.float32)      # made outside inference mode

    x = torch.randn(1, *SHAPE, dtype=DT)
    for net, expected in [(net32, 0.5 * x.float().to(DT)), (lambda x, s: stored, stored.to(DT))]:
        out = denoise(net, x, 0.3)
        assert out.dtype == DT and not out.is_inference()
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        out.requires_grad_(True)                  # usable in autograd
    assert seen["sigma"].dtype == DT and seen["sigma"].ndim == 0 and float(seen["sigma"]) == 0.3


def test_sample_lmaps_and_lmaps_share_their_defaults():
    """The flat sampler and the solver class are one algorithm: every setting they share has one default, and
    LMAPS' signature (what Hydra and the tuner inspect) is its config's keyword arguments."""
    import inspect

    from lmaps_plugin import sample_lmaps
    from lmaps_plugin.algorithm import FLAT_KEYS, LMAPSConfig

    flat = {k: p.default for k, p in inspect.signature(sample_lmaps).parameters.items()
            if p.default is not inspect.Parameter.empty}
    cls = {k: p.default for k, p in inspect.signature(LMAPS).parameters.items()
           if p.default is not inspect.Parameter.empty}
    assert set(cls) == set(FLAT_KEYS)
    defaults = LMAPSConfig()
    assert (flat["k1"], flat["k2"], flat["ddim_eta"]) == (cls["k1"], cls["k2"], cls["ddim_eta"])
    assert flat["inner"] == defaults.inner
    assert {k: cls[k] for k in ("lr", "inner_steps", "inner_solver", "step_guard", "power_iters", "max_backoffs",
                                "cg_tol", "cg_max_iter", "gd_closed_form")} == {
        "lr": defaults.inner.lr, "inner_steps": defaults.inner.steps, "inner_solver": defaults.inner.kind,
        "step_guard": defaults.inner.step_guard, "power_iters": defaults.inner.power_iters,
        "max_backoffs": defaults.inner.max_backoffs, "cg_tol": defaults.inner.cg_tol,
        "cg_max_iter": defaults.inner.cg_max_iter, "gd_closed_form": defaults.inner.closed_form}


def test_setting_a_keyword_on_lmaps_revalidates_its_config():
    lmaps = LMAPS(identity_prior(), MatrixOperator(rank_one(1.0), SHAPE), num_steps=3, verbose=False)
    lmaps.k2 = 50
    assert lmaps.config.weights.k2 == 50.0 and lmaps.k2 == 50.0
    with pytest.raises(ValueError, match="k2=-1"):
        lmaps.k2 = -1
    assert lmaps.k2 == 50.0


def test_errors_name_the_step_and_noise_level():
    from lmaps_plugin.local_map import LMAPSDivergenceError

    op = MatrixOperator(rank_one(1.0), SHAPE)
    y = torch.ones(1, 4, dtype=DT)
    solver = LMAPS(identity_prior(), op, num_steps=2, sigma_max=10.0, sigma_min=1.0, k1=0.0, k2=10.0, lr=1.0,
                   inner_steps=30, step_guard=False, max_backoffs=0, verbose=False)
    with pytest.raises(LMAPSDivergenceError, match=r"at step 0 \(σ=10\) with lr=1, k2=10"):
        solver.inference(y)


@pytest.mark.parametrize("closed_form", [True, False])
def test_the_closed_form_is_used_only_when_asked(closed_form):
    op = Undeclared(dense(), c=0.2)
    x_hat = torch.zeros(1, *SHAPE, dtype=DT)
    y = torch.ones(1, 7, dtype=DT)
    solve = InnerSolve(InnerSettings(kind="gd", lr=0.05, steps=4, step_guard=False, closed_form=closed_form))
    solve(x_hat, y, op, 0.5, 2.0, step=0, sigma=1.0)
    assert op.gradient_calls == (0 if closed_form else 4)


def test_exact_solve_probe_tolerance_is_1e8_in_float64():
    """docs/calibration.md: an operator that does not declare itself linear is probed to 1e-8 relative in float64
    (1e-3 in float32): a 1e-5 non-linearity or loss weight is refused by inner_solver='cg'."""
    from lmaps_plugin.local_map import NotLinearError

    class SlightlyCurved(Undeclared):
        def forward(self, x, **kwargs):
            z = x.flatten(1) @ self.a.T
            return z + 1e-5 * z ** 2

    x_hat = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(9), dtype=DT)
    y = torch.randn(1, 7, generator=torch.Generator().manual_seed(10), dtype=DT)
    with pytest.raises(NotLinearError, match=r"SlightlyCurved is not linear: H\(a \+ b\) − H\(0\)"):
        InnerSolve(InnerSettings(kind="cg"))(x_hat, y, SlightlyCurved(dense()), 0.5, 1.0, step=0, sigma=1.0)
    weighted = Undeclared(dense(), weight=torch.full((7,), 1.0 + 1e-5, dtype=DT))
    with pytest.raises(NotLinearError, match="Undeclared's loss is not the plain sum of squares"):
        InnerSolve(InnerSettings(kind="cg"))(x_hat, y, weighted, 0.5, 1.0, step=0, sigma=1.0)
    # the same operators in float32 are within rounding: solved exactly
    for op in (SlightlyCurved(dense().float()), Undeclared(dense().float(), weight=torch.full((7,), 1.0 + 1e-5))):
        solve = InnerSolve(InnerSettings(kind="cg"))
        solve(x_hat.float(), y.float(), op, 0.5, 1.0, step=0, sigma=1.0)
        assert solve.exact


def test_without_lr_and_without_lambda_max_the_first_step_size_is_one():
    """lr=None takes η = 1/L; when λ_max cannot be measured the step falls back to η = 1 (then halves while the
    objective rises). Here L = 0.5, so η = 1 is stable and kept."""
    op = NaNPowerIteration(rank_one(1.0), SHAPE)
    y = op.forward(torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(11), dtype=DT))
    seen = []
    solver = LMAPS(identity_prior(), op, num_steps=1, sigma_max=100.0, sigma_min=100.0, k1=0.0, k2=0.5, lr=None,
                   inner_steps=3, gd_closed_form=False, verbose=False)
    with pytest.warns(RuntimeWarning, match="could not measure"):
        solver.inference(y, generator=torch.Generator().manual_seed(12), callback=lambda info: seen.append(info["lr"]))
    assert seen == [1.0]


@pytest.mark.parametrize("dtype,closed", [(DT, False), (torch.float32, True)])
def test_a_nearly_affine_operator_is_summed_in_closed_form_only_within_its_precision(dtype, closed):
    """The probe's tolerance follows the dtype (1e-8 in float64, 1e-3 in float32): an operator 1e-5 away from
    affine is iterated in float64 and summed in closed form in float32."""
    class SlightlyCurved(Undeclared):
        def forward(self, x, **kwargs):
            z = x.flatten(1) @ self.a.T
            return z + 1e-5 * z ** 2

    op = SlightlyCurved(dense().to(dtype))
    x_hat = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(13), dtype=dtype)
    y = torch.randn(1, 7, generator=torch.Generator().manual_seed(14), dtype=dtype)
    InnerSolve(InnerSettings(kind="gd", lr=0.05, steps=4, step_guard=False))(x_hat, y, op, 0.5, 2.0, step=0, sigma=1.0)
    assert (op.gradient_calls == 0) == closed
    weighted = Undeclared(dense().to(dtype), weight=torch.full((7,), 1.0 + 1e-5, dtype=dtype))
    InnerSolve(InnerSettings(kind="gd", lr=0.05, steps=4, step_guard=False))(x_hat, y, weighted, 0.5, 2.0, step=0, sigma=1.0)
    assert (weighted.gradient_calls == 0) == closed


def test_the_solve_is_set_up_once_per_run_and_closed_form_false_runs_conjugate_gradient(monkeypatch):
    """InnerSolve.setup decides the solve once per run (one λ_max measurement for 4 steps); with
    gd_closed_form=False the exact solve ignores the eigenbasis and runs conjugate gradient."""
    import lmaps_plugin.local_map.solve as solver_module

    calls = []
    original = solver_module.estimate_gram_norm
    monkeypatch.setattr(solver_module, "estimate_gram_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    op = MatrixOperator(dense(), SHAPE)
    y = torch.randn(1, 7, generator=torch.Generator().manual_seed(15), dtype=DT)
    LMAPS(identity_prior(), op, num_steps=4, inner_steps=2, lr=0.01, k1=0.5, k2=2.0, verbose=False).inference(y)
    assert calls == [1]

    class WithBasis(MatrixOperator):
        def gram_eigenbasis(self, like):
            return eigh_basis(self.matrix, SHAPE)

    for closed_form, iterations in ((True, 0), (False, None)):
        solver = LMAPS(identity_prior(), WithBasis(dense(), SHAPE), num_steps=3, inner_solver="cg", k1=0.5, k2=2.0,
                       cg_tol=1e-10, gd_closed_form=closed_form, verbose=False)
        solver.inference(y)
        mean = solver.last_run_stats["cg_iterations_mean"]
        assert mean == 0 if iterations == 0 else mean > 2


def test_the_noise_grid_lands_on_the_requested_device():
    grid = small(False).sigmas(device="meta")
    assert grid.device.type == "meta" and grid.shape == (3,)


@pytest.mark.parametrize("inner_solver", ["gd", "cg"])
def test_the_callback_gets_the_data_loss_of_each_local_map(inner_solver):
    op = MatrixOperator(dense(), SHAPE)
    y = torch.randn(1, 7, generator=torch.Generator().manual_seed(16), dtype=DT)
    seen = []
    LMAPS(identity_prior(), op, num_steps=3, inner_steps=3, lr=0.01, k1=0.5, k2=2.0, inner_solver=inner_solver,
          verbose=False).inference(y, callback=lambda info: seen.append((info["local_map"], info["misfit"])))
    assert len(seen) == 3
    for x0, misfit in seen:
        torch.testing.assert_close(misfit, ((x0.flatten(1) @ op.matrix.T - y) ** 2).sum(1), rtol=1e-12, atol=1e-12)
