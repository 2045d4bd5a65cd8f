"""Fuzz/contract matrix (issue 7): every registered operator × image sizes (odd, non-square where
the operator allows it) × batch 1 and 4 × float32/float64 × num_samples 1 and 3, through LMAPS.

Each case must finish without a crash, return finite values of the right shape and dtype, and
fit the observation better than the prior's mean guess does not — only the contract is asserted
here; accuracy lives in the exact-truth tests.
"""
from __future__ import annotations

import inspect
import itertools

import pytest
import torch

from lmaps_plugin import LMAPS
from lmaps_plugin.operators import available_operators, get_operator
from lmaps_plugin.priors.gmm import GaussianMixturePrior

CHANNELS = 3
#: (height, width) per operator; operators with a ``resolution`` argument are square by contract.
SQUARE_SIZES = [(17, 17), (32, 32)]
FREE_SIZES = [(17, 17), (12, 20)]
SIZES = {"sr4": [(20, 20), (32, 32)]}       # 4× super-resolution needs a multiple of 4


def _accepts(cls, name):
    return name in inspect.signature(cls.__init__).parameters


def sizes_for(name):
    if name in SIZES:
        return SIZES[name]
    return SQUARE_SIZES if _accepts(get_operator(name), "resolution") else FREE_SIZES


CASES = [(name, size, batch, dtype, samples)
         for name in sorted(available_operators())
         for size in sizes_for(name)
         for batch, dtype, samples in itertools.product((1, 4), (torch.float32, torch.float64), (1, 3))]


def tiny_prior(shape, seed=0):
    """A two-component low-rank Gaussian mixture on images of ``shape``."""
    d = shape[0] * shape[1] * shape[2]
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(2, d, 3, generator=gen, dtype=torch.float64)).Q
    return GaussianMixturePrior(torch.tensor([0.5, 0.5]), 0.3 * torch.randn(2, d, generator=gen, dtype=torch.float64),
                                basis, torch.full((2, 3), 0.2, dtype=torch.float64),
                                torch.full((2,), 0.01, dtype=torch.float64), shape)


def build(name, size, weights):
    cls = get_operator(name)
    kwargs = dict(sigma_noise=0.05)
    if name == "matrix":
        d = CHANNELS * size[0] * size[1]
        kwargs.update(matrix=torch.randn(d // 2, d, generator=torch.Generator().manual_seed(1)) / d ** 0.5,
                      image_shape=(CHANNELS, *size))
    if name == "nonlinear_deblur":
        kwargs["weights_path"] = weights
    if _accepts(cls, "resolution"):
        kwargs["resolution"] = size[0]
    if _accepts(cls, "channels"):
        kwargs["channels"] = CHANNELS
    return cls(**kwargs)


def test_matrix_size():
    print(f"\nfuzz matrix: {len(CASES)} cases over {len(available_operators())} operators")
    assert len(CASES) >= 8 * len(available_operators())


@pytest.mark.parametrize("name,size,batch,dtype,num_samples", CASES,
                         ids=[f"{c[0]}-{c[1][0]}x{c[1][1]}-b{c[2]}-{str(c[3])[6:]}-s{c[4]}" for c in CASES])
def test_lmaps_runs_cleanly(name, size, batch, dtype, num_samples, blur_weights):
    op = build(name, size, blur_weights)
    prior = tiny_prior((CHANNELS, *size))
    torch.manual_seed(0)
    target = (prior.sample(batch).to(dtype)).clamp(-1, 1)
    y = op({"target": target})
    assert y.shape[0] == batch
    solver = LMAPS(prior, op, num_steps=3, inner_steps=2, lr=0.01, k1=0.22, k2=10.0, verbose=False)
    out = solver.inference(y, num_samples=num_samples)
    assert out.shape == (batch * num_samples, CHANNELS, *size)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
