"""Local MAP Sampling (LMAPS), Alg. 4 of the paper, in the EDM σ convention.

:func:`sample_lmaps` is the sampler as one flat function (k-diffusion style); :class:`LMAPS`
wraps it behind InverseBench's solver interface (``__init__(net, forward_op, ...)``,
``inference(observation, num_samples=1)``).

    sigmas = poly-ρ grid from σ_max to σ_min, then 0
    x = σ_max · ε
    for each σ_i:
        x̂0 = net(x, σ_i)                          one network call, no gradient through it
        r, k2 = weights(σ_i)                       Table 4's r = σ²/(σ² + k1² + 1e-6), or lmaps_auto's
        x0 = local MAP of Eq. 13 from x̂0          K gradient steps, or the exact solve (linear H)
        x  = x0 + σ_{i+1} · ε                      re-noise (DDIM-style with ddim_eta < 1)
    return x0

The local MAP solve (:class:`InnerSolve`) is set up on the first step, from the operator:
gradient descent with the step-size guard (docs/step_guard.md), or, for ``inner_solver='cg'``,
the exact minimiser of a linear operator in its Gram eigenbasis or by conjugate gradient
(warm-started from the previous step's solution) with its own tolerance and iteration cap.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from tqdm.auto import tqdm

from .calibration import VARIANCE_MODELS, calibrate, surrogate_mismatch
from .ensemble import inflate
from .local_map import (CGReport, LinearSystem, NotLinearError, _has_plain_least_squares, data_loss,
                        estimate_gram_norm, exact_local_map, gd_local_map, linear_system, probe_operator)
from .schedules import poly_sigmas, prior_weight, renoise

Tensor = torch.Tensor
#: ``weighting(σ, x̂0) -> (r, k2)``: Eq. 13's weights at one step.
Weighting = Callable[[float, Tensor], "tuple[float, float]"]
INNER_SOLVERS = ("gd", "cg", "auto")
#: the guard acts when η·((1−r) + r·k2·λ_max) exceeds this (2 is the stability limit; the margin
#: covers power iteration's slight underestimate of λ_max).
GUARD_LIMIT = 1.9
#: a local MAP solve has diverged when Eq. 13's objective ends above (1 + margin) times its value
#: at x̂0 (docs/step_guard.md): gradient descent with a stable step never raises it, and surrogate
#: gradients of non-differentiable operators stay well inside this margin.
DIVERGENCE_MARGIN = 1.0


class LMAPSDivergenceError(FloatingPointError):
    """The inner loop produced non-finite or exploding values even after step-size backoff."""


def table4_weighting(k1: float, k2: float) -> Weighting:
    """Eq. 13's weights as Table 4 sets them: r = σ²/(σ² + k1² + 1e-6) and a fixed k2."""
    return lambda sigma, x0_hat=None: (prior_weight(sigma, k1), k2)


def calibrated_weighting(rule, forward_op) -> Weighting:
    """lmaps_auto's weights (:class:`~lmaps_plugin.calibration.Calibration`), with the surrogate
    model error of a non-differentiable operator measured at each step's x̂0."""
    surrogate = not getattr(forward_op, "is_differentiable", True)

    def weighting(sigma: float, x0_hat: Tensor | None = None) -> tuple[float, float]:
        error = surrogate_mismatch(forward_op, x0_hat) if (surrogate and x0_hat is not None) else 0.0
        return rule.weights(sigma, error)

    return weighting


@dataclass
class StepGuard:
    """Caps the inner learning rate where gradient descent on Eq. 13 would diverge.

    The local MAP objective has curvature at most L = (1 − r) + r·k2·λ_max(JᵀJ); gradient
    descent is stable iff η·L < 2. Where η·L exceeds :data:`GUARD_LIMIT` the step uses η = 1/L,
    the step that solves the stiffest direction exactly.
    """
    gram_norm: float

    def curvature(self, r: float, k2: float) -> float:
        return (1.0 - r) + r * k2 * self.gram_norm

    def safe_lr(self, lr: float, r: float, k2: float) -> float:
        curvature = self.curvature(r, k2)
        return 1.0 / curvature if lr * curvature > GUARD_LIMIT else lr


def denoise(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: float) -> Tensor:
    """One network call ``x̂0 = denoiser(x, σ)`` with no autograd bookkeeping.

    σ is passed as a 0-d tensor in x's dtype (a float32 σ would round a float64 run's noise level).
    Runs under ``torch.inference_mode`` and returns a normal tensor (a clone), so x̂0 can
    still enter autograd later (non-linear operators differentiate at points derived from it)
    and callbacks may keep it.
    """
    with torch.inference_mode():
        out = denoiser(x, torch.as_tensor(sigma, dtype=x.dtype, device=x.device))
    return out.to(x.dtype).clone() if out.is_inference() else out.to(x.dtype)


