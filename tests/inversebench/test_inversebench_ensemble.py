"""Ensemble metrics of our ``*-fixed`` InverseBench evaluators (``num_samples = M >= 2`` in stock main.py).

* Fast, on synthetic stacks with closed-form answers: M = 4 samples ``truth + c_p + d·s_{m,p}`` where
  every pixel's signs s are a permutation of (+1, +1, -1, -1). The ensemble mean is then exactly
  ``truth + c``, the unbiased std ``d·√(4/3)``, the predictive 90 % interval ``mean ± t_3(0.95)·√(5/4)·std``
  (half-width 0.0608 at d = 0.02) and the quantile interval ``[mean - d, mean + d]``. With c = 0.01 on a
  quarter of the pixels (inside both), 0.04 on a quarter (inside the predictive one only) and 0.08 on
  half (outside both): coverage_90 = 0.5, coverage_90_quantile = 0.25,
  z2_mean = mean(c²) / (d²·5/3) · (M-3)/(M-1) = 1.8125 and ensemble PSNR = -10·log10(mean(c²)).
  Scattering takes the stack as it is, MRI on magnitudes (complex samples with random phases), the black
  hole after aligning each sample to the truth.
* Stock ``main.py problem=multi-coil-mri-knee-lmdb-fixed algorithm=lmaps num_samples=4`` on a 32²
  synthetic set with a random-weight prior writes the keys to metrics.json, and their values agree with
  the ones recomputed here from the saved reconstructions (about 6 s: data, prior and main.py).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from ib_helpers import load_script
from lmaps_plugin import inversebench as ib
from lmaps_plugin.evaluation.metrics import ImageEvaluator
from lmaps_plugin.inversebench import stand_ins

ROOT = os.environ.get("INVERSEBENCH_ROOT")

pytestmark = [
    pytest.mark.inversebench,
    pytest.mark.skipif(not ROOT, reason="INVERSEBENCH_ROOT is not set"),
]

M, D, SIZE = 4, 0.02, 16
OFFSETS = (0.01, 0.04, 0.08, 0.08)         # c per quarter of the pixels
MEAN_C2 = sum(c * c for c in OFFSETS) / 4  # 0.003625
EXPECTED = {"ensemble_size": 4, "coverage_90": 0.5, "coverage_90_quantile": 0.25,
            "z2_mean": MEAN_C2 / (D * D * 5 / 3) / 3, "std_mean": D * math.sqrt(4 / 3),
            "ensemble_psnr": -10 * math.log10(MEAN_C2)}
ENSEMBLE_KEYS = {"ensemble_size", "std_mean", "coverage_90", "coverage_90_quantile", "z2_mean"}


def offsets_and_signs(shape, seed=0):
    """c (one sample's shape) and s (M, shape): c by quarters of the flattened pixels, s a random
    per-pixel permutation of (+1, +1, -1, -1)."""
    n = math.prod(shape)
    c = torch.tensor(OFFSETS, dtype=torch.float64).repeat_interleave(n // 4)
    g = torch.Generator().manual_seed(seed)
    s = torch.stack([torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)[torch.randperm(M, generator=g)]
                     for _ in range(n)], dim=1)
    return c.reshape(shape), s.reshape(M, *shape)


def smooth_truth(shape, seed=1, low=0.3, high=0.6):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, dtype=torch.float64, generator=g)


def assert_expected(metrics, scale=1.0):
    for key, value in EXPECTED.items():
        want = value * scale if key == "std_mean" else value
        tolerance = 1e-4 if key == "ensemble_psnr" else 1e-9   # PSNR: piq adds 1e-8 to the MSE
        assert metrics[key] == pytest.approx(want, rel=1e-6, abs=tolerance), key


# ------------------------------------------------------------------------------------- scattering
def test_scattering_ensemble_keys_have_closed_form_values(tmp_path):
    truth = smooth_truth((1, 1, SIZE, SIZE))
    c, s = offsets_and_signs((1, SIZE, SIZE))
    samples = truth + c + D * s
    evaluator = ib.InverseScatterEvaluator(metrics_dir=str(tmp_path))
    metrics = evaluator(pred=samples, target=truth, observation=None)
    assert_expected(metrics)
    # ensemble_ssim: the evaluator's own SSIM of the known mean, as one sample
    one = ib.InverseScatterEvaluator()(pred=truth + c, target=truth)
    assert metrics["ensemble_ssim"] == pytest.approx(one["ssim"], rel=1e-6)
    assert metrics["ensemble_psnr"] == pytest.approx(one["psnr"], rel=1e-6)
    # the per-sample keys stay upstream's mean over samples
    singles = [ib.InverseScatterEvaluator()(pred=samples[i:i + 1], target=truth)["psnr"] for i in range(M)]
    assert metrics["psnr"] == pytest.approx(sum(singles) / M, rel=1e-6)
    assert metrics["ensemble_psnr"] > max(singles)     # the mean averages the ±d out

    # a second image with c halved (PSNR +6.02 dB, z2 / 4): metrics.json carries both and their means
    second = evaluator(pred=truth + c / 2 + D * s, target=truth)
    assert second["ensemble_psnr"] == pytest.approx(EXPECTED["ensemble_psnr"] + 20 * math.log10(2), abs=1e-4)
    evaluator.compute()
    payload = json.loads((tmp_path / "metrics.json").read_text())
    per_image = payload["per_sample"]
    assert per_image["ensemble_psnr"] == pytest.approx([metrics["ensemble_psnr"], second["ensemble_psnr"]])
    assert per_image["z2_mean"] == pytest.approx([EXPECTED["z2_mean"], EXPECTED["z2_mean"] / 4])
    assert payload["summary"]["ensemble_psnr"] == pytest.approx(EXPECTED["ensemble_psnr"] + 10 * math.log10(2), abs=1e-4)
    assert payload["summary"]["ensemble_psnr_std"] == pytest.approx(10 * math.log10(2), abs=1e-4)
    assert payload["summary"]["ensemble_size"] == M


def test_one_sample_output_is_upstreams(tmp_path):
    truth = smooth_truth((1, 1, SIZE, SIZE))
    evaluator = ib.InverseScatterEvaluator(metrics_dir=str(tmp_path))
    upstream = ib.import_upstream("eval", "test").InverseScatter()
    pred = truth + 0.03
    assert evaluator(pred=pred, target=truth) == upstream(pred, truth)
    evaluator.compute()
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert set(payload["per_sample"]) == {"psnr", "ssim"}
    assert set(payload["summary"]) == {"psnr", "psnr_std", "ssim", "ssim_std"}
    assert payload["metric_backend"] == stand_ins.metric_backend() in ("piq", stand_ins.STAND_IN_BACKEND)


@pytest.mark.skipif(stand_ins.metric_backend() == stand_ins.PIQ_BACKEND, reason="scores with piq, not the stand-in")
def test_scattering_evaluator_scores_a_float64_reconstruction_of_a_float32_truth(tmp_path):
    """main.py hands the evaluator float64 reconstructions (the Born forward runs in float64) and float32
    targets; at 128² (SSIM past its downsampling threshold too) both metrics are finite and equal those of the
    float64 pair."""
    truth = smooth_truth((1, 1, 128, 128))
    pred = (truth + 0.03).double()
    metrics = ib.InverseScatterEvaluator(metrics_dir=str(tmp_path))(pred=pred, target=truth.float())
    same = ib.InverseScatterEvaluator()(pred=pred, target=truth.double())
    assert metrics == pytest.approx(same, rel=1e-6) and all(math.isfinite(v) for v in metrics.values())


def test_three_samples_leave_z2_undefined(tmp_path):
    truth = smooth_truth((1, 1, SIZE, SIZE))
    evaluator = ib.InverseScatterEvaluator(metrics_dir=str(tmp_path))
    metrics = evaluator(pred=truth + 0.02 * torch.randn(3, 1, SIZE, SIZE, dtype=torch.float64), target=truth)
    assert metrics["ensemble_size"] == 3 and math.isnan(metrics["z2_mean"])
    evaluator.compute()
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["z2_mean"] is None


# ----------------------------------------------------------------------------------- image problems
def test_image_evaluator_for_main_py_writes_its_ensemble_keys(tmp_path):
    """Our image problems' evaluator, in [-1, 1]: the keys are in [0, 1] units ((x + 1)/2, the app's)."""
    truth = smooth_truth((1, 3, SIZE, SIZE))
    c, s = offsets_and_signs((3, SIZE, SIZE))
    evaluator = ib.ImageEvaluator(ImageEvaluator, metrics_dir=str(tmp_path), lpips=False)
    metrics = evaluator(pred=2 * (truth + c + D * s) - 1, target=2 * truth - 1)
    assert_expected(metrics)
    assert metrics["psnr"] < metrics["ensemble_psnr"]
    evaluator.compute()
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["metric_backend"] == "lmaps_plugin.evaluation.metrics.ImageEvaluator"
    assert payload["summary"]["coverage_90"] == pytest.approx(0.5)
    assert payload["per_sample"]["ensemble_size"] == [M]
    one = ib.ImageEvaluator("lmaps_plugin.evaluation.metrics.ImageEvaluator", lpips=False)(pred=2 * (truth + c) - 1, target=2 * truth - 1)
    assert one == {k: v for k, v in one.items() if k in ("psnr", "ssim")}   # M = 1: no ensemble keys


# -------------------------------------------------------------------------------------------- MRI
def dynamic_range_psnr(pred_mag: torch.Tensor, target_mag: torch.Tensor) -> float:
    """eval.MRI's PSNR, written out: magnitudes, prediction clipped to [0, max|target|], data range max|target|."""
    peak = target_mag.max()
    return float(-10 * torch.log10(((pred_mag.clip(0, peak) - target_mag) / peak).square().mean()))


