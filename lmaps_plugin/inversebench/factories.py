"""Hydra ``_target_`` factories for InverseBench's classes and for priors stored in checkpoint files.

Each returns an instance, so a config can say ``_target_: lmaps_plugin.inversebench.X`` where a stock config says
``_target_: inverse_problems....X`` (``configs/problem/*-fixed.yaml``): each imports the upstream class and returns
an instance of it, or of our subclass that fixes an upstream defect (:mod:`lmaps_plugin.inversebench.adapters`) or
adds the algebra of a linear operator (:mod:`lmaps_plugin.inversebench.scattering`,
:mod:`lmaps_plugin.inversebench.mri`). :func:`checkpoint_prior` is the ``prior=inversebench`` factory of the
``lmaps`` app (``configs/prior/inversebench.yaml``).
"""
from __future__ import annotations

import importlib.util
import inspect
import os
from typing import Any, Mapping

from hydra.utils import get_class, instantiate
from torch import nn

from ..priors import load_prior
from .adapters import (aligned_black_hole_view, black_hole_evaluator_class, ensemble_evaluator_class,
                       image_evaluator_ensemble, magnitude_view, metrics_file_class, mri_evaluator_class,
                       real_image_view)
from .locate import import_upstream, require_inversebench
from .blackhole import matmul_black_hole_class
from .blur import separable_gaussian_blur_class
from .mri import linear_multi_coil_mri_class
from .scattering import linear_inverse_scatter_class

_SCATTERING = "Linear inverse scattering (problem=inv-scatter-fixed)"
_MRI = "Multi-coil CS-MRI (problem=multi-coil-mri-knee-fixed or multi-coil-mri-knee-lmdb-fixed)"
_BLACK_HOLE = "Black-hole imaging (problem=blackhole-fixed)"
_DEBLUR = "FFHQ Gaussian deblurring (problem=ffhq256_deblur-fixed)"


def fixed_operator(module: str, name: str, problem: str, fix, kwargs: Mapping[str, Any]):
    """Upstream's operator class ``module.name`` (imported for ``problem``, which names it in the error when the
    checkout is missing) subclassed by our ``fix`` (a class factory), built with ``kwargs``."""
    return fix(getattr(import_upstream(module, problem), name))(**kwargs)


def InverseScatter(**kwargs: Any):
    """InverseBench's ``InverseScatter`` with a vectorised batched ``forward`` (upstream reads batch element 0 only), analytic
    ``adjoint``/``gradient`` and a disk-cached Gram eigenbasis
    (:func:`lmaps_plugin.inversebench.scattering.linear_inverse_scatter_class`)."""
    return fixed_operator("inverse_problems.inverse_scatter", "InverseScatter", _SCATTERING,
                          linear_inverse_scatter_class, kwargs)


def MultiCoilMRI(**kwargs: Any):
    """InverseBench's ``MultiCoilMRI`` with analytic ``adjoint``/``gradient``
    (:func:`lmaps_plugin.inversebench.mri.linear_multi_coil_mri_class`)."""
    return fixed_operator("inverse_problems.multi_coil_mri", "MultiCoilMRI", _MRI, linear_multi_coil_mri_class, kwargs)


def BlackHoleImaging(**kwargs: Any):
    """InverseBench's ``BlackHoleImaging`` operator (imported with piq/torchvision stand-ins), its DFT products as
    matrix products (:func:`lmaps_plugin.inversebench.blackhole.matmul_black_hole_class`)."""
    return fixed_operator("inverse_problems.blackhole", "BlackHoleImaging", _BLACK_HOLE, matmul_black_hole_class,
                          kwargs)


def GaussianBlur(**kwargs: Any):
    """InverseBench's ``GaussialBlur`` applied as two 1-D convolutions
    (:func:`lmaps_plugin.inversebench.blur.separable_gaussian_blur_class`)."""
    return fixed_operator("inverse_problems.image_restore", "GaussialBlur", _DEBLUR, separable_gaussian_blur_class,
                          kwargs)


#: keys the ``lmaps`` app's config.yaml sets on every ``problem.data`` for its built-in test sets (from the prior)
APP_DATA_KEYS = ("name", "channels", "resolution", "num_images")


def upstream_dataset(cls: type, kwargs: Mapping[str, Any]):
    """``cls(**kwargs)`` without the ``lmaps`` app's built-in test-set keys (:data:`APP_DATA_KEYS`) that ``cls``
    does not take: InverseBench's datasets refuse ``name``, ``channels`` and ``num_images`` (and the MRI ones
    ``resolution``), which the app sets on every problem; every other key reaches ``cls`` as given."""
    taken = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in kwargs.items() if k not in APP_DATA_KEYS or k in taken})


def LMDBData(**kwargs: Any):
    """InverseBench's ``training.dataset.LMDBData`` (scattering test images)."""
    return upstream_dataset(import_upstream("training.dataset", _SCATTERING).LMDBData, kwargs)


def MultiCoilMRIData(**kwargs: Any):
    """InverseBench's ``training.dataset.MultiCoilMRIData`` (fastMRI-style h5 files)."""
    return upstream_dataset(import_upstream("training.dataset", _MRI).MultiCoilMRIData, kwargs)


