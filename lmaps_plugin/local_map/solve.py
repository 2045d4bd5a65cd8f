"""The local MAP solve of one LMAPS run, step after step: decided once from the operator (K gradient steps with
the step-size guard, or the exact solve of a linear operator), recovered by halving η where gradient descent
diverges, and reported (guard steps, backoffs, CG residuals)."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import torch

from ..operators.capabilities import NotLinearError, OperatorCapabilities, operator_capabilities, probe_operator
from .exact import LinearSystem, exact_local_map, linear_system
from .gd import StepGuard, gd_local_map
from .krylov import KRYLOV_TOL, gd_by_lanczos
from .objective import data_loss, local_map_objective
from .spectrum import estimate_gram_norm

Tensor = torch.Tensor

#: a local MAP solve has diverged when Eq. 13's objective ends above (1 + margin) times its value
#: at x̂0 (docs/step_guard.md): gradient descent with a stable step never raises it, and surrogate
#: gradients of non-differentiable operators stay well inside this margin.
DIVERGENCE_MARGIN = 1.0



class LMAPSDivergenceError(FloatingPointError):
    """The inner loop produced non-finite or exploding values even after step-size backoff."""


def _is_finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


@dataclass(frozen=True)
class InnerSettings:
    """How every step of a run solves Eq. 13 (validated by :class:`~lmaps_plugin.algorithm.LMAPSConfig`).

    ``kind``: ``'gd'`` (K = ``steps`` gradient steps of size ``lr``), ``'cg'`` (exact, linear operators only:
    refused otherwise) or ``'auto'`` (exact where the operator is linear, gradient descent elsewhere).
    ``lr=None`` takes η = 1/((1 − r) + r·k2·λ_max) at every step. ``closed_form`` sums the K steps of a linear
    least-squares operator in closed form: in its Gram eigenbasis where it offers one, else by Lanczos to relative
    accuracy ``krylov_tol`` (:mod:`.krylov`); ``warm_start`` starts conjugate gradient from the previous step's
    solution.
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
    krylov_tol: float = KRYLOV_TOL