def as_channels(z: torch.Tensor) -> torch.Tensor:
    """(N, H, W) complex -> (N, 2, H, W) real (InverseBench's layout)."""
    return torch.view_as_real(z).permute(0, 3, 1, 2).contiguous()


def test_mri_ensemble_is_taken_on_magnitudes():
    g = torch.Generator().manual_seed(5)
    truth = torch.randn(1, SIZE, SIZE, dtype=torch.complex128, generator=g)
    c, s = offsets_and_signs((SIZE, SIZE))
    phases = torch.exp(1j * 2 * math.pi * torch.rand(M, SIZE, SIZE, dtype=torch.float64, generator=g))
    samples = truth * (1 + c + D * s) * phases       # |sample| = |truth|·(1 + c + d·s)
    evaluator = ib.MRIEvaluator()
    metrics = evaluator(pred=as_channels(samples), target=as_channels(truth))
    # relative to |truth| per pixel, so the closed forms hold with z2, coverages unchanged and the std scaled
    magnitude = truth.abs()
    for key in ("ensemble_size", "coverage_90", "coverage_90_quantile", "z2_mean"):
        assert metrics[key] == pytest.approx(EXPECTED[key], rel=1e-6), key
    assert metrics["std_mean"] == pytest.approx(float((magnitude * D * math.sqrt(4 / 3)).mean()), rel=1e-6)
    mean_magnitude = magnitude * (1 + c)
    assert metrics["ensemble_psnr"] == pytest.approx(dynamic_range_psnr(mean_magnitude, magnitude), abs=1e-4)
    one = ib.MRIEvaluator()(pred=as_channels(mean_magnitude.to(torch.complex128)), target=as_channels(truth))
    assert metrics["ensemble_ssim"] == pytest.approx(one["ssim"], rel=1e-6)
    # |mean of the complex samples| would be far off (random phases cancel)
    complex_mean = samples.mean(0, keepdim=True).abs()
    assert metrics["ensemble_psnr"] > dynamic_range_psnr(complex_mean, magnitude) + 3


