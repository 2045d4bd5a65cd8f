"""The ``lmaps`` app's configuration: where Hydra finds it (``pkg://lmaps_plugin.configs``, and InverseBench's
``configs/`` when ``INVERSEBENCH_ROOT`` is set) and :func:`compose_app`, the one composition outside a Hydra run
(``lmaps-calibrate``, ``lmaps-bench tune``/``compare``, scripts): the config :func:`lmaps_plugin.app.run.run`
receives."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_PATH = "pkg://lmaps_plugin.configs"
CONFIG_NAME = "config"


def inversebench_configs_searchpath() -> str:
    """Search-path entry for InverseBench's ``configs/`` when ``INVERSEBENCH_ROOT`` is set, else our own configs
    again (a harmless duplicate: Hydra warns about search paths that do not exist)."""
    root = os.environ.get("INVERSEBENCH_ROOT")
    if root and (Path(root).expanduser() / "configs").is_dir():
        return f"file://{Path(root).expanduser().resolve() / 'configs'}"
    return CONFIG_PATH


# resolver used by configs/config.yaml's hydra.searchpath; registered on import, before Hydra composes the config
OmegaConf.register_new_resolver("lmaps_inversebench_configs", inversebench_configs_searchpath, replace=True)


def compose_app(overrides: Sequence[str], config_dir: str | os.PathLike | None = None) -> DictConfig:
    """The ``lmaps`` app's config composed with ``overrides`` (and ``config_dir`` on the search path, where
    tuned configs live), as :func:`lmaps_plugin.app.run.run` receives it."""
    extra = []
    if config_dir is not None:
        extra = [f"hydra.searchpath=[{inversebench_configs_searchpath()},file://{Path(config_dir).resolve()}]"]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lmaps_plugin.configs", version_base="1.3"):
        return compose(CONFIG_NAME, overrides=[*extra, *overrides])


def method_kwargs(algorithm: str) -> dict:
    """The keyword arguments of ``configs/algorithm/<algorithm>.yaml``'s ``method`` (defaults chain followed,
    ``_target_`` dropped), as the ``lmaps`` app composes them: e.g. ``LMAPS(net, op, **method_kwargs('lmaps_auto'))``."""
    kwargs = OmegaConf.to_container(compose_app([f"algorithm={algorithm}"]).algorithm.method, resolve=True)
    kwargs.pop("_target_", None)
    return kwargs


def composition_errors() -> tuple[type[BaseException], ...]:
    """What Hydra raises when it cannot compose the configuration: its own errors (an unknown group option, an
    override it cannot parse), OmegaConf's (a missing key, a bad interpolation), a YAML syntax error, and an
    ``OSError`` making its run folder (``exp_dir`` under a file, a read-only folder)."""
    return HydraException, OmegaConfBaseException, yaml.YAMLError, OSError


__all__ = ["CONFIG_PATH", "CONFIG_NAME", "inversebench_configs_searchpath", "compose_app", "method_kwargs", "composition_errors"]
