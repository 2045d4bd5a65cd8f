"""Our torch JPEG against independent references: Pillow's libjpeg, scipy's DCT, Annex K."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from PIL import Image
from skimage import data
from torchmetrics.functional.image import peak_signal_noise_ratio

from lmaps_plugin.operators.jpeg import (
    CHROMA_TABLE, JPEG, LUMA_TABLE, dct_blocks, from_blocks, idct_blocks, ijg_scale_table,
    jpeg_codec, jpeg_roundtrip_pixels, pillow_jpeg_roundtrip, quant_tables, rgb_to_ycbcr,
    to_blocks, ycbcr_to_rgb)

QUALITIES = (5, 10, 50)
# Lowest PSNR(ours, Pillow) measured by scripts/jpeg_vs_pillow.py over 10 crops x QF 5/10/50
# was 43.45 dB (a float DCT flips a few near-tie coefficients); 40 dB leaves a margin.
MIN_PSNR_VS_PILLOW = 40.0


def _images() -> dict[str, np.ndarray]:
    astronaut, coffee, chelsea, camera = data.astronaut(), data.coffee(), data.chelsea(), data.camera()
    return {
        "astronaut64": astronaut[100:164, 200:264],
        "astronaut256": astronaut[:256, 128:384],
        "coffee256": coffee[50:306, 100:356],
        "chelsea256": chelsea[20:276, 100:356],
        "chelsea300x451": chelsea,  # not a multiple of 16: exercises MCU padding
        "camera64_gray": camera[200:264, 200:264],
        "camera256_gray": camera[128:384, 128:384],
    }


IMAGES = _images()


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(image).float()
    return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]


def _to_array(t: torch.Tensor, gray: bool) -> np.ndarray:
    t = t[0, 0] if gray else t[0].permute(1, 2, 0)
    return t.to(torch.uint8).numpy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(torch.from_numpy(a).double(),
                                         torch.from_numpy(b).double(), data_range=255.0))


# -- quantization tables -------------------------------------------------------------------
@pytest.mark.parametrize("quality", [1, 5, 10, 25, 50, 75, 95, 100])
def test_quant_tables_equal_pillows(quality):
    rng = np.random.default_rng(quality)
    image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    _, tables = pillow_jpeg_roundtrip(image, quality)
    luma, chroma = quant_tables(quality)
    assert tables[0] == luma.to(torch.int64).flatten().tolist()
    assert tables[1] == chroma.to(torch.int64).flatten().tolist()


def test_ijg_scaling_closed_forms():
    luma = torch.tensor(LUMA_TABLE)
    chroma = torch.tensor(CHROMA_TABLE)
    # QF 50: scale 100 %, the Annex K tables themselves.
    assert torch.equal(ijg_scale_table(LUMA_TABLE, 50), luma)
    # QF 100: scale 0 -> floor(50/100) = 0 -> clamped to 1.
    assert torch.equal(ijg_scale_table(CHROMA_TABLE, 100), torch.ones(8, 8, dtype=torch.int64))
    # QF 5: scale 1000 % -> 10·T, capped at 255 (baseline).
    assert torch.equal(ijg_scale_table(LUMA_TABLE, 5), (10 * luma).clamp(max=255))
    # QF 10: scale 500 % -> 5·T capped; QF 75: scale 50 % -> floor((T+1)/2).
    assert torch.equal(ijg_scale_table(CHROMA_TABLE, 10), (5 * chroma).clamp(max=255))
    assert torch.equal(ijg_scale_table(LUMA_TABLE, 75), (luma + 1) // 2)


@pytest.mark.parametrize("quality", [0, 101, 5.5, True])
def test_bad_quality_is_rejected(quality):
    with pytest.raises(ValueError, match="quality must be an integer in 1..100"):
        JPEG(quality=quality)


def test_bad_channel_count_is_rejected():
    with pytest.raises(ValueError, match=r"\(batch, 1 or 3, H, W\)"):
        JPEG().forward(torch.zeros(1, 2, 16, 16))


# -- stages --------------------------------------------------------------------------------
def test_dct_blocks_match_scipy_orthonormal_dct():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    ours = dct_blocks(to_blocks(x))
    ref = scipy.fft.dctn(to_blocks(x).numpy(), type=2, norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)
    torch.testing.assert_close(from_blocks(idct_blocks(ours)), x, atol=1e-12, rtol=0)


def test_colour_transform_matches_pillow_and_round_trips():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(rgb).convert("YCbCr")).astype(np.float64)
    ours = rgb_to_ycbcr(torch.from_numpy(rgb).double().permute(2, 0, 1)).permute(1, 2, 0)
    assert np.abs(ours.numpy() - pillow).max() <= 1.0  # Pillow rounds to 8-bit levels
    back = ycbcr_to_rgb(rgb_to_ycbcr(torch.from_numpy(rgb).double().permute(2, 0, 1)))
    np.testing.assert_allclose(back.permute(1, 2, 0).numpy(), rgb, atol=1e-9)


# -- the codec against Pillow --------------------------------------------------------------
@pytest.mark.parametrize("quality", QUALITIES)
@pytest.mark.parametrize("name", list(IMAGES))
def test_codec_matches_pillow(name, quality):
    image = IMAGES[name]
    gray = image.ndim == 2
    reference, _ = pillow_jpeg_roundtrip(image, quality)
    ours = _to_array(jpeg_roundtrip_pixels(_to_tensor(image), quality), gray)
    assert ours.shape == image.shape
    assert _psnr(ours, reference) > MIN_PSNR_VS_PILLOW
    # Both codecs lose the same amount of fidelity to the original.
    assert abs(_psnr(ours, image) - _psnr(reference, image)) < 0.1


def test_operator_on_unit_range_batch_matches_pillow_per_image():
    names = ["astronaut64", "astronaut256"]
    crops = [IMAGES[n][:64, :64] for n in names]
    x = torch.cat([_to_tensor(c) for c in crops]) / 127.5 - 1.0
    op = JPEG(quality=10)
    out = op.forward(x)
    assert out.shape == x.shape
    levels = (out + 1.0) * 127.5
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # on the 8-bit grid
    for i, crop in enumerate(crops):
        # batch independence: image i coded alone gives the same result
        torch.testing.assert_close(out[i:i + 1], op.forward(x[i:i + 1]), atol=0, rtol=0)
        reference, _ = pillow_jpeg_roundtrip(crop, 10)
        assert _psnr(_to_array(levels[i:i + 1].round(), False), reference) > MIN_PSNR_VS_PILLOW


def test_codec_clamps_and_rounds_out_of_range_inputs_like_an_8bit_encoder():
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    wild = x.clone()
    wild[..., :8, :8] = 3.0  # beyond white: an 8-bit encoder sees 255
    clipped = wild.clamp(-1, 1)
    torch.testing.assert_close(jpeg_codec(wild, 5), jpeg_codec(clipped, 5), atol=0, rtol=0)
