"""InverseBench's own FFHQ problems with LMAPS's Table-4 rows, through stock ``main.py``.

InverseBench ships four image problems, ``configs/problem/ffhq256_{sr,deblur,inpaint,pr}.yaml``
(operators in its ``inverse_problems/image_restore.py``). Each is paired with the Table-4 row of
the same task:

==============  =============================================  ===========================
problem         upstream operator (256²)                       algorithm
==============  =============================================  ===========================
ffhq256_sr      ``SuperResolution``, bicubic ×2                 ``lmaps_sr4`` (Table 4's SR row)
ffhq256_deblur  ``GaussialBlur``, 61×61 kernel, std 3           ``lmaps_gaussian_deblur``
ffhq256_inpaint ``Inpainting``, ``mask_type: box`` (a random    ``lmaps_inpaint_box``
                box of 105-180 px per side, margin 32)
ffhq256_pr      ``PhaseRetrieval``, oversampling 2              ``lmaps_phase_retrieval``
==============  =============================================  ===========================

* Composition (in-process): Hydra composes problem + ``pretrain=ffhq256`` + algorithm in
  InverseBench's config tree (our configs come from the search-path plugin); the problem keeps
  its upstream ``_target_`` and the algorithm its Table-4 numbers; LMAPS instantiates on the
  upstream operator and runs; on the upstream inpainting mask one inner step of the box row
  (η·k2 = 0.02·50 = 1) puts the observed pixels on y (docs/conventions.md).
* One short run per problem (subprocess): the checkout's unmodified ``main.py`` with N=4, K=3,
  on 32×32 images and a tiny random-weight prior, writes a finite reconstruction of the right shape
  whose data misfit is below the zero image's.

What is overridden, and why (all on the ``main.py`` command line, nothing in the checkout changes):

* Image size 32 (the operators' resolution arguments; the inpainting box range scaled by 32/256 to
  [13, 23)); the 61×61 blur kernel is kept (its reflection padding, 30, fits 32).
* Prior: ``pretrain=ffhq256``'s ADM network shrunk (32 channels, ``channel_mult=[1,2]``, no
  attention) with random weights, saved as ``{'ema': state_dict}`` (the layout ``main.py`` loads);
  with InverseBench's ``EDMPrecond`` instead of ``VPPrecond``, as in
  ``scripts/make_inversebench_ckpt.py``: an untrained VP network is an ε-predictor,
  D(x) = x − σ·F(x), so at σ = 100 its "denoised" image is ~100 times the network output.
* Data: ``training.dataset.ImageFolder`` needs FFHQ PNGs and builds ``torchvision.transforms``;
  the run reads our built-in test faces instead (``lmaps_plugin.data.builtin_dataset``, the same
  ``{'target': (C, H, W)}`` items in [-1, 1] and an ``id_list``).
* Evaluator: ``eval.Image`` builds piq's LPIPS (downloaded VGG weights); ours
  (``lmaps_plugin.evaluation.metrics.ImageEvaluator``) computes PSNR, SSIM and the data misfit.
* ``image_restore.py`` imports torchvision at import time. The run is ``main.py`` started through
  a three-line launcher that first imports that module with lmaps-plugin's stand-ins
  (``lmaps_plugin.inversebench.import_upstream``), then runs ``main.py`` unchanged with
  ``runpy``; torchvision is never installed.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from ib_helpers import load_script

ROOT = os.environ.get("INVERSEBENCH_ROOT")

pytestmark = [
    pytest.mark.inversebench,
    pytest.mark.skipif(not ROOT, reason="INVERSEBENCH_ROOT is not set"),
]

RES = 32
TASK = "InverseBench FFHQ problems (tests/inversebench/test_inversebench_ffhq.py)"

#: Table 4 of the paper: (N, K, η, k1, k2) of the four rows used here.
TABLE4_ROWS = {
    "lmaps_sr4": (200, 100, 0.05, 0.15, 20.0),
    "lmaps_gaussian_deblur": (200, 100, 0.01, 0.22, 100.0),
    "lmaps_inpaint_box": (200, 100, 0.02, 0.5, 50.0),
    "lmaps_phase_retrieval": (200, 100, 0.1, 10.0, 0.3),
}


@dataclass(frozen=True)
class Case:
    problem: str                 # InverseBench's configs/problem/<problem>.yaml
    algorithm: str               # our Table-4 row
    operator: str                # class in inverse_problems.image_restore
    size_overrides: tuple        # problem.model keys that depend on the image size
    observation_shape: tuple     # for one 3×32×32 image


CASES = {
    "sr": Case("ffhq256_sr", "lmaps_sr4", "SuperResolution",
               (f"problem.model.in_resolution={RES}",), (1, 3, RES // 2, RES // 2)),
    "deblur": Case("ffhq256_deblur", "lmaps_gaussian_deblur", "GaussialBlur", (), (1, 3, RES, RES)),
    "inpaint": Case("ffhq256_inpaint", "lmaps_inpaint_box", "Inpainting",
                    (f"problem.model.resolution={RES}", "problem.model.mask_len_range=[13,23]"),
                    (1, 3, RES, RES)),
    "pr": Case("ffhq256_pr", "lmaps_phase_retrieval", "PhaseRetrieval",
               (f"problem.model.resolution={RES}",), (1, 3, RES + 2 * RES // 4, RES + 2 * RES // 4)),
}

PRIOR_OVERRIDES = ["pretrain=ffhq256", "pretrain.model._target_=models.precond.EDMPrecond",
                   f"pretrain.model.img_resolution={RES}", "pretrain.model.model_channels=32",
                   "pretrain.model.channel_mult=[1,2]", "pretrain.model.attention_resolutions=[]"]
DATA_OVERRIDES = ["problem.data._target_=lmaps_plugin.data.builtin_dataset", "~problem.data.root",
                  "~problem.data.num_channels", "+problem.data.name=faces", "+problem.data.channels=3",
                  f"problem.data.resolution={RES}", "problem.data.id_list=0"]
EVALUATOR_OVERRIDES = ["problem.evaluator._target_=lmaps_plugin.evaluation.metrics.ImageEvaluator",
                       "+problem.evaluator.lpips=false"]
#: misfit_rms of the short run / RMS of y must stay below this (measured: sr 0.37, deblur 0.20,
#: inpaint 0.18, pr 0.92: the phase-retrieval row's k1 = 10 leaves the data little weight once σ < 10,
#: and a random prior cannot explain a Fourier magnitude; more steps do not lower it).
MISFIT_BOUND = {"sr": 0.6, "deblur": 0.5, "inpaint": 0.5, "pr": 1.0}
SHORT_RUN = ["algorithm.method.num_steps=4", "algorithm.method.inner_steps=3"]

#: Runs InverseBench's main.py unchanged, after importing image_restore with our torchvision stand-ins.
LAUNCHER = ("import runpy, sys; from lmaps_plugin.inversebench import import_upstream; "
            f"import_upstream('inverse_problems.image_restore', {TASK!r}); "
            "sys.argv[0] = 'main.py'; runpy.run_path('main.py', run_name='__main__')")


def _upstream(module: str):
    from lmaps_plugin.inversebench import import_upstream

    return import_upstream(module, TASK)


def compose_in_inversebench(case: Case, extra: list[str] = ()):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(Path(ROOT) / "configs"), version_base="1.3"):
            return compose("config", overrides=[f"problem={case.problem}", f"algorithm={case.algorithm}",
                                                *extra])
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """``pretrain=ffhq256``'s network at the sizes of PRIOR_OVERRIDES, random weights, in main.py's layout."""
    _upstream("models.precond")
    cfg = compose_in_inversebench(CASES["sr"], PRIOR_OVERRIDES)
    torch.manual_seed(0)
    net = instantiate(cfg.pretrain.model).eval()
    path = tmp_path_factory.mktemp("ffhq-prior") / "ffhq-tiny.pt"
    torch.save({"ema": net.state_dict()}, path)
    return path, net


def test_stock_problems_are_the_tasks_of_their_rows():
    """The pairing above is InverseBench's own: its inpainting problem is box inpainting."""
    from omegaconf import OmegaConf

    stock = {key: OmegaConf.load(Path(ROOT) / "configs" / "problem" / f"{case.problem}.yaml")
             for key, case in CASES.items()}
    assert stock["inpaint"].model.mask_type == "box"
    assert stock["sr"].model.scale_factor == 2 and stock["deblur"].model.kernel_size == 61
    for key, case in CASES.items():
        assert stock[key].model._target_ == f"inverse_problems.image_restore.{case.operator}"
        assert stock[key].model.sigma_noise == 0.05


