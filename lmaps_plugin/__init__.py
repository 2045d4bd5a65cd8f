"""lmaps-plugin: Local MAP Sampling (LMAPS) for diffusion-prior inverse problems.

``import lmaps_plugin`` is cheap (no torch import): Hydra imports this package in every app of
the environment to find ``lmaps_plugin.configs``. ``LMAPS`` and ``sample_lmaps`` load on first use.

Layout: :mod:`.solver` (LMAPS, Alg. 4), :mod:`.local_map` (inner solvers), :mod:`.calibration`,
:mod:`.schedules`, :mod:`.operators`, :mod:`.surrogates`, :mod:`.priors`, :mod:`.data`,
:mod:`.inversebench` (the bridge to an InverseBench checkout) and :mod:`.app` (the ``lmaps`` and
``lmaps-bench`` commands). Modules that moved in 0.2 still import under their old names
(:data:`MOVED_MODULES`).
"""
import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.2.0"

__all__ = ["LMAPS", "sample_lmaps", "__version__"]

#: old module name -> its home since 0.2 (configs and scripts written for 0.1 keep working).
MOVED_MODULES = {
    "lmaps_plugin.cli": "lmaps_plugin.app.cli",
    "lmaps_plugin.results": "lmaps_plugin.app.results",
    "lmaps_plugin.metrics": "lmaps_plugin.app.metrics",
    "lmaps_plugin.figures": "lmaps_plugin.app.figures",
    "lmaps_plugin.benchmark": "lmaps_plugin.app.benchmark",
    "lmaps_plugin.leaderboard": "lmaps_plugin.app.leaderboard",
    "lmaps_plugin.peers": "lmaps_plugin.inversebench.peers",
    "lmaps_plugin.inversebench_adapters": "lmaps_plugin.inversebench.adapters",
    "lmaps_plugin.inversebench_compat": "lmaps_plugin.inversebench.compat",
    "lmaps_plugin.prior_factories": "lmaps_plugin.priors.factories",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a moved module under its old name as the very same module object."""

    def __init__(self):
        self._own_specs = {}

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED_MODULES else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED_MODULES[spec.name])
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # importlib stamped the alias's spec on the module: give it back its own
        alias = module.__spec__.name
        module.__spec__ = self._own_specs.pop(alias, module.__spec__)


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name):
    if name in ("LMAPS", "sample_lmaps"):
        from . import solver
        return getattr(solver, name)
    moved = MOVED_MODULES.get(f"{__name__}.{name}")
    if moved is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lmaps_plugin' has no attribute {name!r}")
