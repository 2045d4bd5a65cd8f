"""The operator algebra behind InverseBench's scattering and MRI adjoints (lmaps_plugin.inversebench.algebra, .scattering, .mri),
checked without an InverseBench checkout: the Born map's transpose against the dot-product identity and the dense
real Born matrix, the centred FFT's adjoint for even and odd sizes, the measurement conversions, and the analytic
gradient against dense least squares. Float64 (complex128) throughout, as the module promises."""
from __future__ import annotations

import pytest
import torch

from lmaps_plugin.inversebench.algebra import analytic_gradient, as_complex
from lmaps_plugin.inversebench.mri import _complex_to_channels, centered_ifft2_adjoint
from lmaps_plugin.inversebench.scattering import born_field, born_field_transpose, born_matrix

C128 = torch.complex128


def gen(seed):
    return torch.Generator().manual_seed(seed)


def born_parts(pixels=30, trans=3, receivers=5, seed=0):
    g = gen(seed)
    incident = torch.randn(pixels, trans, generator=g, dtype=C128)
    green = torch.randn(pixels, receivers, generator=g, dtype=C128)
    return incident, green, 0.37


def test_born_transpose_is_the_transpose_of_the_dense_real_born_matrix():
    incident, green, cell = born_parts()
    f = torch.randn(4, 30, generator=gen(1), dtype=torch.float64)
    y = torch.randn(4, 3, 5, generator=gen(2), dtype=C128)
    a = born_matrix(incident, green, cell)                                  # (2·T·R, P): rows (Re, Im)
    field = born_field(f, incident.conj().T.contiguous(), green, cell)
    torch.testing.assert_close(torch.cat([field.real.reshape(4, -1), field.imag.reshape(4, -1)], 1), f @ a.T,
                               rtol=1e-12, atol=1e-12)
    back = born_field_transpose(y, incident.T.contiguous(), green, cell)
    assert back.dtype == torch.float64 and back.shape == (4, 30)
    torch.testing.assert_close(back, torch.cat([y.real.reshape(4, -1), y.imag.reshape(4, -1)], 1) @ a,
                               rtol=1e-12, atol=1e-12)


def centred_fft(x):
    """InverseBench's MultiCoilMRI.fft: ifftshift ∘ FFT2(ortho) ∘ fftshift."""
    return torch.fft.ifftshift(torch.fft.fft2(torch.fft.fftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


@pytest.mark.parametrize("shape", [(4, 6), (5, 7), (3, 4)])
def test_centred_ifft_is_the_adjoint_and_inverse_of_the_centred_fft(shape):
    x = torch.randn(2, 3, *shape, generator=gen(3), dtype=C128)
    y = torch.randn(2, 3, *shape, generator=gen(4), dtype=C128)
    lhs = (centred_fft(x).conj() * y).sum()
    rhs = (x.conj() * centered_ifft2_adjoint(y)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(centered_ifft2_adjoint(centred_fft(x)), x, rtol=1e-12, atol=1e-12)


def test_measurements_become_complex128_whatever_their_precision():
    z = torch.randn(2, 3, 4, generator=gen(5), dtype=C128)
    z64 = z.to(torch.complex64)
    for given in (z64, torch.view_as_real(z64), torch.view_as_real(z)):
        got = as_complex(given, "Op.adjoint", "(B, T, R)")
        assert got.dtype == C128
    torch.testing.assert_close(as_complex(torch.view_as_real(z64), "Op", "(B, T, R)"), z64.to(C128), rtol=0, atol=0)
    torch.testing.assert_close(as_complex(torch.view_as_real(z), "Op", "(B, T, R)"), z, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Op.adjoint: expected complex measurements shaped \(B, T, R\) \(or their "
                                         r"view_as_real, with a trailing axis of 2\), got a real tensor of shape "
                                         r"\(2, 3, 4\)"):
        as_complex(z.real, "Op.adjoint", "(B, T, R)")


def test_complex_images_split_into_real_and_imaginary_channels():
    z = torch.randn(2, 5, 6, generator=gen(6), dtype=C128)
    channels = _complex_to_channels(z)
    assert channels.shape == (2, 2, 5, 6) and channels.is_contiguous()
    torch.testing.assert_close(channels[:, 0], z.real, rtol=0, atol=0)
    torch.testing.assert_close(channels[:, 1], z.imag, rtol=0, atol=0)


class Dense:
    """forward(x) = A x (complex A, real x), adjoint the transpose for Re⟨·,·⟩."""

    def __init__(self, a):
        self.a = a

    def forward(self, x):
        return x.to(torch.float64).flatten(1).to(C128) @ self.a.T

    def adjoint(self, y):
        return (y @ self.a.conj()).real.reshape(y.shape[0], 1, 2, 3)


def test_analytic_gradient_is_twice_the_adjoint_of_the_residual_with_the_summed_loss():
    a = torch.randn(4, 6, generator=gen(7), dtype=C128)
    op = Dense(a)
    x = torch.randn(3, 1, 2, 3, generator=gen(8), dtype=torch.float32)
    y = torch.randn(3, 4, generator=gen(9), dtype=C128)
    grad = analytic_gradient(op, x, y)
    # autograd of Σ_b ‖A x_b − y_b‖² with respect to the real x
    leaf = x.to(torch.float64).flatten(1).requires_grad_(True)
    loss = ((leaf.to(C128) @ a.T - y).abs() ** 2).sum()
    (truth,) = torch.autograd.grad(loss, leaf)
    assert grad.dtype == torch.float32 and grad.shape == x.shape
    torch.testing.assert_close(grad.reshape(3, -1).double(), truth, rtol=1e-6, atol=1e-6)
    grad2, total = analytic_gradient(op, x, y, return_loss=True)
    torch.testing.assert_close(grad2, grad, rtol=0, atol=0)
    assert float(total) == pytest.approx(float(loss.detach()), rel=1e-12)
