"""InverseBench's black-hole DFT products as real matrix products (lmaps_plugin.inversebench.blackhole): the
building block against upstream's ``(A * x).sum(-1)`` form, and the whole operator against upstream's on the rig's
EHT observation (slow: it simulates the observation with ehtim)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lmaps_plugin.inversebench.blackhole import dft_rows, real_dft_operator


def test_dft_rows_equal_the_elementwise_sum_of_a_complex_block():
    g = torch.Generator().manual_seed(0)
    block = torch.complex(torch.randn(1, 1, 7, 12, generator=g, dtype=torch.float64),
                          torch.randn(1, 1, 7, 12, generator=g, dtype=torch.float64))
    images = torch.randn(3, 1, 3, 4, generator=g, dtype=torch.float64)
    upstream_form = (block * images.reshape(-1, 1, 1, 12).to(block.dtype)).sum(-1, keepdims=True)
    ours = dft_rows(real_dft_operator(block), images, channels=1)
    assert ours.shape == upstream_form.shape == (3, 1, 7, 1)
    torch.testing.assert_close(ours, upstream_form, rtol=1e-12, atol=1e-12)


def test_gradients_flow_to_the_image_as_through_the_elementwise_form():
    g = torch.Generator().manual_seed(1)
    block = torch.complex(torch.randn(1, 1, 5, 9, generator=g, dtype=torch.float64),
                          torch.randn(1, 1, 5, 9, generator=g, dtype=torch.float64))
    x = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    theirs = torch.autograd.grad((block * x.reshape(-1, 1, 1, 9).to(block.dtype)).sum(-1).abs().sum(), x)[0]
    ours = torch.autograd.grad(dft_rows(real_dft_operator(block), x, 1).abs().sum(), x)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.inversebench
@pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"), reason="INVERSEBENCH_ROOT is not set")
def test_the_operator_equals_upstreams_on_an_eht_observation(tmp_path):
    from ib_helpers import load_script
    from lmaps_plugin.inversebench import BlackHoleImaging, import_upstream

    data = load_script("make_inversebench_data").main(
        ["--out", str(tmp_path / "data"), "--problems", "blackhole", "--num-test", "1", "--num-train", "0"])
    measure = Path(data["entries"]["blackhole_measure"]["path"])
    ours = BlackHoleImaging(root=str(measure), imsize=64, noise_type="eht", ttype="direct", device="cpu")
    upstream = import_upstream("inverse_problems.blackhole", "test").BlackHoleImaging
    theirs = upstream.__new__(upstream)
    theirs.__dict__.update(ours.__dict__)                # the same observation, matrices and weights
    dataset = import_upstream("training.dataset", "test").BlackHole(
        root=str(tmp_path / "data" / "blackhole" / "test"), resolution=64, original_resolution=64,
        random_flip=False, zoom_in_out=False)
    truth = dataset[0]["target"][None].float()
    g = torch.Generator().manual_seed(2)
    x = truth + 0.05 * torch.randn(2, 1, 64, 64, generator=g)      # near the truth, where samplers evaluate it
    np.random.seed(0)
    y = theirs({"target": truth})
    # closure phases of near-zero bispectra move with rounding, so compare the data vectors as a whole
    assert float((ours.forward(x) - theirs.forward(x)).norm() / theirs.forward(x).norm()) < 1e-5
    g_ours, l_ours = ours.gradient(x, y, return_loss=True)
    g_theirs, l_theirs = theirs.gradient(x, y, return_loss=True)
    assert float((l_ours - l_theirs).abs().max() / l_theirs.abs().max()) < 1e-4     # float32 sums of ~2000 terms
    assert float((g_ours - g_theirs).norm() / g_theirs.norm()) < 1e-4
