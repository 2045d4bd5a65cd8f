"""Posterior ensembles: what M samples of one posterior say about the image and about their own error.

Every function is pure and batched over a stack of samples whose *first* dimension is the sample
index: ``(M, C, H, W)`` for one image (the app's ``recon``, InverseBench's stacked results), or any
``(M, ...)`` shape. Pixels are every element after the first dimension.

- ``ensemble_mean`` / ``ensemble_std``: the per-pixel mean (the posterior-mean estimate, whose
  error nears the MMSE as M grows) and the unbiased per-pixel standard deviation.
- ``coverage``: the fraction of pixels whose true value lies in the central ``level`` interval.
  Two intervals (see ``docs/ensembles.md``):
  ``"predictive"`` (default) is mean ± t_{M-1}((1+level)/2)·std·√(1 + 1/M), the prediction interval
  of a new draw from M draws; for per-pixel Gaussian marginals it covers a fresh draw with
  probability exactly ``level`` at every M ≥ 2.
  ``"quantile"`` is the per-pixel [(1-level)/2, (1+level)/2] sample quantiles (linear
  interpolation). It is distribution-free but biased low at small M: the interval between the i-th
  and j-th order statistics of M draws covers a fresh draw with probability (j-i)/(M+1), at most
  (M-1)/(M+1) = 0.78 at M = 8.
- ``z2_mean``: the mean squared z-score of the truth, (x - mean)² / (std²·(1 + 1/M)), rescaled by
  (M-3)/(M-1) so that it is 1 in expectation for Gaussian marginals at every M ≥ 4 (the raw ratio
  follows Student's t with M-1 degrees of freedom). Above 1: the ensemble is too narrow
  (under-dispersed); below 1: too wide.
- ``inflate``: widen (factor > 1) or narrow an ensemble about its mean (variance inflation, as in
  ensemble Kalman filters): the mean is unchanged, every deviation scales by the factor. LMAPS's
  ``ensemble_spread`` (``configs/algorithm/lmaps_ensemble.yaml``) applies it to each observation's
  samples.
- ``ensemble_summary``: the keys the ``lmaps`` app and the InverseBench evaluators write.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ensemble_mean", "ensemble_std", "central_interval", "coverage", "z2_mean",
           "ensemble_summary", "ENSEMBLE_KEYS", "student_t_quantile", "inflate"]

#: Summary keys, in the order the app writes them (``ensemble_psnr``/``ensemble_ssim`` come from the
#: task's metrics of the ensemble mean; the rest from the functions here).
ENSEMBLE_KEYS = ("ensemble_psnr", "ensemble_ssim", "std_mean", "coverage_90", "z2_mean")


def _check_stack(samples: Tensor, min_samples: int = 2, what: str = "an ensemble") -> Tensor:
    if not isinstance(samples, Tensor):
        raise TypeError(f"{what} needs a tensor of samples, shape (M, ...); got {type(samples).__name__}")
    if samples.dim() < 2:
        raise ValueError(f"{what} needs samples of shape (M, ...) with at least one pixel dimension; "
                         f"got shape {tuple(samples.shape)}")
    if samples.shape[0] < min_samples:
        raise ValueError(f"{what} needs at least {min_samples} samples (num_samples >= {min_samples}); "
                         f"got {samples.shape[0]}")
    if samples.is_complex():
        raise ValueError(f"{what} needs real samples; take .real/.abs() of complex images first")
    return samples if samples.is_floating_point() else samples.double()


def _check_truth(samples: Tensor, truth: Tensor) -> Tensor:
    truth = torch.as_tensor(truth, device=samples.device)
    if truth.shape == samples.shape[1:]:
        return truth.to(samples.dtype)
    if truth.shape == (1, *samples.shape[1:]):
        return truth[0].to(samples.dtype)
    raise ValueError(f"the truth must have one sample's shape {tuple(samples.shape[1:])}; "
                     f"got {tuple(truth.shape)}")


def ensemble_mean(samples: Tensor) -> Tensor:
    """The per-pixel mean of ``samples`` (M, ...): the ensemble's posterior-mean estimate."""
    return _check_stack(samples, 1, "ensemble_mean").mean(0)


