"""``ensemble_spread`` and :func:`lmaps_plugin.ensemble.inflate`: each observation's ensemble is widened about
its own mean by exactly the factor, nothing else moves (checked against the unwidened run with the same noise)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from lmaps_plugin import LMAPS
from lmaps_plugin.ensemble import ensemble_std, inflate
from lmaps_plugin.operators import MatrixOperator
from lmaps_plugin.priors.gmm import GaussianMixturePrior

DT = torch.float64
SHAPE = (1, 3, 4)
D = 12


def two_component_prior():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(2, D, generator=gen, dtype=DT)
    covs = torch.stack([torch.eye(D, dtype=DT) * 0.3, torch.eye(D, dtype=DT) * 0.6])
    return GaussianMixturePrior.from_covariances([0.4, 0.6], means, covs, img_shape=SHAPE)


def operator():
    gen = torch.Generator().manual_seed(1)
    return MatrixOperator(torch.randn(5, D, generator=gen, dtype=DT) / math.sqrt(D), image_shape=SHAPE,
                          sigma_noise=0.05)


def run(spread, num_samples, observations):
    solver = LMAPS(two_component_prior(), operator(), num_steps=8, inner_solver="cg", calibrate=True, lr=None,
                   verbose=False, ensemble_spread=spread)
    return solver.inference(observations, num_samples=num_samples, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("factor", [0.5, 1.75, 3.0])
def test_inflate_keeps_the_mean_and_scales_every_deviation(factor):
    gen = torch.Generator().manual_seed(2)
    samples = torch.randn(8, 1, 5, 5, generator=gen, dtype=DT)
    wide = inflate(samples, factor)
    assert torch.allclose(wide.mean(0), samples.mean(0), atol=1e-14)
    assert torch.allclose(ensemble_std(wide), factor * ensemble_std(samples), rtol=1e-12)
    assert torch.allclose(wide - wide.mean(0), factor * (samples - samples.mean(0)), atol=1e-14)


@pytest.mark.parametrize("factor", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_inflate_refuses_a_factor_that_is_not_a_positive_number(factor):
    with pytest.raises(ValueError, match="spread factor must be a finite number > 0"):
        inflate(torch.zeros(4, 3), factor)


def test_ensemble_spread_widens_each_observations_samples_about_their_own_mean():
    """Two observations × 4 samples: the widened run equals mean_b + 1.75·(x − mean_b) of the plain run, per
    observation b (groups are never mixed), with the same noise."""
    gen = torch.Generator().manual_seed(4)
    y = operator().forward(torch.randn(2, *SHAPE, generator=gen, dtype=DT))
    plain, wide = run(1.0, 4, y), run(1.75, 4, y)
    groups = plain.reshape(2, 4, *SHAPE)
    mean = groups.mean(1, keepdim=True)
    expected = (mean + 1.75 * (groups - mean)).reshape(plain.shape)
    assert torch.allclose(wide, expected, atol=1e-12)
    assert not torch.allclose(wide, plain, atol=1e-3)
    assert torch.allclose(wide.reshape(2, 4, *SHAPE).mean(1), groups.mean(1), atol=1e-12)


def test_ensemble_spread_with_one_sample_warns_and_changes_nothing():
    y = operator().forward(torch.ones(1, *SHAPE, dtype=DT))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run(1.75, 1, y)
    assert any("no effect with num_samples=1" in str(w.message) for w in caught)
    assert torch.equal(out, run(1.0, 1, y))


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), True])
def test_lmaps_refuses_a_bad_ensemble_spread_naming_the_key(bad):
    with pytest.raises(ValueError, match="ensemble_spread"):
        LMAPS(two_component_prior(), operator(), ensemble_spread=bad, verbose=False)


def test_lmaps_ensemble_config_is_lmaps_auto_widened():
    from lmaps_plugin.app.compose import compose_app

    cfg = compose_app(["algorithm=lmaps_ensemble"])
    auto = compose_app(["algorithm=lmaps_auto"])
    method, base = dict(cfg.algorithm.method), dict(auto.algorithm.method)
    assert method.pop("ensemble_spread") == 1.75 and base.pop("ensemble_spread", 1.0) == 1.0
    assert method == base            # no per-task numbers beyond lmaps_auto's
