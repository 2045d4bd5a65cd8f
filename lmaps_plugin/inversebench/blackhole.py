"""InverseBench's black-hole operator with its DFT products as real matrix products.

Upstream computes every visibility-like product (visibilities, the three bispectrum factors of each closure phase,
the four visibilities of each log closure amplitude) as ``(A * x).sum(-1)`` over an ``(m, n)`` complex matrix: an
``m × n`` complex temporary per product, and as many again in autograd's backward. For a real image x,
``A x = (Re A) x + i (Im A) x``: the subclass keeps ``[Re Aᵀ | Im Aᵀ]`` of each of upstream's matrices (built once,
``n × 2m`` float32) and computes each product as one real matrix product, so its loss and gradient equal upstream's
to float32 rounding of the summation order.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

Tensor = torch.Tensor


def real_dft_operator(matrix: Tensor) -> Tensor:
    """``[Re Aᵀ | Im Aᵀ]`` (``n × 2m``, contiguous, float32 for complex64) of a complex ``(..., m, n)`` block."""
    block = matrix.reshape(matrix.shape[-2], matrix.shape[-1])
    return torch.cat([block.real.T, block.imag.T], dim=1).contiguous()


def dft_rows(operator: Tensor, images: Tensor, channels: int) -> Tensor:
    """``A x`` per image and channel, shaped ``(B, C, m, 1)`` complex like upstream's ``(A * x).sum(-1, True)``, from
    :func:`real_dft_operator`'s ``[Re Aᵀ | Im Aᵀ]`` and real ``images`` of ``n`` pixels."""
    flat = images.reshape(-1, operator.shape[0]).to(operator.dtype)
    halves = (flat @ operator).reshape(-1, channels, 2, operator.shape[1] // 2)
    return torch.complex(halves[:, :, 0], halves[:, :, 1]).unsqueeze(-1)


@functools.cache
def matmul_black_hole_class(upstream: type) -> type:
    """A subclass of InverseBench's ``BlackHoleImaging`` whose image-to-data products are real matrix products."""

    class MatmulBlackHoleImaging(upstream):

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._vis_operator = real_dft_operator(self.A_vis)
            self._cp_operators = [real_dft_operator(self.A_cp[k]) for k in range(self.A_cp.shape[0])]
            self._camp_operators = [real_dft_operator(self.A_camp[k]) for k in range(self.A_camp.shape[0])]

        def forward_vis(self, x: Tensor) -> Tensor:
            return dft_rows(self._vis_operator.to(x.device), x, self.C)

        def forward_bisepectra_from_image(self, x: Tensor):
            return tuple(dft_rows(op.to(x.device), x, self.C) for op in self._cp_operators)

        def forward_logcamp_bispectra_from_image(self, x: Tensor):
            return tuple(dft_rows(op.to(x.device), x, self.C).abs() for op in self._camp_operators)

    MatmulBlackHoleImaging.__name__ = MatmulBlackHoleImaging.__qualname__ = upstream.__name__
    return MatmulBlackHoleImaging


__all__ = ["real_dft_operator", "dft_rows", "matmul_black_hole_class"]
