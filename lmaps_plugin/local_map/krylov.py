"""K gradient steps on Eq. 13 for a linear operator without an eigenbasis, evaluated in a Lanczos basis.

For an affine H(x) = A x + c with the least-squares loss, Eq. 13 is a quadratic with Hessian
``M = (1 − r)·I + r·k2·G`` (``G = AᵀA``), and K gradient steps of size η from x̂0 land on

    x_K = x̂0 − g(G)·v,   v = r·k2·(G·x̂0 − Aᵀ(y − c)),   g(λ) = (1 − (1 − η·a)ᴷ)/a,  a = (1 − r) + r·k2·λ,

a polynomial of degree K − 1 in G applied to one vector (:func:`~lmaps_plugin.local_map.gd.gd_step_coefficients`
gives g). The Lanczos process on G started from v builds an orthonormal basis Q_m of the Krylov space
span{v, Gv, …, G^{m−1}v} and the tridiagonal T_m = Q_mᵀ G Q_m; ``g(G)·v ≈ ‖v‖·Q_m·g(T_m)·e₁``, which is exact
(to rounding) once m = K, and in practice close long before when G's spectrum is clustered (masks, coil
sensitivities) or g is flat over its tail. Each Lanczos iteration costs one Gram product, as one gradient step
costs one operator gradient, so the evaluation never costs more products than the K steps it replaces.

The basis is re-orthogonalised in full at every iteration (m ≤ K vectors of the image size), and every
``check_every`` iterations the estimate is compared with the previous one: the evaluation stops when the change
of the correction g(G)·v is at most ``tol`` times its size for every sample of the batch (one host
synchronisation per check, none between checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .exact import LinearSystem
from .gd import gd_step_coefficients
from .objective import batch_dot

Tensor = torch.Tensor

#: default relative tolerance on the correction g(G)·v (see :func:`gd_by_lanczos`)
KRYLOV_TOL = 1e-4
#: Lanczos iterations between two convergence checks
CHECK_EVERY = 4


@dataclass(frozen=True)
class KrylovReport:
    """How a Lanczos evaluation ended: Gram products used (the Krylov dimension), the last relative change of the
    correction over the batch, and whether it reached the tolerance (or the exact degree K)."""
    iterations: int
    relative_change: float
    converged: bool


def _batch_norm(t: Tensor) -> Tensor:
    return batch_dot(t, t).clamp_min(0).sqrt()


def _ritz_weights(alphas: list[Tensor], betas: list[Tensor], r: float, k2: float, lr: float,
                  steps: int) -> Tensor:
    """``g(T_m)·e₁`` per sample, shape ``(batch, m)``, from the Lanczos coefficients (float64)."""
    m = len(alphas)
    diag = torch.stack(alphas, dim=-1)                                  # (batch, m)
    tridiagonal = torch.diag_embed(diag)
    if m > 1:
        off = torch.stack(betas[: m - 1], dim=-1)
        tridiagonal = tridiagonal + torch.diag_embed(off, offset=1) + torch.diag_embed(off, offset=-1)
    ritz_values, ritz_vectors = torch.linalg.eigh(tridiagonal)
    _, gain = gd_step_coefficients(ritz_values, r, k2, lr, steps)
    return ritz_vectors @ (gain.unsqueeze(-1) * ritz_vectors[:, 0, :].unsqueeze(-1))  # (batch, m, 1)


def _combine(basis: list[Tensor], weights: Tensor, scale: Tensor) -> Tensor:
    """``scale · Σ_i weights[:, i] · basis[i]`` in the basis vectors' dtype."""
    out = torch.zeros_like(basis[0])
    shape = (-1,) + (1,) * (basis[0].ndim - 1)
    for i, q in enumerate(basis):
        out.add_(weights[:, i, 0].to(q.dtype).view(shape) * q)
    return out * scale


def lanczos_polynomial(gram: Callable[[Tensor], Tensor], v: Tensor, r: float, k2: float, lr: float, steps: int, *,
                       tol: float = KRYLOV_TOL, check_every: int = CHECK_EVERY) -> tuple[Tensor, KrylovReport]:
    """``g(G)·v`` (see the module docstring) by at most ``steps`` Lanczos iterations on ``gram`` = G."""
    norm = _batch_norm(v)
    tiny = torch.finfo(v.dtype).tiny
    shape = (-1,) + (1,) * (v.ndim - 1)
    done = (norm <= tiny).flatten()                       # v = 0: no step moves (x_K = x̂0)
    basis = [torch.where(done.view(shape), torch.zeros_like(v), v / norm.clamp_min(tiny))]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    scale = torch.zeros_like(norm.flatten())              # largest |α| so far, a lower bound of ‖G‖
    previous: Tensor | None = None
    beta = norm
    for m in range(1, steps + 1):
        q = basis[-1]
        w = gram(q)
        alpha = batch_dot(q, w)
        w = w - alpha * q if m == 1 else w - alpha * q - beta * basis[-2]
        for earlier in basis:                             # full re-orthogonalisation
            w = w - batch_dot(earlier, w) * earlier
        beta = _batch_norm(w)
        alphas.append(alpha.flatten().to(torch.float64))
        betas.append(beta.flatten().to(torch.float64))
        scale = torch.maximum(scale, alpha.abs().flatten())
        # an invariant subspace: the Krylov space stops growing and the estimate is exact for that sample
        done = done | (beta.flatten() <= 1e-6 * scale)
        if m % check_every == 0 or m == steps:
            estimate = _combine(basis, _ritz_weights(alphas, betas, r, k2, lr, steps), norm)
            if m == steps:                                # degree K − 1 reached: exact to rounding
                return estimate, KrylovReport(m, 0.0, True)
            stop = done.all()                             # every Krylov space exhausted: exact
            change = torch.zeros((), dtype=torch.float64)
            if previous is not None:
                delta = _batch_norm(estimate - previous).flatten()
                size = _batch_norm(estimate).flatten().clamp_min(tiny)
                change = torch.where(done, torch.zeros_like(delta), delta / size).max()
                stop = stop | (change <= tol)
            if bool(stop):                                # the check's one host synchronisation
                return estimate, KrylovReport(m, float(change), True)
            previous = estimate
        basis.append(torch.where(done.view(shape), torch.zeros_like(w), w / beta.clamp_min(tiny)))
    raise AssertionError("unreachable: the loop returns at m = steps")


def gd_by_lanczos(x0_hat: Tensor, system: LinearSystem, r: float, k2: float, lr: float, steps: int, *,
                  tol: float = KRYLOV_TOL, check_every: int = CHECK_EVERY) -> tuple[Tensor, KrylovReport]:
    """The point K = ``steps`` gradient steps of size ``lr`` on Eq. 13 reach from x̂0, for the affine operator of
    ``system`` (see the module docstring), with the correction evaluated to relative accuracy ``tol``."""
    v = (r * k2) * (system.gram(x0_hat) - system.hty)
    correction, report = lanczos_polynomial(system.gram, v, r, k2, lr, steps, tol=tol, check_every=check_every)
    return x0_hat - correction, report


__all__ = ["KRYLOV_TOL", "CHECK_EVERY", "KrylovReport", "lanczos_polynomial", "gd_by_lanczos"]
