"""The operator contract, mirrored from InverseBench's ``BaseOperator``.

InverseBench's own base class is not imported here (the plugin must import without
InverseBench), so :class:`Operator` restates the same public contract:

* constructor keywords ``sigma_noise``, ``unnorm_shift``, ``unnorm_scale``, ``device``;
* ``forward(x)`` maps a batch of images (normalized space) to measurements;
* ``__call__(data)`` measures ``data['target']`` and adds Gaussian noise;
* ``loss(pred, observation)`` is the per-sample sum of squared residuals, shape ``(batch,)``;
* ``gradient(pred, observation, return_loss=False)`` is the gradient of ``loss.sum()``;
* ``normalize`` / ``unnormalize`` map between the prior's space and physical units.

:class:`LinearOperator` adds ``adjoint(y)`` and computes the gradient analytically as
``2 Hᵀ(Hx - y)`` (no autograd graph). A linear operator may also expose an orthogonal
eigenbasis of its Gram map HᵀH (:class:`GramEigenbasis`, via ``gram_eigenbasis``), which lets
LMAPS evaluate K gradient steps of its quadratic local MAP problem in closed form.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch


@dataclass(frozen=True)
class GramEigenbasis:
    """An orthogonal eigendecomposition ``HᵀH = V diag(λ) Vᵀ`` of a linear operator's Gram map.

    ``to_basis(v) = Vᵀv`` and ``from_basis(c) = Vc`` act on image batches ``(B, ...)``;
    ``eigenvalues`` (float64, ≥ 0) broadcasts against ``to_basis(v)``. ``V`` is orthogonal,
    so ``from_basis(to_basis(v)) = v`` and ``from_basis(λ·to_basis(v)) = Hᵀ(H v)``.
    """
    eigenvalues: torch.Tensor
    to_basis: Callable[[torch.Tensor], torch.Tensor]
    from_basis: Callable[[torch.Tensor], torch.Tensor]


class Operator:
    """Base class of the plugin's forward operators (InverseBench's operator contract)."""

    #: True when ``forward`` is linear and ``adjoint`` is its transpose.
    is_linear: bool = False

    def __init__(self, sigma_noise: float = 0.0, unnorm_shift: float = 0.0,
                 unnorm_scale: float = 1.0, device: str | torch.device = "cpu"):
        for key, value in (("sigma_noise", sigma_noise), ("unnorm_shift", unnorm_shift),
                           ("unnorm_scale", unnorm_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{type(self).__name__}: {key}={value!r} is invalid; it must be a finite number")
        if sigma_noise < 0:
            raise ValueError(f"{type(self).__name__}: sigma_noise={sigma_noise!r} is invalid; it must be >= 0 "
                             "(the standard deviation of the measurement noise)")
        if unnorm_scale == 0:
            raise ValueError(f"{type(self).__name__}: unnorm_scale must be non-zero")
        self.sigma_noise = float(sigma_noise)
        self.unnorm_shift = unnorm_shift
        self.unnorm_scale = unnorm_scale
        self.device = torch.device(device)

    # -- the contract -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, data: Mapping[str, torch.Tensor] | torch.Tensor, **kwargs) -> torch.Tensor:
        target = data["target"] if isinstance(data, Mapping) else data
        out = self.forward(target, **kwargs)
        return out + self.sigma_noise * torch.randn_like(out)

    def loss(self, pred: torch.Tensor, observation: torch.Tensor, **kwargs) -> torch.Tensor:
        residual = self.forward(pred) - observation
        return residual.abs().square().flatten(start_dim=1).sum(dim=1)

    def gradient(self, pred: torch.Tensor, observation: torch.Tensor, return_loss: bool = False):
        with torch.enable_grad():
            x = pred.detach().clone().requires_grad_(True)
            loss = self.loss(x, observation)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return (grad, loss.detach()) if return_loss else grad

    def unnormalize(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs + self.unnorm_shift) * self.unnorm_scale

    def normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs / self.unnorm_scale - self.unnorm_shift

    def close(self) -> None:
        """Release resources (InverseBench calls this at the end of a run)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma_noise={self.sigma_noise})"


class LinearOperator(Operator):
    """A linear operator with an explicit adjoint; gradients need no autograd graph."""

    is_linear = True

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def gram_eigenbasis(self, like: torch.Tensor) -> GramEigenbasis | None:
        """An orthogonal eigenbasis of HᵀH for images shaped/typed like ``like``, or None.

        None (the default) means "no fast eigenbasis known"; operators whose Gram map is
        diagonal (masks) or a Kronecker product of small matrices (separable maps) return one.
        """
        return None

    def gradient(self, pred: torch.Tensor, observation: torch.Tensor, return_loss: bool = False):
        residual = self.forward(pred) - observation
        grad = 2.0 * self.adjoint(residual)
        if return_loss:
            return grad, residual.abs().square().flatten(start_dim=1).sum(dim=1)
        return grad