# ------------------------------------------------------------------------------------- black hole
class ShiftedBlackHole:
    """A stand-in operator: the truth is only known up to a circular shift; ``aligned_images``
    finds each sample's integer shift by exhaustive search (best PSNR against ``image1``)."""

    device = "cpu"

    @staticmethod
    def aligned_images(image1, image2):
        shifts = [(i, j) for i in range(-3, 4) for j in range(-3, 4)]
        out = []
        for reference, image in zip(image1, image2):
            errors = [float((torch.roll(image, k, dims=(-2, -1)) - reference).square().mean()) for k in shifts]
            out.append(torch.roll(image, shifts[errors.index(min(errors))], dims=(-2, -1)))
        return torch.stack(out).clip(0, 1)

    def evaluate_psnr(self, target, pred, blur_factors):
        aligned = self.aligned_images(target, pred)
        mse = (aligned - target.clip(0, 1)).square().flatten(1).mean(1)
        return (-10 * torch.log10(mse))[:, None].repeat(1, 1 + len(blur_factors))

    def evaluate_chisq(self, pred, observation, normalize):
        flux = pred.flatten(1).sum(1)
        return flux, 2 * flux


def test_black_hole_ensemble_aligns_each_sample_to_the_truth():
    truth = smooth_truth((1, 1, SIZE, SIZE), low=0.1, high=0.9)
    c, s = offsets_and_signs((1, SIZE, SIZE))
    shifts = [(0, 0), (1, 2), (-3, 1), (2, -2)]
    samples = torch.stack([torch.roll(truth[0] + c + D * s[m], shifts[m], dims=(-2, -1)) for m in range(M)])
    evaluator = ib.BlackHoleEvaluator(forward_op=ShiftedBlackHole())
    metrics = evaluator(pred=samples, target=truth, observation=torch.zeros(1, 3))
    assert_expected(metrics)
    for f in (10, 15, 20):
        assert metrics[f"ensemble_blur_psnr (f={f})"] == pytest.approx(EXPECTED["ensemble_psnr"], abs=1e-4)
    # the closure χ² of the aligned mean (the stand-in's χ² is the flux)
    assert metrics["ensemble_cp_chi2"] == pytest.approx(float((truth + c).sum()), rel=1e-9)
    assert metrics["ensemble_camp_chi2"] == pytest.approx(2 * float((truth + c).sum()), rel=1e-9)
    # the plain mean of the shifted samples is blurred: its PSNR is far below the aligned mean's
    plain_mean_mse = float((samples.mean(0, keepdim=True) - truth).square().mean())
    assert -10 * math.log10(plain_mean_mse) < EXPECTED["ensemble_psnr"] - 5


