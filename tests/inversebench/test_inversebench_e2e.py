"""End-to-end: stock InverseBench ``main.py`` with ``algorithm=lmaps`` on the offline synthetic rig.

Needs an InverseBench checkout (``INVERSEBENCH_ROOT``) and lmaps-plugin installed (its Hydra
search-path plugin provides ``algorithm=lmaps`` and the ``*-fixed`` problem configs).

* Fast: the synthetic data (``scripts/make_inversebench_data.py``) is read back by InverseBench's own
  dataset classes exactly as written, and its MRI k-space follows InverseBench's operator convention
  (``forward(target)`` reproduces the observation; the MVUE of the stored k-space is the image).
* Slow: the black-hole observation files load into InverseBench's operator, and the truth's closure
  χ² under ehtim's thermal noise is about 1 (its expectation); ``main.py problem=<p>-fixed
  algorithm=lmaps`` runs for all three problems with random-weight priors
  (``scripts/make_inversebench_ckpt.py``) and writes finite reconstructions of the right shape, and on
  inverse scattering LMAPS's reconstruction explains the observation far better than the zero image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ib_helpers import load_script

ROOT = os.environ.get("INVERSEBENCH_ROOT")

pytestmark = [
    pytest.mark.inversebench,
    pytest.mark.skipif(not ROOT, reason="INVERSEBENCH_ROOT is not set"),
]


@pytest.fixture(scope="module")
def data_script():
    return load_script("make_inversebench_data")


@pytest.fixture(scope="module")
def rig():
    return load_script("run_inversebench_compare")


def _upstream(module: str):
    from lmaps_plugin.inversebench import import_upstream

    return import_upstream(module, "tests/inversebench/test_inversebench_e2e.py")


def _stored(txn, index: int, dtype, shape) -> np.ndarray:
    """Raw LMDB value ``index`` (read through the dataset's own transaction: LMDB allows one open
    environment per path and process)."""
    return np.frombuffer(txn.get(str(index).encode()), dtype=dtype).reshape(shape).copy()


# --------------------------------------------------------------------------------------------- fast

@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_script):
    """Scattering (64²) and MRI (32², 4 coils) test sets, no training images: a few seconds."""
    out = tmp_path_factory.mktemp("ibdata-small")
    manifest = data_script.main(["--out", str(out), "--problems", "scatter,mri", "--num-test", "2",
                                 "--num-train", "0", "--scatter-resolutions", "64", "--mri-size", "32",
                                 "--mri-coils", "4"])
    return out, manifest


def test_scatter_lmdb_reads_back_through_inversebench(small_data):
    out, manifest = small_data
    dataset = _upstream("training.dataset").LMDBData(
        root=str(out / "inv-scatter-test-64"), resolution=64, raw_resolution=64, mean=0.5, std=0.25)
    assert len(dataset) == 2 == manifest["entries"]["scatter_test-64"]["count"]
    for i in range(2):
        stored = _stored(dataset.txn, i, np.float32, (1, 64, 64))
        assert 0.0 <= stored.min() and stored.max() <= 1.0 and stored.max() > 0.3
        # InverseBench maps [0, 1] contrast to the prior's [-1, 1] with mean 0.5, std 0.25
        np.testing.assert_allclose(np.asarray(dataset[i]["target"]), (stored - 0.5) / 0.5, atol=1e-6)


def test_mri_kspace_matches_inversebench_operator(small_data):
    out, _ = small_data
    dataset = _upstream("training.dataset").MultiCoilMRILMDBData(root=str(out / "mri" / "test"),
                                                                 image_size=[32, 32])
    operator = _upstream("inverse_problems.multi_coil_mri").MultiCoilMRI(
        total_lines=32, acceleration_ratio=4, pattern="random", mask_seed=0, device="cpu")
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    for i, data in enumerate(loader):
        maps = data["maps"][0].numpy()
        # unit root-sum-of-squares coil maps (so the MVUE of full k-space is the image itself)
        np.testing.assert_allclose((np.abs(maps) ** 2).sum(0), 1.0, rtol=1e-5)
        observation = operator(data)
        assert observation.shape == (1, 4, 32, 32, 2)
        assert int(operator.mask.sum()) < 32  # undersampled
        # the stored k-space is their operator's forward model of the stored image
        predicted = operator.forward(data["target"])
        assert float((predicted - observation).norm() / observation.norm()) < 1e-5
        # and the stored MVUE is the coil combination of the stored k-space
        mvue = _stored(dataset.mvue_txn, i, np.complex64, (1, 32, 32))[0]
        kspace = _stored(dataset.kspace_txn, i, np.complex64, (4, 32, 32))
        coil_images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"),
                                      axes=(-2, -1))
        np.testing.assert_allclose((coil_images * np.conj(maps)).sum(0), mvue, atol=1e-5)


def test_lmaps_app_runs_inversebench_scattering_on_its_data(small_data, tmp_path):
    """The ``lmaps`` app (what ``lmaps-bench tune`` runs per trial) on InverseBench's scattering problem and its
    LMDB data: the app's built-in test-set keys (name, channels, num_images) do not reach InverseBench's dataset,
    ids given as a list select those images, and the dataset's numpy items are batched as main.py's DataLoader
    batches them, so each sample's target is InverseBench's item and its observation the operator's forward of it
    (plus the noise of sigma_noise)."""
    from hydra.core.global_hydra import GlobalHydra

    from lmaps_plugin.app import run as app_run
    from lmaps_plugin.app.compose import compose_app
    from lmaps_plugin.priors import build_edm_unet, default_unet_config, save_prior

    out, _ = small_data
    prior = save_prior(tmp_path / "tiny.pt", build_edm_unet(default_unet_config(img_channels=1, img_resolution=64)),
                       meta={"note": "untrained"})
    GlobalHydra.instance().clear()
    cfg_overrides = ["problem=inv-scatter-fixed", "prior=inversebench", f"prior.path={prior}", "prior.channels=1",
                     "prior.resolution=64", "algorithm=dps", "algorithm.method.diffusion_scheduler_config.num_steps=2",
                     f"problem.data.root={out / 'inv-scatter-test-64'}", "problem.data.resolution=64",
                     "++problem.data.raw_resolution=64", "problem.model.Nx=64", "problem.model.Ny=64",
                     "problem.model.gram_basis=false", "ids=[1,0]", f"exp_dir={tmp_path / 'res'}",
                     "figure.enabled=false", "verbose=false", "threads=1"]
    summary = app_run.run(compose_app(cfg_overrides))
    assert [o.status for o in summary.outcomes] == ["ok", "ok"]
    # LMAPS with the figures: the trajectory strip shows InverseBench's (numpy) target beside the frames
    GlobalHydra.instance().clear()
    lmaps = compose_app([*[o for o in cfg_overrides if not o.startswith(("algorithm", "figure", "ids"))],
                         "algorithm=lmaps_auto", "algorithm.method.num_steps=3", "ids=[0]"])
    run = app_run.run(lmaps)
    assert run.outcomes[0].status == "ok" and run.trajectory.stat().st_size > 1000
    del summary, run       # LMDB opens one environment per path and process: the app's dataset must be gone
    dataset = _upstream("training.dataset").LMDBData(
        root=str(out / "inv-scatter-test-64"), resolution=64, raw_resolution=64, mean=0.5, std=0.25)
    operator = _upstream("inverse_problems.inverse_scatter").InverseScatter(
        Lx=0.18, Ly=0.18, Nx=64, Ny=64, wave=6, numRec=360, numTrans=20, sensorRadius=1.6, sigma_noise=0.0,
        unnorm_shift=1.0, unnorm_scale=0.5, svd=False, device="cpu")
    folders = list((tmp_path / "res").rglob("result_1.pt"))
    assert len(folders) == 1
    for sample_id in (0, 1):
        saved = torch.load(folders[0].parent / f"result_{sample_id}.pt")
        item = torch.as_tensor(dataset[sample_id]["target"])[None]     # normalised, as main.py's loader gives it
        # results hold images in the operator's physical units: here the stored contrast itself
        np.testing.assert_allclose(saved["target"].numpy(), operator.unnormalize(item).numpy(), atol=1e-6)
        np.testing.assert_allclose(saved["target"][0].numpy(), _stored(dataset.txn, sample_id, np.float32,
                                                                       (1, 64, 64)), atol=1e-6)
        clean = operator.forward(item)
        noise = (saved["observation"] - clean).abs()
        assert saved["observation"].shape == clean.shape == (1, 20, 360)
        assert 0.3e-4 < float(noise.pow(2).mean().sqrt()) < 3e-4      # sigma_noise = 1e-4 of the problem config
    GlobalHydra.instance().clear()


def test_scattering_spaces_follow_the_operators_scale():
    """configs/tune/ib_daps_inv_scatter.yaml (and ib_reddiff_inv_scatter.yaml) rest on the Lipschitz constant L of the 64² scattering loss's
    gradient (about 1.1e-3, by power iteration on the operator's own gradient): DAPS' image setting takes data steps
    lr·L/(2·tau²) of about 6e-4, and the ranges span steps from far below that to past the stability limit 2."""
    import yaml

    from lmaps_plugin.inversebench import InverseScatter

    op = InverseScatter(Lx=0.18, Ly=0.18, Nx=64, Ny=64, wave=6, numRec=360, numTrans=20, sensorRadius=1.6,
                        sigma_noise=1e-4, unnorm_shift=1.0, unnorm_scale=0.5, svd=False, gram_basis=False,
                        device="cpu")
    y0 = op.forward(torch.zeros(1, 1, 64, 64))
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    for _ in range(30):       # gradient(x; A(0)) is linear in x: power iteration gives its largest eigenvalue
        g = op.gradient(x, y0)
        lipschitz = float(g.norm() / x.norm())
        x = g / g.norm()
    assert 1.0e-3 < lipschitz < 1.3e-3
    space = yaml.safe_load((Path(__file__).parents[2] / "configs" / "tune" / "ib_daps_inv_scatter.yaml").read_text())
    lr, tau = (space["params"][f"algorithm.method.lgvd_config.{k}"] for k in ("lr", "tau"))
    step = lambda lr_, tau_: lr_ * lipschitz / (2 * tau_ ** 2)  # noqa: E731
    assert lr["low"] <= 1e-4 <= lr["high"] and tau["low"] <= 0.01 <= tau["high"]
    assert 5e-4 < step(1e-4, 0.01) < 7e-4
    assert step(lr["low"], tau["high"]) < 1e-4 and step(lr["high"], tau["low"]) > 2
    # the annealing sigma_min (the noise DAPS's last Langevin sample keeps): from well below to the image setting 0.1
    sigma_min = space["params"]["algorithm.method.annealing_scheduler_config.sigma_min"]
    assert sigma_min["low"] <= 1e-3 and sigma_min["high"] >= 0.1
    # RED-diff's observation_weight: InverseBench's MRI range (1e-2..1e2, an operator of Lipschitz constant 1)
    # scaled by 1/L, down to the image setting 1.0
    reddiff = yaml.safe_load((Path(__file__).parents[2] / "configs" / "tune" / "ib_reddiff_inv_scatter.yaml")
                             .read_text())["params"]["algorithm.method.observation_weight"]
    assert reddiff["low"] <= 1.0 and reddiff["high"] >= 1e2 / lipschitz / 1.5


# --------------------------------------------------------------------------------------------- slow

@pytest.fixture(scope="module")
def rig_files(tmp_path_factory, data_script):
    """Full-size test data (2 samples each) and random-weight checkpoints for all three problems."""
    work = tmp_path_factory.mktemp("ibrig")
    data = data_script.main(["--out", str(work / "data"), "--num-test", "2", "--num-train", "0"])
    ckpt = load_script("make_inversebench_ckpt").main(
        ["--out", str(work / "ckpt"), "--ib-root", ROOT, "--model-channels", "16"])
    return work, data, ckpt


@pytest.mark.slow
def test_blackhole_truth_has_unit_closure_chi2(rig_files):
    work, data, _ = rig_files
    measure = Path(data["entries"]["blackhole_measure"]["path"])
    operator = _upstream("inverse_problems.blackhole").BlackHoleImaging(
        root=str(measure), imsize=64, noise_type="eht", ttype="direct", device="cpu")
    dataset = _upstream("training.dataset").BlackHole(
        root=str(work / "data" / "blackhole" / "test"), resolution=64, original_resolution=64,
        random_flip=False, zoom_in_out=False)
    assert operator.amp_dim == data["entries"]["blackhole_measure"]["num_vis"]
    np.random.seed(0)  # ehtim draws its thermal noise from numpy's global generator
    chi2 = []
    for i in range(len(dataset)):
        target = dataset[i]["target"][None].float()
        assert float(target.max()) == pytest.approx(1.0) and float(target.min()) >= -1.0
        observation = operator({"target": target})
        cp, camp = operator.evaluate_chisq(operator.unnormalize(target), observation, normalize=False)
        chi2 += [float(cp), float(camp)]
    # closure quantities of the truth: χ²/dof ≈ 1 (hundreds of closures each, so within ±40 %)
    assert all(0.6 < c < 1.4 for c in chi2), chi2


LMAPS_SMOKE = {
    # Table 4 rows (η, k1, k2) with N and K shrunk to a smoke run
    "scatter": ["algorithm.method.num_steps=4", "algorithm.method.inner_steps=5", "algorithm.method.lr=1.0",
                "algorithm.method.k1=0.0", "algorithm.method.k2=5000.0"],
    "blackhole": ["algorithm.method.num_steps=4", "algorithm.method.inner_steps=3", "algorithm.method.lr=0.01",
                  "algorithm.method.k1=0.1", "algorithm.method.k2=0.01"],
    "mri": ["algorithm.method.num_steps=5", "algorithm.method.inner_steps=5", "algorithm.method.lr=0.01",
            "algorithm.method.k1=0.0", "algorithm.method.k2=100.0"],
}
EXPECTED = {  # (recon shape, observation shape)
    "scatter": ((1, 1, 128, 128), (1, 20, 360)),
    "blackhole": ((1, 1, 64, 64), None),
    "mri": ((1, 2, 64, 64), (1, 8, 64, 64, 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["scatter", "blackhole", "mri"])
def test_stock_main_runs_lmaps(problem, rig_files, rig):
    work, data, ckpt = rig_files
    exp_dir = work / "runs" / problem
    command = rig.main_py_command(problem, "lmaps", data, ckpt, exp_dir, exp_name="e2e",
                                  extra=LMAPS_SMOKE[problem])
    run = rig.run_main(Path(ROOT), command, problem, "lmaps", exp_dir, exp_name="e2e", timeout=900)
    assert run.returncode == 0, run.log_tail
    files = rig.result_files(run.result_dir)
    assert [f.name for f in files] == ["result_0.pt", "result_1.pt"]
    recon_shape, obs_shape = EXPECTED[problem]
    for f in files:
        result = rig.load_result(f)
        assert tuple(result["recon"].shape) == recon_shape
        assert tuple(result["target"].shape)[-3:] == recon_shape[1:]
        assert torch.isfinite(result["recon"]).all()
        if obs_shape is not None:
            assert tuple(result["observation"].shape) == obs_shape
    if problem == "scatter":
        _assert_scatter_recon_fits_data(files)


def _assert_scatter_recon_fits_data(files):
    """LMAPS with k1=0 is data-driven: its relative residual ||A(x) - y|| / ||y|| is far below the
    zero image's (1) and the best constant image's (about 0.5-0.6 on these cells); the truth's is
    about 0.01-0.02 (the noise), a random-prior smoke run's about 0.07-0.11."""
    operator = _upstream("inverse_problems.inverse_scatter").InverseScatter(
        Nx=128, Ny=128, numRec=360, numTrans=20, svd=False, sigma_noise=1e-4, unnorm_shift=1.0,
        unnorm_scale=0.5, device="cpu")
    for f in files:
        result = torch.load(f, map_location="cpu", weights_only=True)
        y = result["observation"]
        # main.py stores recon unnormalized (contrast in [0, 1]); forward(..., unnormalize=False) takes that
        residual = (operator.forward(result["recon"], unnormalize=False) - y).abs().norm()
        assert float(residual / y.abs().norm()) < 0.25
