"""The JPEG codec: a real encode-decode (baseline, 4:2:0, standard tables, IJG quality scaling) in torch.

It depends on torch alone, below both the JPEG operator (:mod:`lmaps_plugin.operators.jpeg`) and
the surrogates (:mod:`lmaps_plugin.operators.surrogates`), so neither imports the other. The codec is
written as small pure stages so that the structured surrogate
(:func:`lmaps_plugin.operators.surrogates.jpeg_linear`) reuses exactly the same code with the rounding
switched off:

==========================  ====================================================================
stage                       function
==========================  ====================================================================
[-1, 1] <-> [0, 255]        :func:`to_pixels`, :func:`from_pixels`
colour transform (JFIF)     :func:`rgb_to_ycbcr`, :func:`ycbcr_to_rgb`
4:2:0 chroma subsampling    :func:`subsample_chroma` (2x2 mean), :func:`upsample_chroma`
                            (libjpeg's "fancy" triangular upsampling = bilinear, half-pixel centres)
MCU padding                 :func:`pad_to_multiple` (edge replication), cropped back afterwards
8x8 blocks, DCT-II          :func:`to_blocks`, :func:`from_blocks`, :func:`dct_blocks`,
                            :func:`idct_blocks` (orthonormal, i.e. JPEG's FDCT/IDCT exactly)
quantization tables         :data:`LUMA_TABLE`, :data:`CHROMA_TABLE` (ITU-T T.81 Annex K),
                            :func:`ijg_scale_table`, :func:`quant_tables`
quantization                :func:`round_half_away` on coefficient / table, then times table
whole codec                 :func:`jpeg_roundtrip_pixels` ([0, 255]), :func:`jpeg_codec` ([-1, 1])
==========================  ====================================================================

With ``rounding=True`` (the real codec) every rounding of the pipeline is applied: the 8-bit
sample buffers (input RGB, colour-converted Y/Cb/Cr, decoded planes, output RGB) are clamped
to [0, 255] and rounded, and DCT coefficients are rounded to multiples of the quantization
table (half away from zero, like libjpeg). With ``rounding=False`` each of those roundings
-- and the clamps to the 8-bit range that come with them -- is replaced by the identity, and
the map becomes *linear* in ``x`` (the level shifts and colour offsets cancel, and the
quantization division and multiplication cancel): it is the colour transform with 4:2:0
chroma resampling.

A float DCT and float colour arithmetic are used where libjpeg uses fixed-point integer
arithmetic. Against Pillow's libjpeg-turbo (same quality, 4:2:0) on scikit-image photos the
decoded images agree to 43-74 dB PSNR at QF 5, 10 and 50 (differences come from the few
coefficients that sit near a rounding tie); ``scripts/jpeg_vs_pillow.py`` prints the table and
``tests/operators/test_jpeg.py`` checks it.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "LUMA_TABLE", "CHROMA_TABLE", "RGB_TO_YCBCR", "YCBCR_OFFSET",
    "to_pixels", "from_pixels", "rgb_to_ycbcr", "ycbcr_to_rgb",
    "subsample_chroma", "upsample_chroma", "pad_to_multiple",
    "to_blocks", "from_blocks", "dct_matrix", "dct_blocks", "idct_blocks",
    "ijg_quality_scale", "ijg_scale_table", "quant_tables", "round_half_away",
    "quantize_blocks", "jpeg_roundtrip_pixels", "jpeg_codec", "pillow_jpeg_roundtrip", "check_quality",
]

#: ITU-T T.81 Annex K.1, luminance quantization table (natural, row-major order).
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)

#: ITU-T T.81 Annex K.2, chrominance quantization table (natural, row-major order).
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

#: JFIF (full-range BT.601) RGB -> YCbCr matrix; YCbCr = M @ RGB + offset.
RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
#: Offset added to (Y, Cb, Cr) after the matrix.
YCBCR_OFFSET = (0.0, 128.0, 128.0)

_BLOCK = 8


# -- value range ---------------------------------------------------------------------------
def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] to the 8-bit pixel scale [0, 255] (no clamping, no rounding)."""
    return (x + 1.0) * 127.5


