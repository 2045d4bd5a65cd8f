"""Local MAP Sampling (LMAPS), Alg. 4 of the paper, in the EDM σ convention.

:func:`sample_lmaps` is the sampler as one flat function (k-diffusion style); :class:`LMAPS`
wraps it behind InverseBench's solver interface (``__init__(net, forward_op, ...)``,
``inference(observation, num_samples=1)``).

    sigmas = poly-ρ grid from σ_max to σ_min, then 0
    x = σ_max · ε
    for each σ_i:
        x̂0 = net(x, σ_i)                          one network call, no gradient through it
        r  = σ_i² / (σ_i² + k1² + 1e-6)
        x0 = local MAP of Eq. 13 from x̂0          K gradient steps (or conjugate gradient)
        x  = x0 + σ_{i+1} · ε                      re-noise (DDIM-style with ddim_eta < 1)
    return x0
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .local_map import cg_local_map, estimate_gram_norm, gd_local_map
from .schedules import poly_sigmas, prior_weight, renoise

Tensor = torch.Tensor
INNER_SOLVERS = ("gd", "cg")
#: the guard acts when η·((1−r) + r·k2·λ_max) exceeds this (2 is the stability limit; the margin
#: covers power iteration's slight underestimate of λ_max).
GUARD_LIMIT = 1.9


class LMAPSDivergenceError(FloatingPointError):
    """The inner loop produced non-finite values even after step-size backoff."""


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


def local_map_step(x0_hat: Tensor, y: Tensor, forward_op, r: float, *, k2: float, lr: float,
                   inner_steps: int, inner_solver: str, cg_tol: float,
                   gd_closed_form: bool = True) -> tuple[Tensor, Tensor]:
    """One local MAP solve (Eq. 13) with the chosen inner solver."""
    if inner_solver == "cg":
        return cg_local_map(x0_hat, y, forward_op, r, k2, max_iter=inner_steps, tol=cg_tol,
                            closed_form=gd_closed_form)
    return gd_local_map(x0_hat, y, forward_op, r, k2, lr, inner_steps, closed_form=gd_closed_form)


def denoise(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: float) -> Tensor:
    """One network call ``x̂0 = denoiser(x, σ)`` with no autograd bookkeeping.

    Runs under ``torch.inference_mode`` and returns a normal tensor (a clone), so x̂0 can
    still enter autograd later (non-linear operators differentiate at points derived from it)
    and callbacks may keep it.
    """
    with torch.inference_mode():
        out = denoiser(x, torch.as_tensor(sigma, device=x.device))
    return out.to(x.dtype).clone() if out.is_inference() else out.to(x.dtype)


def _is_finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


#: a local MAP whose data loss ends this many times above its start has diverged: a stable
#: descent on Eq. 13 never raises the data loss above its value at x̂0.
DIVERGENCE_FACTOR = 1e3


def _diverged(x0: Tensor, end_loss: Tensor, start_loss: Tensor) -> bool:
    if not (_is_finite(x0) and _is_finite(end_loss)):
        return True
    return bool((end_loss > DIVERGENCE_FACTOR * start_loss + 1e-6).any())


def sample_lmaps(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor,
                 observation: Tensor, forward_op, *, k1: float, k2: float, lr: float,
                 inner_steps: int = 100, inner_solver: str = "gd", ddim_eta: float = 1.0,
                 step_guard: bool = True, power_iters: int = 20, max_backoffs: int = 8,
                 cg_tol: float = 1e-6, callback: Callable[[dict], None] | None = None,
                 disable: bool | None = None, generator: torch.Generator | None = None,
                 gd_closed_form: bool = True) -> Tensor:
    """Run LMAPS from ``x`` (already scaled to ``sigmas[0]``) and return the final local MAP x0.

    ``observation`` must have the batch size of ``x`` (or 1). ``callback`` receives a dict with
    ``i, sigma, r, x, denoised, local_map, misfit, lr`` after every step (tensors that the
    sampler never modifies afterwards). ``gd_closed_form``: see :class:`LMAPS`.
    """
    sigmas = [float(s) for s in sigmas]
    guard: StepGuard | None = None
    guard_events: list[tuple[float, float]] = []
    progress = tqdm(range(len(sigmas) - 1), disable=disable, desc="LMAPS", leave=False)
    x0 = x
    for i in progress:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0_hat = denoise(denoiser, x, sigma)
        r = prior_weight(sigma, k1)
        if step_guard and inner_solver == "gd" and guard is None:
            guard = _build_guard(forward_op, x0_hat, power_iters)
        step_lr = guard.safe_lr(lr, r, k2) if guard is not None else lr
        if step_lr != lr:
            guard_events.append((sigma, step_lr))
        x0, misfit = _solve_with_backoff(x0_hat, observation, forward_op, r, k2=k2, lr=step_lr,
                                         inner_steps=inner_steps, inner_solver=inner_solver,
                                         cg_tol=cg_tol, max_backoffs=max_backoffs, step=i, sigma=sigma,
                                         gd_closed_form=gd_closed_form)
        if not progress.disable:
            progress.set_postfix(sigma=f"{sigma:.3g}", misfit=f"{misfit.mean().item():.4g}", refresh=False)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "r": r, "x": x, "denoised": x0_hat, "local_map": x0,
                      "misfit": misfit, "lr": step_lr})
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) \
            if generator is not None else torch.randn_like(x0)
        x = renoise(x0, x, sigma, sigma_next, noise, ddim_eta)
    if guard_events and guard is not None:
        _warn_guard(guard, guard_events, lr, k2, len(sigmas) - 1)
    return x0


def _build_guard(forward_op, x0_hat: Tensor, power_iters: int) -> StepGuard | None:
    try:
        return StepGuard(estimate_gram_norm(forward_op, x0_hat, iters=power_iters))
    except Exception as exc:  # the guard must never break a run it cannot measure
        warnings.warn(f"LMAPS step_guard could not estimate λ_max(JᵀJ) ({type(exc).__name__}: {exc}); "
                      "running without it", RuntimeWarning, stacklevel=3)
        return None


def _warn_guard(guard: StepGuard, events: list[tuple[float, float]], lr: float, k2: float,
                num_steps: int) -> None:
    smallest = min(e[1] for e in events)
    sigmas = [e[0] for e in events]
    warnings.warn(
        f"LMAPS step_guard: λ_max(JᵀJ) ≈ {guard.gram_norm:.4g}, so lr={lr:g} with k2={k2:g} gives "
        f"lr·((1−r)+r·k2·λ_max) up to {lr * guard.curvature(1.0, k2):.3g} ≥ 2 (gradient descent "
        f"diverges); lr was lowered to 1/((1−r)+r·k2·λ_max) (down to {smallest:.4g}) on "
        f"{len(events)} of {num_steps} steps (σ from {max(sigmas):.3g} to {min(sigmas):.3g}). "
        "Set step_guard=false to run the given lr unchanged.", RuntimeWarning, stacklevel=3)


def _solve_with_backoff(x0_hat: Tensor, y: Tensor, forward_op, r: float, *, k2: float, lr: float,
                        inner_steps: int, inner_solver: str, cg_tol: float, max_backoffs: int,
                        step: int, sigma: float, gd_closed_form: bool = True) -> tuple[Tensor, Tensor]:
    """Solve Eq. 13; on divergence halve lr and retry from x̂0, up to ``max_backoffs`` times.

    Divergence: non-finite values, or a data loss that ends far above its value at x̂0.
    """
    if not _is_finite(x0_hat):
        raise LMAPSDivergenceError(
            f"the denoiser returned non-finite values at step {step} (σ={sigma:.4g}); "
            "the prior network or its input is broken (check the checkpoint and image scaling)")
    start_loss = forward_op.loss(x0_hat, y).detach().reshape(-1)
    trial_lr = lr
    for attempt in range(max_backoffs + 1):
        x0, misfit = local_map_step(x0_hat, y, forward_op, r, k2=k2, lr=trial_lr,
                                    inner_steps=inner_steps, inner_solver=inner_solver, cg_tol=cg_tol,
                                    gd_closed_form=gd_closed_form)
        if not _diverged(x0, misfit, start_loss):
            if attempt:
                warnings.warn(
                    f"LMAPS inner loop diverged at step {step} (σ={sigma:.4g}) with lr={lr:g}; "
                    f"recovered with lr={trial_lr:g} after {attempt} halvings", RuntimeWarning, stacklevel=3)
            return x0, misfit
        if inner_solver == "cg" or attempt == max_backoffs:
            break
        trial_lr /= 2
    backoff = (f", even after {max_backoffs} halvings of lr (last {trial_lr:g})"
               if inner_solver == "gd" and max_backoffs else "")
    raise LMAPSDivergenceError(
        f"LMAPS inner loop diverged (non-finite or exploding values) at step {step} (σ={sigma:.4g}) "
        f"with lr={lr:g}, k2={k2:g}, r={r:.4g}{backoff}. "
        "Lower lr or k2, enable step_guard, or check the operator's gradient for NaN.")


class LMAPS:
    """LMAPS behind InverseBench's solver interface.

    Args mirror Table 4 of the paper: ``num_steps`` (N, annealing steps), ``inner_steps``
    (K, gradient steps), ``lr`` (η), ``k1``, ``k2``. ``inner_solver='cg'`` replaces gradient
    descent with an exact conjugate-gradient solve (linear operators only). ``ddim_eta=1`` is
    Alg. 4's fresh-noise re-noising; smaller values keep part of the previous noise (DDIM).
    ``step_guard`` caps η where it would make gradient descent diverge (see :class:`StepGuard`).
    ``gd_closed_form`` (default on) sums the K gradient steps in closed form for linear
    operators that offer an eigenbasis of HᵀH (same iterate up to rounding; see
    :func:`~lmaps_plugin.local_map.gd_local_map`), and with ``inner_solver='cg'`` solves the
    normal equations in that basis (exact; :func:`~lmaps_plugin.local_map.exact_closed_form`). ``compile_net`` wraps the network in
    ``torch.compile`` on first use (off by default: compiling costs tens of seconds).
    """

    def __init__(self, net, forward_op, num_steps: int = 200, sigma_max: float = 100.0,
                 sigma_min: float = 0.1, rho: float = 7.0, sigma_final: float = 0.0,
                 inner_steps: int = 100, lr: float = 0.01, k1: float = 0.22, k2: float = 100.0,
                 inner_solver: str = "gd", ddim_eta: float = 1.0, step_guard: bool = True,
                 power_iters: int = 20, max_backoffs: int = 8, cg_tol: float = 1e-6,
                 verbose: bool = True, gd_closed_form: bool = True, compile_net: bool = False):
        _check_config(num_steps=num_steps, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho,
                      sigma_final=sigma_final, inner_steps=inner_steps, lr=lr, k1=k1, k2=k2,
                      inner_solver=inner_solver, ddim_eta=ddim_eta, power_iters=power_iters,
                      max_backoffs=max_backoffs, cg_tol=cg_tol)
        self.net = net
        self.forward_op = forward_op
        if hasattr(net, "eval"):
            net.eval()
        self.num_steps, self.inner_steps = int(num_steps), int(inner_steps)
        self.sigma_max, self.sigma_min, self.rho, self.sigma_final = sigma_max, sigma_min, rho, sigma_final
        self.lr, self.k1, self.k2 = float(lr), float(k1), float(k2)
        self.inner_solver, self.ddim_eta, self.step_guard = inner_solver, float(ddim_eta), bool(step_guard)
        self.power_iters, self.max_backoffs, self.cg_tol = int(power_iters), int(max_backoffs), float(cg_tol)
        self.verbose = verbose
        self.gd_closed_form, self.compile_net = bool(gd_closed_form), bool(compile_net)
        self._compiled = None

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

    def inference(self, observation: Tensor, num_samples: int = 1, verbose: bool | None = None,
                  callback: Callable[[dict], None] | None = None,
                  generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Reconstruct from ``observation`` (batch B; InverseBench passes B = 1).

        Returns ``(B·num_samples, C, H, W)`` in the prior's normalized space; the samples of
        observation ``b`` are rows ``b·num_samples … (b+1)·num_samples − 1``.
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if not isinstance(observation, torch.Tensor):
            raise TypeError(f"observation must be a torch.Tensor, got {type(observation).__name__}")
        if observation.ndim < 1 or observation.shape[0] < 1:
            raise ValueError(f"observation must have a leading batch dimension, got shape {tuple(observation.shape)}")
        check_observation(self.forward_op, observation, self.sample_shape)
        verbose = self.verbose if verbose is None else verbose
        device = observation.device
        dtype = dtype or (observation.dtype if observation.is_floating_point() else torch.float32)
        y = observation.repeat_interleave(num_samples, dim=0) if num_samples > 1 else observation
        batch = y.shape[0]
        sigmas = self.sigmas(device=device)
        shape = (batch, *self.sample_shape)
        if generator is not None:
            x = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        else:
            x = torch.randn(shape, dtype=dtype, device=device)
        x = x * float(sigmas[0])
        return sample_lmaps(self.denoiser(), x, sigmas, y, self.forward_op, k1=self.k1, k2=self.k2, lr=self.lr,
                            inner_steps=self.inner_steps, inner_solver=self.inner_solver,
                            ddim_eta=self.ddim_eta, step_guard=self.step_guard,
                            power_iters=self.power_iters, max_backoffs=self.max_backoffs,
                            cg_tol=self.cg_tol, callback=callback, disable=not verbose,
                            generator=generator, gd_closed_form=self.gd_closed_form)

    def __repr__(self) -> str:
        return (f"LMAPS(N={self.num_steps}, K={self.inner_steps}, lr={self.lr}, k1={self.k1}, k2={self.k2}, "
                f"inner_solver={self.inner_solver!r})")


def check_observation(forward_op, observation: Tensor, sample_shape: tuple[int, ...]) -> None:
    """Check that ``observation`` is what ``forward_op`` makes of an image of the prior's shape.

    Measures one zero image of ``sample_shape`` and compares shape and real/complex type, so a
    mismatch fails before sampling with a message naming both shapes.
    """
    probe_dtype = observation.real.dtype if observation.is_complex() else (
        observation.dtype if observation.is_floating_point() else torch.float32)
    probe = torch.zeros((2, *sample_shape), dtype=probe_dtype, device=observation.device)
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

    for key in ("num_steps", "inner_steps", "power_iters", "max_backoffs"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"LMAPS: {key}={value!r} is invalid; {key} must be an integer")
    need(cfg["num_steps"] >= 1, "num_steps", "an integer >= 1 (N, annealing steps)")
    need(cfg["inner_steps"] >= 1, "inner_steps", "an integer >= 1 (K, gradient steps)")
    need(cfg["power_iters"] >= 1, "power_iters", "an integer >= 1")
    need(cfg["max_backoffs"] >= 0, "max_backoffs", "an integer >= 0")
    need(number("lr") > 0, "lr", "> 0 (η, the inner learning rate)")
    need(number("k1") >= 0, "k1", ">= 0 (0 makes r ≈ 1: data term only)")
    need(number("k2") > 0, "k2", "> 0 (scale of the data-consistency term)")
    need(number("sigma_min") > 0, "sigma_min", "> 0")
    need(number("sigma_max") >= cfg["sigma_min"], "sigma_max", f">= sigma_min ({cfg['sigma_min']})")
    need(number("rho") > 0, "rho", "> 0 (poly-ρ grid exponent, 7 in EDM)")
    need(0 <= number("sigma_final") <= cfg["sigma_min"], "sigma_final", "in [0, sigma_min]")
    need(0 <= number("ddim_eta") <= 1, "ddim_eta", "in [0, 1] (1 = Alg. 4's fresh noise, 0 = DDIM)")
    need(number("cg_tol") > 0, "cg_tol", "> 0")
    need(cfg["inner_solver"] in INNER_SOLVERS, "inner_solver", f"one of {INNER_SOLVERS}")