def _is_finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def local_map_objective(x0: Tensor, x0_hat: Tensor, loss: Tensor, r: float, k2: float) -> Tensor:
    """Eq. 13 per sample: (1 − r)·½‖x0 − x̂0‖² + r·k2·½·loss(x0)."""
    prior = 0.5 * (x0 - x0_hat).flatten(1).square().sum(1)
    return (1.0 - r) * prior + 0.5 * r * k2 * loss.to(prior.dtype)


@dataclass
class InnerSolve:
    """The local MAP solve of every step of one run: settings, set-up on the first step, and
    what happened (for the run's warnings and :attr:`LMAPS.last_run_stats`).

    ``kind``: ``'gd'`` (K gradient steps), ``'cg'`` (exact, linear operators only: refused
    otherwise) or ``'auto'`` (exact where the operator is linear, gradient descent elsewhere).
    ``lr=None`` takes η = 1/((1 − r) + r·k2·λ_max) at every step.
    """
    kind: str = "gd"
    lr: float | None = 0.01
    steps: int = 100
    step_guard: bool = True
    power_iters: int = 20
    max_backoffs: int = 8
    cg_tol: float = 1e-5
    cg_max_iter: int = 100
    closed_form: bool = True
    warm_start: bool = True
    # set up on the first step
    exact: bool = False
    system: LinearSystem | None = None
    guard: StepGuard | None = None
    gram_norm: float = math.nan
    ready: bool = False
    previous: tuple | None = None   # (x, AᵀA x) of the last exact solve, for the warm start
    # what happened
    guard_events: list = field(default_factory=list)
    backoffs: int = 0
    cg_reports: list = field(default_factory=list)

    # -- set-up -------------------------------------------------------------------------
    def setup(self, forward_op, x0_hat: Tensor, y: Tensor) -> None:
        """Decide the solve for this operator (once per run) and measure what it needs."""
        if self.kind in ("cg", "auto"):
            self.exact = linear = self._can_solve_exactly(forward_op, x0_hat, y)
        else:  # gradient descent sums its K steps in closed form where the operator offers an eigenbasis
            linear = (self.closed_form and callable(getattr(forward_op, "gram_eigenbasis", None))
                      and self._is_least_squares_affine(forward_op, x0_hat, y))
        if linear:
            self.system = linear_system(forward_op, y, x0_hat, use_eigenbasis=self.closed_form)
        if not self.exact and (self.step_guard or self.lr is None):
            self.gram_norm = self._measure_gram_norm(forward_op, x0_hat)
            if math.isfinite(self.gram_norm):
                self.guard = StepGuard(self.gram_norm)
            else:
                warnings.warn(
                    "LMAPS step_guard could not measure λ_max(JᵀJ) (power iteration gave NaN/inf); falling back "
                    "to a safe step: each solve halves lr until Eq. 13's objective does not increase "
                    f"(at most max_backoffs={self.max_backoffs} times)", RuntimeWarning, stacklevel=4)
        self.ready = True

    def _is_least_squares_affine(self, forward_op, x0_hat: Tensor, y: Tensor) -> bool:
        if _has_plain_least_squares(forward_op):
            return True
        if getattr(forward_op, "is_linear", None) is False:
            return False
        probe = probe_operator(forward_op, x0_hat, y)
        return probe.is_affine(x0_hat.dtype) and probe.is_least_squares(x0_hat.dtype)

    def _can_solve_exactly(self, forward_op, x0_hat: Tensor, y: Tensor) -> bool:
        """True when the operator is affine with a least-squares loss. ``'cg'`` refuses any
        other operator with a message naming ``inner_solver='gd'``; ``'auto'`` falls back."""
        name = type(forward_op).__name__
        declared = getattr(forward_op, "is_linear", None)
        if declared is False:
            return self._refuse(f"{name} declares itself non-linear (is_linear = False)")
        if _has_plain_least_squares(forward_op):
            return True
        probe = probe_operator(forward_op, x0_hat, y)
        if declared is None and not probe.is_affine(x0_hat.dtype):
            return self._refuse(f"{name} is not linear: H(a + b) − H(0) differs from (H(a) − H(0)) + (H(b) − H(0)) "
                                f"by {probe.affine_error:.3g} (relative) on the first step")
        if not probe.is_least_squares(x0_hat.dtype):
            return self._refuse(f"{name}'s loss is not the plain sum of squares ‖H(x) − y‖² (it differs by "
                                f"{probe.least_squares_error:.3g}, relative), so the normal equations do not "
                                "minimise Eq. 13")
        return True

    def _refuse(self, reason: str) -> bool:
        if self.kind == "auto":
            return False
        raise NotLinearError(
            f"LMAPS inner_solver='cg' solves the normal equations of a linear operator, but {reason}. "
            "Use inner_solver='gd' (K gradient steps of Eq. 13: inner_steps, lr, step_guard).")

    def _measure_gram_norm(self, forward_op, x0_hat: Tensor) -> float:
        if self.system is not None and self.system.eigenbasis is not None:
            return float(self.system.eigenbasis.eigenvalues.max())
        try:
            return estimate_gram_norm(forward_op, x0_hat, iters=self.power_iters)
        except Exception as exc:  # the guard must never break a run it cannot measure
            warnings.warn(f"LMAPS step_guard could not estimate λ_max(JᵀJ) ({type(exc).__name__}: {exc})",
                          RuntimeWarning, stacklevel=5)
            return math.nan

    # -- one solve ---------------------------------------------------------------------
    def step_lr(self, r: float, k2: float) -> float:
        """η for this step: the given lr capped by the guard, or 1/L when lr is None."""
        if self.lr is None:
            return 1.0 / self.guard.curvature(r, k2) if self.guard is not None else 1.0
        return self.guard.safe_lr(self.lr, r, k2) if (self.guard is not None and self.step_guard) else self.lr

    def __call__(self, x0_hat: Tensor, y: Tensor, forward_op, r: float, k2: float, *, step: int,
                 sigma: float, need_loss: bool = True) -> tuple[Tensor, Tensor | None, float]:
        """Solve Eq. 13 at this step; returns the local MAP, its data loss and the η used (0 if exact).

        The exact path skips the data loss (None) when ``need_loss`` is false: nobody reads it
        (no progress bar, no callback) and it costs a forward call per step."""
        if not _is_finite(x0_hat):
            raise LMAPSDivergenceError(
                f"the denoiser returned non-finite values at step {step} (σ={sigma:.4g}); "
                "the prior network or its input is broken (check the checkpoint and image scaling)")
        if not self.ready:
            self.setup(forward_op, x0_hat, y)
        if self.exact:
            return self._exact(x0_hat, y, forward_op, r, k2, step=step, sigma=sigma, need_loss=need_loss)
        return self._gradient_descent(x0_hat, y, forward_op, r, k2, step=step, sigma=sigma)

    def _exact(self, x0_hat, y, forward_op, r, k2, *, step, sigma, need_loss=True):
        previous = self.previous if self.warm_start else None
        x0, report = exact_local_map(x0_hat, self.system, r, k2, tol=self.cg_tol, max_iter=self.cg_max_iter,
                                     x_init=None if previous is None else previous[0],
                                     gram_init=None if previous is None else previous[1])
        self.previous = (x0, report.gram_solution)
        self.cg_reports.append(replace(report, residual=None, gram_solution=None))
        loss = data_loss(forward_op, x0, y) if need_loss else None
        if not (_is_finite(x0) and (loss is None or _is_finite(loss))):
            raise LMAPSDivergenceError(
                f"LMAPS exact local MAP solve (conjugate gradient) gave non-finite values at step {step} "
                f"(σ={sigma:.4g}, r={r:.4g}, k2={k2:g}) after {report.iterations} iterations; check the operator's "
                f"adjoint and the observation for NaN, or raise cg_tol (now {self.cg_tol:g}) / lower cg_max_iter "
                f"(now {self.cg_max_iter})")
        return x0, loss, 0.0

    def _gradient_descent(self, x0_hat, y, forward_op, r, k2, *, step, sigma):
        """K gradient steps; on divergence halve η and retry from x̂0, up to ``max_backoffs`` times.

        Divergence: non-finite values, or Eq. 13's objective ending above (1 + margin) times its
        value at x̂0 (margin :data:`DIVERGENCE_MARGIN`; 0 when the guard could not measure λ_max).
        """
        lr = self.step_lr(r, k2)
        if self.lr is not None and lr != self.lr:
            self.guard_events.append((sigma, lr))
        start_loss = data_loss(forward_op, x0_hat, y)
        start = local_map_objective(x0_hat, x0_hat, start_loss, r, k2)
        margin = DIVERGENCE_MARGIN if (self.guard is not None or not self.step_guard) else 0.0
        trial_lr = lr
        for attempt in range(self.max_backoffs + 1):
            x0, loss = gd_local_map(x0_hat, y, forward_op, r, k2, trial_lr, self.steps,
                                    closed_form=self.closed_form, system=self.system)
            if not _diverged(x0, loss, local_map_objective(x0, x0_hat, loss, r, k2), start, margin):
                if attempt:
                    self.backoffs += 1
                    if margin:
                        warnings.warn(
                            f"LMAPS inner loop diverged at step {step} (σ={sigma:.4g}) with lr={lr:g}; "
                            f"recovered with lr={trial_lr:g} after {attempt} halvings", RuntimeWarning, stacklevel=4)
                return x0, loss, trial_lr
            if attempt == self.max_backoffs:
                break
            trial_lr /= 2
        backoff = f", even after {self.max_backoffs} halvings of lr (last {trial_lr:g})" if self.max_backoffs else ""
        guard = ("step_guard is on (λ_max(JᵀJ) ≈ " + f"{self.gram_norm:.4g})" if self.guard is not None
                 else "enable step_guard" if not self.step_guard else "step_guard could not measure λ_max")
        raise LMAPSDivergenceError(
            f"LMAPS inner loop (gradient descent) diverged (non-finite values, or Eq. 13's objective above "
            f"{1 + DIVERGENCE_MARGIN:g}× its start) at step {step} (σ={sigma:.4g}) with lr={lr:g}, k2={k2:g}, "
            f"r={r:.4g}, inner_steps={self.steps}{backoff}. Lower lr or k2 ({guard}), or check the operator's "
            "gradient and the observation for NaN.")

    # -- the run's report ---------------------------------------------------------------
    def finish(self, lr: float | None, k2_first: float, num_steps: int) -> None:
        """Warn once about what the run changed or could not reach."""
        if self.guard_events and self.guard is not None:
            smallest = min(e[1] for e in self.guard_events)
            sigmas = [e[0] for e in self.guard_events]
            warnings.warn(
                f"LMAPS step_guard: λ_max(JᵀJ) ≈ {self.guard.gram_norm:.4g}, so lr={lr:g} with k2={k2_first:g} gives "
                f"lr·((1−r)+r·k2·λ_max) up to {lr * self.guard.curvature(1.0, k2_first):.3g} ≥ 2 (gradient descent "
                f"diverges); lr was lowered to 1/((1−r)+r·k2·λ_max) (down to {smallest:.4g}) on "
                f"{len(self.guard_events)} of {num_steps} steps (σ from {max(sigmas):.3g} to {min(sigmas):.3g}). "
                "Set step_guard=false to run the given lr unchanged.", RuntimeWarning, stacklevel=3)
        above = [rep for rep in self.cg_reports if not rep.converged]
        if above:
            worst = max(rep.relative_residual for rep in above)
            warnings.warn(
                f"LMAPS conjugate gradient stopped above cg_tol={self.cg_tol:g} on {len(above)} of "
                f"{len(self.cg_reports)} steps (after cg_max_iter={self.cg_max_iter} iterations; worst relative "
                f"residual {worst:.3g}). Raise cg_max_iter or loosen cg_tol.", RuntimeWarning, stacklevel=3)

    def stats(self) -> dict[str, float]:
        """Numbers about the run, for result records (all JSON-able floats/ints)."""
        out: dict[str, float] = {"exact_solve": int(self.exact), "guard_steps": len(self.guard_events),
                                 "backoff_steps": self.backoffs}
        if math.isfinite(self.gram_norm):
            out["gram_norm"] = self.gram_norm
        if self.cg_reports:
            out["cg_relative_residual_max"] = max(rep.relative_residual for rep in self.cg_reports)
            out["cg_iterations_mean"] = sum(rep.iterations for rep in self.cg_reports) / len(self.cg_reports)
            out["cg_steps_above_tol"] = sum(not rep.converged for rep in self.cg_reports)
        return out


