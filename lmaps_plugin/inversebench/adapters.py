"""Subclasses of InverseBench classes that fix the upstream defects our users meet.

InverseBench's classes exist only once a checkout is imported, so each fix is a cached
function ``<name>_class(upstream_class) -> subclass``; :mod:`lmaps_plugin.inversebench`
calls them with the imported class.  Every subclass keeps the upstream behaviour where it
is right and changes only the defect it is named for (the letters follow ``patches/README.md``):

(a) ``InverseScatter.forward`` reads batch element 0 only -> the batched (vectorised) forward of
    :func:`lmaps_plugin.inversebench.scattering.linear_inverse_scatter_class`, which also adds the
    analytic adjoint, gradient and Gram eigenbasis (as
    :func:`~lmaps_plugin.inversebench.mri.linear_multi_coil_mri_class` does for ``MultiCoilMRI``).
(b) ``eval.MRI`` with ``num_samples>1`` drops samples (batches of 32) and divides mean PSNR
    by the sample count; its data misfit is one norm over all samples
    -> :func:`mri_evaluator_class`.
(c) ``eval.MRI`` in eval-only runs (``inference=False``) crashes: the operator never saw
    the sample's coil maps -> :func:`mri_evaluator_class` skips the misfit, with a warning.
(d) metrics reach only the log -> :func:`metrics_file_class` writes ``metrics.json`` and
    ``metrics.csv``, naming the PSNR/SSIM implementation that computed them (``metric_backend``:
    piq or our stand-in, :func:`lmaps_plugin.inversebench.stand_ins.metric_backend`).
(f) ``eval.BlackHoleEvaluator`` labels the f=0 blur column "f=10" (and so on)
    -> :func:`black_hole_evaluator_class`.

Not a defect but an addition: with ``num_samples = M >= 2`` main.py hands each evaluator the M
samples of one image at once; :func:`ensemble_evaluator_class` adds the posterior-ensemble keys of
:func:`lmaps_plugin.ensemble.ensemble_summary` for that image (``docs/inversebench.md``).
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..cost import COST_KEYS, take_last_run
from ..ensemble import ensemble_mean, ensemble_summary
from ..evaluation.metrics_file import write_metrics_file
from . import stand_ins


BLACK_HOLE_BLUR_FACTORS = (0, 10, 15, 20)
"""Blur factors InverseBench's black-hole evaluator asks ``evaluate_psnr`` for."""

BLACK_HOLE_REPORTED_BLURS = (10, 15, 20)
"""Blur factors reported as ``'blur_psnr (f=<f>)'`` (the upstream metric names)."""


