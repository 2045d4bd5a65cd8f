"""ImageEvaluator and metric helpers against closed forms; InverseBench's evaluator interface."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from lmaps_plugin.evaluation.metrics import ImageEvaluator, lpips_status, measurement_as_image, misfit_rms, psnr, ssim
from lmaps_plugin.operators.linear import RandomInpainting, SuperResolution
from lmaps_plugin.operators.nonlinear import PhaseRetrieval


def smooth_image(seed=0, shape=(1, 1, 32, 32)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 0.6 - 0.3).double()  # inside [-1, 1]: no clipping


def test_psnr_of_a_constant_offset_is_the_closed_form():
    target = smooth_image()
    # an offset of 0.1 in [-1, 1] is 0.05 in [0, 1]: PSNR = -10 log10(0.05²)
    assert psnr(target + 0.1, target).item() == pytest.approx(-10 * math.log10(0.05 ** 2), abs=1e-4)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    target = smooth_image()
    assert ssim(target, target).item() == pytest.approx(1.0, abs=1e-6)
    noisy = target + 0.2 * torch.randn_like(target)
    assert ssim(noisy, target).item() < 0.9


def test_per_sample_metrics_for_several_samples_of_one_target():
    target = smooth_image()
    preds = torch.cat([target + 0.1, target - 0.2])
    values = psnr(preds, target)
    assert values.shape == (2,)
    assert values[1].item() == pytest.approx(-10 * math.log10(0.1 ** 2), abs=1e-4)


def test_misfit_rms_equals_a_known_constant_residual():
    op = RandomInpainting(resolution=32, channels=1)
    x = smooth_image()
    y = op.forward(x) + 0.05  # every measurement entry off by 0.05
    assert misfit_rms(op, x, y).item() == pytest.approx(0.05, rel=1e-9)


def test_evaluator_records_and_computes_inversebench_layout():
    op = RandomInpainting(resolution=32, channels=1)
    evaluator = ImageEvaluator(forward_op=op)
    target = smooth_image()
    for offset in (0.1, 0.2):
        out = evaluator(pred=target + offset, target=target[0], observation=op.forward(target))
        assert set(out) >= {"psnr", "ssim", "misfit_rms", "meas_psnr"}
    expected = [-10 * math.log10((o / 2) ** 2) for o in (0.1, 0.2)]
    summary = evaluator.compute()
    assert summary["psnr"] == pytest.approx(sum(expected) / 2, abs=1e-4)
    assert summary["psnr_std"] == pytest.approx(abs(expected[0] - expected[1]) / 2, abs=1e-4)
    assert evaluator.metric_state["psnr"] == pytest.approx(expected, abs=1e-4)


def test_lpips_is_marked_unavailable_with_a_reason_when_it_cannot_run_offline():
    metric, reason = lpips_status()
    if importlib.util.find_spec("torchvision") is None:
        assert metric is None and reason.startswith("unavailable: ") and "torchvision" in reason
        assert ImageEvaluator().unavailable == {"lpips": reason}
        with pytest.raises(RuntimeError, match="lpips=True"):
            ImageEvaluator(lpips=True)
    else:  # pragma: no cover - environments with torchvision
        assert (metric is None) == bool(reason)
    assert "lpips" not in ImageEvaluator(lpips=False).unavailable


def test_measurement_previews_per_task():
    x = smooth_image(shape=(1, 1, 32, 32)).float()
    sr = SuperResolution(factor=4, resolution=32, channels=1)
    up = measurement_as_image(sr, sr.forward(x), (1, 32, 32))
    assert up.shape == (1, 1, 32, 32)
    inpaint = RandomInpainting(resolution=32, channels=1)
    y = inpaint.forward(x)
    assert torch.equal(measurement_as_image(inpaint, y, (1, 32, 32)), y)
    pr = PhaseRetrieval(resolution=32, channels=1)
    assert measurement_as_image(pr, pr.forward(x), (1, 32, 32)) is None


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="pred"):
        psnr(torch.zeros(8), torch.zeros(8))
    with pytest.raises(ValueError, match="differ"):
        psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="lpips must be"):
        ImageEvaluator(lpips="yes")
