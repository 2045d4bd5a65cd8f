"""Fused Gram maps: an operator's own ``gram(v)`` (AᵀA v in one pass) and the solvers that use it.

* The multi-coil MRI adapter's ``gram`` against ``adjoint(forward(v))`` (even and odd sizes, both mask
  orientations, several coils), and the exact local MAP and λ_max it gives against the dense normal
  equations built from ``forward`` on the unit images.
* ``local_map.linear_system`` / ``estimate_gram_norm`` call an operator's ``gram`` when it has one.
"""
from __future__ import annotations

import os

import pytest
import torch

from lmaps_plugin.local_map import estimate_gram_norm, exact_local_map, gram_map, linear_system
from lmaps_plugin.operators import MatrixOperator


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class CountingGramOperator(MatrixOperator):
    """A dense operator with an explicit ``gram`` (AᵀA as a matrix) that counts its calls."""

    def __init__(self, matrix, image_shape):
        super().__init__(matrix, image_shape)
        self.gram_calls = 0

    def gram(self, v):
        self.gram_calls += 1
        normal = self.matrix.T @ self.matrix
        return (v.flatten(1) @ normal.T).reshape(v.shape)


def test_linear_system_and_power_iteration_use_the_operators_gram():
    matrix = torch.randn(30, 48, generator=generator(0), dtype=torch.float64) / 7
    op = CountingGramOperator(matrix, (3, 4, 4))
    v = torch.randn(2, 3, 4, 4, generator=generator(1), dtype=torch.float64)
    system = linear_system(op, op.forward(v), v, use_eigenbasis=False)
    calls = op.gram_calls
    out = system.gram(v)
    assert op.gram_calls == calls + 1
    torch.testing.assert_close(out, op.adjoint(op.forward(v)), rtol=1e-12, atol=1e-14)
    before = op.gram_calls
    lam = estimate_gram_norm(op, v, iters=200)
    assert op.gram_calls - before == 200
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(matrix.T @ matrix).max()), rel=1e-8)


def test_gram_map_without_a_fused_gram_is_adjoint_after_forward_minus_the_offset():
    matrix = torch.randn(20, 16, generator=generator(2), dtype=torch.float64)
    op = MatrixOperator(matrix, (1, 4, 4))
    v = torch.randn(3, 1, 4, 4, generator=generator(3), dtype=torch.float64)
    offset = torch.randn(1, 20, generator=generator(4), dtype=torch.float64)
    expected = (v.flatten(1) @ (matrix.T @ matrix)).reshape(v.shape)
    torch.testing.assert_close(gram_map(op)(v), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gram_map(op, offset)(v), op.adjoint(op.forward(v) - offset), rtol=0, atol=0)


# ------------------------------------------------------------------------------------- MRI adapter
needs_inversebench = pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"), reason="INVERSEBENCH_ROOT is not set")


def mri_operator(height: int, width: int, coils: int, seed: int, orientation: str = "vertical"):
    """Our MRI adapter holding random coil maps (unit root-sum-of-squares), set through ``__call__``."""
    from lmaps_plugin import inversebench as ib

    g = generator(seed)
    maps = torch.randn(1, coils, height, width, dtype=torch.complex128, generator=g)
    maps = maps / maps.abs().square().sum(dim=1, keepdim=True).sqrt()
    kspace = torch.randn(1, coils, height, width, dtype=torch.complex128, generator=g)
    lines = width if orientation == "vertical" else height
    op = ib.MultiCoilMRI(total_lines=lines, acceleration_ratio=4, orientation=orientation, device="cpu")
    observation = op({"maps": maps, "kspace": kspace})
    return op, observation


def dense_transpose(op, height: int, width: int) -> torch.Tensor:
    """Aᵀ as a real (2HW × m) matrix: row j is ``forward`` of the j-th unit image (real and imaginary parts)."""
    eye = torch.eye(2 * height * width, dtype=torch.float64).reshape(-1, 2, height, width)
    return op.forward(eye).flatten(1)


@pytest.mark.inversebench
@needs_inversebench
@pytest.mark.parametrize("height, width, coils, orientation", [(16, 16, 3, "vertical"), (15, 17, 3, "vertical"),
                                                               (12, 10, 2, "horizontal"), (9, 11, 1, "horizontal")])
def test_mri_gram_is_adjoint_after_forward(height, width, coils, orientation):
    op, _ = mri_operator(height, width, coils, seed=10, orientation=orientation)
    v = torch.randn(2, 2, height, width, generator=generator(11), dtype=torch.float64)
    expected = op.adjoint(op.forward(v))
    out = op.gram(v)
    assert out.shape == v.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-13 * float(expected.abs().max()))
    torch.testing.assert_close(op.gram(v.float()), op.adjoint(op.forward(v.float())), rtol=0, atol=1e-13)


@pytest.mark.inversebench
@needs_inversebench
@pytest.mark.parametrize("height, width", [(8, 8), (7, 9)])
def test_mri_exact_local_map_and_gram_norm_match_the_dense_normal_equations(height, width):
    op, y = mri_operator(height, width, coils=3, seed=12)
    x_hat = torch.randn(1, 2, height, width, generator=generator(13), dtype=torch.float64)
    transpose = dense_transpose(op, height, width)
    gram, hty = transpose @ transpose.T, y.flatten(1) @ transpose.T
    r, k2 = 0.9, 50.0
    a, b = 1 - r, r * k2
    truth = torch.linalg.solve(a * torch.eye(gram.shape[0], dtype=torch.float64) + b * gram,
                               (a * x_hat.flatten(1) + b * hty).T).T.reshape(x_hat.shape)
    system = linear_system(op, y, x_hat, use_eigenbasis=False)
    x, report = exact_local_map(x_hat, system, r, k2, tol=1e-12, max_iter=500)
    assert report.converged
    torch.testing.assert_close(x, truth, rtol=0, atol=1e-9 * float(truth.abs().max()))
    lam = estimate_gram_norm(op, x_hat, iters=300)
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(gram).max()), rel=1e-6)
