"""Noise grids and re-noising (EDM convention: x_σ = x0 + σ·ε)."""
from __future__ import annotations

import math

import torch


def poly_sigmas(num_steps: int, sigma_min: float = 0.1, sigma_max: float = 100.0, rho: float = 7.0,
                sigma_final: float = 0.0, device=None, dtype=torch.float64) -> torch.Tensor:
    """Karras et al.'s poly-ρ grid from ``sigma_max`` down to ``sigma_min``, then ``sigma_final``.

    Returns ``num_steps + 1`` values: the ``num_steps`` annealing levels and the final one.
    DAPS' default (and LMAPS') is ``num_steps=200, sigma_max=100, sigma_min=0.1, rho=7``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if not 0 <= sigma_final <= sigma_min:
        raise ValueError(f"sigma_final must lie in [0, sigma_min], got {sigma_final}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    max_inv_rho = sigma_max ** (1 / rho)
    min_inv_rho = sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    sigmas = torch.cat([sigmas, sigmas.new_tensor([sigma_final])])
    return sigmas.to(device=device, dtype=dtype)


def prior_weight(sigma: float, k1: float) -> float:
    """LMAPS' convex weight r = σ² / (σ² + k1² + 1e-6): 1 trusts the data, 0 the prior (Alg. 4, line 5)."""
    return sigma ** 2 / (sigma ** 2 + k1 ** 2 + 1e-6)


def renoise(x0: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float,
            noise: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """Move from level ``sigma`` to ``sigma_next`` around the estimate ``x0``.

    ``eta = 1`` draws fresh noise, ``x0 + sigma_next·ε`` (Alg. 4, line 11); ``eta = 0`` is the
    deterministic DDIM step that keeps the direction of ``x - x0``; in between mixes the two
    while keeping the total noise level at ``sigma_next``.
    """
    if sigma_next == 0:
        return x0
    if eta == 1.0:
        return x0 + sigma_next * noise
    kept = (1.0 - eta ** 2) ** 0.5 * (x - x0) / sigma
    return x0 + sigma_next * (kept + eta * noise)


def resampled_sigmas(sigmas: torch.Tensor, jump: int, count: int, sigma_min: float = 0.0,
                     sigma_max: float = math.inf) -> torch.Tensor:
    """The σ sequence a sampler walks when it resamples (RePaint-style) on the annealing grid ``sigmas``.

    ``sigmas`` is a grid as :func:`poly_sigmas` returns it: decreasing annealing levels, then the final level. The
    annealing levels with σ in [``sigma_min``, ``sigma_max``] are cut into blocks of ``jump`` consecutive levels
    (counted from the first of them; the last block may be shorter), and each block is walked ``1 + count`` times:
    after its last level the walk jumps back up to its first level, so the estimate x0 of that last level is
    re-noised to the block's highest σ and the block is redone from it. ``count = 0`` returns ``sigmas`` itself.

    Each entry but the last costs one network call, so the walk costs ``N + count · L`` calls for N annealing
    levels of which L lie in the range (:func:`resampled_calls`).
    """
    check_resampling(jump, count, sigma_min, sigma_max)
    if count == 0:
        return sigmas
    levels = sigmas[:-1]
    inside = [i for i, s in enumerate(levels.tolist()) if sigma_min <= s <= sigma_max]
    if not inside:
        return sigmas
    first, stop = inside[0], inside[-1] + 1
    blocks = [torch.arange(start, min(start + jump, stop)) for start in range(first, stop, jump)]
    walk = [torch.arange(0, first)] + [block.repeat(1 + count) for block in blocks] \
        + [torch.arange(stop, len(sigmas))]
    return sigmas[torch.cat(walk).to(sigmas.device)]


def resampled_calls(sigmas: torch.Tensor, count: int, sigma_min: float = 0.0, sigma_max: float = math.inf) -> int:
    """Network calls of :func:`resampled_sigmas`' walk: N annealing levels plus ``count`` more for each of the L
    levels with σ in [``sigma_min``, ``sigma_max``] (whatever the block length)."""
    levels = sigmas[:-1]
    inside = int(((levels >= sigma_min) & (levels <= sigma_max)).sum())
    return len(levels) + count * inside


def check_resampling(jump: int, count: int, sigma_min: float, sigma_max: float) -> None:
    """Refuse resampling parameters that mean nothing, naming the parameter and what it must be."""
    for name, value in (("jump", jump), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"resampling {name} must be an integer, got {value!r}")
    if jump < 1:
        raise ValueError(f"resampling jump must be >= 1 (levels per resampled block), got {jump}")
    if count < 0:
        raise ValueError(f"resampling count must be >= 0 (extra passes per block; 0 = off), got {count}")
    if not 0 <= sigma_min <= sigma_max:
        raise ValueError(f"resampling needs 0 <= sigma_min <= sigma_max, got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")


def num_steps_for_budget(budget: int, count: int, sigma_min: float = 0.0, sigma_max: float = math.inf,
                         **grid) -> int:
    """The largest N whose resampled walk (:func:`resampled_calls` on ``poly_sigmas(N, **grid)``) costs at most
    ``budget`` network calls: the base grid that compares with an N = ``budget`` run at equal cost."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1 network call, got {budget}")
    best = 0
    for n in range(1, budget + 1):
        if resampled_calls(poly_sigmas(n, **grid), count, sigma_min, sigma_max) <= budget:
            best = n
    if best == 0:
        raise ValueError(f"no grid fits {budget} network calls with resample_count={count}")
    return best
