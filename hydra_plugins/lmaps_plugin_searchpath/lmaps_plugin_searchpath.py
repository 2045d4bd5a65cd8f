"""Hydra search-path plugin: make lmaps-plugin's configs visible to any Hydra app.

Hydra imports every module in the ``hydra_plugins`` namespace package at start-up and
calls each ``SearchPathPlugin``.  Ours adds ``pkg://lmaps_plugin.configs`` so that, in a
stock InverseBench checkout, ``python main.py algorithm=lmaps ...`` (and the Table-4
variants ``algorithm=lmaps_lis_nr360`` ...) compose without editing the checkout.

Append, not prepend: every config we ship has a name that InverseBench does not use
(``lmaps*`` algorithms, ``*-fixed`` problems), so order never decides between theirs and
ours; appending keeps the application's own config tree first, so a user who copies
``lmaps.yaml`` into their checkout to edit it gets their copy, and a future upstream
config that happens to share a name is never shadowed by ours.

A misspelt ``pkg://`` path fails silently in Hydra (the source is simply "not
available"), so the path is validated at registration and a failure warns loudly.
Validation warns rather than raises because this plugin runs inside *every* Hydra app in
the environment: a broken lmaps-plugin install must not take unrelated apps down.
"""
from __future__ import annotations

import warnings
from importlib import resources

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

CONFIG_PACKAGE = "lmaps_plugin.configs"
"""Dotted name of the package that holds our config groups."""

PROVIDER = "lmaps-plugin"
"""Provider name Hydra shows for our configs (e.g. in ``--info``)."""

MARKER = "algorithm/lmaps.yaml"
"""A file that must exist in the config package; proves the path points at our configs."""


class ConfigPackageError(RuntimeError):
    """The config package named for the search path is missing or is not ours."""


def validate_config_package(package: str = CONFIG_PACKAGE, marker: str = MARKER) -> None:
    """Check that ``pkg://<package>`` would be usable by Hydra and holds our configs.

    Mirrors Hydra's own availability test (an importable package with an
    ``__init__.py``) and additionally requires ``marker`` inside it.

    Raises:
        ConfigPackageError: naming the package and what is wrong with it.
    """
    try:
        root = resources.files(package)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        raise ConfigPackageError(
            f"Hydra config package {package!r} cannot be imported ({type(exc).__name__}: {exc}); "
            f"lmaps-plugin configs will not be found. Reinstall lmaps-plugin "
            f"(pip install lmaps-plugin, or pip install -e <checkout>)."
        ) from exc
    if not root.joinpath("__init__.py").is_file():
        raise ConfigPackageError(
            f"Hydra config package {package!r} has no __init__.py; Hydra ignores such "
            f"pkg:// sources. Ship configs/__init__.py with the package."
        )
    if not root.joinpath(marker).is_file():
        raise ConfigPackageError(
            f"Hydra config package {package!r} does not contain {marker!r}; the pkg:// path "
            f"is wrong or the package was built without its yaml files."
        )


def config_search_path(package: str = CONFIG_PACKAGE) -> str:
    """The Hydra search-path entry for ``package``."""
    return f"pkg://{package}"


class LMAPSPluginSearchPathPlugin(SearchPathPlugin):
    """Appends ``pkg://lmaps_plugin.configs`` to every Hydra app's config search path."""

    package: str = CONFIG_PACKAGE

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        try:
            validate_config_package(self.package)
        except ConfigPackageError as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
        search_path.append(provider=PROVIDER, path=config_search_path(self.package))