@dataclass
class InnerSolve:
    """The local MAP solve of every step of one run: set up on the first step from the operator, then what
    happened (for the run's warnings and :attr:`LMAPS.last_run_stats`)."""
    settings: InnerSettings = field(default_factory=InnerSettings)
    # set up on the first step
    exact: bool = False
    system: LinearSystem | None = None
    guard: StepGuard | None = None
    gram_norm: float = math.nan
    ready: bool = False
    previous: tuple | None = None   # (x, AᵀA x) of the last exact solve, for the warm start
    # what happened
    description: str = ""
    guard_events: list = field(default_factory=list)
    backoffs: int = 0
    cg_reports: list = field(default_factory=list)
    krylov_reports: list = field(default_factory=list)

    # -- set-up -------------------------------------------------------------------------
    def setup(self, forward_op, x0_hat: Tensor, y: Tensor) -> None:
        """Decide the solve for this operator (once per run) and measure what it needs."""
        capabilities = operator_capabilities(forward_op)
        if self.settings.kind in ("cg", "auto"):
            self.exact = linear = self._can_solve_exactly(forward_op, capabilities, x0_hat, y)
        else:  # gradient descent sums its K steps in closed form where the operator is linear least squares
            linear = (self.settings.closed_form
                      and self._is_least_squares_affine(forward_op, capabilities, x0_hat, y))
        if linear:
            self.system = linear_system(forward_op, y, x0_hat, use_eigenbasis=self.settings.closed_form)
        if not self.exact and (self.settings.step_guard or self.settings.lr is None):
            self.gram_norm = self._measure_gram_norm(forward_op, x0_hat)
            if math.isfinite(self.gram_norm):
                self.guard = StepGuard(self.gram_norm)
            else:
                warnings.warn(
                    "LMAPS step_guard could not measure λ_max(JᵀJ) (power iteration gave NaN/inf); falling back "
                    "to a safe step: each solve halves lr until Eq. 13's objective does not increase "
                    f"(at most max_backoffs={self.settings.max_backoffs} times)", RuntimeWarning, stacklevel=4)
        self.ready = True
        self.description = self.describe(forward_op)

    def describe(self, forward_op) -> str:
        """Which local MAP solve this run uses, and why, in one line (printed once per run when LMAPS is verbose)."""
        name, settings = type(forward_op).__name__, self.settings
        basis = self.system is not None and self.system.eigenbasis is not None
        if self.exact:
            how = ("exact, in the operator's Gram eigenbasis" if basis else
                   f"exact, by conjugate gradient (cg_tol={settings.cg_tol:g}, cg_max_iter={settings.cg_max_iter}, "
                   f"{'warm-started' if settings.warm_start else 'from x̂0'})")
            why = f"{name} is linear with a least-squares loss (inner_solver={settings.kind})"
        else:
            steps = ("summed in closed form in the Gram eigenbasis" if basis else
                     f"summed by Lanczos (at most K Gram products; krylov_tol={settings.krylov_tol:g})"
                     if self.system is not None else "one by one")
            how = f"K={settings.steps} gradient steps, {steps}"
            why = (f"inner_solver={settings.kind}" if settings.kind == "gd" else
                   f"{name} is not linear with a least-squares loss (inner_solver=auto)")
            if self.guard is not None:
                why += f"; step guard on (λ_max(JᵀJ) ≈ {self.gram_norm:.3g})"
        return f"LMAPS local MAP solve: {how}; {why}"

    def _is_least_squares_affine(self, forward_op, capabilities: OperatorCapabilities, x0_hat: Tensor,
                                 y: Tensor) -> bool:
        if capabilities.plain_least_squares:
            return True
        if capabilities.linear is False:
            return False
        probe = probe_operator(forward_op, x0_hat, y)
        return probe.is_affine(x0_hat.dtype) and probe.is_least_squares(x0_hat.dtype)

    def _can_solve_exactly(self, forward_op, capabilities: OperatorCapabilities, x0_hat: Tensor, y: Tensor) -> bool:
        """True when the operator is affine with a least-squares loss. ``'cg'`` refuses any
        other operator with a message naming ``inner_solver='gd'``; ``'auto'`` falls back."""
        name = type(forward_op).__name__
        declared = capabilities.linear
        if declared is False:
            return self._refuse(f"{name} declares itself non-linear (is_linear = False)")
        if capabilities.plain_least_squares:
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
        if self.settings.kind == "auto":
            return False
        raise NotLinearError(
            f"LMAPS inner_solver='cg' solves the normal equations of a linear operator, but {reason}. "
            "Use inner_solver='gd' (K gradient steps of Eq. 13: inner_steps, lr, step_guard).")

    def _measure_gram_norm(self, forward_op, x0_hat: Tensor) -> float:
        if self.system is not None and self.system.eigenbasis is not None:
            return float(self.system.eigenbasis.eigenvalues.max())
        try:
            return estimate_gram_norm(forward_op, x0_hat, iters=self.settings.power_iters)
        except Exception as exc:  # the guard must never break a run it cannot measure
            warnings.warn(f"LMAPS step_guard could not estimate λ_max(JᵀJ) ({type(exc).__name__}: {exc})",
                          RuntimeWarning, stacklevel=5)
            return math.nan

    # -- one solve ---------------------------------------------------------------------
    def step_lr(self, r: float, k2: float) -> float:
        """η for this step: the given lr capped by the guard, or 1/L when lr is None."""
        if self.settings.lr is None:
            return 1.0 / self.guard.curvature(r, k2) if self.guard is not None else 1.0
        return self.guard.safe_lr(self.settings.lr, r, k2) if (self.guard is not None and self.settings.step_guard) else self.settings.lr

    def __call__(self, x0_hat: Tensor, y: Tensor, forward_op, r: float, k2: float, *, step: int,
                 sigma: float, need_loss: bool = True) -> tuple[Tensor, Tensor | None, float]:
        """Solve Eq. 13 at this step; returns the local MAP, its data loss and the η used (0 if exact).

        The exact path skips the data loss (None) when ``need_loss`` is false: nobody reads it
        (no progress bar, no callback) and it costs a forward call per step. After the first step, x̂0's
        finiteness is checked together with the solution's, in the one host synchronisation of the step
        (:func:`_step_failed`)."""
        # the observation is data to the solve: an operator with trainable weights (InverseBench's blur kernels)
        # returns one that requires grad, which must not make the K steps record an autograd graph
        y = y.detach()
        if not self.ready:
            _check_denoised(x0_hat, step, sigma)
            self.setup(forward_op, x0_hat, y)
        if self.exact:
            return self._exact(x0_hat, y, forward_op, r, k2, step=step, sigma=sigma, need_loss=need_loss)
        return self._gradient_descent(x0_hat, y, forward_op, r, k2, step=step, sigma=sigma)

    def _exact(self, x0_hat, y, forward_op, r, k2, *, step, sigma, need_loss=True):
        previous = self.previous if self.settings.warm_start else None
        x0, report = exact_local_map(x0_hat, self.system, r, k2, tol=self.settings.cg_tol, max_iter=self.settings.cg_max_iter,
                                     x_init=None if previous is None else previous[0],
                                     gram_init=None if previous is None else previous[1])
        self.previous = (x0, report.gram_solution)
        self.cg_reports.append(replace(report, residual=None, gram_solution=None))
        loss = data_loss(forward_op, x0, y) if need_loss else None
        if bool(_step_failed(x0_hat, x0, loss)):
            _check_denoised(x0_hat, step, sigma)
            raise LMAPSDivergenceError(
                f"LMAPS exact local MAP solve (conjugate gradient) gave non-finite values at step {step} "
                f"(σ={sigma:.4g}, r={r:.4g}, k2={k2:g}) after {report.iterations} iterations; check the operator's "
                f"adjoint and the observation for NaN, or raise cg_tol (now {self.settings.cg_tol:g}) / lower cg_max_iter "
                f"(now {self.settings.cg_max_iter})")
        return x0, loss, 0.0

    def _gradient_descent(self, x0_hat, y, forward_op, r, k2, *, step, sigma):
        """K gradient steps; on divergence halve η and retry from x̂0, up to ``max_backoffs`` times.

        Divergence: non-finite values, or Eq. 13's objective ending above (1 + margin) times its
        value at x̂0 (margin :data:`DIVERGENCE_MARGIN`; 0 when the guard could not measure λ_max).
        """
        lr = self.step_lr(r, k2)
        if self.settings.lr is not None and lr != self.settings.lr:
            self.guard_events.append((sigma, lr))
        start_loss = data_loss(forward_op, x0_hat, y)
        start = local_map_objective(x0_hat, x0_hat, start_loss, r, k2)
        margin = DIVERGENCE_MARGIN if (self.guard is not None or not self.settings.step_guard) else 0.0
        trial_lr = lr
        for attempt in range(self.settings.max_backoffs + 1):
            x0, loss = self._gd_steps(x0_hat, y, forward_op, r, k2, trial_lr)
            if not bool(_step_failed(x0_hat, x0, loss, local_map_objective(x0, x0_hat, loss, r, k2), start, margin)):
                if attempt:
                    self.backoffs += 1
                    if margin:
                        warnings.warn(
                            f"LMAPS inner loop diverged at step {step} (σ={sigma:.4g}) with lr={lr:g}; "
                            f"recovered with lr={trial_lr:g} after {attempt} halvings", RuntimeWarning, stacklevel=4)
                return x0, loss, trial_lr
            _check_denoised(x0_hat, step, sigma)   # a broken x̂0 is not the step size's fault
            if attempt == self.settings.max_backoffs:
                break
            trial_lr /= 2
        backoff = f", even after {self.settings.max_backoffs} halvings of lr (last {trial_lr:g})" if self.settings.max_backoffs else ""
        guard = ("step_guard is on (λ_max(JᵀJ) ≈ " + f"{self.gram_norm:.4g})" if self.guard is not None
                 else "enable step_guard" if not self.settings.step_guard else "step_guard could not measure λ_max")
        raise LMAPSDivergenceError(
            f"LMAPS inner loop (gradient descent) diverged (non-finite values, or Eq. 13's objective above "
            f"{1 + DIVERGENCE_MARGIN:g}× its start) at step {step} (σ={sigma:.4g}) with lr={lr:g}, k2={k2:g}, "
            f"r={r:.4g}, inner_steps={self.settings.steps}{backoff}. Lower lr or k2 ({guard}), or check the operator's "
            "gradient and the observation for NaN.")

    def _gd_steps(self, x0_hat, y, forward_op, r, k2, lr):
        """K gradient steps from x̂0 and their data loss: by Lanczos for a linear least-squares operator without
        an eigenbasis (unless autograd records through x̂0; ``y`` is detached by :meth:`__call__`), else
        :func:`gd_local_map`."""
        system = self.system
        by_lanczos = (system is not None and system.eigenbasis is None
                      and not (torch.is_grad_enabled() and x0_hat.requires_grad))
        if not by_lanczos:
            return gd_local_map(x0_hat, y, forward_op, r, k2, lr, self.settings.steps,
                                closed_form=self.settings.closed_form, system=system)
        x0, report = gd_by_lanczos(x0_hat, system, r, k2, lr, self.settings.steps, tol=self.settings.krylov_tol)
        self.krylov_reports.append(report)
        return x0, data_loss(forward_op, x0, y)

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
                f"LMAPS conjugate gradient stopped above cg_tol={self.settings.cg_tol:g} on {len(above)} of "
                f"{len(self.cg_reports)} steps (after cg_max_iter={self.settings.cg_max_iter} iterations; worst relative "
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
        if self.krylov_reports:
            out["krylov_iterations_mean"] = sum(rep.iterations for rep in self.krylov_reports) / len(self.krylov_reports)
            out["krylov_relative_change_max"] = max(rep.relative_change for rep in self.krylov_reports)
        return out


def _check_denoised(x0_hat: Tensor, step: int, sigma: float) -> None:
    if not _is_finite(x0_hat):
        raise LMAPSDivergenceError(
            f"the denoiser returned non-finite values at step {step} (σ={sigma:.4g}); "
            "the prior network or its input is broken (check the checkpoint and image scaling)")


def _step_failed(x0_hat: Tensor, x0: Tensor, loss: Tensor | None, objective: Tensor | None = None,
                 start: Tensor | None = None, margin: float = 0.0) -> Tensor:
    """A 0-d bool tensor, computed on the tensors' device without synchronising: true when x̂0, the solution,
    its loss or its objective is non-finite, or (given ``start``) when Eq. 13's objective ends above
    (1 + ``margin``) times its value at x̂0. The caller reads it once per step."""
    finite = [torch.isfinite(t).all() for t in (x0_hat, x0, loss, objective) if t is not None]
    failed = ~torch.stack(finite).all()
    if start is not None:
        allowance = 1e-6 * start.abs().clamp_min(1.0)
        failed = failed | (objective > (1.0 + margin) * start + allowance).any()
    return failed


__all__ = ["InnerSettings", "InnerSolve", "LMAPSDivergenceError", "DIVERGENCE_MARGIN"]
