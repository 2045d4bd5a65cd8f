"""Eq. 13's weights (r, k2) at each noise level σ: Table 4's fixed k1, k2 (:func:`table4_weighting`), or the
``lmaps_auto`` rule, LMAPS' data weight from the measurement noise (:func:`calibrate`, docs/calibration.md).

Eq. 13 weighs the prior term (1 − r)·½‖x0 − x̂0‖² against the data term r·k2·½‖y − H(x0)‖²; its
minimiser depends on the ratio w = r·k2/(1 − r) alone. Sec. 3.2 of the paper: with a Gaussian
x0 | x_σ ~ N(x̂0, v_σ·I) and a likelihood N(y; H x0, σ_y²·I), the local MAP is the posterior mean
when ``w = v_σ/σ_y²``. The rule sets

    w(σ) = v_σ / (λ·σ_y²),        v_σ = σ²·σ_d² / (σ² + σ_d²)    ("gaussian", the default)
                                   v_σ = σ²                       ("sigma2", the paper's k/SNR)

with σ_y the operator's ``sigma_noise`` (per real component: σ/√2 for complex measurements),
σ_d the prior's ``sigma_data`` (0.5 for images in [−1, 1]) and one constant λ (λ = 1 is Bayes),
chosen once on validation images. For a non-differentiable operator (JPEG, quantization, HDR)
the gradient is the surrogate H′'s, so the likelihood LMAPS effectively uses is y ≈ H′(x0) + n + e
with the surrogate's model error e = H(x0) − H′(x0): its mean square at x̂0, measured every step
(:func:`surrogate_mismatch`), is added to σ_y². In Table 4's parameters, k1² = λ·σ_y²·k2 at small σ.

The rule is written for the plain sum of squares ‖H(x) − y‖² = 2σ_y²·NLL. A χ² loss (the black hole's closure
quantities) L = Σ_t W_t·χ²_t, each χ²_t the mean of M_t noise-normalised squared residuals, has the Gaussian
negative log-likelihood NLL = ½·Σ_t M_t·χ²_t; with W_t = s·M_t, L = 2s·NLL, which is the least-squares loss of
the same likelihood with σ_y² = s. So the rule applies unchanged with

    σ_y² = Σ_t W_t / Σ_t M_t        (:func:`chi2_noise_variance`; exact when W_t ∝ M_t, otherwise the
                                      value that matches L to 2σ_y²·NLL at a noise-level fit, all χ²_t = 1)

and, in Table 4's parameters, k2 = k1² / (λ·σ_y²). The counts M_t and weights W_t are read off the operator at run
time (:func:`chi2_terms`); an operator that says its loss is a χ² sum but whose counts cannot be read gets
Table 4's black-hole row for its observation ratio, with a warning (:func:`loss_weighting`).

``lmaps-calibrate [overrides]`` (:mod:`lmaps_plugin.app.calibrate`) prints what the rule chooses for a problem of
the ``lmaps`` app.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .operators.capabilities import CHI2_LAYOUT, operator_capabilities
from .schedules import prior_weight

Tensor = torch.Tensor
#: ``weighting(σ, x̂0) -> (r, k2)``: Eq. 13's weights at one step.
Weighting = Callable[[float, Tensor], "tuple[float, float]"]

VARIANCE_MODELS = ("gaussian", "sigma2")

#: σ_y is floored at this fraction of the observation's RMS (a 60 dB SNR): a noiseless problem
#: then gets a near-projection onto the data instead of an infinite weight.
NOISE_FLOOR = 1e-3



def prior_sigma_data(net) -> float:
    """The prior's σ_d: ``net.sigma_data``, 0.5 (images in [−1, 1]) when the network has none or no network."""
    return float(getattr(net, "sigma_data", 0.5) or 0.5)


def prior_variance(sigma: float, sigma_data: float = 0.5, model: str = "gaussian") -> float:
    """v_σ, the per-pixel variance of x0 | x_σ the rule assumes.

    ``gaussian``: the posterior variance of a Gaussian prior N(·, σ_d²) seen through noise σ,
    σ²σ_d²/(σ² + σ_d²) (≈ σ² for σ ≪ σ_d, → σ_d² for σ ≫ σ_d). ``sigma2``: σ² (Sec. 4.1's
    Σ = k/SNR with k = 1).
    """
    if model == "sigma2":
        return sigma ** 2
    if model == "gaussian":
        return sigma ** 2 * sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    raise ValueError(f"variance model must be one of {VARIANCE_MODELS}, got {model!r}")


