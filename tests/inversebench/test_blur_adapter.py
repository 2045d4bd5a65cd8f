"""InverseBench's Gaussian blur as two 1-D convolutions (lmaps_plugin.inversebench.blur) against upstream's own
2-D convolution: forward, gradient, and the fallback for a kernel that is not an outer product."""
from __future__ import annotations

import os

import pytest
import torch

from lmaps_plugin.inversebench.blur import kernel_support, separable_blur, separable_factors

pytestmark = [pytest.mark.inversebench,
              pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"), reason="INVERSEBENCH_ROOT is not set")]


def upstream_blur(**kwargs):
    from lmaps_plugin.inversebench import import_upstream

    return import_upstream("inverse_problems.image_restore", "test").GaussialBlur(device="cpu", **kwargs)


def images(seed, size=72, dtype=torch.float32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kernel_size, intensity", [(61, 3.0), (31, 2.0), (9, 5.0)])
def test_forward_and_gradient_equal_upstreams_2d_convolution(kernel_size, intensity):
    from lmaps_plugin.inversebench import GaussianBlur

    ours = GaussianBlur(kernel_size=kernel_size, intensity=intensity, sigma_noise=0.05, device="cpu")
    theirs = upstream_blur(kernel_size=kernel_size, intensity=intensity, sigma_noise=0.05)
    assert ours.separable and ours.is_linear and type(ours).__name__ == "SeparableGaussialBlur"
    x, y = images(0), theirs.forward(images(1)).detach()
    assert relative(ours.forward(x), theirs.forward(x).detach()) < 2e-6          # float32 rounding
    assert relative(ours.gradient(x, y), theirs.gradient(x, y)) < 2e-6
    assert torch.allclose(ours.loss(x, y), theirs.loss(x, y).detach(), rtol=1e-5)


def test_a_truncated_gaussian_is_convolved_over_its_support_only():
    from lmaps_plugin.inversebench import GaussianBlur

    ours = GaussianBlur(kernel_size=61, intensity=3.0, sigma_noise=0.05, device="cpu")
    assert ours._support == (slice(18, 43), slice(18, 43))        # scipy truncates at 4σ: 25 taps of 61
    assert ours._factors[0].numel() == 25


def test_a_kernel_that_is_not_an_outer_product_keeps_the_2d_convolution(monkeypatch):
    from lmaps_plugin.inversebench import GaussianBlur, blur

    kernel = torch.outer(torch.arange(1.0, 6.0), torch.arange(1.0, 6.0))
    kernel[0, 0] += 1.0
    assert blur.separable_factors(kernel) is None                   # rank two
    monkeypatch.setattr(blur, "separable_factors", lambda weight: None)
    ours = GaussianBlur(kernel_size=9, intensity=2.0, sigma_noise=0.05, device="cpu")
    x = images(2, size=32)
    assert not ours.separable and torch.equal(ours.forward(x), ours.conv(x))


def test_separable_blur_against_a_direct_convolution_in_float64():
    col = torch.tensor([0.0, 0.25, 0.5, 0.25, 0.0], dtype=torch.float64)
    row = torch.tensor([0.0, 0.1, 0.2, 0.4, 0.3], dtype=torch.float64)
    kernel = torch.outer(col, row)
    x = images(3, size=12, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    direct = torch.nn.functional.conv2d(padded, kernel.expand(3, 1, 5, 5), groups=3)
    support = kernel_support(kernel)
    assert support == (slice(1, 4), slice(1, 5))
    factors = separable_factors(kernel[support])
    torch.testing.assert_close(torch.outer(*factors), kernel[support], rtol=0, atol=1e-15)
    torch.testing.assert_close(separable_blur(x, *factors, 5, support), direct, rtol=1e-12, atol=1e-14)