def ensemble_std(samples: Tensor) -> Tensor:
    """The per-pixel unbiased standard deviation of ``samples`` (M ≥ 2, ...)."""
    return _check_stack(samples, 2, "ensemble_std").std(0, unbiased=True)


def student_t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t  # scipy comes with scikit-image, a dependency
    return float(t.ppf(p, dof))


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    return level


def central_interval(samples: Tensor, level: float = 0.9, method: str = "predictive") -> tuple[Tensor, Tensor]:
    """Per-pixel (lower, upper) bounds of the central ``level`` interval (see the module docstring)."""
    samples = _check_stack(samples, 2, "central_interval")
    level = _check_level(level)
    if method == "predictive":
        m = samples.shape[0]
        half = student_t_quantile((1 + level) / 2, m - 1) * math.sqrt(1 + 1 / m) * samples.std(0, unbiased=True)
        centre = samples.mean(0)
        return centre - half, centre + half
    if method == "quantile":
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype, device=samples.device)
        flat = samples.reshape(samples.shape[0], -1)
        lo, hi = torch.quantile(flat, q, dim=0)
        return lo.reshape(samples.shape[1:]), hi.reshape(samples.shape[1:])
    raise ValueError(f"method must be 'predictive' or 'quantile'; got {method!r}")


def coverage(samples: Tensor, truth: Tensor, level: float = 0.9, method: str = "predictive") -> float:
    """The fraction of pixels of ``truth`` inside the ensemble's central ``level`` interval."""
    samples = _check_stack(samples, 2, "coverage")
    truth = _check_truth(samples, truth)
    lo, hi = central_interval(samples, level, method)
    return float(((truth >= lo) & (truth <= hi)).double().mean())


def z2_mean(samples: Tensor, truth: Tensor, eps: float = 1e-12) -> float:
    """The mean squared z-score of ``truth`` under the ensemble, 1 in expectation when calibrated.

    Needs M ≥ 4 (the Student-t correction (M-3)/(M-1)). Pixels where every sample agrees (std ≤
    ``eps``, e.g. observed pixels of noiseless inpainting) are left out; NaN when all are.
    """
    samples = _check_stack(samples, 4, "z2_mean")
    truth = _check_truth(samples, truth)
    m = samples.shape[0]
    var = samples.var(0, unbiased=True) * (1 + 1 / m)
    keep = var > eps ** 2
    if not bool(keep.any()):
        return float("nan")
    z2 = (truth - samples.mean(0))[keep] ** 2 / var[keep]
    return float(z2.double().mean() * (m - 3) / (m - 1))


def ensemble_summary(samples: Tensor, truth: Tensor | None = None, level: float = 0.9, metrics=None) -> dict:
    """The ensemble keys for one image: ``std_mean`` always; with ``truth``, ``coverage_90`` (for
    ``level`` = 0.9; the key follows the level), ``coverage_90_quantile``, ``z2_mean`` (M ≥ 4), and
    ``ensemble_<name>`` for every ``name -> fn(estimate (1, ...), truth (1, ...))`` in ``metrics``.
    Also ``ensemble_size`` (M).
    """
    samples = _check_stack(samples, 2, "ensemble_summary")
    tag = f"{round(100 * _check_level(level)):d}"
    out = {"ensemble_size": int(samples.shape[0]), "std_mean": float(ensemble_std(samples).double().mean())}
    if truth is None:
        return out
    truth = _check_truth(samples, truth)
    mean = samples.mean(0)
    for name, fn in (metrics or {}).items():
        out[f"ensemble_{name}"] = float(fn(mean[None], truth[None]))
    out[f"coverage_{tag}"] = coverage(samples, truth, level, "predictive")
    out[f"coverage_{tag}_quantile"] = coverage(samples, truth, level, "quantile")
    out["z2_mean"] = z2_mean(samples, truth) if samples.shape[0] >= 4 else float("nan")
    return out


def inflate(samples: Tensor, factor: float, dim: int = 0) -> Tensor:
    """``mean + factor · (samples − mean)`` along ``dim`` (the sample dimension): the same mean, every
    deviation (hence the per-pixel std) scaled by ``factor`` > 0. ``factor`` = 1 returns ``samples``."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"the ensemble spread factor must be a finite number > 0; got {factor!r}")
    if factor == 1:
        return samples
    mean = samples.mean(dim, keepdim=True)
    return mean + float(factor) * (samples - mean)
