"""What the scattering and MRI adapters share: complex measurements and the analytic least-squares gradient."""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def as_complex(y: Tensor, what: str, shape_hint: str) -> Tensor:
    """``y`` as complex128: complex tensors as they are, real ones with a trailing (re, im) axis viewed as complex."""
    if y.is_complex():
        return y.to(torch.complex128)
    if y.ndim >= 1 and y.shape[-1] == 2:
        return torch.view_as_complex(y.to(torch.float64).contiguous())
    raise ValueError(f"{what}: expected complex measurements shaped {shape_hint} (or their view_as_real, "
                     f"with a trailing axis of 2), got a real tensor of shape {tuple(y.shape)}")


def analytic_gradient(op, pred: Tensor, observation: Tensor, return_loss: bool = False):
    """``2·Aᵀ(forward(pred) − observation)``: the gradient of upstream's ``loss(pred, observation).sum()``.

    No autograd graph: ``pred`` is detached, as upstream's ``BaseOperator.gradient`` detaches it. The
    gradient has ``pred``'s dtype; with ``return_loss`` the loss is summed over the batch, as upstream's.
    """
    x = pred.detach()
    with torch.no_grad():
        residual = op.forward(x) - observation
        grad = (2.0 * op.adjoint(residual)).to(dtype=pred.dtype)
        if not return_loss:
            return grad
        loss = residual.abs().square().sum()
    return grad, loss