# ------------------------------------------------------------------------------ (d)
def _as_float(value: Any) -> float:
    """A metric value (float, numpy scalar, 0-d tensor) as a plain float."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().cpu().item())
    return float(value)


def write_metrics(directory: str | os.PathLike, per_sample: Mapping[str, list],
                  summary: Mapping[str, Any] | None, metric_backend: str | None = None) -> None:
    """Write the metrics file (:func:`lmaps_plugin.evaluation.metrics_file.write_metrics_file`) of an evaluator's
    ``metric_state`` (``{metric: [value per sample]}``, samples numbered from 0 in the order seen).

    ``summary`` (its ``compute()``) is None while a run is still going (``complete: false``); non-finite values
    are null. ``metric_backend`` names the implementation that computed the metrics (null when not known).
    """
    count = max((len(values) for values in per_sample.values()), default=0)
    samples = {i: {name: values[i] for name, values in per_sample.items() if i < len(values)} for i in range(count)}
    write_metrics_file(directory, samples, complete=summary is not None, requested=range(count), summary=summary,
                       metric_backend=metric_backend)


def record_cost(metric_state: dict, cost: Mapping[str, float] | None) -> None:
    """Append the counted cost of the run just evaluated (:func:`lmaps_plugin.cost.take_last_run`: LMAPS publishes
    it) to an evaluator's ``metric_state``, one value per sample; NaN (null in the metrics file) for a sample whose
    algorithm published none, once another sample had one."""
    if cost is None and not any(key in metric_state for key in COST_KEYS):
        return
    samples = max((len(v) for k, v in metric_state.items() if k not in COST_KEYS), default=1)
    for key in COST_KEYS:
        values = metric_state.setdefault(key, [])
        values.extend([math.nan] * (samples - 1 - len(values)))
        values.append(math.nan if cost is None else float(cost[key]))


@functools.cache
def metrics_file_class(upstream: type) -> type:
    """Subclass of an InverseBench ``Evaluator`` that also writes its metrics to files.

    Upstream ``main.py`` only logs ``evaluator.compute()``.  With ``metrics_dir`` set, the
    subclass rewrites ``metrics.json``/``metrics.csv`` there after every sample
    (``"complete": false``) and once more, with the summary, when ``compute()`` runs.
    The problem configs pass ``metrics_dir`` = main.py's experiment directory. The files name
    ``metric_backend``: by default the PSNR/SSIM implementation InverseBench's evaluators use
    (:func:`~lmaps_plugin.inversebench.stand_ins.metric_backend`).
    """

    class MetricsFileEvaluator(upstream):
        __doc__ = f"{upstream.__name__} that writes metrics.json/metrics.csv (lmaps-plugin fix)."

        def __init__(self, *args: Any, metrics_dir: str | os.PathLike | None = None,
                     metric_backend: str | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.metrics_dir = metrics_dir
            self.metric_backend = metric_backend or stand_ins.metric_backend()

        def __call__(self, *args: Any, **kwargs: Any):
            result = super().__call__(*args, **kwargs)
            state = getattr(self, "metric_state", None)
            if isinstance(state, dict):
                observation = kwargs.get("observation", args[2] if len(args) > 2 else None)
                record_cost(state, take_last_run(observation))
            if self.metrics_dir is not None:
                write_metrics(self.metrics_dir, self.metric_state, summary=None, metric_backend=self.metric_backend)
            return result

        def compute(self):
            summary = super().compute()
            if self.metrics_dir is not None:
                write_metrics(self.metrics_dir, self.metric_state, summary=summary,
                              metric_backend=self.metric_backend)
            return summary

    MetricsFileEvaluator.__qualname__ = MetricsFileEvaluator.__name__
    return MetricsFileEvaluator


# --------------------------------------------------------------------------- (b), (c)
def has_measurement_state(forward_op: Any) -> bool:
    """True if a stateful MRI operator has seen a sample (its coil maps are set)."""
    return getattr(forward_op, "maps", None) is not None


def per_sample_residual_norm(forward_op: Any, pred: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
    """‖A(x_i) − y‖₂ for every sample x_i of ``pred``, shape (N,)."""
    residual = forward_op.forward(pred) - observation
    return torch.linalg.norm(residual.flatten(start_dim=1), dim=1)


@functools.cache
def mri_evaluator_class(upstream: type) -> type:
    """Subclass of ``eval.MRI`` that is right for ``num_samples>1`` and eval-only runs.

    * Several samples per observation: the target is repeated to the sample count, so the
      upstream per-sample path computes the mean PSNR/SSIM over all samples.
    * Data misfit: the mean over samples of ‖A(x_i) − y‖ (upstream: one norm over all
      samples; equal for one sample), skipped with a warning when the operator holds no
      coil maps (eval-only runs, where main.py never calls the operator).
    """

    class MRIEvaluator(upstream):
        __doc__ = f"{upstream.__name__} fixed for num_samples>1 and eval-only runs (lmaps-plugin fix)."

        def __call__(self, pred: torch.Tensor, target: torch.Tensor, observation: torch.Tensor | None = None):
            if target.ndim == pred.ndim and len(target) == 1 and len(pred) > 1:
                target = target.repeat(len(pred), *([1] * (target.ndim - 1)))
            metric_dict = super().__call__(pred, target, observation=None)
            if observation is None or self.forward_op is None:
                return metric_dict
            if not has_measurement_state(self.forward_op):
                warnings.warn("MRI data misfit skipped: the operator holds no coil maps (an eval-only "
                              "run, inference=False, never passes the sample to the operator).",
                              RuntimeWarning, stacklevel=2)
                return metric_dict
            norms = per_sample_residual_norm(self.forward_op, pred.to(self.device), observation.to(self.device))
            metric_dict["data misfit"] = norms.mean().item()
            self.metric_state["data misfit"].append(metric_dict["data misfit"])
            return metric_dict

    MRIEvaluator.__qualname__ = MRIEvaluator.__name__
    return MRIEvaluator


# ------------------------------------------------------------------------------ (f)
def black_hole_psnr_metrics(psnr_columns: torch.Tensor) -> dict[str, float]:
    """Name the columns of ``BlackHoleImaging.evaluate_psnr(..., BLACK_HOLE_BLUR_FACTORS)``.

    Column 0 is the aligned, unblurred PSNR; column ``1 + j`` is blurred with
    ``BLACK_HOLE_BLUR_FACTORS[j]``.  Each metric is the best over samples (rows), as upstream.
    """
    best = psnr_columns.max(dim=0)[0]
    metrics = {"psnr": best[0].item()}
    for factor in BLACK_HOLE_REPORTED_BLURS:
        metrics[f"blur_psnr (f={factor})"] = best[1 + BLACK_HOLE_BLUR_FACTORS.index(factor)].item()
    return metrics


def _repeat_batch(tensor: torch.Tensor, count: int) -> torch.Tensor:
    return tensor.repeat(count, *([1] * (tensor.ndim - 1)))


def black_hole_metrics(forward_op: Any, pred: torch.Tensor, target: torch.Tensor,
                       observation: torch.Tensor) -> dict[str, float]:
    """The black-hole evaluator's metrics of ``pred`` (N, 1, H, W) against ``target`` (1 or N, ...):
    the best over the N samples of the closure χ² (``cp_chi2``, ``camp_chi2``) and of the aligned
    (blurred) PSNRs, computed by the operator's own ``evaluate_chisq``/``evaluate_psnr``."""
    if pred.shape != target.shape:
        target = _repeat_batch(target, pred.shape[0])
        observation = _repeat_batch(observation, pred.shape[0])
    chisq_cp, chisq_logcamp = forward_op.evaluate_chisq(pred, observation, True)
    metric_dict = {"cp_chi2": chisq_cp.min().item(), "camp_chi2": chisq_logcamp.min().item()}
    metric_dict.update(black_hole_psnr_metrics(forward_op.evaluate_psnr(target, pred, BLACK_HOLE_BLUR_FACTORS)))
    return metric_dict


