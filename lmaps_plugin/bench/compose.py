"""The ``lmaps`` app's configuration composed outside a Hydra run, for the benchmark commands and scripts: what a
tuning trial, a tuned config's test run or a calibration script starts from."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from ..app import cli


def compose_app(overrides: Sequence[str], config_dir: str | os.PathLike | None = None) -> DictConfig:
    """The ``lmaps`` app's config composed with ``overrides`` (and ``config_dir`` on the search path, where
    tuned configs live), as :func:`lmaps_plugin.app.cli.run` receives it."""
    extra = []
    if config_dir is not None:
        extra = [f"hydra.searchpath=[{cli.inversebench_configs_searchpath()},"
                 f"file://{Path(config_dir).resolve()}]"]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lmaps_plugin.configs", version_base="1.3"):
        return compose("config", overrides=[*extra, *overrides])


def method_kwargs(algorithm: str) -> dict:
    """The keyword arguments of ``configs/algorithm/<algorithm>.yaml``'s ``method`` (defaults chain followed,
    ``_target_`` dropped), as the ``lmaps`` app composes them: e.g. ``LMAPS(net, op, **method_kwargs('lmaps_auto'))``."""
    kwargs = OmegaConf.to_container(compose_app([f"algorithm={algorithm}"]).algorithm.method, resolve=True)
    kwargs.pop("_target_", None)
    return kwargs