def MultiCoilMRILMDBData(**kwargs: Any):
    """InverseBench's ``training.dataset.MultiCoilMRILMDBData`` (LMDBs of mvue/s_maps/kspace)."""
    return upstream_dataset(import_upstream("training.dataset", _MRI).MultiCoilMRILMDBData, kwargs)


def BlackHoleData(**kwargs: Any):
    """InverseBench's ``training.dataset.BlackHole`` (LMDB of black-hole images)."""
    return upstream_dataset(import_upstream("training.dataset", _BLACK_HOLE).BlackHole, kwargs)


def InverseScatterEvaluator(forward_op=None, metrics_dir: str | None = None):
    """``eval.InverseScatter`` that also writes its metrics to ``metrics_dir`` (upstream only logs them), with the
    ensemble keys when ``num_samples > 1`` (:func:`~lmaps_plugin.inversebench.adapters.real_image_view`)."""
    upstream = import_upstream("eval", _SCATTERING).InverseScatter
    return metrics_file_class(ensemble_evaluator_class(upstream, real_image_view))(
        forward_op=forward_op, metrics_dir=metrics_dir)


def MRIEvaluator(forward_op=None, metrics_dir: str | None = None):
    """``eval.MRI`` fixed for ``num_samples>1`` and eval-only runs, writing metrics (b, c, d), with the
    ensemble keys on magnitudes when ``num_samples > 1``
    (:func:`~lmaps_plugin.inversebench.adapters.magnitude_view`)."""
    upstream = import_upstream("eval", _MRI).MRI
    return metrics_file_class(ensemble_evaluator_class(mri_evaluator_class(upstream), magnitude_view))(
        forward_op=forward_op, metrics_dir=metrics_dir)


def BlackHoleEvaluator(forward_op=None, metrics_dir: str | None = None):
    """``eval.BlackHoleEvaluator`` with correct blur-PSNR labels, writing metrics (f, d), with the
    ensemble keys of the truth-aligned samples when ``num_samples > 1``
    (:func:`~lmaps_plugin.inversebench.adapters.aligned_black_hole_view`)."""
    upstream = import_upstream("eval", _BLACK_HOLE).BlackHoleEvaluator
    return metrics_file_class(ensemble_evaluator_class(black_hole_evaluator_class(upstream),
                                                       aligned_black_hole_view))(
        forward_op=forward_op, metrics_dir=metrics_dir)


#: the image evaluator for main.py by default (a dotted path: torchmetrics, which it imports, imports torchvision,
#: and importing this module must survive a broken torchvision next to InverseBench)
DEFAULT_IMAGE_EVALUATOR = "lmaps_plugin.evaluation.metrics.ImageEvaluator"


def ImageEvaluator(evaluator: type | str = DEFAULT_IMAGE_EVALUATOR, forward_op=None, metrics_dir: str | None = None,
                   **kwargs: Any):
    """An image problems' evaluator for InverseBench's ``main.py``: ``evaluator`` (a class, or its dotted path
    as a config gives it; default :class:`lmaps_plugin.evaluation.metrics.ImageEvaluator`; ``kwargs`` go to it) that also
    writes ``metrics.json``/``metrics.csv`` to ``metrics_dir`` (``metric_backend``: the class's dotted path)
    and, when ``num_samples > 1``, records the ensemble keys of its ``evaluate_ensemble`` per image."""
    evaluator_class = get_class(evaluator) if isinstance(evaluator, str) else evaluator
    backend = f"{evaluator_class.__module__}.{evaluator_class.__qualname__}"
    return metrics_file_class(ensemble_evaluator_class(evaluator_class, image_evaluator_ensemble))(
        forward_op=forward_op, metrics_dir=metrics_dir, metric_backend=backend, **kwargs)


# ------------------------------------------------------------------------------- priors from checkpoint files
def _import_target_module(target: str) -> None:
    """Make ``target``'s top-level module importable, from an InverseBench checkout if it is one of theirs."""
    top = target.split(".", 1)[0]
    if importlib.util.find_spec(top) is None:
        require_inversebench(f"the prior network {target!r}")


def checkpoint_prior(path: str | os.PathLike, model: Mapping[str, Any] | None = None, trust_pickle: bool = False,
                     map_location: str = "cpu") -> nn.Module:
    """Load a prior from ``path``.

    Args:
        path: an lmaps prior (``save_prior``) or an InverseBench checkpoint (state dict under ``'ema'``/``'net'``).
        model: for state-dict checkpoints, the network to build and load into, as a Hydra config with ``_target_``
            (e.g. InverseBench's ``models.precond.EDMPrecond`` config; its checkout is imported when needed).
        trust_pickle: allow a pickled module (``{'ema': <module>}``); unpickling runs code from the file, so only
            for files whose source you trust.
    """
    if path is None or str(path) in ("", "???"):
        raise ValueError("prior.path must name a checkpoint file, e.g. prior=inversebench prior.path=/ckpt/ffhq.pt")
    module = None
    if model is not None:
        target = model.get("_target_") if hasattr(model, "get") else None
        if not target:
            raise ValueError(f"prior.model must be a config with a _target_ (the network class), got {model!r}")
        _import_target_module(str(target))
        module = instantiate(model)
    return load_prior(path, map_location=map_location, trust_pickle=trust_pickle, module=module)