@functools.cache
def black_hole_evaluator_class(upstream: type) -> type:
    """Subclass of ``eval.BlackHoleEvaluator`` whose blur-PSNR names match their columns.

    Upstream asks for blur factors (0, 10, 15, 20), gets five columns (unblurred + one per
    factor) and reports columns 1, 2, 3 as f=10, 15, 20: each label is one factor off and
    the f=20 column is dropped.  The metric computations are the operator's own
    (``evaluate_chisq``, ``evaluate_psnr``); only the naming changes.
    """

    class BlackHoleEvaluator(upstream):
        __doc__ = f"{upstream.__name__} with correct blur-PSNR labels (lmaps-plugin fix)."

        def __call__(self, pred: torch.Tensor, target: torch.Tensor, observation: torch.Tensor | None = None):
            metric_dict = black_hole_metrics(self.forward_op, pred.to(self.device), target.to(self.device),
                                             observation.to(self.device))
            for name, value in metric_dict.items():
                self.metric_state[name].append(value)
            return metric_dict

    BlackHoleEvaluator.__qualname__ = BlackHoleEvaluator.__name__
    return BlackHoleEvaluator


# ---------------------------------------------------------------------------------- ensembles
@dataclass(frozen=True)
class EnsembleView:
    """What an evaluator's ensemble keys are computed on, for one image.

    ``samples`` (M, ...) and ``truth`` (one sample's shape) are real, in the units the evaluator's
    metrics use; ``score(estimate)`` gives the evaluator's own metrics of an estimate of shape
    (1, ...) under their own names (``psnr``, ``ssim``, ...).
    """

    samples: torch.Tensor
    truth: torch.Tensor
    score: Callable[[torch.Tensor], Mapping[str, float]]


def view_ensemble_metrics(view: EnsembleView, level: float = 0.9) -> dict[str, float]:
    """``ensemble_<metric>`` of the ensemble mean (the evaluator's metrics, its names) followed by
    :func:`lmaps_plugin.ensemble.ensemble_summary` (``ensemble_size``, ``std_mean``,
    ``coverage_90``, ``coverage_90_quantile``, ``z2_mean``; NaN for M < 4) of ``view``."""
    estimate = ensemble_mean(view.samples)[None]
    out = {f"ensemble_{name}": _as_float(value) for name, value in view.score(estimate).items()}
    out.update(ensemble_summary(view.samples, view.truth, level=level))
    return out


def metric_list_score(metric_list: Mapping[str, Callable], truth: torch.Tensor):
    """``score`` from an InverseBench ``metric_list`` (``name -> fn(pred (N, ...), target (N, ...))``):
    each metric of an estimate (1, ...) against ``truth`` (one sample's shape), averaged as upstream."""
    return lambda estimate: {name: fn(estimate, truth[None]).mean().item() for name, fn in metric_list.items()}