@dataclass(frozen=True)
class Calibration:
    """The data weight w(σ) = v_σ/(λ·σ_y²) of one problem and the Eq. 13 weights it implies."""
    sigma_y: float
    lam: float = 1.0
    sigma_data: float = 0.5
    variance: str = "gaussian"

    def __post_init__(self):
        for key in ("sigma_y", "lam", "sigma_data"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"Calibration: {key}={value!r} is invalid; it must be a finite number > 0")
        if self.variance not in VARIANCE_MODELS:
            raise ValueError(f"Calibration: variance={self.variance!r} is invalid; one of {VARIANCE_MODELS}")

    def data_weight(self, sigma: float, model_error: float = 0.0) -> float:
        """w(σ) = v_σ / (λ·(σ_y² + e²)): the data term's weight relative to the prior term's, with
        ``model_error`` e² the mean square of a surrogate's model error (0 for exact operators)."""
        noise = self.sigma_y ** 2 + model_error
        return prior_variance(sigma, self.sigma_data, self.variance) / (self.lam * noise)

    def weights(self, sigma: float, model_error: float = 0.0) -> tuple[float, float]:
        """Eq. 13's ``(r, k2)`` with that ratio: r = w/(1 + w), k2 = 1."""
        w = self.data_weight(sigma, model_error)
        return w / (1.0 + w), 1.0

    def equivalent_k1(self, k2: float) -> float:
        """The small-σ Table-4 k1 for a given k2: k1² = λ·σ_y²·k2 (v_σ ≈ σ²)."""
        return math.sqrt(self.lam * self.sigma_y ** 2 * k2)


def surrogate_mismatch(forward_op, x) -> float:
    """e² = mean |H(x) − H′(x)|² per measurement entry, for an operator whose gradient is a
    surrogate's (``is_differentiable = False`` with ``forward_exact``/``forward_surrogate``); 0 otherwise."""
    if not operator_capabilities(forward_op).straight_through:
        return 0.0
    with torch.no_grad():
        gap = forward_op.forward_exact(x) - forward_op.forward_surrogate(x)
    return float(gap.abs().square().mean())


def effective_noise_std(sigma_noise: float, complex_measurements: bool, observation_rms: float) -> float:
    """σ_y per real measurement component, floored at :data:`NOISE_FLOOR` × the observation's RMS.

    Complex noise ``sigma_noise·randn_like(z)`` (E|n|² = σ²) has σ²/2 per real component, and the
    loss sums |z|² = Re² + Im², so the Gaussian likelihood reads ½‖res‖²/(σ²/2).
    """
    sigma = float(sigma_noise) / (math.sqrt(2.0) if complex_measurements else 1.0)
    return max(sigma, NOISE_FLOOR * float(observation_rms))


def calibrate(forward_op, observation, net=None, lam: float = 1.0, variance: str = "gaussian") -> Calibration:
    """The :class:`Calibration` of ``forward_op`` at ``observation`` for the prior ``net``.

    σ_y from the operator's ``sigma_noise``; σ_d from ``net.sigma_data`` (0.5 when absent).
    """
    sigma_noise = getattr(forward_op, "sigma_noise", None)
    if isinstance(sigma_noise, bool) or not isinstance(sigma_noise, (int, float)) or not (
            math.isfinite(sigma_noise) and sigma_noise >= 0):
        raise ValueError(f"calibration needs the operator's noise level: {type(forward_op).__name__}.sigma_noise "
                         f"= {sigma_noise!r}, expected a finite number >= 0")
    rms = float(observation.detach().abs().square().mean().sqrt())
    sigma_y = effective_noise_std(sigma_noise, observation.is_complex(), rms)
    if sigma_y == 0:
        raise ValueError("calibration: the observation is all zeros and sigma_noise is 0; no noise level to use")
    return Calibration(sigma_y=sigma_y, lam=float(lam), sigma_data=prior_sigma_data(net), variance=variance)


def describe(calibration: Calibration, sigmas, gram_norm: float | None = None, rows: int = 8) -> str:
    """A table of what the rule chooses at ``rows`` noise levels of the grid ``sigmas``."""
    sigmas = [float(s) for s in sigmas if float(s) > 0]
    picks = sorted({round(i * (len(sigmas) - 1) / max(rows - 1, 1)) for i in range(rows)})
    lines = [f"lmaps_auto: sigma_y = {calibration.sigma_y:.4g} (per real component), lambda = {calibration.lam:g}, "
             f"v_sigma model = {calibration.variance} (sigma_data = {calibration.sigma_data:g})"]
    if gram_norm is not None:
        lines.append(f"lambda_max(J^T J) = {gram_norm:.4g}")
    lines.append(f"{'sigma':>10} {'v_sigma':>11} {'w = v/(lam sy^2)':>17} {'r (k2=1)':>12} {'w*lambda_max':>13}")
    for i in picks:
        sigma = sigmas[i]
        w = calibration.data_weight(sigma)
        r, _ = calibration.weights(sigma)
        stiff = f"{w * gram_norm:13.4g}" if gram_norm is not None else f"{'-':>13}"
        lines.append(f"{sigma:10.4g} {prior_variance(sigma, calibration.sigma_data, calibration.variance):11.4g} "
                     f"{w:17.4g} {r:12.8f} {stiff}")
    lines.append(f"equivalent Table-4 k1 at small sigma: k1 = {calibration.equivalent_k1(100.0):.4g} for k2 = 100, "
                 f"{calibration.equivalent_k1(1.0):.4g} for k2 = 1")
    return "\n".join(lines)



