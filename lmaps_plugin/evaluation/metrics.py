"""Image metrics for the image-restoration tasks, behind InverseBench's evaluator interface.

:class:`ImageEvaluator` is what ``configs/problem/*.yaml`` name as ``evaluator``; both runners use it the same way::

    evaluator = ImageEvaluator(forward_op=op)
    evaluator(pred=recon, target=target, observation=y)   # one sample's metrics (a dict), and remembers them
    evaluator.compute()                                    # {'psnr': mean, 'psnr_std': std, ...}

Definitions (the peers' convention, docs/operators.md): images in [-1, 1] are mapped to ``(x + 1)/2`` and clipped to
[0, 1]; PSNR and SSIM come from torchmetrics with ``data_range=1``. ``misfit_rms`` is the root-mean-square data
residual per measurement, ``sqrt(forward_op.loss(pred, y) / m)`` with ``m`` the number of measurement entries per
sample (InverseBench's "data misfit" is ``sqrt(loss)``, i.e. this times ``sqrt(m)``); a reconstruction that fits the
data to the noise level gives about ``sigma_noise``. LPIPS is computed only when its network weights are present
locally (torchmetrics' LPIPS builds its backbone with torchvision and would otherwise download weights); otherwise it
is listed in ``evaluator.unavailable`` as ``'unavailable: <reason>'``.

With ``num_samples > 1`` (``pred`` of N images for one target) every metric is the mean over the N samples, as in
InverseBench's evaluators, and :meth:`ImageEvaluator.evaluate_ensemble` (:func:`ensemble_metrics`) gives the
ensemble keys of :mod:`lmaps_plugin.ensemble` (:data:`ENSEMBLE_DEFINITIONS`). Their units: samples and truth mapped
to [0, 1] by ``(x + 1)/2`` *without* clipping (clipping would shrink the spread at saturated pixels), so
``std_mean`` is in [0, 1] image units and ``coverage_90``/``z2_mean`` (invariant under that affine map) are the
same as in the prior's [-1, 1] space; ``ensemble_psnr``/``ensemble_ssim`` are :func:`psnr`/:func:`ssim` of the
samples' mean, which clip it to [0, 1] like any reconstruction.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..ensemble import ensemble_summary
from ..operators.capabilities import operator_capabilities

Tensor = torch.Tensor

#: metric name -> True when larger is better (used by tables to pick the best entry)
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "misfit_rms": False, "meas_psnr": True,
                    "ensemble_psnr": True, "ensemble_ssim": True}

#: the ensemble keys of a record (num_samples = M >= 2), one line each; units: see the module docstring
ENSEMBLE_DEFINITIONS = {
    "ensemble_size": "M, the samples per observation",
    "ensemble_psnr": "PSNR (dB) of the mean of the M samples (the posterior-mean estimate)",
    "ensemble_ssim": "SSIM of the mean of the M samples",
    "std_mean": "per-pixel standard deviation of the M samples (unbiased), averaged over pixels, in [0, 1] units",
    "coverage_90": "fraction of pixels whose true value lies in the 90% Student-t predictive interval "
                   "mean ± t_{M-1}(0.95)·std·sqrt(1 + 1/M) (0.90 when calibrated)",
    "coverage_90_quantile": "the same for the per-pixel 5%-95% sample quantiles (at most (M-1)/(M+1) even when "
                            "calibrated: 0.78 at M = 8)",
    "z2_mean": "mean squared z-score of the truth, Student-t corrected (1 when calibrated, > 1 too narrow, < 1 too "
               "wide); M >= 4 only, absent when undefined (M < 4, or every pixel's samples agree)",
}
ENSEMBLE_UNITS = ("samples and truth mapped to [0, 1] by (x + 1)/2 without clipping (std_mean in those units; "
                  "coverage and z2 do not depend on the map); ensemble_psnr/ssim: the task's PSNR/SSIM of the "
                  "samples' mean, clipped to [0, 1] like any reconstruction")

#: torchvision's AlexNet weights, the backbone torchmetrics' LPIPS('alex') loads from torch hub's cache
LPIPS_BACKBONE_FILE = "alexnet-owt-7be5be79.pth"


def to_unit_range(x: Tensor, clip: bool = True) -> Tensor:
    """Map images from [-1, 1] to [0, 1] (float32) and clip (the peers' metric convention); ``clip=False`` keeps
    values outside [0, 1] (the ensembles' spread)."""
    x = (x.detach().float() + 1) / 2
    return x.clamp(0, 1) if clip else x


def _as_batch(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"{name} must be an image (C, H, W) or a batch (N, C, H, W); got shape {tuple(x.shape)}")
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued for image metrics, got {x.dtype}")
    return x


def _match(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = _as_batch(pred, "pred"), _as_batch(target, "target")
    if target.shape[1:] != pred.shape[1:]:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in (C, H, W)")
    if target.shape[0] == 1 and pred.shape[0] > 1:
        target = target.expand_as(pred)
    elif target.shape[0] != pred.shape[0]:
        raise ValueError(f"target batch {target.shape[0]} must be 1 or match pred batch {pred.shape[0]}")
    return pred, target


def psnr_unit(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [0, 1] (float32, clipped to [0, 1]), shape (N,)."""
    pred, target = _match(pred, target)
    p, t = pred.detach().float().clamp(0, 1), target.detach().float().clamp(0, 1)
    return peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim_unit(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM of images in [0, 1] (float32, clipped; torchmetrics' 11×11 Gaussian window), shape (N,)."""
    pred, target = _match(pred, target)
    p, t = pred.detach().float().clamp(0, 1), target.detach().float().clamp(0, 1)
    return structural_similarity_index_measure(p, t, data_range=1.0, reduction="none").reshape(-1)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB on [0, 1] (inputs in [-1, 1]), shape (N,)."""
    pred, target = _match(pred, target)
    return psnr_unit(to_unit_range(pred), to_unit_range(target))


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image SSIM on [0, 1] (inputs in [-1, 1]; torchmetrics' 11×11 Gaussian window), shape (N,)."""
    pred, target = _match(pred, target)
    return ssim_unit(to_unit_range(pred), to_unit_range(target))


def ensemble_metrics(samples: Tensor, target: Tensor, level: float = 0.9) -> dict[str, float]:
    """The ensemble keys (:data:`ENSEMBLE_DEFINITIONS`) of one image's samples (M, C, H, W) in [-1, 1] against its
    target; empty for M = 1. Computed by :func:`lmaps_plugin.ensemble.ensemble_summary` on the samples mapped to
    [0, 1] without clipping, with :func:`psnr_unit`/:func:`ssim_unit` (the metrics :func:`psnr`/:func:`ssim` use)
    for the mean. ``z2_mean`` is left out where it is undefined (M < 4, or no pixel varies), never written NaN."""
    samples, target = _match(samples, target)
    if samples.shape[0] < 2:
        return {}
    unit = lambda x: (x.detach().cpu().double() + 1) / 2  # noqa: E731 - [0, 1] units, not clipped
    out = ensemble_summary(unit(samples), unit(target[:1]), level=level,
                           metrics={"psnr": psnr_unit, "ssim": ssim_unit})
    return {k: v for k, v in out.items() if not (k == "z2_mean" and math.isnan(v))}


def misfit_rms(forward_op, pred: Tensor, observation: Tensor) -> Tensor:
    """Root-mean-square data residual per measurement entry, ``sqrt(loss / m)``, shape (N,)."""
    with torch.no_grad():
        loss = forward_op.loss(pred, observation).detach().reshape(-1).double()
    m = observation[0].numel() if observation.ndim > 1 else observation.numel()
    return (loss.clamp_min(0) / m).sqrt()


# ------------------------------------------------------------------------------------------------ LPIPS
def lpips_status() -> tuple[Callable[[Tensor, Tensor], Tensor] | None, str]:
    """``(metric, '')`` when LPIPS can run offline, else ``(None, 'unavailable: <reason>')``.

    torchmetrics' LPIPS needs torchvision (for the AlexNet backbone) and the backbone's weights in torch hub's cache
    (``<torch.hub.get_dir()>/checkpoints/alexnet-owt-7be5be79.pth``); nothing is ever downloaded here.
    """
    if importlib.util.find_spec("torchvision") is None:
        return None, ("unavailable: torchvision is not installed (torchmetrics' LPIPS builds its AlexNet backbone "
                      "with torchvision; install a torchvision build matching your torch to enable it)")
    weights = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILE
    if not weights.is_file():
        return None, f"unavailable: LPIPS backbone weights not found at {weights} (no download is attempted)"
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        model = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True, reduction="mean")
    except Exception as exc:  # noqa: BLE001 - any failure means "not available here", with the reason
        return None, f"unavailable: torchmetrics LPIPS could not be built ({type(exc).__name__}: {exc})"

    def lpips(pred: Tensor, target: Tensor) -> Tensor:
        pred, target = _match(pred, target)
        p, t = to_unit_range(pred), to_unit_range(target)
        if p.shape[1] == 1:  # the AlexNet backbone expects RGB
            p, t = p.expand(-1, 3, -1, -1), t.expand(-1, 3, -1, -1)
        with torch.no_grad():
            return torch.stack([model(p[i:i + 1], t[i:i + 1]) for i in range(p.shape[0])]).reshape(-1)

    return lpips, ""


# ------------------------------------------------------------------------------------ measurement previews
def measurement_as_image(forward_op, observation: Tensor, image_shape: tuple[int, ...]) -> Tensor | None:
    """The measurement shown in image space, or None where no image-like view exists (e.g. phase retrieval).

    - same (C, H, W) as the image (deblurring, inpainting, HDR, JPEG, quantization): the measurement itself;
    - a smaller square image with the same channels (super-resolution): bicubic upsampling to the image size;
    - any other real measurement of a linear operator with an ``adjoint``: the adjoint ``Hᵀy``;
    - otherwise None (the figure then shows the measurement's log-magnitude on its own grid).
    """
    y = observation.detach()
    if y.is_complex() or y.ndim != 4:
        return None
    c, h, w = image_shape[-3:]
    if tuple(y.shape[1:]) == (c, h, w):
        return y.float()
    if y.shape[1] == c and y.shape[2] == y.shape[3] and y.shape[2] < h and h % y.shape[2] == 0 and h == w:
        return F.interpolate(y.float(), size=(h, w), mode="bicubic", align_corners=False)
    capabilities = operator_capabilities(forward_op)
    if capabilities.linear and capabilities.adjoint:
        try:
            out = forward_op.adjoint(y)
        except Exception:  # noqa: BLE001 - a preview must never break a run
            return None
        return out.float() if tuple(out.shape[1:]) == (c, h, w) else None
    return None


# ------------------------------------------------------------------------------------------- evaluator
class ImageEvaluator:
    """PSNR, SSIM, data misfit (and LPIPS where available) with InverseBench's evaluator interface.

    Args:
        forward_op: the task's operator; needed for ``misfit_rms`` (skipped when None or no observation is given).
        lpips: ``'auto'`` (default) computes LPIPS when its weights exist locally; ``False`` never does.
        measurement_psnr: also report ``meas_psnr``, the PSNR of :func:`measurement_as_image` (where one exists),
            as the baseline a reconstruction should beat.

    ``metric_state`` maps each metric to the list of per-call values (InverseBench's layout); ``unavailable`` maps
    metrics that could not be computed to ``'unavailable: <reason>'``.
    """

    def __init__(self, forward_op=None, lpips: bool | str = "auto", measurement_psnr: bool = True):
        if lpips not in ("auto", False, True):
            raise ValueError(f"lpips must be 'auto', True or False, got {lpips!r}")
        self.forward_op = forward_op
        self.device = getattr(forward_op, "device", "cpu")
        self.measurement_psnr = bool(measurement_psnr)
        self.unavailable: dict[str, str] = {}
        self._lpips = None
        if lpips:
            self._lpips, reason = lpips_status()
            if self._lpips is None:
                if lpips is True:
                    raise RuntimeError(f"lpips=True but LPIPS is {reason}")
                self.unavailable["lpips"] = reason
        self.metric_state: dict[str, list[float]] = {"psnr": [], "ssim": []}
        if self._lpips is not None:
            self.metric_state["lpips"] = []

    def evaluate(self, pred: Tensor, target: Tensor, observation: Tensor | None = None) -> dict[str, float]:
        """One sample's metrics (means over ``pred``'s N samples), without recording them."""
        pred, target = _match(pred, target)
        pred, target = pred.detach().cpu(), target.detach().cpu()
        out = {"psnr": psnr(pred, target).mean().item(), "ssim": ssim(pred, target).mean().item()}
        if self._lpips is not None:
            out["lpips"] = self._lpips(pred, target).mean().item()
        if observation is not None and self.forward_op is not None:
            obs = observation.to(self.device)
            out["misfit_rms"] = misfit_rms(self.forward_op, pred.to(self.device).to(_real_dtype(obs)), obs).mean().item()
            if self.measurement_psnr:
                preview = measurement_as_image(self.forward_op, obs, tuple(target.shape[1:]))
                if preview is not None:
                    out["meas_psnr"] = psnr(preview.cpu(), target[:1]).mean().item()
        return out

    def evaluate_ensemble(self, pred: Tensor, target: Tensor) -> dict[str, float]:
        """The ensemble keys of ``pred``'s M samples of one target (:func:`ensemble_metrics`; empty for M = 1)."""
        return ensemble_metrics(pred, target)

    def __call__(self, pred: Tensor, target: Tensor, observation: Tensor | None = None) -> dict[str, float]:
        """Evaluate one sample and record its metrics (InverseBench's ``evaluator(pred=, target=, observation=)``)."""
        metrics = self.evaluate(pred, target, observation)
        for key, value in metrics.items():
            self.metric_state.setdefault(key, []).append(value)
        return metrics

    def compute(self) -> dict[str, float]:
        """Means and (population) standard deviations of the recorded values: ``{m: mean, m + '_std': std}``,
        InverseBench's ``Evaluator.compute`` layout; non-finite values are left out of the statistics."""
        out: dict[str, float] = {}
        for key, values in self.metric_state.items():
            finite = [v for v in values if math.isfinite(v)]
            if not finite:
                continue
            t = torch.tensor(finite, dtype=torch.float64)
            out[key] = t.mean().item()
            out[f"{key}_std"] = t.std(unbiased=False).item()
        return out

    def reset(self) -> None:
        for values in self.metric_state.values():
            values.clear()

    def __repr__(self) -> str:
        return f"ImageEvaluator(metrics={list(self.metric_state)}, unavailable={list(self.unavailable)})"


def _real_dtype(t: Tensor) -> torch.dtype:
    if t.is_complex():
        return torch.float64 if t.dtype == torch.complex128 else torch.float32
    return t.dtype if t.is_floating_point() else torch.float32


__all__ = ["ImageEvaluator", "psnr", "ssim", "psnr_unit", "ssim_unit", "ensemble_metrics", "misfit_rms",
           "lpips_status", "measurement_as_image", "to_unit_range", "HIGHER_IS_BETTER", "ENSEMBLE_DEFINITIONS",
           "ENSEMBLE_UNITS"]