def real_image_view(evaluator: Any, pred: torch.Tensor, target: torch.Tensor, observation=None) -> EnsembleView:
    """Real images (inverse scattering): the samples as main.py hands them (unnormalised, e.g.
    contrast), metrics by the evaluator's ``metric_list`` (which clips to [0, 1] itself)."""
    truth = target.reshape(pred.shape[1:]).to(pred)
    return EnsembleView(pred, truth, metric_list_score(evaluator.metric_list, truth))


def complex_magnitude(images: torch.Tensor) -> torch.Tensor:
    """|x| of 2-channel (real, imaginary) images (N, 2, H, W), as (N, 1, H, W) in float64."""
    if images.shape[1] != 2:
        raise ValueError(f"complex images need 2 channels (real, imaginary) in dim 1; got shape "
                         f"{tuple(images.shape)}")
    return torch.linalg.vector_norm(images.double(), dim=1, keepdim=True)


def magnitude_view(evaluator: Any, pred: torch.Tensor, target: torch.Tensor, observation=None) -> EnsembleView:
    """Complex images (multi-coil MRI): everything on magnitudes, the quantity ``eval.MRI`` scores
    (dynamic-range PSNR/SSIM of |x|, data range max |target|). The ensemble estimate is the mean of
    the samples' magnitudes (the posterior mean of |x|, not |mean of x|)."""
    samples, truth = complex_magnitude(pred), complex_magnitude(target.reshape(1, *pred.shape[1:]))[0]
    return EnsembleView(samples, truth, metric_list_score(evaluator.metric_list, truth))


def aligned_black_hole_view(evaluator: Any, pred: torch.Tensor, target: torch.Tensor,
                            observation: torch.Tensor) -> EnsembleView:
    """Black-hole images: closure phases and amplitudes do not see the image's position, and the
    evaluator scores each sample after the translation that best matches the truth (the operator's
    ``aligned_images``, images clipped to [0, 1]). The ensemble is taken modulo that translation:
    each sample is aligned to the truth the same way, and the statistics are those of the aligned
    stack against the clipped truth; its mean is scored by :func:`black_hole_metrics` (the evaluator's
    closure χ² with its flux normalisation, and its aligned, blurred PSNRs)."""
    op = evaluator.forward_op
    pred, target, observation = pred.to(evaluator.device), target.to(evaluator.device), observation.to(evaluator.device)
    target = target.reshape(1, *pred.shape[1:])
    aligned = op.aligned_images(_repeat_batch(target, pred.shape[0]), pred)
    return EnsembleView(aligned, target[0].clip(0, 1),
                        lambda estimate: black_hole_metrics(op, estimate, target, observation))


def image_evaluator_ensemble(evaluator: Any, pred: torch.Tensor, target: torch.Tensor, observation=None):
    """An image problems' evaluator (e.g. :class:`lmaps_plugin.evaluation.metrics.ImageEvaluator`) has its own
    ensemble keys, in its own units (``evaluate_ensemble``: samples mapped to [0, 1] by (x + 1)/2)."""
    return evaluator.evaluate_ensemble(pred, target)


@functools.cache
def ensemble_evaluator_class(upstream: type, view: Callable[..., EnsembleView | Mapping[str, float]]) -> type:
    """Subclass of an InverseBench evaluator that, when an image comes with M >= 2 samples,
    also records the ensemble keys of :func:`view_ensemble_metrics` on ``view(self, pred, target,
    observation)`` (or the keys ``view`` returns itself), per image, in ``metric_state`` (so
    ``compute()`` and ``metrics.json`` carry their means and standard deviations over images).
    With one sample the output is upstream's."""

    class EnsembleEvaluator(upstream):
        __doc__ = f"{upstream.__name__} that adds posterior-ensemble metrics for num_samples>1 (lmaps-plugin)."

        def __call__(self, pred: torch.Tensor, target: torch.Tensor, observation: torch.Tensor | None = None):
            metric_dict = super().__call__(pred, target, observation=observation)
            if pred.ndim < 2 or pred.shape[0] < 2:
                return metric_dict
            with torch.no_grad():
                ensemble = view(self, pred.detach(), target.detach(), observation)
                if isinstance(ensemble, EnsembleView):
                    ensemble = view_ensemble_metrics(ensemble)
            for name, value in ensemble.items():
                self.metric_state.setdefault(name, []).append(value)
            metric_dict.update(ensemble)
            return metric_dict

    EnsembleEvaluator.__qualname__ = EnsembleEvaluator.__name__
    return EnsembleEvaluator