# ------------------------------------------------------------------- stock main.py, num_samples=4
@pytest.fixture(scope="module")
def mri_rig(tmp_path_factory):
    """A 32², 4-coil MRI test set of one image and a random-weight prior for it."""
    work = tmp_path_factory.mktemp("ib-ensemble")
    data = load_script("make_inversebench_data").main(
        ["--out", str(work / "data"), "--problems", "mri", "--num-test", "1", "--num-train", "0",
         "--mri-size", "32", "--mri-coils", "4"])
    ckpt = load_script("make_inversebench_ckpt").main(
        ["--out", str(work / "ckpt"), "--ib-root", ROOT, "--problems", "mri", "--mri-size", "32",
         "--model-channels", "16"])
    return work, data, ckpt


def test_stock_main_writes_ensemble_metrics(mri_rig):
    from lmaps_plugin.ensemble import coverage, z2_mean

    work, data, ckpt = mri_rig
    rig = load_script("run_inversebench_compare")
    exp_dir = work / "runs"
    extra = ["num_samples=4", "algorithm.method.num_steps=4", "algorithm.method.inner_steps=3",
             "algorithm.method.lr=0.01", "algorithm.method.k1=0.0", "algorithm.method.k2=100.0"]
    command = rig.main_py_command("mri", "lmaps", data, ckpt, exp_dir, exp_name="ensemble", extra=extra)
    run = rig.run_main(Path(ROOT), command, "mri", "lmaps", exp_dir, exp_name="ensemble", timeout=600)
    assert run.returncode == 0, run.log_tail
    payload = json.loads((run.result_dir / "metrics.json").read_text())
    assert payload["complete"]
    (result_file,) = rig.result_files(run.result_dir)
    result = rig.load_result(result_file)
    recon, target = result["recon"].double(), result["target"].double()
    assert recon.shape == (4, 2, 32, 32)

    magnitudes = torch.linalg.vector_norm(recon, dim=1, keepdim=True)
    truth = torch.linalg.vector_norm(target.reshape(1, 2, 32, 32), dim=1, keepdim=True)
    recomputed = {
        "ensemble_size": 4,
        "ensemble_psnr": rig.plain_psnr("mri", magnitudes.mean(0, keepdim=True), target),
        "std_mean": float(magnitudes.std(0).mean()),
        "coverage_90": coverage(magnitudes, truth[0]),
        "coverage_90_quantile": coverage(magnitudes, truth[0], method="quantile"),
        "z2_mean": z2_mean(magnitudes, truth[0]),
    }
    summary, per_image = payload["summary"], payload["per_sample"]
    # the counted cost LMAPS published for this observation: 4 network calls (one per step, the batch holds the
    # 4 samples); K = 3 gradients per step, plus the step guard's power iteration (20 Gram products)
    assert per_image["nfe"] == [4] and per_image["vjp_calls"][0] >= 4 * 3 + 20
    assert per_image["network_seconds"][0] > 0 and per_image["forward_calls"][0] >= 2 * 4
    for key, value in recomputed.items():
        assert per_image[key] == pytest.approx([value], rel=1e-4, abs=1e-4), key
        assert summary[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
        assert summary[f"{key}_std"] == 0.0
    assert 0 <= summary["ensemble_ssim"] <= 1 and math.isfinite(summary["ensemble_ssim"])
    # the per-sample keys are still upstream's mean over the 4 samples
    singles = [rig.plain_psnr("mri", recon[i:i + 1], target) for i in range(4)]
    assert summary["psnr"] == pytest.approx(sum(singles) / 4, abs=1e-3)
