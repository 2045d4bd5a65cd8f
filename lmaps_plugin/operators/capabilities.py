"""What an operator can do for the local MAP solvers, decided once per run.

:func:`operator_capabilities` reads an operator's declarations (``is_linear``, ``adjoint``, ``gram``,
``gram_eigenbasis``, ``is_differentiable``, ``forward_surrogate``) into one :class:`OperatorCapabilities`;
:func:`probe_operator` measures, at one point, what an operator does not declare: whether H is affine and its loss
the plain sum of squares ‖H(x) − y‖² (the model the exact solve assumes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LinearOperator, Operator

Tensor = torch.Tensor


class NotLinearError(ValueError):
    """An exact (normal-equation) solve was asked of an operator that is not linear, or whose
    loss is not the plain sum of squares ‖H(x) − y‖²."""


@dataclass(frozen=True)
class OperatorProbe:
    """How far an operator is from the model the exact solve assumes, measured at one point.

    ``affine_error`` = ‖H(a+b) − H(a) − H(b) + H(0)‖ / ‖H(a+b) − H(0)‖ for random a, b (0 for an
    affine H(x) = A x + c, up to rounding); ``least_squares_error`` = |loss(a, y) − ‖H(a) − y‖²|
    / ‖H(a) − y‖² (0 when the loss is the plain sum of squares).
    """
    affine_error: float
    least_squares_error: float

    @staticmethod
    def tolerance(dtype: torch.dtype) -> float:
        """Relative error accepted as rounding: 1e-3 in single precision, 1e-8 in double."""
        return 1e-8 if dtype == torch.float64 else 1e-3

    def is_affine(self, dtype: torch.dtype) -> bool:
        return self.affine_error <= self.tolerance(dtype)

    def is_least_squares(self, dtype: torch.dtype) -> bool:
        return self.least_squares_error <= self.tolerance(dtype)


def _relative(num: Tensor, den: Tensor) -> float:
    den_norm = float(den.abs().square().sum().sqrt())
    return float(num.abs().square().sum().sqrt()) / max(den_norm, 1e-300)


def probe_operator(forward_op, like: Tensor, y: Tensor, seed: int = 0) -> OperatorProbe:
    """Measure :class:`OperatorProbe` on one image shaped like ``like[:1]`` (random a, b with
    the spread of ``like``, so clipping, rounding or moduli are exercised)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, *like.shape[1:])
    scale = max(float(like.detach().abs().max()), 1.0)
    a, b = (scale * torch.randn(shape, generator=gen, dtype=torch.float64).to(like) for _ in range(2))
    with torch.no_grad():
        h0, ha, hb, hab = (forward_op.forward(v) for v in (torch.zeros_like(a), a, b, a + b))
        residual = ha - y[:1]
        plain = residual.abs().square().flatten(1).sum(1)
        loss = forward_op.loss(a, y[:1]).reshape(-1)
    return OperatorProbe(affine_error=_relative(hab - ha - hb + h0, hab - h0),
                         least_squares_error=_relative(loss.real.to(plain.dtype) - plain, plain))



def has_plain_least_squares(forward_op) -> bool:
    """True for one of our :class:`LinearOperator` s whose ``loss``/``gradient`` are the base
    class's: ``gradient = 2Hᵀ(Hx − y)`` exactly (an operator that overrides them has a weighted
    or rescaled misfit, which the closed forms do not sum)."""
    if not (isinstance(forward_op, LinearOperator) and forward_op.is_linear):
        return False
    cls = type(forward_op)
    return cls.gradient is LinearOperator.gradient and cls.loss is Operator.loss


@dataclass(frozen=True)
class OperatorCapabilities:
    """An operator's declarations, read once: ``linear`` is its ``is_linear`` (True, False, or None when it does
    not say); ``plain_least_squares`` is True for our own linear operators with the base class's loss and gradient
    (:func:`has_plain_least_squares`); ``chi2_terms`` is True for a loss that is a weighted sum of per-term χ²
    averages (:func:`declares_chi2_terms`); the rest say which optional methods it offers."""
    linear: bool | None
    plain_least_squares: bool
    adjoint: bool
    gram: bool
    eigenbasis: bool
    differentiable: bool
    surrogate: bool
    exact_and_surrogate: bool = False
    chi2_terms: bool = False

    @property
    def straight_through(self) -> bool:
        """A non-differentiable operator whose gradient is a surrogate's (``forward_exact`` and
        ``forward_surrogate``)."""
        return not self.differentiable and self.exact_and_surrogate


def operator_capabilities(forward_op) -> OperatorCapabilities:
    """Read :class:`OperatorCapabilities` off ``forward_op`` (nothing is run)."""
    declared = getattr(forward_op, "is_linear", None)
    return OperatorCapabilities(
        linear=declared if isinstance(declared, bool) else None,
        plain_least_squares=has_plain_least_squares(forward_op),
        adjoint=callable(getattr(forward_op, "adjoint", None)),
        gram=callable(getattr(forward_op, "gram", None)),
        eigenbasis=callable(getattr(forward_op, "gram_eigenbasis", None)),
        differentiable=getattr(forward_op, "is_differentiable", True) is not False,
        surrogate=callable(getattr(forward_op, "forward_surrogate", None)),
        exact_and_surrogate=callable(getattr(forward_op, "forward_exact", None))
        and callable(getattr(forward_op, "forward_surrogate", None)),
        chi2_terms=declares_chi2_terms(forward_op))


#: The χ² layout of InverseBench's closure-quantity operators (the black hole): per term, the attribute with its
#: weight in the loss, the attribute with its data count, the method giving its χ² (a mean over the data) at an
#: unnormalised image, and the positions of that method's (value, σ) arguments in ``decompress(y)``.
CHI2_LAYOUT = (
    ("amp", "weight_amp", "amp_dim", "chi2_amp", (0, 1)),
    ("cphase", "weight_cp", "cphase_dim", "chi2_cphase", (2, 3)),
    ("logcamp", "weight_camp", "logcamp_dim", "chi2_logcamp", (4, 5)),
    ("flux", "weight_flux", "flux_dim", "chi2_flux", (6,)),
)


def declares_chi2_terms(forward_op) -> bool:
    """True when ``forward_op`` says its loss is Σ_t W_t·χ²_t: it has a ``chi2_terms`` method, or the
    weight attributes of :data:`CHI2_LAYOUT` (whether its data counts are readable is
    :func:`lmaps_plugin.weighting.chi2_terms`' business)."""
    if callable(getattr(forward_op, "chi2_terms", None)):
        return True
    return sum(isinstance(getattr(forward_op, weight, None), (int, float)) for _, weight, *_ in CHI2_LAYOUT) >= 2


__all__ = ["NotLinearError", "OperatorProbe", "probe_operator", "has_plain_least_squares", "OperatorCapabilities",
           "operator_capabilities", "CHI2_LAYOUT", "declares_chi2_terms"]
