"""The linear operators' adjoints at their edges, against dense matrices (the operator applied to the identity
basis) and the dot-product identity: several dtypes in turn on one operator, non-square padding, observation
checks, the gradient with its loss, and inputs left untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmaps_plugin.operators import MatrixOperator, build_operator, operator_matrix
from lmaps_plugin.operators.blur import reflect_pad_adjoint

DT = torch.float64
RES = 8

LINEAR = [("sr4", {}), ("gaussian_deblur", dict(kernel_size=5, std=1.2)), ("motion_deblur", dict(kernel_size=5)),
          ("inpaint_box", {}), ("inpaint_random", {})]


def make(name, extra, channels=2):
    return build_operator(name, resolution=RES, channels=channels, sigma_noise=0.05, **extra)


def dense_matrix(op, channels=2):
    return operator_matrix(op, (channels, RES, RES))       # (m, n), from the forward alone


@pytest.mark.parametrize("name,extra", LINEAR, ids=[n for n, _ in LINEAR])
def test_adjoint_is_the_dense_transpose_in_float64_then_float32_then_float64(name, extra):
    op = make(name, extra)
    h = dense_matrix(op)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(3, h.shape[0], generator=gen, dtype=DT)
    obs_shape = op.forward(torch.zeros(1, 2, RES, RES, dtype=DT)).shape[1:]
    for dtype, tol in [(DT, 1e-12), (torch.float32, 1e-5), (DT, 1e-12)]:
        got = op.adjoint(y.reshape(3, *obs_shape).to(dtype))
        assert got.dtype == dtype and got.shape == (3, 2, RES, RES)
        torch.testing.assert_close(got.reshape(3, -1).double(), y @ h, rtol=tol, atol=tol)


@pytest.mark.parametrize("name,extra", LINEAR, ids=[n for n, _ in LINEAR])
def test_gradient_and_its_loss_are_the_dense_least_squares_ones(name, extra):
    op = make(name, extra)
    h = dense_matrix(op)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, RES, RES, generator=gen, dtype=DT)
    obs_shape = op.forward(x[:1]).shape[1:]
    y = torch.randn(2, *obs_shape, generator=gen, dtype=DT)
    residual = x.reshape(2, -1) @ h.T - y.reshape(2, -1)
    grad, loss = op.gradient(x, y, return_loss=True)
    torch.testing.assert_close(grad.reshape(2, -1), 2 * residual @ h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, residual.square().sum(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.gradient(x, y), grad, rtol=0, atol=0)


def test_matrix_operator_adjoint_follows_the_observations_dtype():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(5, 12, generator=gen, dtype=DT)
    op = MatrixOperator(a, (3, 2, 2))
    y = torch.randn(4, 5, generator=gen, dtype=DT)
    for dtype in (torch.float32, DT):
        got = op.adjoint(y.to(dtype))
        assert got.dtype == dtype and got.shape == (4, 3, 2, 2)
        torch.testing.assert_close(got.reshape(4, 12).double(), y @ a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad", [1, 3])
def test_reflect_pad_adjoint_on_a_non_square_image_leaves_its_input_alone(pad):
    x = torch.randn(2, 1, 5, 9, dtype=DT)
    z = torch.randn(2, 1, 5 + 2 * pad, 9 + 2 * pad, dtype=DT)
    kept = z.clone()
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    back = reflect_pad_adjoint(z, pad)
    assert back.shape == x.shape and torch.equal(z, kept)
    assert (padded * z).sum().item() == pytest.approx((x * back).sum().item(), rel=1e-12)


@pytest.mark.parametrize("name,extra,expected", [("sr4", {}, "2×2"), ("motion_deblur", dict(kernel_size=5), "8×8"),
                                                 ("inpaint_random", {}, "8×8")])
def test_adjoint_of_an_observation_of_the_wrong_size_names_it(name, extra, expected):
    op = make(name, extra)
    with pytest.raises(ValueError, match=f"{type(op).__name__}: observation y is 3×3 but the operator was built for "
                                         f"resolution=.* \\(expected {expected}\\)"):
        op.adjoint(torch.zeros(1, 2, 3, 3, dtype=DT))
    with pytest.raises(ValueError, match="observation y has 3 channels"):
        op.adjoint(torch.zeros(1, 3, *[int(s) for s in expected.split("×")], dtype=DT))


@pytest.mark.parametrize("name,extra", LINEAR, ids=[n for n, _ in LINEAR])
def test_an_adjoint_called_first_builds_the_operator_for_the_observations_size(name, extra):
    op = build_operator(name, channels=2, sigma_noise=0.05, **extra)
    reference = make(name, extra)
    size = reference.forward(torch.zeros(1, 2, RES, RES, dtype=DT)).shape[-1]
    y = torch.randn(1, 2, size, size, generator=torch.Generator().manual_seed(3), dtype=DT)
    torch.testing.assert_close(op.adjoint(y), reference.adjoint(y), rtol=0, atol=0)
    assert op.resolution == RES


def test_blur_adjoint_with_an_odd_fft_length_is_the_dense_transpose():
    """Resolution 10 with a 5×5 motion kernel pads to 14, whose FFT length is 15 (odd): the inverse transform
    must be told its length."""
    op = build_operator("motion_deblur", resolution=10, channels=1, kernel_size=5)
    assert op.separable_matrices is None and op._fft_length(10) % 2 == 1
    n = 100
    h = operator_matrix(op, (1, 10, 10))
    y = torch.randn(2, 1, 10, 10, generator=torch.Generator().manual_seed(4), dtype=DT)
    torch.testing.assert_close(op.adjoint(y).reshape(2, n), y.reshape(2, n) @ h, rtol=1e-12, atol=1e-12)


def test_reflect_pad_adjoint_pads_the_last_two_dimensions_of_any_tensor():
    x = torch.randn(3, 6, 7, dtype=DT)                       # (C, H, W): no batch dimension
    z = torch.randn(3, 10, 11, dtype=DT)
    back = reflect_pad_adjoint(z, 2)
    assert back.shape == x.shape
    assert (F.pad(x, (2,) * 4, mode="reflect") * z).sum().item() == pytest.approx((x * back).sum().item(), rel=1e-12)
