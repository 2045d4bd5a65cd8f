"""JPEG restoration operator: H(x) = JPEG encode-decode (:mod:`lmaps_plugin.operators.jpeg_codec`).

The codec's names are re-exported here, where they lived before 0.2.
"""
from __future__ import annotations

import torch

from .jpeg_codec import *  # noqa: F401,F403 - the codec's public names, re-exported
from .jpeg_codec import __all__ as _codec_names
from .jpeg_codec import check_quality, jpeg_codec
from .non_differentiable import NonDifferentiableOperator

__all__ = [*_codec_names, "JPEG"]


# -- the operator --------------------------------------------------------------------------
class JPEG(NonDifferentiableOperator):
    """JPEG restoration operator: H(x) = JPEG encode-decode of x at quality ``quality``.

    Images are ``(batch, 1 or 3, H, W)`` in [-1, 1]; the output has the same shape, on the
    8-bit grid mapped back to [-1, 1]. Each image of a batch is coded independently.
    The default surrogate is ``jpeg_linear``: the codec's linear stages with only the rounding
    dropped (see :mod:`lmaps_plugin.operators.surrogates`); ``surrogate="identity"`` is the paper's Eq. 18.
    """

    # jpeg_linear beat identity (paper Eq. 18) for LMAPS in scripts/compare_jpeg_surrogates.py
    # (32 px photos, 8 images × 2 seeds, 3 exact GMM/Gaussian priors, QF 5 and 10, Table-4
    # η/k1/k2, N=50-100, K=20): paired ΔPSNR +0.05..+0.15 dB, positive in all 6 prior×QF
    # settings (75/96 image×seed pairs), ΔSSIM within ±0.003; jpeg_kornia was mixed (−0.4 to
    # −0.9 dB at QF 10). Small but consistent: pass surrogate="identity" for the paper's setup.
    default_surrogate = "jpeg_linear"

    def __init__(self, quality: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.quality = check_quality(quality)

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg_codec(x, self.quality, rounding=True)

    def linear_part(self, x: torch.Tensor) -> torch.Tensor:
        return jpeg_codec(x, self.quality, rounding=False)

    def __repr__(self) -> str:
        return (f"JPEG(quality={self.quality}, surrogate={self.surrogate!r}, "
                f"sigma_noise={self.sigma_noise})")