@pytest.mark.parametrize("key", sorted(CASES))
def test_problem_and_row_compose_and_lmaps_runs_on_the_upstream_operator(key, tiny_checkpoint):
    from lmaps_plugin import LMAPS

    case = CASES[key]
    cfg = compose_in_inversebench(case, [*case.size_overrides, *PRIOR_OVERRIDES])
    assert cfg.problem.model._target_ == f"inverse_problems.image_restore.{case.operator}"
    n, k, lr, k1, k2 = TABLE4_ROWS[case.algorithm]
    method = cfg.algorithm.method
    assert (method.num_steps, method.inner_steps, method.lr, method.k1, method.k2) == (n, k, lr, k1, k2)

    image_restore = _upstream("inverse_problems.image_restore")
    op = instantiate(cfg.problem.model, device="cpu")
    assert type(op) is getattr(image_restore, case.operator)
    _, net = tiny_checkpoint
    algo = instantiate(method, forward_op=op, net=net, num_steps=3, inner_steps=2, verbose=False)
    assert isinstance(algo, LMAPS) and (algo.lr, algo.k1, algo.k2) == (lr, k1, k2)

    from lmaps_plugin.data import builtin_dataset
    target = builtin_dataset("faces", resolution=RES, channels=3, num_images=1)[0]["target"][None]
    torch.manual_seed(0)
    y = op({"target": target})
    assert tuple(y.shape) == case.observation_shape
    recon = algo.inference(y, num_samples=2)
    assert recon.shape == (2, 3, RES, RES) and torch.isfinite(recon).all()


