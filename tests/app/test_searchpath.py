"""The Hydra search-path plugin finds our configs, and a wrong ``pkg://`` path is caught.

Also checks the packaging that the plugin depends on: ``lmaps_plugin.configs`` maps to the
top-level ``configs/`` folder, and every code package is listed in pyproject.toml.
"""
from __future__ import annotations

import subprocess
import sys
import tomllib
import warnings
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from hydra_plugins.lmaps_plugin_searchpath import lmaps_plugin_searchpath as sp

REPO = Path(__file__).resolve().parents[2]
TABLE4_NAMES = sorted(f"lmaps_{task}" for task in (
    "lis_nr360", "lis_nr180", "lis_nr60", "mri_4x_noiseless", "mri_4x_raw", "mri_8x_noiseless",
    "mri_8x_raw", "blackhole_100pct", "blackhole_10pct", "blackhole_3pct", "sr4", "inpaint_box",
    "inpaint_random", "gaussian_deblur", "motion_deblur", "phase_retrieval", "nonlinear_deblur",
    "hdr", "jpeg", "quantization"))


@pytest.fixture
def dummy_app(tmp_path):
    """A primary config dir that knows nothing about LMAPS: only the plugin can supply it."""
    (tmp_path / "config.yaml").write_text("defaults:\n  - _self_\n  - algorithm: null\nseed: 0\n")
    GlobalHydra.instance().clear()
    yield tmp_path
    GlobalHydra.instance().clear()


def compose_in(config_dir: Path, overrides: list[str], hydra_config: bool = False):
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_config)


def test_plugin_is_discovered_by_hydra():
    plugins = Plugins.instance().discover(SearchPathPlugin)
    assert sp.LMAPSPluginSearchPathPlugin in plugins


def test_plugin_appends_our_package():
    search_path = _empty_search_path()
    sp.LMAPSPluginSearchPathPlugin().manipulate_search_path(search_path)
    entries = [(e.provider, e.path) for e in search_path.get_path()]
    assert entries[-1] == ("lmaps-plugin", "pkg://lmaps_plugin.configs")


def test_dummy_app_composes_lmaps_through_the_plugin(dummy_app):
    cfg = compose_in(dummy_app, ["algorithm=lmaps"], hydra_config=True)
    assert cfg.algorithm.name == "LMAPS"
    assert cfg.algorithm.method._target_ == "lmaps_plugin.LMAPS"
    sources = OmegaConf.to_container(cfg.hydra.runtime.config_sources)
    assert {"path": "lmaps_plugin.configs", "schema": "pkg", "provider": "lmaps-plugin"} in sources
    # and the config really came from our package: the primary dir has no algorithm group
    assert not (dummy_app / "algorithm").exists()


@pytest.mark.parametrize("name", TABLE4_NAMES)
def test_dummy_app_composes_every_table4_variant(dummy_app, name):
    cfg = compose_in(dummy_app, [f"algorithm={name}"])
    assert cfg.algorithm.method._target_ == "lmaps_plugin.LMAPS"


def test_table4_has_twenty_variants():
    assert len(TABLE4_NAMES) == 20
    assert all((REPO / "configs" / "algorithm" / f"{name}.yaml").is_file() for name in TABLE4_NAMES)


def test_app_config_with_the_same_name_wins(dummy_app):
    """Append: a user's own algorithm/lmaps.yaml in the app overrides ours."""
    (dummy_app / "algorithm").mkdir()
    (dummy_app / "algorithm" / "lmaps.yaml").write_text("name: MINE\nmethod:\n  _target_: my.Solver\n")
    assert compose_in(dummy_app, ["algorithm=lmaps"]).algorithm.name == "MINE"


# ------------------------------------------------------------ a wrong pkg:// path is caught
def test_correct_package_validates():
    sp.validate_config_package("lmaps_plugin.configs")


@pytest.mark.parametrize("package, reason", [
    ("lmaps_plugin.cnofigs", "cannot be imported"),        # misspelt
    ("lmaps_plugin_configs", "cannot be imported"),        # wrong separator
    ("lmaps_plugin", "does not contain 'algorithm/lmaps.yaml'"),  # a package, but not the configs
])
def test_wrong_package_is_rejected(package, reason):
    with pytest.raises(sp.ConfigPackageError, match=reason):
        sp.validate_config_package(package)


def test_plugin_with_wrong_path_warns_loudly():
    class Misspelt(sp.LMAPSPluginSearchPathPlugin):
        package = "lmaps_plugin.cnofigs"

    with pytest.warns(RuntimeWarning, match="lmaps_plugin.cnofigs"):
        Misspelt().manipulate_search_path(_empty_search_path())


def test_misspelt_plugin_path_is_silent_in_hydra_but_not_with_validation(dummy_app, monkeypatch):
    """Why validation is needed: Hydra drops an unusable plugin pkg:// source without a word."""
    from hydra.errors import ConfigCompositionException

    monkeypatch.setattr(sp.LMAPSPluginSearchPathPlugin, "package", "lmaps_plugin.cnofigs")
    monkeypatch.setattr(sp, "validate_config_package", lambda package: None)  # Hydra alone
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert compose_in(dummy_app, []).seed == 0
    assert not [w for w in caught if "cnofigs" in str(w.message)]
    with pytest.raises(ConfigCompositionException) as missing:
        compose_in(dummy_app, ["algorithm=lmaps"])
    assert "cnofigs" not in str(missing.value)  # the error does not point at the cause

    monkeypatch.undo()
    monkeypatch.setattr(sp.LMAPSPluginSearchPathPlugin, "package", "lmaps_plugin.cnofigs")
    with pytest.warns(RuntimeWarning, match="lmaps_plugin.cnofigs"):
        compose_in(dummy_app, [])


def _empty_search_path() -> ConfigSearchPath:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    return ConfigSearchPathImpl()


# --------------------------------------------------------------------------- packaging
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_code_package_is_listed_in_pyproject():
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {".".join(d.relative_to(REPO).parts) for d in (REPO / "lmaps_plugin").rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))}
    on_disk.add("lmaps_plugin")
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert setuptools["package-dir"]["lmaps_plugin.configs"] == "configs"
    assert "hydra_plugins" not in setuptools.get("package-dir", {})


def test_no_init_directly_in_hydra_plugins():
    assert not (REPO / "hydra_plugins" / "__init__.py").exists()


@pytest.mark.slow
def test_wheel_ships_configs_and_plugin(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("lmaps_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lmaps_plugin/configs/__init__.py" in names
    assert "lmaps_plugin/configs/algorithm/lmaps.yaml" in names
    assert {f"lmaps_plugin/configs/algorithm/{n}.yaml" for n in TABLE4_NAMES} <= names
    assert "hydra_plugins/lmaps_plugin_searchpath/lmaps_plugin_searchpath.py" in names
    assert "hydra_plugins/__init__.py" not in names


def test_installed_version_is_the_package_version():
    """pyproject.toml reads the version from lmaps_plugin.__version__ (one home; provenance records print it)."""
    import importlib.metadata

    import lmaps_plugin

    assert importlib.metadata.version("lmaps-plugin") == lmaps_plugin.__version__
