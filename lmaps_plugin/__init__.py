"""lmaps-plugin: Local MAP Sampling (LMAPS) for diffusion-prior inverse problems.

``import lmaps_plugin`` is cheap (no torch import): Hydra imports this package in every app of
the environment to find ``lmaps_plugin.configs``. ``LMAPS`` and ``sample_lmaps`` load on first use.
"""
__version__ = "0.1.0"

__all__ = ["LMAPS", "sample_lmaps", "__version__"]


def __getattr__(name):
    if name in ("LMAPS", "sample_lmaps"):
        from . import solver
        return getattr(solver, name)
    raise AttributeError(f"module 'lmaps_plugin' has no attribute {name!r}")
