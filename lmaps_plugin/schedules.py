"""Noise grids and re-noising (EDM convention: x_σ = x0 + σ·ε)."""
from __future__ import annotations

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
