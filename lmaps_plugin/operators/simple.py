"""A dense-matrix linear operator on flattened images: small exact problems and tests."""
from __future__ import annotations

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