def _diverged(x0: Tensor, loss: Tensor, objective: Tensor, start: Tensor, margin: float) -> bool:
    if not (_is_finite(x0) and _is_finite(loss) and _is_finite(objective)):
        return True
    allowance = 1e-6 * start.abs().clamp_min(1.0)
    return bool((objective > (1.0 + margin) * start + allowance).any())


def sample_lmaps(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor,
                 observation: Tensor, forward_op, *, k1: float = 0.22, k2: float = 100.0,
                 lr: float | None = 0.01, inner_steps: int = 100, inner_solver: str = "gd",
                 ddim_eta: float = 1.0, step_guard: bool = True, power_iters: int = 20,
                 max_backoffs: int = 8, cg_tol: float = 1e-5, cg_max_iter: int = 100,
                 weighting: Weighting | None = None, callback: Callable[[dict], None] | None = None,
                 disable: bool | None = None, generator: torch.Generator | None = None,
                 gd_closed_form: bool = True, stats: dict | None = None) -> Tensor:
    """Run LMAPS from ``x`` (already scaled to ``sigmas[0]``) and return the final local MAP x0.

    ``observation`` must have the batch size of ``x`` (or 1). ``weighting(σ, x̂0) -> (r, k2)`` sets
    Eq. 13's weights (default: Table 4's, from ``k1`` and ``k2``). ``callback`` receives a dict with
    ``i, sigma, r, x, denoised, local_map, misfit, lr`` after every step (tensors that the
    sampler never modifies afterwards). ``stats``, when given, is updated with
    :meth:`InnerSolve.stats`. ``gd_closed_form``: see :class:`LMAPS`.
    """
    sigmas = [float(s) for s in sigmas]
    weighting = weighting or table4_weighting(k1, k2)
    solve = InnerSolve(kind=inner_solver, lr=lr, steps=inner_steps, step_guard=step_guard,
                       power_iters=power_iters, max_backoffs=max_backoffs, cg_tol=cg_tol,
                       cg_max_iter=cg_max_iter, closed_form=gd_closed_form)
    progress = tqdm(range(len(sigmas) - 1), disable=disable, desc="LMAPS", leave=False)
    x0 = x
    for i in progress:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0_hat = denoise(denoiser, x, sigma)
        r, step_k2 = weighting(sigma, x0_hat)
        x0, misfit, step_lr = solve(x0_hat, observation, forward_op, r, step_k2, step=i, sigma=sigma,
                                    need_loss=callback is not None or not progress.disable)
        if not progress.disable:
            progress.set_postfix(sigma=f"{sigma:.3g}", misfit=f"{misfit.mean().item():.4g}", refresh=False)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "r": r, "x": x, "denoised": x0_hat, "local_map": x0,
                      "misfit": misfit, "lr": step_lr})
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) \
            if generator is not None else torch.randn_like(x0)
        x = renoise(x0, x, sigma, sigma_next, noise, ddim_eta)
    solve.finish(lr, weighting(sigmas[0], None)[1], len(sigmas) - 1)
    if stats is not None:
        stats.update(solve.stats())
    return x0


