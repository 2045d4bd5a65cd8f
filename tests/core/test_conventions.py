"""The gradient-scale convention, pinned (docs/conventions.md).

LMAPS's data gradient is ``(r·k2/2)·forward_op.gradient``: half of InverseBench's gradient of
‖y − H(x)‖². With that factor, one inner step of η·k2 = 1 at r ≈ 1 puts every observed pixel of
an inpainting mask exactly on y, which is what Table 4's η·k2 = 1 rows rely on. The literal
reading (the full gradient of ‖y − Hx‖², no ½) moves each observed pixel twice as far: it flips
it around y (x ↦ 2y − x) and leaves the misfit where it was.

Independent truth: for a 0/1 mask m, ``forward_op.gradient(x, y) = 2·m ⊙ (m ⊙ x − y)``, so one
step from x̂0 is x̂0 − η·r·k2·m ⊙ (x̂0 − y) (convention) or x̂0 − 2·η·r·k2·m ⊙ (x̂0 − y) (literal);
both are computed here by hand and only the first is what ``gd_local_map`` returns.
"""
from __future__ import annotations

import pytest
import torch

from lmaps_plugin.local_map import gd_local_map
from lmaps_plugin.operators.linear import BoxInpainting, RandomInpainting

DT = torch.float64
SIGMA, K1 = 100.0, 0.0
R = SIGMA ** 2 / (SIGMA ** 2 + K1 ** 2 + 1e-6)     # Eq. 13's weight at σ = 100: 1 − 1e-10


def one_step(x0_hat, y, op, lr, k2):
    out = gd_local_map(x0_hat, y, op, r=R, k2=k2, lr=lr, steps=1, closed_form=False)
    return out[0] if isinstance(out, tuple) else out


@pytest.fixture(params=["inpaint_random", "inpaint_box"])
def problem(request):
    op = (RandomInpainting(drop_fraction=0.5, seed=0, resolution=16, channels=3, sigma_noise=0.05)
          if request.param == "inpaint_random" else
          BoxInpainting(seed=0, resolution=16, channels=3, sigma_noise=0.05))
    gen = torch.Generator().manual_seed(0)
    truth = 2 * torch.rand(2, 3, 16, 16, generator=gen, dtype=DT) - 1
    torch.manual_seed(1)
    y = op({"target": truth})
    x0_hat = 2 * torch.rand(2, 3, 16, 16, generator=gen, dtype=DT) - 1
    observed = (op.mask.to(DT) > 0.5).expand_as(x0_hat)
    assert 0 < observed.double().mean() < 1
    return op, y, x0_hat, observed


@pytest.mark.parametrize("lr,k2", [(0.01, 100.0), (0.05, 20.0), (0.2, 5.0)])   # Table 4: η·k2 = 1
def test_one_step_projects_observed_pixels_onto_y(problem, lr, k2):
    op, y, x0_hat, observed = problem
    x1 = one_step(x0_hat, y, op, lr, k2)
    # observed pixels land on y, up to (1 − r)·|x̂0 − y| ≤ 2e-10
    torch.testing.assert_close(x1[observed], y[observed], atol=1e-9, rtol=0)
    # unobserved pixels keep x̂0 exactly (no data there, and the prior term is zero at x̂0)
    torch.testing.assert_close(x1[~observed], x0_hat[~observed], atol=0, rtol=0)
    # so the step removes the observed misfit: what is left is the noise on the dropped pixels
    assert float(((op.forward(x1) - y) * observed).abs().max()) < 1e-9


@pytest.mark.parametrize("lr,k2", [(0.01, 100.0), (0.05, 20.0), (0.2, 5.0)])
def test_literal_reading_flips_observed_pixels_around_y(problem, lr, k2):
    op, y, x0_hat, observed = problem
    # by hand: the full gradient of ‖y − Hx‖² (InverseBench's forward_op.gradient), no ½
    literal = x0_hat - lr * (R * k2 * op.gradient(x0_hat, y))
    torch.testing.assert_close(literal[observed], (2 * y - x0_hat)[observed], atol=1e-9, rtol=0)
    # |literal − y| = |x̂0 − y|: the misfit does not move
    torch.testing.assert_close((literal - y)[observed].abs(), (x0_hat - y)[observed].abs(), atol=1e-9, rtol=0)
    # and LMAPS's step is not the literal one: it sits |x̂0 − y| (≈ 0.67 on average here) away from it
    x1 = one_step(x0_hat, y, op, lr, k2)
    gap = (x1 - literal)[observed].abs()
    torch.testing.assert_close(gap, (x0_hat - y)[observed].abs(), atol=1e-9, rtol=0)
    assert float(gap.mean()) > 0.3
