"""The ten image problem configs (configs/problem/*.yaml) follow InverseBench's problem layout
and their ``model`` entries build working operators (data/evaluator are not instantiated)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lmaps_plugin.operators import Operator, available_operators, get_operator

PROBLEM_DIR = Path(__file__).resolve().parents[2] / "configs" / "problem"
TASKS = ["sr4", "gaussian_deblur", "motion_deblur", "inpaint_box", "inpaint_random",
         "phase_retrieval", "nonlinear_deblur", "hdr", "jpeg", "quantization"]
EXPECTED_OUTPUT_SIDE = {"sr4": 16, "phase_retrieval": 96}  # others keep 64×64


def load(task: str):
    return OmegaConf.load(PROBLEM_DIR / f"{task}.yaml")


@pytest.mark.parametrize("task", TASKS)
def test_layout(task):
    cfg = load(task)
    assert set(cfg) == {"name", "exp_dir", "prior", "model", "data", "evaluator"}
    assert cfg.name == task and cfg.exp_dir.endswith(task)
    assert cfg.prior is None
    assert cfg.model.sigma_noise == 0.05
    assert cfg.data._target_ == "lmaps_plugin.data.builtin_dataset"
    assert cfg.data.resolution == 64
    assert cfg.evaluator._target_ == "lmaps_plugin.evaluation.metrics.ImageEvaluator"
    # the model is the operator registered under the task's name
    assert task in available_operators()
    module, _, cls = cfg.model._target_.rpartition(".")
    assert get_operator(task).__module__ == module and get_operator(task).__name__ == cls


@pytest.mark.parametrize("task", TASKS)
def test_model_builds_and_applies_at_resolution_64(task, blur_weights):
    cfg = load(task)
    if task == "nonlinear_deblur":
        cfg.model.weights_path = str(blur_weights)
    op = instantiate(cfg.model, device="cpu")
    assert isinstance(op, Operator)
    if hasattr(op, "resolution"):
        assert op.resolution in (64, None)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = op.forward(x)
    side = EXPECTED_OUTPUT_SIDE.get(task, 64)
    assert tuple(y.shape) == (2, 3, side, side)
    assert torch.isfinite(y).all()
    torch.manual_seed(0)
    noisy = op({"target": x})
    assert abs((noisy - y).std().item() - 0.05) < 0.005
    assert op.gradient(x, noisy).shape == x.shape


def test_model_resolution_follows_the_data_resolution():
    cfg = load("gaussian_deblur")
    cfg.data.resolution = 256
    op = instantiate(cfg.model)
    assert op.resolution == 256 and op.kernel.shape == (61, 61)
    nested = OmegaConf.create({"problem": load("inpaint_box")})  # as InverseBench nests it
    nested.problem.data.resolution = 128
    assert instantiate(nested.problem.model).box_size == 64


def test_nonlinear_deblur_default_weights_path_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here
    from hydra.errors import InstantiationException
    with pytest.raises(InstantiationException, match="nonlinear_blur.pt") as info:
        instantiate(load("nonlinear_deblur").model)
    assert isinstance(info.value.__cause__, FileNotFoundError)  # Hydra wraps the clear error