def table4_weighting(k1: float, k2: float) -> Weighting:
    """Eq. 13's weights as Table 4 sets them: r = σ²/(σ² + k1² + 1e-6) and a fixed k2."""
    return lambda sigma, x0_hat=None: (prior_weight(sigma, k1), k2)


def calibrated_weighting(rule, forward_op) -> Weighting:
    """lmaps_auto's weights (:class:`Calibration`), with the surrogate
    model error of a non-differentiable operator measured at each step's x̂0."""
    surrogate = not operator_capabilities(forward_op).differentiable

    def weighting(sigma: float, x0_hat: Tensor | None = None) -> tuple[float, float]:
        error = surrogate_mismatch(forward_op, x0_hat) if (surrogate and x0_hat is not None) else 0.0
        return rule.weights(sigma, error)

    return weighting


@dataclass(frozen=True)
class Chi2Term:
    """One term of a χ² loss L = Σ_t W_t·χ²_t: its ``weight`` W_t in the loss (every factor the loss applies
    included) and its data ``count`` M_t, the number of noise-normalised squared residuals χ²_t averages."""
    name: str
    weight: float
    count: int

    def __post_init__(self):
        if isinstance(self.weight, bool) or not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"chi2 term {self.name!r}: weight={self.weight!r}, expected a finite number >= 0")
        if isinstance(self.count, bool) or int(self.count) != self.count or self.count < 1:
            raise ValueError(f"chi2 term {self.name!r}: count={self.count!r}, expected an integer >= 1")


def chi2_noise_variance(terms) -> float:
    """σ_y² = Σ_t W_t / Σ_t M_t over the terms in the loss (W_t > 0): the noise variance of the least-squares loss
    with the same likelihood (module docstring). A term with W_t = 0 is not in the loss and not in the likelihood."""
    used = [t for t in terms if t.weight > 0]
    if not used:
        raise ValueError("chi2_noise_variance: no term has a positive weight; the loss holds no data")
    return sum(t.weight for t in used) / sum(t.count for t in used)


def _layout_terms(forward_op, observation: Tensor, like: Tensor) -> "tuple[Chi2Term, ...] | None":
    """The terms of an operator with :data:`CHI2_LAYOUT`: W_t = scale·weight attribute, M_t = the count attribute,
    the scale (a factor the loss applies to the whole sum) measured as loss / Σ_t weight_t·χ²_t at one image.
    None when a weighted term has no count, or the terms do not add up to the loss."""
    found = []
    for name, weight_attr, count_attr, method, _ in CHI2_LAYOUT:
        weight = getattr(forward_op, weight_attr, None)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            continue
        count = getattr(forward_op, count_attr, None)
        if weight > 0 and not (isinstance(count, int) and not isinstance(count, bool) and count >= 1
                               and callable(getattr(forward_op, method, None))):
            return None
        if weight > 0:
            found.append((name, float(weight), count))
    if not found or not callable(getattr(forward_op, "decompress", None)):
        return None
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (0.5 * torch.randn((1, *like.shape[1:]), generator=gen, dtype=torch.float64)).to(like)
    try:
        with torch.no_grad():
            y = observation[:1]
            parts = forward_op.decompress(y)
            image = forward_op.unnormalize(x) if callable(getattr(forward_op, "unnormalize", None)) else x
            layout = {name: (method, slots) for name, _, _, method, slots in CHI2_LAYOUT}
            summed = 0.0
            for name, weight, _ in found:
                method, slots = layout[name]
                summed += weight * float(getattr(forward_op, method)(image, *(parts[i] for i in slots)).sum())
            loss = float(forward_op.loss(x, y).sum())
    except Exception:  # noqa: BLE001 -- any failure means the layout is not what we read it as
        return None
    if not (math.isfinite(loss) and math.isfinite(summed) and summed > 0 and loss > 0):
        return None
    scale = loss / summed
    return tuple(Chi2Term(name, scale * weight, count) for name, weight, count in found)


