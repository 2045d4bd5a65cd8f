"""Local MAP Sampling (LMAPS), Alg. 4 of the paper, in the EDM σ convention: :func:`sample_lmaps`, the sampler as
one flat function (k-diffusion style).

    sigmas = poly-ρ grid from σ_max to σ_min, then 0  (with resampling: blocks of it repeated, Schedule.walk)
    x = σ_max · ε
    for each σ_i:
        x̂0 = net(x, σ_i)                          one network call, no gradient through it
        r, k2 = weights(σ_i)                       Table 4's r = σ²/(σ² + k1² + 1e-6), or lmaps_auto's
        x0 = local MAP of Eq. 13 from x̂0          K gradient steps, or the exact solve (linear H)
        x  = x0 + σ_{i+1} · ε                      re-noise (DDIM-style with ddim_eta < 1)
    return x0

The local MAP solve (:class:`~lmaps_plugin.local_map.InnerSolve`) is set up on the first step, from the operator:
gradient descent with the step-size guard (docs/step_guard.md), or, for ``inner_solver='cg'``, the exact minimiser
of a linear operator in its Gram eigenbasis or by conjugate gradient (warm-started from the previous step's
solution) with its own tolerance and iteration cap. :class:`lmaps_plugin.LMAPS` wraps it behind InverseBench's
solver interface.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from tqdm.auto import tqdm

from .local_map import InnerSettings, InnerSolve
from .schedules import renoise
from .weighting import Weighting, table4_weighting

Tensor = torch.Tensor

#: how many times a run updates the progress bar's σ and misfit
POSTFIX_UPDATES = 20


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


def sample_lmaps(denoiser: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigmas: Tensor,
                 observation: Tensor, forward_op, *, k1: float = 0.22, k2: float = 100.0,
                 inner: InnerSettings = InnerSettings(), ddim_eta: float = 1.0,
                 weighting: Weighting | None = None, callback: Callable[[dict], None] | None = None,
                 disable: bool | None = None, generator: torch.Generator | None = None,
                 stats: dict | None = None) -> Tensor:
    """Run LMAPS from ``x`` (already scaled to ``sigmas[0]``) and return the final local MAP x0.

    ``sigmas`` is the sequence of levels to visit, one network call per entry but the last; it may go back up
    (resampling: :func:`~lmaps_plugin.schedules.resampled_sigmas`), and re-noising then moves x0 to the higher σ.
    ``observation`` must have the batch size of ``x`` (or 1). ``weighting(σ, x̂0) -> (r, k2)`` sets
    Eq. 13's weights (default: Table 4's, from ``k1`` and ``k2``); ``inner`` says how each step solves it (η,
    K, gradient descent or the exact solve: :class:`~lmaps_plugin.local_map.InnerSettings`). ``callback`` receives a dict with
    ``i, sigma, r, x, denoised, local_map, misfit, lr`` after every step (tensors that the
    sampler never modifies afterwards). ``stats``, when given, is updated with
    :meth:`~lmaps_plugin.local_map.InnerSolve.stats`.
    """
    sigmas = [float(s) for s in sigmas]
    weighting = weighting or table4_weighting(k1, k2)
    solve = InnerSolve(inner)
    progress = tqdm(range(len(sigmas) - 1), disable=disable, desc="LMAPS", leave=False)
    postfix_every = max(1, (len(sigmas) - 1) // POSTFIX_UPDATES)
    x0 = x
    for i in progress:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0_hat = denoise(denoiser, x, sigma)
        r, step_k2 = weighting(sigma, x0_hat)
        show = not progress.disable and (i % postfix_every == 0 or i == len(sigmas) - 2)
        x0, misfit, step_lr = solve(x0_hat, observation, forward_op, r, step_k2, step=i, sigma=sigma,
                                    need_loss=callback is not None or show)
        if i == 0 and not progress.disable:
            progress.write(solve.description, file=sys.stderr)
        if show:  # reading the misfit waits for the device: a few times per run, not every step
            progress.set_postfix(sigma=f"{sigma:.3g}", misfit=f"{misfit.mean().item():.4g}", refresh=False)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "r": r, "x": x, "denoised": x0_hat, "local_map": x0,
                      "misfit": misfit, "lr": step_lr})
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) \
            if generator is not None else torch.randn_like(x0)
        x = renoise(x0, x, sigma, sigma_next, noise, ddim_eta)
    solve.finish(inner.lr, weighting(sigmas[0], None)[1], len(sigmas) - 1)
    if stats is not None:
        stats.update(solve.stats())
    return x0


__all__ = ["denoise", "sample_lmaps"]