class LMAPS:
    """LMAPS behind InverseBench's solver interface.

    Args mirror Table 4 of the paper: ``num_steps`` (N, annealing steps), ``inner_steps``
    (K, gradient steps), ``lr`` (η), ``k1``, ``k2``.

    * ``inner_solver='gd'`` is the paper's K gradient steps; ``'cg'`` the exact minimiser for
      linear operators (Gram eigenbasis, or conjugate gradient warm-started from the previous
      step's solution, to ``cg_tol`` times the residual at x̂0 in at most ``cg_max_iter``
      iterations; a non-linear operator is refused); ``'auto'`` is exact where the operator is linear and
      gradient descent elsewhere.
    * ``calibrate=True`` (``configs/algorithm/lmaps_auto.yaml``) replaces k1, k2 by the rule of
      :mod:`lmaps_plugin.calibration`: data weight w(σ) = v_σ/(λ·σ_y²) with σ_y the operator's
      ``sigma_noise`` and λ = ``calib_lambda``; ``lr=None`` then steps with η = 1/L_σ where gradient
      descent runs. An operator whose loss is not the plain sum of squares (the black hole's χ²)
      keeps k1, k2, with a warning.
    * ``ddim_eta=1`` is Alg. 4's fresh-noise re-noising; smaller values keep part of the previous
      noise (DDIM). ``step_guard`` caps η where it would make gradient descent diverge
      (:class:`StepGuard`). ``gd_closed_form`` (default on) sums the K gradient steps in closed
      form for linear operators that offer an eigenbasis of HᵀH (same iterate up to rounding).
      ``compile_net`` wraps the network in ``torch.compile`` on first use.
    * ``ensemble_spread`` (default 1 = off) widens each observation's ``num_samples`` samples about
      their mean by this factor (:func:`lmaps_plugin.ensemble.inflate`): the ensemble mean is
      unchanged, single samples get worse. LMAPS is mode-seeking and its ensembles are too narrow;
      ``configs/algorithm/lmaps_ensemble.yaml`` sets 1.75, chosen on validation images
      (docs/ensembles.md).

    After each :meth:`inference`, :attr:`last_run_stats` holds numbers about the run (exact or
    not, CG's worst relative residual and mean iterations, guard and backoff steps, λ_max).
    """

    def __init__(self, net, forward_op, num_steps: int = 200, sigma_max: float = 100.0,
                 sigma_min: float = 0.1, rho: float = 7.0, sigma_final: float = 0.0,
                 inner_steps: int = 100, lr: float | None = 0.01, k1: float = 0.22, k2: float = 100.0,
                 inner_solver: str = "gd", ddim_eta: float = 1.0, step_guard: bool = True,
                 power_iters: int = 20, max_backoffs: int = 8, cg_tol: float = 1e-5,
                 cg_max_iter: int = 100, calibrate: bool = False, calib_lambda: float = 1.0,
                 calib_variance: str = "gaussian", verbose: bool = True, gd_closed_form: bool = True,
                 compile_net: bool = False, ensemble_spread: float = 1.0):
        _check_config(num_steps=num_steps, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho,
                      sigma_final=sigma_final, inner_steps=inner_steps, lr=lr, k1=k1, k2=k2,
                      inner_solver=inner_solver, ddim_eta=ddim_eta, power_iters=power_iters,
                      max_backoffs=max_backoffs, cg_tol=cg_tol, cg_max_iter=cg_max_iter,
                      calib_lambda=calib_lambda, calib_variance=calib_variance, step_guard=step_guard,
                      calibrate=calibrate, gd_closed_form=gd_closed_form, compile_net=compile_net,
                      ensemble_spread=ensemble_spread)
        self.net = net
        self.forward_op = forward_op
        if hasattr(net, "eval"):
            net.eval()
        self.num_steps, self.inner_steps = int(num_steps), int(inner_steps)
        self.sigma_max, self.sigma_min, self.rho, self.sigma_final = sigma_max, sigma_min, rho, sigma_final
        self.lr = None if lr is None else float(lr)
        self.k1, self.k2 = float(k1), float(k2)
        self.inner_solver, self.ddim_eta, self.step_guard = inner_solver, float(ddim_eta), bool(step_guard)
        self.power_iters, self.max_backoffs = int(power_iters), int(max_backoffs)
        self.cg_tol, self.cg_max_iter = float(cg_tol), int(cg_max_iter)
        self.calibrate, self.calib_lambda, self.calib_variance = calibrate, float(calib_lambda), calib_variance
        self.verbose = verbose
        self.gd_closed_form, self.compile_net = bool(gd_closed_form), bool(compile_net)
        self.ensemble_spread = float(ensemble_spread)
        self._compiled = None
        self.last_run_stats: dict = {}

    def denoiser(self) -> Callable[[Tensor, Tensor], Tensor]:
        """The network as called in the loop: ``net`` itself, or its ``torch.compile`` wrapper
        (built once, on first use) when ``compile_net`` is set."""
        if not self.compile_net:
            return self.net
        if self._compiled is None:
            self._compiled = torch.compile(self.net)
        return self._compiled

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one sample, read from the prior network."""
        shape = getattr(self.net, "img_shape", None)
        if shape is not None:
            return tuple(int(s) for s in shape)
        res = self.net.img_resolution
        res = (res, res) if isinstance(res, int) else tuple(res)
        return (int(self.net.img_channels), *res)

    def sigmas(self, device=None) -> Tensor:
        return poly_sigmas(self.num_steps, self.sigma_min, self.sigma_max, self.rho, self.sigma_final,
                           device=device)

    def weighting(self, observation: Tensor) -> Weighting:
        """Eq. 13's weights per σ: lmaps_auto's rule when ``calibrate`` (and the loss allows it),
        otherwise Table 4's from k1, k2."""
        if not self.calibrate:
            return table4_weighting(self.k1, self.k2)
        if getattr(self.forward_op, "is_linear", None) is not True or not _has_plain_least_squares(self.forward_op):
            probe = probe_operator(self.forward_op, torch.zeros((1, *self.sample_shape), dtype=_real_dtype(observation),
                                                                device=observation.device), observation)
            if not probe.is_least_squares(_real_dtype(observation)):
                warnings.warn(
                    f"LMAPS calibrate: {type(self.forward_op).__name__}'s loss is not the plain sum of squares "
                    f"‖H(x) − y‖² (relative difference {probe.least_squares_error:.3g}), so sigma_noise does not set its "
                    f"scale; using the configured k1={self.k1:g}, k2={self.k2:g} instead (docs/calibration.md)",
                    RuntimeWarning, stacklevel=3)
                return table4_weighting(self.k1, self.k2)
        rule = calibrate(self.forward_op, observation, self.net, lam=self.calib_lambda, variance=self.calib_variance)
        return calibrated_weighting(rule, self.forward_op)

    def inference(self, observation: Tensor, num_samples: int = 1, verbose: bool | None = None,
                  callback: Callable[[dict], None] | None = None,
                  generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Reconstruct from ``observation`` (batch B; InverseBench passes B = 1).

        Returns ``(B·num_samples, C, H, W)`` in the prior's normalized space; the samples of
        observation ``b`` are rows ``b·num_samples … (b+1)·num_samples − 1``. Samples take the
        observation's dtype when it is real floating point, float32 otherwise (complex
        measurements such as the scattering field), unless ``dtype`` is given.
        """
        check_inference_arguments(observation, num_samples)
        check_observation(self.forward_op, observation, self.sample_shape)
        verbose = self.verbose if verbose is None else verbose
        device = observation.device
        dtype = dtype or (observation.dtype if observation.is_floating_point() else torch.float32)
        y = observation.repeat_interleave(num_samples, dim=0) if num_samples > 1 else observation
        sigmas = self.sigmas(device=device)
        shape = (y.shape[0], *self.sample_shape)
        if generator is not None:
            x = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        else:
            x = torch.randn(shape, dtype=dtype, device=device)
        x = x * float(sigmas[0])
        stats: dict = {}
        out = sample_lmaps(self.denoiser(), x, sigmas, y, self.forward_op, k1=self.k1, k2=self.k2, lr=self.lr,
                           inner_steps=self.inner_steps, inner_solver=self.inner_solver,
                           ddim_eta=self.ddim_eta, step_guard=self.step_guard,
                           power_iters=self.power_iters, max_backoffs=self.max_backoffs,
                           cg_tol=self.cg_tol, cg_max_iter=self.cg_max_iter, weighting=self.weighting(y),
                           callback=callback, disable=not verbose, generator=generator,
                           gd_closed_form=self.gd_closed_form, stats=stats)
        self.last_run_stats = stats
        return self.spread(out, num_samples)

    def spread(self, samples: Tensor, num_samples: int) -> Tensor:
        """Apply ``ensemble_spread`` to each observation's ``num_samples`` rows (one ensemble each)."""
        if self.ensemble_spread == 1.0:
            return samples
        if num_samples < 2:
            warnings.warn(f"LMAPS: ensemble_spread={self.ensemble_spread:g} widens ensembles about their mean and "
                          "has no effect with num_samples=1 (use num_samples >= 2, e.g. 8)", RuntimeWarning,
                          stacklevel=3)
            return samples
        groups = samples.reshape(-1, num_samples, *samples.shape[1:])
        return inflate(groups, self.ensemble_spread, dim=1).reshape(samples.shape)

    def __repr__(self) -> str:
        weights = (f"calibrate=True, calib_lambda={self.calib_lambda}" if self.calibrate
                   else f"lr={self.lr}, k1={self.k1}, k2={self.k2}")
        return (f"LMAPS(N={self.num_steps}, K={self.inner_steps}, {weights}, "
                f"inner_solver={self.inner_solver!r})")