def chi2_terms(forward_op, observation: Tensor, like: Tensor) -> "tuple[Chi2Term, ...] | None":
    """The χ² terms of ``forward_op``'s loss, read at run time, or None when they cannot be read.

    An operator may declare them: ``chi2_terms()`` returning ``(name, W_t, M_t)`` triples with loss exactly
    Σ_t W_t·χ²_t. Otherwise the attributes of :data:`CHI2_LAYOUT` (InverseBench's ``BlackHoleImaging``:
    ``weight_cp``/``cphase_dim`` and so on) give the weights and counts, and evaluating the terms and the loss at
    one image shaped like ``like`` gives the factor the loss applies to their sum (2 for InverseBench).
    """
    declared = getattr(forward_op, "chi2_terms", None)
    if callable(declared):
        try:
            return tuple(Chi2Term(str(name), float(weight), count) for name, weight, count in declared())
        except (TypeError, ValueError):
            return None
    return _layout_terms(forward_op, observation, like)


#: Table 4's black-hole rows, (observation time ratio, k1, k2): the weights an operator with a χ² loss gets when
#: its data counts cannot be read.
TABLE4_BLACK_HOLE = ((0.03, 0.05, 0.05), (0.1, 0.1, 0.03), (1.0, 0.1, 0.01))


def table4_black_hole_row(ratio) -> "tuple[float, float, float]":
    """The Table-4 black-hole row (ratio, k1, k2) nearest ``ratio`` on a log scale (the 100 % row when unknown)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (math.isfinite(ratio) and ratio > 0):
        return TABLE4_BLACK_HOLE[-1]
    return min(TABLE4_BLACK_HOLE, key=lambda row: abs(math.log(row[0] / ratio)))


def chi2_calibration(forward_op, observation: Tensor, like: Tensor, net=None, lam: float = 1.0,
                     variance: str = "gaussian") -> Calibration | None:
    """The :class:`Calibration` of a χ² loss whose terms :func:`chi2_terms` reads (σ_y² =
    :func:`chi2_noise_variance`), or None for any other operator or unreadable counts."""
    if not operator_capabilities(forward_op).chi2_terms:
        return None
    terms = chi2_terms(forward_op, observation, like)
    if terms is None:
        return None
    return Calibration(sigma_y=math.sqrt(chi2_noise_variance(terms)), lam=float(lam),
                       sigma_data=prior_sigma_data(net), variance=variance)


def loss_weighting(forward_op, observation: Tensor, like: Tensor, net=None, lam: float = 1.0,
                   variance: str = "gaussian", k1: float = 0.22, k2: float = 100.0,
                   mismatch: float | None = None) -> Weighting:
    """lmaps_auto's weights for an operator whose loss is not the plain sum of squares ‖H(x) − y‖².

    * A χ² loss whose terms :func:`chi2_terms` reads: the rule with σ_y² = :func:`chi2_noise_variance`.
    * A χ² loss (``operator_capabilities(forward_op).chi2_terms``) whose counts cannot be read: Table 4's black-hole
      row for the operator's ``observation_time_ratio`` (:func:`table4_black_hole_row`), with a warning.
    * Any other loss: the configured ``k1``, ``k2``, with a warning (``mismatch``: the relative difference from the
      plain sum of squares, for the message).
    """
    name = type(forward_op).__name__
    if operator_capabilities(forward_op).chi2_terms:
        rule = chi2_calibration(forward_op, observation, like, net, lam=lam, variance=variance)
        if rule is not None:
            return calibrated_weighting(rule, forward_op)
        ratio, row_k1, row_k2 = table4_black_hole_row(getattr(forward_op, "observation_time_ratio", None))
        warnings.warn(f"lmaps_auto: {name}'s loss is a chi2 sum but its data counts cannot be read; using Table 4's "
                      f"black-hole {ratio:.0%} row k1={row_k1:g}, k2={row_k2:g}", RuntimeWarning, stacklevel=3)
        return table4_weighting(row_k1, row_k2)
    detail = f" (relative difference {mismatch:.3g})" if mismatch is not None else ""
    warnings.warn(f"LMAPS calibrate: {name}'s loss is not the plain sum of squares ‖H(x) − y‖²{detail}, so "
                  f"sigma_noise does not set its scale; using the configured k1={k1:g}, k2={k2:g} instead "
                  f"(docs/calibration.md)", RuntimeWarning, stacklevel=3)
    return table4_weighting(k1, k2)


__all__ = ["chi2_calibration", "Weighting", "table4_weighting", "calibrated_weighting", "VARIANCE_MODELS",
           "NOISE_FLOOR", "prior_sigma_data", "prior_variance", "Calibration", "surrogate_mismatch",
           "effective_noise_std", "calibrate", "describe", "Chi2Term", "chi2_noise_variance", "chi2_terms",
           "TABLE4_BLACK_HOLE", "table4_black_hole_row", "loss_weighting"]
