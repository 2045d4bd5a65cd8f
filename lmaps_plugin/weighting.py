"""Eq. 13's weights (r, k2) at each noise level σ: Table 4's fixed k1, k2, or lmaps_auto's rule from the
measurement noise (:mod:`lmaps_plugin.calibration`, docs/calibration.md)."""
from __future__ import annotations

from typing import Callable

import torch

from .calibration import surrogate_mismatch
from .schedules import prior_weight

Tensor = torch.Tensor
#: ``weighting(σ, x̂0) -> (r, k2)``: Eq. 13's weights at one step.
Weighting = Callable[[float, Tensor], "tuple[float, float]"]


def table4_weighting(k1: float, k2: float) -> Weighting:
    """Eq. 13's weights as Table 4 sets them: r = σ²/(σ² + k1² + 1e-6) and a fixed k2."""
    return lambda sigma, x0_hat=None: (prior_weight(sigma, k1), k2)


def calibrated_weighting(rule, forward_op) -> Weighting:
    """lmaps_auto's weights (:class:`~lmaps_plugin.calibration.Calibration`), with the surrogate
    model error of a non-differentiable operator measured at each step's x̂0."""
    surrogate = not getattr(forward_op, "is_differentiable", True)

    def weighting(sigma: float, x0_hat: Tensor | None = None) -> tuple[float, float]:
        error = surrogate_mismatch(forward_op, x0_hat) if (surrogate and x0_hat is not None) else 0.0
        return rule.weights(sigma, error)

    return weighting


__all__ = ["Weighting", "table4_weighting", "calibrated_weighting"]