def test_one_box_row_step_projects_onto_y_on_the_upstream_mask():
    """η·k2 = 1 (box row: 0.02·50) on InverseBench's Inpainting, whose gradient is autograd's of ‖Mx − y‖²."""
    from lmaps_plugin.local_map import gd_local_map

    case = CASES["inpaint"]
    cfg = compose_in_inversebench(case, list(case.size_overrides))
    _upstream("inverse_problems.image_restore")
    op = instantiate(cfg.problem.model, device="cpu")
    lr, k2 = cfg.algorithm.method.lr, cfg.algorithm.method.k2
    assert lr * k2 == pytest.approx(1.0, rel=1e-12)
    gen = torch.Generator().manual_seed(0)
    target = 2 * torch.rand(1, 3, RES, RES, generator=gen) - 1
    torch.manual_seed(1)
    y = op({"target": target})
    x0_hat = 2 * torch.rand(1, 3, RES, RES, generator=gen) - 1
    r = 100.0 ** 2 / (100.0 ** 2 + 1e-6)          # σ = 100, k1 = 0
    out = gd_local_map(x0_hat, y, op, r=r, k2=k2, lr=lr, steps=1, closed_form=False)
    x1 = out[0] if isinstance(out, tuple) else out
    observed = (op.mask > 0.5).expand_as(x1)
    assert 0.3 < observed.float().mean() < 0.95    # the box drops 13-22 px per side of 32
    torch.testing.assert_close(x1[observed], y[observed], atol=1e-6, rtol=0)     # float32
    torch.testing.assert_close(x1[~observed], x0_hat[~observed], atol=0, rtol=0)


@pytest.mark.parametrize("key", sorted(CASES))
def test_stock_main_runs_the_row_on_the_problem(key, tiny_checkpoint, tmp_path):
    case = CASES[key]
    ckpt, _ = tiny_checkpoint
    exp_dir = tmp_path / "exps"
    command = [sys.executable, "-c", LAUNCHER, f"problem={case.problem}", f"algorithm={case.algorithm}",
               f"problem.prior={ckpt}", *PRIOR_OVERRIDES, *case.size_overrides, *DATA_OVERRIDES,
               *EVALUATOR_OVERRIDES, *SHORT_RUN, f"problem.exp_dir={exp_dir}", "exp_name=ffhq", "wandb=false",
               f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "INVERSEBENCH_ROOT": str(Path(ROOT).resolve())}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    rig = load_script("run_inversebench_compare")
    result_dir = exp_dir / compose_in_inversebench(case).algorithm.name / "ffhq"   # main.py's layout
    files = rig.result_files(result_dir)
    assert [f.name for f in files] == ["result_0.pt"], list(result_dir.parent.glob("*/*"))
    result = rig.load_result(files[0])
    assert tuple(result["recon"].shape) == (1, 3, RES, RES)
    assert tuple(result["target"].shape)[-3:] == (3, RES, RES)
    assert tuple(result["observation"].shape) == case.observation_shape
    assert torch.isfinite(result["recon"]).all()
    # main.py's own evaluator call logged our metrics; the data misfit beats the zero image's
    # (H(0) = 0 for all four operators, so the zero image's RMS misfit is the RMS of y)
    metrics = rig.evaluator_metrics(result_dir)
    assert {"psnr", "ssim", "misfit_rms"} <= set(metrics), metrics
    zero_rms = float(result["observation"].detach().double().square().mean().sqrt())
    assert math.isfinite(metrics["misfit_rms"])
    assert metrics["misfit_rms"] < MISFIT_BOUND[key] * zero_rms, (metrics, zero_rms)
