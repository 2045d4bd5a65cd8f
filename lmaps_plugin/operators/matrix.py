"""Dense matrices of linear operators: :class:`MatrixOperator` (a matrix as an operator) and
:func:`operator_matrix` (an operator as a matrix), for small exact problems and tests."""
from __future__ import annotations

import math

import torch

from .base import LinearOperator


class MatrixOperator(LinearOperator):
    """``H x = A · vec(x)`` for a dense matrix ``A`` of shape ``(m, C·H·W)``.

    Observations have shape ``(batch, m)``. Useful wherever an exact, arbitrary linear
    operator is wanted (closed-form posteriors, step-size guard checks, user matrices).
    """

    def __init__(self, matrix, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.matrix = torch.as_tensor(matrix).to(self.device)
        self.image_shape = tuple(int(s) for s in image_shape)
        n = 1
        for s in self.image_shape:
            n *= s
        if self.matrix.ndim != 2 or self.matrix.shape[1] != n:
            raise ValueError(
                f"matrix must have shape (m, {n}) for image_shape {self.image_shape}, "
                f"got {tuple(self.matrix.shape)}")

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        a = self.matrix.to(x.dtype)
        return x.flatten(start_dim=1) @ a.T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        a = self.matrix.to(y.dtype)
        return (y @ a).reshape(y.shape[0], *self.image_shape)


def operator_matrix(op, img_shape, dtype: torch.dtype = torch.float64, batch_size: int = 256,
                    device=None) -> torch.Tensor:
    """The dense ``(m, d)`` matrix ``A`` of a linear operator, ``A @ vec(x) = vec(op.forward(x))``.

    ``op.forward`` (noise-free; ``op(x)`` would add noise) is applied to the identity basis of images
    of shape ``img_shape`` (C, H, W), ``batch_size`` basis images at a time; d = C·H·W and m is the
    size of one observation. A complex operator gives a complex matrix. Meant for small images
    (d ≤ a few thousand): the result has m·d entries.
    """
    if getattr(op, "is_linear", True) is False:
        raise ValueError(f"operator_matrix needs a linear operator; {type(op).__name__} is not linear "
                         "(is_linear=False)")
    img_shape = tuple(int(s) for s in img_shape)
    if not img_shape or any(s <= 0 for s in img_shape):
        raise ValueError(f"img_shape must be positive sizes (C, H, W); got {img_shape}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if device is None:
        device = getattr(op, "device", None) or "cpu"
    d = math.prod(img_shape)
    columns = []
    for start in range(0, d, int(batch_size)):
        idx = torch.arange(start, min(start + int(batch_size), d), device=device)
        basis = torch.zeros(len(idx), d, dtype=dtype, device=device)
        basis[torch.arange(len(idx), device=device), idx] = 1
        columns.append(op.forward(basis.reshape(len(idx), *img_shape)).reshape(len(idx), -1))
    return torch.cat(columns).T.contiguous()
