import math

import pytest
import torch

from lmaps_plugin.schedules import poly_sigmas, prior_weight, renoise


def test_poly_grid_endpoints_and_closed_form():
    s = poly_sigmas(200, 0.1, 100.0, 7.0)
    assert s.shape == (201,)
    assert s[0].item() == pytest.approx(100.0)
    assert s[199].item() == pytest.approx(0.1)
    assert s[200].item() == 0.0
    assert bool((s[1:] < s[:-1]).all())
    # Karras et al. Eq. 5 at the midpoint of a 3-step grid
    mid = ((100 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7
    assert poly_sigmas(3, 0.1, 100.0, 7.0)[1].item() == pytest.approx(mid, rel=1e-12)


def test_single_step_grid_is_sigma_max_then_final():
    assert poly_sigmas(1, 0.1, 100.0).tolist() == pytest.approx([100.0, 0.0], rel=1e-12)


@pytest.mark.parametrize("kwargs", [dict(num_steps=0), dict(num_steps=5, sigma_min=0.0),
                                    dict(num_steps=5, sigma_min=2.0, sigma_max=1.0), dict(num_steps=5, rho=0.0)])
def test_bad_grids_are_refused(kwargs):
    with pytest.raises(ValueError):
        poly_sigmas(**kwargs)


def test_prior_weight_anneals_from_data_to_prior():
    assert prior_weight(100.0, 0.22) == pytest.approx(1.0, abs=1e-5)
    assert prior_weight(0.22, 0.22) == pytest.approx(0.5, abs=1e-4)
    assert prior_weight(0.01, 0.22) < 0.01
    assert prior_weight(0.3, 0.0) == pytest.approx(1.0, abs=1e-4)


def test_renoise_keeps_total_noise_level():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(20000, 1)
    x = x0 + 2.0 * torch.randn(20000, 1, generator=gen)
    noise = torch.randn(20000, 1, generator=gen)
    for eta in (0.0, 0.5, 1.0):
        out = renoise(x0, x, 2.0, 0.5, noise, eta)
        assert out.std().item() == pytest.approx(0.5, rel=0.03)
    # eta = 0 is deterministic DDIM: x0 + σ_next/σ · (x − x0)
    assert torch.allclose(renoise(x0, x, 2.0, 0.5, noise, 0.0), x * 0.25)
    assert torch.equal(renoise(x0, x, 2.0, 0.0, noise, 1.0), x0)
    assert math.isclose(prior_weight(1.0, 1.0), 0.5, rel_tol=1e-5)
