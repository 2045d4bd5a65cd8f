"""The 20 algorithm configs reproduce Table 4 of the paper (docs/conventions.md) and build LMAPS.

The expected numbers are typed in here from the paper's table, independently of the yaml
files; every config is composed through Hydra (so the defaults-list inheritance from
``lmaps.yaml`` is exercised) and instantiated into ``lmaps_plugin.LMAPS``.
With ``INVERSEBENCH_ROOT`` set, each row's ``tuned_for`` problem and overrides also compose
inside InverseBench's own config tree.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]

# config name: (N annealing steps, K gradient steps, eta, k1, k2) -- Table 4
TABLE4 = {
    "lmaps_sr4": (200, 100, 0.05, 0.15, 20),
    "lmaps_inpaint_box": (200, 100, 0.02, 0.5, 50),
    "lmaps_inpaint_random": (200, 100, 0.01, 0.22, 100),
    "lmaps_gaussian_deblur": (200, 100, 0.01, 0.22, 100),
    "lmaps_motion_deblur": (200, 100, 0.01, 0.25, 100),
    "lmaps_phase_retrieval": (200, 100, 0.1, 10, 0.3),
    "lmaps_nonlinear_deblur": (200, 100, 0.02, 0.05, 1),
    "lmaps_hdr": (200, 100, 0.04, 0.2, 10),
    "lmaps_jpeg": (200, 100, 0.2, 0.5, 5),
    "lmaps_quantization": (200, 20, 0.2, 0.5, 5),
    "lmaps_lis_nr360": (200, 50, 1, 0, 5000),
    "lmaps_lis_nr180": (200, 50, 1, 0, 10000),
    "lmaps_lis_nr60": (200, 50, 1, 0, 30000),
    "lmaps_mri_4x_noiseless": (200, 100, 0.01, 0, 100),
    "lmaps_mri_4x_raw": (200, 100, 0.01, 0.4, 150),
    "lmaps_mri_8x_noiseless": (200, 100, 0.01, 0.4, 150),
    "lmaps_mri_8x_raw": (200, 100, 0.01, 0.4, 150),
    "lmaps_blackhole_100pct": (100, 200, 0.01, 0.1, 0.01),
    "lmaps_blackhole_10pct": (100, 200, 0.005, 0.1, 0.03),
    "lmaps_blackhole_3pct": (100, 200, 0.01, 0.05, 0.05),
}

# Shared by every row (the paper's annealing grid and Alg. 4), inherited from lmaps.yaml.
COMMON = {"sigma_max": 100, "sigma_min": 0.1, "rho": 7, "inner_solver": "gd", "ddim_eta": 1.0,
          "step_guard": True}


@pytest.fixture(scope="module")
def dummy_app(tmp_path_factory):
    config_dir = tmp_path_factory.mktemp("app")
    (config_dir / "config.yaml").write_text("defaults:\n  - _self_\n  - algorithm: null\n")
    return config_dir


def compose_algorithm(config_dir: Path, overrides: list[str], config_name: str = "config"):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def test_every_table_row_has_a_yaml_with_its_row_label():
    for name in TABLE4:
        path = REPO / "configs" / "algorithm" / f"{name}.yaml"
        assert path.is_file(), name
        assert OmegaConf.load(path).tuned_for.task, name


@pytest.mark.parametrize("name", sorted(TABLE4))
def test_row_numbers_and_inherited_keys(dummy_app, name):
    method = compose_algorithm(dummy_app, [f"algorithm={name}"]).algorithm.method
    n, k, lr, k1, k2 = TABLE4[name]
    assert (method.num_steps, method.inner_steps) == (n, k)
    assert method.lr == pytest.approx(lr, rel=1e-12)
    assert method.k1 == pytest.approx(k1, rel=1e-12)
    assert method.k2 == pytest.approx(k2, rel=1e-12)
    assert method._target_ == "lmaps_plugin.LMAPS"
    for key, value in COMMON.items():
        assert method[key] == value, key


def test_rows_have_distinct_result_directories(dummy_app):
    """main.py writes results under algorithm.name: rows must not overwrite each other."""
    names = {compose_algorithm(dummy_app, [f"algorithm={row}"]).algorithm.name for row in TABLE4}
    assert len(names) == len(TABLE4)


@pytest.mark.parametrize("name", ["lmaps_lis_nr360", "lmaps_blackhole_10pct", "lmaps_quantization"])
def test_row_instantiates_lmaps(dummy_app, name):
    from lmaps_plugin import LMAPS

    method = compose_algorithm(dummy_app, [f"algorithm={name}"]).algorithm.method
    algo = instantiate(method, net=torch.nn.Identity(), forward_op=None)
    assert isinstance(algo, LMAPS)
    n, k, lr, k1, k2 = TABLE4[name]
    assert (algo.num_steps, algo.inner_steps, algo.lr, algo.k1, algo.k2) == (n, k, lr, k1, k2)


requires_inversebench = pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"),
                                           reason="INVERSEBENCH_ROOT is not set")


@pytest.mark.inversebench
@requires_inversebench
@pytest.mark.parametrize("name", sorted(TABLE4))
def test_row_composes_with_its_problem_in_inversebench(name):
    ib_configs = Path(os.environ["INVERSEBENCH_ROOT"]) / "configs"
    tuned = OmegaConf.load(REPO / "configs" / "algorithm" / f"{name}.yaml").tuned_for
    overrides = [f"problem={tuned.problem}", f"algorithm={name}", *tuned.get("overrides", [])]
    cfg = compose_algorithm(ib_configs, overrides)
    assert cfg.algorithm.method.num_steps == TABLE4[name][0]
    assert cfg.problem.model._target_  # the problem config exists and has an operator
    for override in tuned.get("overrides", []):
        key, value = override.split("=", 1)
        assert str(OmegaConf.select(cfg, key)).lower() == value.lower()
