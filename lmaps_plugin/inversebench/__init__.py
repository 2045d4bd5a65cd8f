"""Bridge to an InverseBench checkout: find it, import from it lazily, adapt its classes.

* :mod:`~lmaps_plugin.inversebench.locate`: find a checkout (``INVERSEBENCH_ROOT`` or an importable root) and
  import its modules, with stand-ins for piq/torchvision where those are not importable
  (:mod:`~lmaps_plugin.inversebench.stand_ins`, which records which metric implementation ran).
* :mod:`~lmaps_plugin.inversebench.factories`: the Hydra ``_target_`` factories of ``configs/problem/*-fixed.yaml``
  (``lmaps_plugin.inversebench.InverseScatter``, ``MRIEvaluator``, ...) and of ``prior=inversebench``.
* :mod:`~lmaps_plugin.inversebench.scattering`, :mod:`~lmaps_plugin.inversebench.mri` and
  :mod:`~lmaps_plugin.inversebench.blur`: the linear algebra our subclasses of upstream's operators add;
  :mod:`~lmaps_plugin.inversebench.adapters`: the evaluator fixes;
  :mod:`~lmaps_plugin.inversebench.peers`: InverseBench's algorithms on our problems.
"""
from __future__ import annotations

from .factories import (BlackHoleData, BlackHoleEvaluator, BlackHoleImaging, GaussianBlur, ImageEvaluator,
                        InverseScatter, InverseScatterEvaluator, LMDBData, MRIEvaluator, MultiCoilMRI, MultiCoilMRIData,
                        MultiCoilMRILMDBData, checkpoint_prior)
from .locate import (ENV_VAR, EXTRA_FOR_PACKAGE, PINNED_COMMIT, REPOSITORY_URL, InverseBenchNotFound,
                     find_inversebench, import_upstream, is_inversebench_root, missing_dependency_message,
                     not_found_message, require_inversebench)

__all__ = ["BlackHoleData", "BlackHoleEvaluator", "BlackHoleImaging", "GaussianBlur", "ImageEvaluator",
           "InverseScatter", "InverseScatterEvaluator", "LMDBData", "MRIEvaluator", "MultiCoilMRI", "MultiCoilMRIData",
           "MultiCoilMRILMDBData", "checkpoint_prior", "ENV_VAR", "EXTRA_FOR_PACKAGE", "PINNED_COMMIT",
           "REPOSITORY_URL", "InverseBenchNotFound", "find_inversebench", "import_upstream", "is_inversebench_root",
           "missing_dependency_message", "not_found_message", "require_inversebench"]
