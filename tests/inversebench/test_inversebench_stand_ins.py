"""The piq/torchvision stand-ins used while importing InverseBench modules.

References are independent: closed-form PSNR, scikit-image's SSIM (Gaussian weights, the
definition piq implements), PIL's antialiased bilinear resize (which torchvision's tensor
resize is designed to match), and explicit index arithmetic for crop/pad.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import structural_similarity

from lmaps_plugin.inversebench import stand_ins

UNUSABLE = stand_ins.unusable_optional_packages()


def skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """scikit-image SSIM of two (1, H, W) images in [0, 1], piq's settings."""
    return structural_similarity(x[0].numpy(), y[0].numpy(), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0)


def noisy_pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(*shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


def test_psnr_closed_form():
    x = torch.full((3, 1, 8, 8), 0.5)
    offsets = torch.tensor([0.1, 0.01, 0.2]).view(3, 1, 1, 1)
    values = stand_ins.psnr(x + offsets, x, data_range=1.0, reduction="none")
    expected = -10 * torch.log10(offsets.flatten() ** 2 + 1e-8)
    torch.testing.assert_close(values, expected)
    assert stand_ins.psnr(x + offsets, x).item() == pytest.approx(expected.mean().item(), rel=1e-6)
    # data_range rescales both images: an offset of 2 on a range of 20 is 20 dB
    assert stand_ins.psnr(x * 20 + 2, x * 20, data_range=20.0, reduction="none")[0].item() == pytest.approx(20.0, abs=1e-4)


@pytest.mark.parametrize("shape", [(2, 1, 48, 40), (1, 1, 64, 64)])
def test_ssim_matches_scikit_image(shape):
    x, y = noisy_pair(shape)
    ours = stand_ins.ssim(x, y, data_range=1.0, reduction="none")
    reference = torch.tensor([skimage_ssim(x[i], y[i]) for i in range(shape[0])], dtype=torch.float64)
    torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)


def test_ssim_of_colour_image_is_mean_over_channels():
    x, y = noisy_pair((1, 3, 32, 32), seed=1)
    per_channel = [skimage_ssim(x[:, c], y[:, c]) for c in range(3)]
    assert stand_ins.ssim(x, y).item() == pytest.approx(float(np.mean(per_channel)), abs=1e-10)


def test_ssim_downsamples_large_images_like_piq():
    x, y = noisy_pair((1, 1, 520, 520), seed=2)  # round(520/256) = 2: average-pool by 2 first
    reference = skimage_ssim(F.avg_pool2d(x, 2)[0], F.avg_pool2d(y, 2)[0])
    assert stand_ins.ssim(x, y).item() == pytest.approx(reference, abs=1e-10)


def test_ssim_loss_and_identity():
    x, y = noisy_pair((2, 1, 32, 32), seed=3)
    assert stand_ins.ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    loss = stand_ins.SSIMLoss(data_range=1.0)(x, y)
    assert loss.item() == pytest.approx(1.0 - stand_ins.ssim(x, y).item(), abs=1e-12)


def test_lpips_refuses_clearly():
    with pytest.raises(stand_ins.MissingOptionalDependency, match="LPIPS needs the real piq"):
        stand_ins.LPIPS(replace_pooling=True, reduction="none")


def test_resize_matches_pil_bilinear_antialias():
    img = torch.rand(1, 37, 53, generator=torch.Generator().manual_seed(4))
    ours = stand_ins.resize(img, (16, 20), antialias=True)
    pil = np.asarray(Image.fromarray(img[0].numpy(), mode="F").resize((20, 16), Image.BILINEAR))
    np.testing.assert_allclose(ours[0].numpy(), pil, atol=1e-5)


def test_resize_int_sets_shorter_edge_and_same_size_is_identity():
    img = torch.rand(2, 1, 30, 45, dtype=torch.float64)
    assert stand_ins.resize(img, 20).shape == (2, 1, 20, 30)
    assert stand_ins.resize(img.transpose(-1, -2), 20).shape == (2, 1, 30, 20)
    assert stand_ins.resize(img, (30, 45)) is img


def test_center_crop_and_pad_positions():
    img = torch.arange(7 * 9, dtype=torch.float32).view(1, 7, 9)
    crop = stand_ins.center_crop(img, 3)
    top, left = round((7 - 3) / 2), round((9 - 3) / 2)
    torch.testing.assert_close(crop, img[:, top:top + 3, left:left + 3])
    padded = stand_ins.pad(img, (1, 2, 3, 4))  # left, top, right, bottom
    assert padded.shape == (1, 7 + 2 + 4, 9 + 1 + 3)
    torch.testing.assert_close(padded[:, 2:9, 1:10], img)
    assert padded.sum() == img.sum()


