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


def _correlation(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.8, 1.0])
@pytest.mark.parametrize("sigma_next", [1.0, 0.5])
def test_renoise_mixes_previous_and_fresh_noise_by_eta(eta, sigma_next):
    """DDIM's re-noising around a non-zero x0: x' = x0 + σ'·(√(1 − η²)·ε_prev + η·ε_new), ε_prev = (x − x0)/σ.

    Independent truth: the correlation of the new noise (x' − x0)/σ' with the previous noise is √(1 − η²) and
    with the fresh draw η (Alg. 4's η = 1: fresh noise, uncorrelated with the previous), and its std is 1."""
    gen = torch.Generator().manual_seed(3)
    n, sigma = 40000, 2.0
    x0 = 3.0 * torch.randn(n, 1, generator=gen, dtype=torch.float64) + 1.5
    previous = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    fresh = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    out = renoise(x0, x0 + sigma * previous, sigma, sigma_next, fresh, eta)
    new_noise = (out - x0) / sigma_next
    tol = 5 / math.sqrt(n)                                  # five standard errors of a correlation
    assert _correlation(new_noise, previous) == pytest.approx(math.sqrt(1 - eta ** 2), abs=tol)
    assert _correlation(new_noise, fresh) == pytest.approx(eta, abs=tol)
    assert float(new_noise.std()) == pytest.approx(1.0, abs=tol)
    assert abs(float(new_noise.mean())) < tol
    if eta == 1.0:                                          # fresh noise only: x' = x0 + σ'·ε_new, exactly
        torch.testing.assert_close(out, x0 + sigma_next * fresh, rtol=0, atol=1e-12)


def test_renoise_to_zero_returns_the_estimate_for_every_eta():
    gen = torch.Generator().manual_seed(4)
    x0, x, noise = (torch.randn(5, 3, generator=gen) for _ in range(3))
    for eta in (0.0, 0.5, 1.0):
        assert torch.equal(renoise(x0, x, 1.0, 0.0, noise, eta), x0)


def test_prior_weight_is_the_closed_form():
    """Alg. 4, line 5: r = σ²/(σ² + k1² + 1e-6), at values where each term matters."""
    for sigma, k1 in [(0.5, 0.3), (2.0, 1.5), (1e-3, 0.0), (0.05, 0.2)]:
        assert prior_weight(sigma, k1) == pytest.approx(sigma ** 2 / (sigma ** 2 + k1 ** 2 + 1e-6), rel=1e-14)
    assert prior_weight(1e-3, 0.0) == pytest.approx(0.5, rel=1e-9)     # the 1e-6 regulariser: σ² = 1e-6


def test_poly_grid_is_karras_eq5_everywhere_and_lands_where_asked():
    """Every level of the poly-ρ grid (Karras et al. Eq. 5), for several ρ, on the requested dtype and device."""
    for n, lo, hi, rho, final in [(7, 0.02, 80.0, 7.0, 0.0), (4, 0.5, 3.0, 2.0, 0.25), (2, 1.0, 1.0, 3.0, 1.0)]:
        s = poly_sigmas(n, lo, hi, rho, final)
        i = torch.arange(n, dtype=torch.float64)
        ramp = i / max(n - 1, 1)
        expected = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        torch.testing.assert_close(s[:-1], expected, rtol=1e-13, atol=0)
        assert s[-1].item() == final
    assert poly_sigmas(3, dtype=torch.float32).dtype == torch.float32
    assert poly_sigmas(3).dtype == torch.float64
    assert poly_sigmas(3, device="meta").device.type == "meta"
    # the defaults are DAPS' (and Alg. 4's) grid: 100 → 0.1 with ρ = 7, then 0
    torch.testing.assert_close(poly_sigmas(200), poly_sigmas(200, 0.1, 100.0, 7.0, 0.0), rtol=0, atol=0)
    assert poly_sigmas(200)[0].item() == pytest.approx(100.0) and poly_sigmas(200)[-2].item() == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(num_steps=0), "num_steps must be >= 1"),
    (dict(num_steps=5, sigma_min=0.0), "0 < sigma_min <= sigma_max"),
    (dict(num_steps=5, sigma_min=-1.0), "0 < sigma_min <= sigma_max"),
    (dict(num_steps=5, sigma_min=2.0, sigma_max=1.0), "0 < sigma_min <= sigma_max"),
    (dict(num_steps=5, rho=0.0), "rho must be > 0"),
    (dict(num_steps=5, rho=-1.0), "rho must be > 0"),
    (dict(num_steps=5, sigma_final=-0.1), r"sigma_final must lie in \[0, sigma_min\]"),
    (dict(num_steps=5, sigma_final=0.2), r"sigma_final must lie in \[0, sigma_min\]"),
])
def test_bad_grids_name_what_is_wrong(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        poly_sigmas(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(num_steps=1), dict(num_steps=3, sigma_min=1.0, sigma_max=1.0),
                                    dict(num_steps=3, rho=0.5), dict(num_steps=3, sigma_final=0.1)])
def test_edge_grids_are_accepted(kwargs):
    s = poly_sigmas(**kwargs)
    assert s.shape == (kwargs["num_steps"] + 1,) and bool(torch.isfinite(s).all())
