"""Operators whose forward map is not (usefully) differentiable: quantization, HDR clipping.

:class:`NonDifferentiableOperator` is the base class of every such operator (JPEG included,
see :mod:`lmaps_plugin.operators.jpeg`). Its ``forward`` returns the exact measurement
``forward_exact(x)`` but back-propagates through a *surrogate* ``H'`` chosen by name from the
surrogate registry (:mod:`lmaps_plugin.operators.surrogates`), via a straight-through autograd function.
Hence ``loss``, ``gradient`` and any algorithm that differentiates through ``forward`` (DPS,
DAPS, ΠGDM, RED-diff, LMAPS) get ``2·J_H'(x)ᵀ(H(x) − y)`` instead of zeros.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import surrogates as _surrogates
from .base import Operator

__all__ = ["NonDifferentiableOperator", "Quantization", "HighDynamicRange"]


class NonDifferentiableOperator(Operator):
    """Base class: exact forward value, surrogate gradient (straight-through).

    Subclasses implement :meth:`forward_exact` (the true, non-differentiable H) and
    :meth:`linear_part` (H with its non-differentiable stage -- rounding, clipping --
    replaced by the identity; used by the ``linear_part`` surrogate), and may set
    ``default_surrogate``.

    Args:
        surrogate: name of a registered surrogate (entry-point group
            ``lmaps_plugin.surrogates``), or a callable ``surrogate(op, x) -> H'(x)``.
            ``None`` selects the class's ``default_surrogate``.
        **kwargs: the :class:`~lmaps_plugin.operators.base.Operator` keywords.
    """

    #: False: ``forward`` back-propagates through the surrogate, not through H itself.
    is_differentiable: bool = False
    #: Registry name used when the constructor gets ``surrogate=None``.
    default_surrogate: str = "identity"

    def __init__(self, surrogate: str | Callable | None = None, **kwargs):
        super().__init__(**kwargs)
        self.surrogate, self._surrogate_fn = _surrogates.resolve_surrogate(
            self.default_surrogate if surrogate is None else surrogate)

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """The true measurement map H(x) (no useful gradient)."""
        raise NotImplementedError

    def linear_part(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """H with its non-differentiable stage replaced by the identity (differentiable)."""
        raise NotImplementedError

    def forward_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate H'(x) whose Jacobian ``forward`` back-propagates."""
        return self._surrogate_fn(self, x)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Value ``forward_exact(x)``; vector-Jacobian products of ``forward_surrogate`` at x."""
        return _surrogates.straight_through(self.forward_exact, self.forward_surrogate, x)

    def linear_part_adjoint(self, v: torch.Tensor) -> torch.Tensor | None:
        """``J_H'ᵀ v`` of the ``linear_part`` surrogate when a subclass knows it in closed form
        (it is linear), else None (the gradient then goes through autograd)."""
        return None

    def _surrogate_vjp(self, residual: torch.Tensor) -> torch.Tensor | None:
        """``J_H'ᵀ residual`` without autograd for the surrogates whose Jacobian is known:
        ``identity`` (J = I) and ``linear_part`` with :meth:`linear_part_adjoint`; else None."""
        if self._surrogate_fn is _surrogates.identity:
            return residual
        if self._surrogate_fn is _surrogates.linear_part:
            return self.linear_part_adjoint(residual)
        return None

    def gradient(self, pred: torch.Tensor, observation: torch.Tensor, return_loss: bool = False):
        """``2·J_H'(x)ᵀ(H(x) − y)``: analytic for ``identity``/``linear_part`` surrogates (no
        autograd graph in samplers' inner loops), autograd through ``forward`` otherwise.

        Only the default loss (per-sample sum of squares) has the analytic form; a subclass
        that overrides ``loss`` gets autograd.
        """
        if type(self).loss is Operator.loss:
            with torch.no_grad():
                residual = self.forward_exact(pred.detach()) - observation
                grad = self._surrogate_vjp(residual)
                if grad is not None and grad.shape == pred.shape:
                    grad = 2.0 * grad
                    if return_loss:
                        return grad, residual.abs().square().flatten(start_dim=1).sum(dim=1)
                    return grad
        return super().gradient(pred, observation, return_loss=return_loss)


class Quantization(NonDifferentiableOperator):
    """n-bit uniform quantization: H(x) = ⌊u·(2ⁿ−1) + 0.5⌋ / (2ⁿ−1) on u = (x+1)/2 ∈ [0, 1].

    The result is mapped back to [-1, 1]. ``u`` is clamped to [0, 1] first (an n-bit
    quantizer has exactly 2ⁿ output codes), so for any input the output takes only the 2ⁿ
    values ``2k/(2ⁿ−1) − 1``, k = 0..2ⁿ−1. Default surrogate: ``identity`` (paper Eq. 18),
    which here equals ``linear_part``.
    """

    default_surrogate = "identity"

    def __init__(self, bits: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(bits, bool) or int(bits) != bits or not 1 <= int(bits) <= 16:
            raise ValueError(f"bits must be an integer in 1..16, got {bits!r}")
        self.bits = int(bits)

    @property
    def levels(self) -> int:
        """Number of output levels, 2ⁿ."""
        return 2 ** self.bits

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        top = self.levels - 1
        u = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
        return 2.0 * torch.floor(u * top + 0.5) / top - 1.0

    def linear_part(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def linear_part_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def __repr__(self) -> str:
        return (f"Quantization(bits={self.bits}, surrogate={self.surrogate!r}, "
                f"sigma_noise={self.sigma_noise})")


class HighDynamicRange(NonDifferentiableOperator):
    """HDR reconstruction operator: H(x) = clip(scale·x, −1, 1) (DAPS's task, scale 2).

    Plain autograd through the clip gives zero gradient wherever the pixel saturates, so the
    data term cannot pull a wrongly saturated pixel back. The default surrogate,
    ``linear_part``, differentiates the unclipped ``scale·x`` instead (J_H' = scale·I);
    ``identity`` (paper Eq. 18, J_H' = I) is the alternative.
    """

    default_surrogate = "linear_part"

    def __init__(self, scale: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        return (self.scale * x).clamp(-1.0, 1.0)

    def linear_part(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x

    def linear_part_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return self.scale * v

    def __repr__(self) -> str:
        return (f"HighDynamicRange(scale={self.scale}, surrogate={self.surrogate!r}, "
                f"sigma_noise={self.sigma_noise})")
