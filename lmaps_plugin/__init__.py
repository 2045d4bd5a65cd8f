"""lmaps-plugin: Local MAP Sampling (LMAPS) for diffusion-prior inverse problems.

``import lmaps_plugin`` is cheap (no torch import): Hydra imports this package in every app of
the environment to find ``lmaps_plugin.configs``. ``LMAPS`` and ``sample_lmaps`` load on first use.

Layout (imports only point down): :mod:`.schedules`, :mod:`.operators` (with their surrogates and registry),
:mod:`.data`, :mod:`.ensemble`, :mod:`.io`; :mod:`.priors`, :mod:`.local_map` (inner solvers), :mod:`.weighting`
(Table 4's weights and lmaps_auto's rule), :mod:`.evaluation` (metrics, the metrics file); :mod:`.sampler`
(:func:`sample_lmaps`, Alg. 4); :mod:`.inversebench` (the bridge to an InverseBench checkout); :mod:`.algorithm`
(:class:`LMAPS`, InverseBench's solver interface); :mod:`.app` (``lmaps``, ``python -m lmaps_plugin.app.main``);
:mod:`.bench` (``lmaps-bench``, ``python -m lmaps_plugin.bench.main``).
The package installs no import hooks: every module is imported under its own name only.
"""
__version__ = "0.3.0"

__all__ = ["LMAPS", "sample_lmaps", "__version__"]


def __getattr__(name):
    if name == "LMAPS":
        from .algorithm import LMAPS  # on first use: `import lmaps_plugin` stays cheap for Hydra's plugin scan
        return LMAPS
    if name == "sample_lmaps":
        from .sampler import sample_lmaps
        return sample_lmaps
    raise AttributeError(f"module 'lmaps_plugin' has no attribute {name!r}")
