"""λ_max(JᵀJ) of an operator by power iteration, for the step-size guard."""
from __future__ import annotations

import math

import torch

from ..operators.capabilities import operator_capabilities
from .objective import gram_map, half_data_gradient, offset

Tensor = torch.Tensor


def estimate_gram_norm(forward_op, x: Tensor, iters: int = 20, seed: int = 0) -> float:
    """λ_max(JᵀJ) at ``x`` by power iteration, for the step-size guard (NaN if it cannot be measured).

    * Operators with an ``adjoint`` (of their linear part): AᵀA exactly (:func:`gram_map`: the
      operator's ``gram``, or ``adjoint(H(u) − H(0))``).
    * Non-differentiable operators (``is_differentiable = False``): J is the surrogate's
      Jacobian, the one their gradient uses, so JᵀJ u = J'ᵀ(J'u) with J'u by central
      differences of ``forward_surrogate`` and J'ᵀ by autograd. (Differencing the exact H,
      piecewise constant, would measure nothing.)
    * Otherwise: central differences of the operator's gradient with the observation set to
      H(x), where ½∇²loss = JᵀJ exactly.
    """
    x = x[:1].detach()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = v / v.norm()
    scale = 1e-3 * (x.norm().item() + 1.0)
    capabilities = operator_capabilities(forward_op)
    if capabilities.adjoint:
        gram = gram_map(forward_op, offset(forward_op, x))
    elif not capabilities.differentiable and capabilities.surrogate:
        surrogate = forward_op.forward_surrogate

        def gram(u: Tensor) -> Tensor:
            with torch.no_grad():
                ju = (surrogate(x + scale * u) - surrogate(x - scale * u)) / (2 * scale)
            with torch.enable_grad():
                leaf = x.clone().requires_grad_(True)
                (jtju,) = torch.autograd.grad(surrogate(leaf), leaf, ju)
            return jtju
    else:
        y_at_x = forward_op.forward(x).detach()

        def gram(u: Tensor) -> Tensor:
            plus = half_data_gradient(forward_op, x + scale * u, y_at_x)
            minus = half_data_gradient(forward_op, x - scale * u, y_at_x)
            return (plus - minus) / (2 * scale)
    lam = math.nan
    for _ in range(iters):
        w = gram(v)
        lam = float((v * w).sum())
        norm = w.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        v = w / norm
    return abs(lam)


__all__ = ["estimate_gram_norm"]
