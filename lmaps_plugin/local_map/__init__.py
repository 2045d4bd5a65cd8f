"""Inner solvers of LMAPS: the local MAP problem of Eq. 13,

    x0* = argmin (1 − r)·½‖x0 − x̂0‖² + r·k2·½·loss(x0).

* :mod:`.objective` — Eq. 13 and the operator products the solvers share (data loss, Gram map, H(0)).
* :mod:`.gd` — K steps of gradient descent (the paper's solver), summed in closed form when the operator offers an
  eigenbasis of HᵀH, and the step-size guard.
* :mod:`.krylov` — the same K gradient steps for a linear H without an eigenbasis, summed by Lanczos.
* :mod:`.exact` — the minimiser for a linear (or affine) H: eigenbasis or conjugate gradient.
* :mod:`.spectrum` — λ_max(JᵀJ) by power iteration.
* :mod:`.solve` — :class:`InnerSolve`, one run's solve, step after step (:class:`InnerSettings`).
"""
from ..operators.capabilities import NotLinearError, OperatorProbe, probe_operator
from .exact import (EXACT, CGReport, LinearSystem, cg_local_map, conjugate_gradient, exact_closed_form,
                    exact_local_map, linear_system, normal_equation_ops)
from .gd import GUARD_LIMIT, StepGuard, gd_closed_form, gd_local_map, gd_step_coefficients, gram_eigenbasis
from .objective import batch_dot, data_loss, gram_map, half_data_gradient, local_map_objective
from .solve import DIVERGENCE_MARGIN, InnerSettings, InnerSolve, LMAPSDivergenceError
from .spectrum import estimate_gram_norm

__all__ = ["NotLinearError", "OperatorProbe", "probe_operator", "EXACT", "CGReport", "LinearSystem", "cg_local_map",
           "conjugate_gradient", "exact_closed_form", "exact_local_map", "linear_system", "normal_equation_ops",
           "GUARD_LIMIT", "StepGuard", "gd_closed_form", "gd_local_map", "gd_step_coefficients", "gram_eigenbasis",
           "batch_dot", "data_loss", "gram_map", "half_data_gradient", "local_map_objective", "DIVERGENCE_MARGIN",
           "InnerSettings", "InnerSolve", "LMAPSDivergenceError", "estimate_gram_norm"]