def _real_dtype(observation: Tensor) -> torch.dtype:
    if observation.is_complex():
        return observation.real.dtype
    return observation.dtype if observation.is_floating_point() else torch.float32


def check_inference_arguments(observation, num_samples) -> None:
    """Refuse what ``inference`` cannot use, with a message naming the argument."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not isinstance(observation, torch.Tensor):
        raise TypeError(f"observation must be a torch.Tensor, got {type(observation).__name__}")
    if observation.device.type == "meta":
        raise ValueError("observation is on the 'meta' device (shape only, no data); pass a tensor with values")
    if observation.dtype == torch.bool or not (observation.is_floating_point() or observation.is_complex()):
        raise TypeError(f"observation must be a floating-point or complex tensor, got dtype {observation.dtype}")
    if observation.ndim < 1 or observation.shape[0] < 1:
        raise ValueError(f"observation must have a leading batch dimension, got shape {tuple(observation.shape)}")
    if not _is_finite(observation):
        bad = int((~torch.isfinite(observation)).sum())
        raise ValueError(f"observation holds {bad} non-finite value(s) (NaN or inf): LMAPS cannot fit them. Check the "
                         "measurement and the operator's sigma_noise (it must be a finite number >= 0)")


def check_observation(forward_op, observation: Tensor, sample_shape: tuple[int, ...]) -> None:
    """Check that ``observation`` is what ``forward_op`` makes of an image of the prior's shape.

    Measures one zero image of ``sample_shape`` and compares shape and real/complex type, so a
    mismatch fails before sampling with a message naming both shapes.
    """
    probe = torch.zeros((2, *sample_shape), dtype=_real_dtype(observation), device=observation.device)
    try:
        with torch.no_grad():
            expected = forward_op.forward(probe)
    except Exception as exc:
        raise ValueError(
            f"the forward operator {type(forward_op).__name__} cannot measure an image of the prior's "
            f"shape {tuple(sample_shape)} (net.img_channels, net.img_resolution): {exc}. "
            "Use a prior trained at the operator's image size, or configure the operator for this size."
        ) from exc
    if expected.shape[0] != 2:
        raise ValueError(
            f"{type(forward_op).__name__}.forward maps a batch of 2 images to a batch of {expected.shape[0]}: "
            "it does not measure each image of a batch (InverseBench's InverseScatter reads element 0 only; "
            "use problem=inv-scatter-fixed, or lmaps_plugin.inversebench.InverseScatter)")
    if tuple(expected.shape[1:]) != tuple(observation.shape[1:]):
        raise ValueError(
            f"observation has shape {tuple(observation.shape)} but {type(forward_op).__name__} maps images "
            f"of the prior's shape {tuple(sample_shape)} to (batch, {', '.join(map(str, expected.shape[1:]))}); "
            "check the problem's image size against the prior's img_resolution/img_channels")
    if expected.is_complex() != observation.is_complex():
        kind = lambda t: "complex" if t.is_complex() else "real"  # noqa: E731
        raise ValueError(
            f"observation is {kind(observation)} ({observation.dtype}) but {type(forward_op).__name__} "
            f"produces {kind(expected)} measurements ({expected.dtype})")


def _check_config(**cfg) -> None:
    """Reject meaningless settings with a message naming the key and the valid range."""
    def need(ok: bool, key: str, valid: str) -> None:
        if not ok:
            raise ValueError(f"LMAPS: {key}={cfg[key]!r} is invalid; {key} must be {valid}")

    def number(key: str) -> float:
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"LMAPS: {key}={value!r} is invalid; {key} must be a finite number")
        return float(value)

    for key in ("num_steps", "inner_steps", "power_iters", "max_backoffs", "cg_max_iter"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"LMAPS: {key}={value!r} is invalid; {key} must be an integer")
    for key in ("step_guard", "calibrate", "gd_closed_form", "compile_net"):
        need(isinstance(cfg[key], bool), key, "true or false")
    need(cfg["num_steps"] >= 1, "num_steps", "an integer >= 1 (N, annealing steps)")
    need(cfg["inner_steps"] >= 1, "inner_steps", "an integer >= 1 (K, gradient steps)")
    need(cfg["power_iters"] >= 1, "power_iters", "an integer >= 1")
    need(cfg["max_backoffs"] >= 0, "max_backoffs", "an integer >= 0")
    need(cfg["cg_max_iter"] >= 1, "cg_max_iter", "an integer >= 1 (conjugate-gradient iteration cap)")
    need(cfg["lr"] is None or number("lr") > 0, "lr", "> 0 (η, the inner learning rate), or null for η = 1/L")
    need(number("k1") >= 0, "k1", ">= 0 (0 makes r ≈ 1: data term only)")
    need(number("k2") > 0, "k2", "> 0 (scale of the data-consistency term)")
    need(number("sigma_min") > 0, "sigma_min", "> 0")
    need(number("sigma_max") >= cfg["sigma_min"], "sigma_max", f">= sigma_min ({cfg['sigma_min']})")
    need(number("rho") > 0, "rho", "> 0 (poly-ρ grid exponent, 7 in EDM)")
    need(0 <= number("sigma_final") <= cfg["sigma_min"], "sigma_final", "in [0, sigma_min]")
    need(0 <= number("ddim_eta") <= 1, "ddim_eta", "in [0, 1] (1 = Alg. 4's fresh noise, 0 = DDIM)")
    need(number("cg_tol") > 0, "cg_tol", "> 0 (conjugate gradient's relative residual tolerance)")
    need(number("ensemble_spread") > 0, "ensemble_spread",
         "> 0 (factor on each ensemble's deviations from its mean; 1 = off, lmaps_ensemble.yaml: 1.75)")
    need(number("calib_lambda") > 0, "calib_lambda", "> 0 (lmaps_auto's noise-variance multiplier; 1 = Bayes)")
    need(cfg["calib_variance"] in VARIANCE_MODELS, "calib_variance", f"one of {VARIANCE_MODELS}")
    need(cfg["inner_solver"] in INNER_SOLVERS, "inner_solver", f"one of {INNER_SOLVERS}")