def from_pixels(p: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_pixels`."""
    return p / 127.5 - 1.0


def _to_uint8_levels(p: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 255] and round to integer levels (what an 8-bit sample stores)."""
    return round_half_away(p.clamp(0.0, 255.0))


# -- colour --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _colour_matrices(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(M, offset, M⁻¹) in ``dtype`` on ``device``; M⁻¹ is inverted in float64 once."""
    m = torch.tensor(RGB_TO_YCBCR, dtype=torch.float64)
    b = torch.tensor(YCBCR_OFFSET, dtype=torch.float64)
    m_inv = torch.linalg.inv(m)
    return tuple(t.to(device=device, dtype=dtype) for t in (m, b, m_inv))


def _mix_channels(matrix: torch.Tensor, planes: torch.Tensor) -> torch.Tensor:
    """``matrix @ planes`` over the channel axis of ``(..., 3, H, W)`` (one batched GEMM)."""
    flat = planes.reshape(-1, planes.shape[-3], planes.shape[-2] * planes.shape[-1])
    return torch.matmul(matrix, flat).reshape(planes.shape)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """JFIF RGB -> YCbCr on ``(..., 3, H, W)`` tensors in [0, 255]."""
    m, b, _ = _colour_matrices(rgb.dtype, rgb.device)
    return _mix_channels(m, rgb) + b[:, None, None]


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """JFIF YCbCr -> RGB, the exact inverse of :func:`rgb_to_ycbcr`.

    The inverse matrix is computed from the forward one (its entries are JFIF's 1.402,
    0.344136, 0.714136, 1.772 to six digits), so the pair round-trips to float precision.
    """
    _, b, m_inv = _colour_matrices(ycc.dtype, ycc.device)
    return _mix_channels(m_inv, ycc - b[:, None, None])


# -- chroma resampling and padding ---------------------------------------------------------
def subsample_chroma(c: torch.Tensor) -> torch.Tensor:
    """4:2:0 downsampling of ``(B, C, H, W)`` planes (H, W even): mean of each 2x2 cell."""
    return F.avg_pool2d(c, kernel_size=2, stride=2)


def upsample_chroma(c: torch.Tensor) -> torch.Tensor:
    """2x upsampling of ``(B, C, h, w)`` planes as libjpeg's default "fancy" upsampling.

    libjpeg's h2v2 fancy upsampler weights the nearer chroma sample 3/4 and the farther 1/4
    along each axis and replicates at the edges: that is bilinear interpolation with
    half-pixel centres (``align_corners=False``).
    """
    return F.interpolate(c, scale_factor=2, mode="bilinear", align_corners=False)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` on the bottom and right by edge replication to a multiple."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


# -- blocks and DCT ------------------------------------------------------------------------
def to_blocks(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` with H, W multiples of 8 -> ``(B, C, H/8, W/8, 8, 8)``."""
    b, c, h, w = x.shape
    if h % _BLOCK or w % _BLOCK:
        raise ValueError(f"to_blocks needs H and W divisible by 8, got {(h, w)}")
    x = x.reshape(b, c, h // _BLOCK, _BLOCK, w // _BLOCK, _BLOCK)
    return x.permute(0, 1, 2, 4, 3, 5)


def from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_blocks`."""
    b, c, nh, nw, _, _ = blocks.shape
    return blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, c, nh * _BLOCK, nw * _BLOCK)


@functools.lru_cache(maxsize=None)
def _dct_matrix_f64(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    mat = torch.cos((2 * i + 1) * k * math.pi / (2 * n)) * math.sqrt(2.0 / n)
    mat[0] /= math.sqrt(2.0)
    return mat


def dct_matrix(n: int = _BLOCK, dtype=torch.float32, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (rows are frequencies): coefficients = D @ block @ Dᵀ.

    For n = 8 this is exactly JPEG's FDCT, F(u,v) = ¼ C(u) C(v) Σ f(x,y) cos… cos….
    """
    return _dct_matrix_cast(n, dtype, None if device is None else torch.device(device)).clone()


@functools.lru_cache(maxsize=None)
def _dct_matrix_cast(n: int, dtype: torch.dtype, device) -> torch.Tensor:
    return _dct_matrix_f64(n).to(device=device, dtype=dtype)


def dct_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II of every 8x8 block (last two axes)."""
    d = dct_matrix(blocks.shape[-1], blocks.dtype, blocks.device)
    return d @ blocks @ d.T


def idct_blocks(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct_blocks` (orthonormal DCT-III)."""
    d = dct_matrix(coeffs.shape[-1], coeffs.dtype, coeffs.device)
    return d.T @ coeffs @ d


# -- quantization --------------------------------------------------------------------------
def ijg_quality_scale(quality: int) -> int:
    """IJG's percentage scaling of the Annex K tables: 5000/QF below 50, 200 − 2·QF above."""
    q = check_quality(quality)
    return 5000 // q if q < 50 else 200 - 2 * q


def ijg_scale_table(table, quality: int) -> torch.Tensor:
    """IJG ``jpeg_set_quality`` (baseline): clamp(⌊(T·scale + 50)/100⌋, 1, 255), as int64."""
    base = torch.as_tensor(table, dtype=torch.int64)
    scaled = torch.div(base * ijg_quality_scale(quality) + 50, 100, rounding_mode="floor")
    return scaled.clamp(1, 255)


def quant_tables(quality: int, dtype=torch.float32,
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (luma, chroma) 8x8 quantization tables a libjpeg encoder uses at ``quality``."""
    luma, chroma = _quant_tables(check_quality(quality), dtype,
                                 None if device is None else torch.device(device))
    return luma.clone(), chroma.clone()


@functools.lru_cache(maxsize=None)
def _quant_tables(quality: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    return (ijg_scale_table(LUMA_TABLE, quality).to(device=device, dtype=dtype),
            ijg_scale_table(CHROMA_TABLE, quality).to(device=device, dtype=dtype))


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, ties away from zero (libjpeg's quantizer rounding)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quantize_blocks(coeffs: torch.Tensor, table: torch.Tensor,
                    rounding: bool = True) -> torch.Tensor:
    """Quantize then dequantize DCT coefficients: table · round(coeffs / table).

    With ``rounding=False`` the rounding is the identity and the result equals ``coeffs``.
    """
    ratio = coeffs / table
    if rounding:
        ratio = round_half_away(ratio)
    return ratio * table


def _code_plane(plane: torch.Tensor, table: torch.Tensor, rounding: bool) -> torch.Tensor:
    """Level shift, blockwise DCT, (de)quantization, IDCT, un-shift of ``(B, C, H, W)`` planes.

    The same arithmetic as ``from_blocks(idct_blocks(quantize_blocks(dct_blocks(to_blocks(·)))))``
    without the block permutations: the 8-point transforms are applied along each axis of the
    plane through views (``(..., H/8, 8, W)`` for columns of blocks, ``(..., H, W/8, 8)`` for
    rows), and the table broadcasts over the ``(H/8, 8, W/8, 8)`` coefficient layout.
    """
    b, c, h, w = plane.shape
    if h % _BLOCK or w % _BLOCK:
        raise ValueError(f"JPEG planes need H and W divisible by 8, got {(h, w)}")
    d = _dct_matrix_cast(_BLOCK, plane.dtype, plane.device)
    d_t = d.T.contiguous()
    shifted = (plane - 128.0).reshape(b, c, h // _BLOCK, _BLOCK, w)
    coeffs = torch.matmul(torch.matmul(d, shifted).reshape(b, c, h, w // _BLOCK, _BLOCK), d_t)
    coeffs = quantize_blocks(coeffs.reshape(b, c, h // _BLOCK, _BLOCK, w // _BLOCK, _BLOCK),
                             table[:, None, :], rounding)
    rows = torch.matmul(coeffs.reshape(b, c, h, w // _BLOCK, _BLOCK), d)
    return torch.matmul(d_t, rows.reshape(b, c, h // _BLOCK, _BLOCK, w)).reshape(b, c, h, w) + 128.0


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


# -- the codec -----------------------------------------------------------------------------
def jpeg_roundtrip_pixels(pixels: torch.Tensor, quality: int,
                          rounding: bool = True) -> torch.Tensor:
    """JPEG encode-decode of ``(B, C, H, W)`` images on the [0, 255] scale; C is 1 or 3.

    Colour images are coded as Y, Cb, Cr with 4:2:0 subsampling (16x16 MCUs); grayscale
    images as a single luma plane (8x8 MCUs). Images are padded by edge replication to
    whole MCUs and cropped back.

    With ``rounding=True`` the sample buffers libjpeg stores as 8 bits are clamped and
    rounded: the input RGB, the colour-converted Y/Cb/Cr planes, the decoded (IDCT) planes
    and the output RGB; DCT coefficients are rounded to multiples of the table. (Subsampled
    and upsampled chroma stay in float: libjpeg rounds them with its own alternating bias,
    and emulating it gained nothing measurable against Pillow.) ``rounding=False`` replaces
    every one of those roundings and clamps by the identity; see the module docstring.
    """
    if pixels.ndim != 4 or pixels.shape[1] not in (1, 3):
        raise ValueError("JPEG expects images of shape (batch, 1 or 3, H, W), "
                         f"got {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        pixels = pixels.float()
    sample = _to_uint8_levels if rounding else _identity
    h, w = pixels.shape[-2:]
    luma_t, chroma_t = _quant_tables(check_quality(quality), pixels.dtype, pixels.device)
    pixels = sample(pixels)
    if pixels.shape[1] == 1:
        out = sample(_code_plane(pad_to_multiple(pixels, _BLOCK), luma_t, rounding))
    else:
        ycc = sample(rgb_to_ycbcr(pad_to_multiple(pixels, 2 * _BLOCK)))
        y = sample(_code_plane(ycc[:, :1], luma_t, rounding))
        c = sample(_code_plane(subsample_chroma(ycc[:, 1:]), chroma_t, rounding))
        out = ycbcr_to_rgb(torch.cat([y, upsample_chroma(c)], dim=1))
    return sample(out[..., :h, :w])


def jpeg_codec(x: torch.Tensor, quality: int, rounding: bool = True) -> torch.Tensor:
    """JPEG encode-decode of images in [-1, 1] (the operator's value space)."""
    return from_pixels(jpeg_roundtrip_pixels(to_pixels(x), quality, rounding))


def pillow_jpeg_roundtrip(image, quality: int):
    """Reference codec: Pillow's libjpeg, 4:2:0, at ``quality``, on an 8-bit numpy image.

    ``image`` is ``(H, W)`` (grayscale) or ``(H, W, 3)`` uint8. Returns the decoded uint8
    array and the quantization tables the encoder wrote (``{0: luma, 1: chroma}``, each a
    list of 64 entries in natural row-major order). Used by tests and scripts.
    """
    import io

    import numpy as np
    from PIL import Image  # Pillow: the reference encoder, needed only for this comparison

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=check_quality(quality), subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded).copy(), {k: list(v) for k, v in decoded.quantization.items()}


def check_quality(quality) -> int:
    if isinstance(quality, bool) or int(quality) != quality or not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
    return int(quality)