@pytest.mark.parametrize("pred_dtype, target_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)])
def test_ssim_of_mixed_dtypes_runs_in_the_promoted_dtype(pred_dtype, target_dtype):
    """A float64 reconstruction against a float32 target (inverse scattering at 128²) is scored, in float64,
    as the float64 pair is: the window is built in the inputs' promoted dtype, on their device."""
    x, y = noisy_pair((2, 1, 128, 128), seed=4)
    got = stand_ins.ssim(x.to(pred_dtype), y.to(target_dtype), data_range=1.0, reduction="none")
    assert got.dtype == torch.float64
    want = stand_ins.ssim(x.to(pred_dtype).double(), y.to(target_dtype).double(), data_range=1.0, reduction="none")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    loss = stand_ins.SSIMLoss(data_range=1.0)(x.to(pred_dtype), y.to(target_dtype))
    assert loss.item() == pytest.approx(1.0 - want.mean().item(), abs=1e-12)


def test_metric_backend_names_the_stand_in_once_an_import_got_it(monkeypatch):
    monkeypatch.setattr(stand_ins, "_piq_backend", None)
    monkeypatch.setattr(stand_ins, "unusable_optional_packages", lambda: frozenset({"piq", "torchvision"}))
    assert stand_ins.metric_backend() == stand_ins.STAND_IN_BACKEND   # nothing imported yet: what one would get
    with stand_ins.optional_dependency_stand_ins():
        assert "stand-in" in importlib.import_module("piq").__doc__
    monkeypatch.setattr(stand_ins, "unusable_optional_packages", lambda: frozenset())
    assert stand_ins.metric_backend() == stand_ins.STAND_IN_BACKEND   # what the imported modules hold


def test_metric_backend_names_piq_when_the_imports_got_the_real_one(monkeypatch):
    monkeypatch.setattr(stand_ins, "_piq_backend", None)
    monkeypatch.setattr(stand_ins, "unusable_optional_packages", lambda: frozenset())
    assert stand_ins.metric_backend() == "piq"
    monkeypatch.setitem(sys.modules, "piq", types.ModuleType("piq"))
    with stand_ins.optional_dependency_stand_ins():
        pass
    monkeypatch.setattr(stand_ins, "unusable_optional_packages", lambda: frozenset({"piq"}))
    assert stand_ins.metric_backend() == "piq"


@pytest.mark.skipif(not UNUSABLE, reason="piq and torchvision are both installed: nothing is stood in for")
def test_stand_ins_exist_only_inside_the_block():
    name = sorted(UNUSABLE)[0]
    with stand_ins.optional_dependency_stand_ins() as stood_in:
        assert name in stood_in
        module = importlib.import_module(name)
        assert "stand-in" in module.__doc__
        if name == "torchvision":
            functional = importlib.import_module("torchvision.transforms.functional")
            assert functional.resize is stand_ins.resize
    assert name not in sys.modules
    assert importlib.util.find_spec(name) is None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)


# ------------------------------------------------------------------ installed but broken piq / torchvision
def _broken_packages(root):
    """What `pip install --no-deps piq` leaves without a working torchvision: a piq that imports torchvision's
    models, and a torchvision that is only a folder (a namespace package: 'unknown location')."""
    (root / "torchvision").mkdir()
    (root / "piq").mkdir()
    (root / "piq" / "__init__.py").write_text("from torchvision import models\n")
    return root


def test_stand_ins_apply_when_installed_packages_fail_to_import(tmp_path, monkeypatch):
    """find_spec finds both packages, yet neither imports ("cannot import name 'models' from 'torchvision'
    (unknown location)"): both count as unusable and are stood in for."""
    monkeypatch.syspath_prepend(str(_broken_packages(tmp_path)))
    for name in [m for m in sys.modules if m.split(".")[0] in ("piq", "torchvision")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    assert importlib.util.find_spec("piq") is not None and importlib.util.find_spec("torchvision") is not None
    with pytest.raises(ImportError, match="cannot import name 'models'"):
        importlib.import_module("piq")
    assert stand_ins.unusable_optional_packages() == {"piq", "torchvision"}
    left = {m: sys.modules[m] for m in sys.modules if m.split(".")[0] in ("piq", "torchvision")}
    with stand_ins.optional_dependency_stand_ins() as stood_in:
        assert stood_in == {"piq", "torchvision"}
        piq = importlib.import_module("piq")
        assert piq.psnr is stand_ins.psnr and "stand-in" in piq.__doc__
        functional = importlib.import_module("torchvision.transforms.functional")
        assert functional.resize is stand_ins.resize
    # afterwards: no stand-in left, and exactly what the failed import had left (the namespace torchvision)
    assert {m: sys.modules[m] for m in sys.modules if m.split(".")[0] in ("piq", "torchvision")} == left


def test_a_broken_module_already_imported_is_hidden_during_the_block_and_restored(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_broken_packages(tmp_path)))
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m.split(".")[0] in ("piq", "torchvision")]:
        monkeypatch.delitem(sys.modules, name)
    broken = importlib.import_module("torchvision")  # the namespace package imports, its models do not
    with stand_ins.optional_dependency_stand_ins():
        assert importlib.import_module("torchvision.transforms.functional").pad is stand_ins.pad
        assert sys.modules["torchvision"] is not broken and "stand-in" in sys.modules["torchvision"].__doc__
    assert sys.modules["torchvision"] is broken
    monkeypatch.delitem(sys.modules, "torchvision")


@pytest.mark.slow
@pytest.mark.inversebench
@pytest.mark.skipif(not __import__("os").environ.get("INVERSEBENCH_ROOT"), reason="INVERSEBENCH_ROOT is not set")
def test_inversebench_modules_import_next_to_broken_piq_and_torchvision(tmp_path):
    """The modules behind problem=blackhole-fixed and multi-coil-mri-knee-lmdb-fixed (operator, dataset, evaluator)
    import in a fresh interpreter whose piq/torchvision are installed but broken."""
    import os
    import subprocess

    code = ("from lmaps_plugin.inversebench import import_upstream\n"
            "from lmaps_plugin.inversebench import stand_ins\n"
            "for m in ('inverse_problems.blackhole', 'inverse_problems.multi_coil_mri', 'training.dataset', 'eval'):\n"
            "    import_upstream(m, 'test')\n"
            "import sys\n"
            "assert sys.modules['inverse_problems.blackhole'].psnr is stand_ins.psnr\n"
            "assert stand_ins.metric_backend() == stand_ins.STAND_IN_BACKEND\n"
            "print('imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_broken_packages(tmp_path)),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-3000:]
