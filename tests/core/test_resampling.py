"""LMAPS' optional resampling (``resample_*`` keys): the σ walk is what its parameters say, its network calls are
counted as predicted, and with ``resample_count = 0`` (every shipped config but lmaps_resample) LMAPS is Alg. 4
unchanged, sample for sample."""
from __future__ import annotations

import math
from importlib.resources import files

import pytest
import torch

from lmaps_plugin import LMAPS
from lmaps_plugin.app.compose import method_kwargs
from lmaps_plugin.operators import MatrixOperator
from lmaps_plugin.priors.gmm import GaussianMixturePrior
from lmaps_plugin.sampler import sample_lmaps
from lmaps_plugin.schedules import num_steps_for_budget, poly_sigmas, resampled_calls, resampled_sigmas

DT = torch.float64
SHAPE = (1, 2, 3)
D = 6


# -- the walk ---------------------------------------------------------------------------------------------------

def jumps_back(walk: torch.Tensor) -> list[int]:
    """Indices i where the walk does not go down (walk[i + 1] >= walk[i]: back up, or the same level again)."""
    return [i for i in range(len(walk) - 1) if walk[i + 1] >= walk[i]]


def test_resampling_off_returns_the_grid_itself():
    grid = poly_sigmas(20)
    assert resampled_sigmas(grid, jump=4, count=0, sigma_min=0.5, sigma_max=10.0) is grid


@pytest.mark.parametrize("n,jump,count,lo,hi", [(20, 4, 1, 0.0, math.inf), (20, 3, 2, 0.5, 10.0),
                                                (37, 5, 3, 0.1, 1.0), (10, 1, 1, 0.0, math.inf),
                                                (12, 50, 2, 1.0, 30.0)])
def test_the_walk_repeats_each_block_of_levels_in_range(n, jump, count, lo, hi):
    grid = poly_sigmas(n)
    levels = grid[:-1].tolist()
    inside = [i for i, s in enumerate(levels) if lo <= s <= hi]
    walk = resampled_sigmas(grid, jump, count, lo, hi)
    # closed-form cost: N levels plus `count` more for each of the L levels in range
    assert len(walk) - 1 == n + count * len(inside) == resampled_calls(grid, count, lo, hi)
    blocks = math.ceil(len(inside) / jump)
    assert len(jumps_back(walk)) == count * blocks
    # each jump goes back to the first level of its block, from the block's last level
    for i in jumps_back(walk):
        start = levels.index(float(walk[i + 1]))
        assert (start - inside[0]) % jump == 0
        assert levels.index(float(walk[i])) == min(start + jump, inside[-1] + 1) - 1
    # the walk visits the grid's levels only: those out of range once, those in range 1 + count times
    assert set(walk.tolist()) == set(grid.tolist())
    for i, s in enumerate(levels):
        assert walk.tolist().count(s) == (1 + count if i in inside else 1)
    assert walk[0] == grid[0] and walk[-1] == grid[-1] and walk[-2] == grid[-2]


def test_a_range_holding_no_level_leaves_the_grid():
    grid = poly_sigmas(10)
    assert torch.equal(resampled_sigmas(grid, 2, 3, 200.0, 300.0), grid)
    assert resampled_calls(grid, 3, 200.0, 300.0) == 10


def test_the_budgeted_grid_is_the_largest_that_fits():
    n = num_steps_for_budget(200, 1, 0.1, 2.0)
    assert resampled_calls(poly_sigmas(n), 1, 0.1, 2.0) <= 200 < resampled_calls(poly_sigmas(n + 1), 1, 0.1, 2.0)
    assert num_steps_for_budget(200, 0) == 200
    assert num_steps_for_budget(200, 1) == 100


@pytest.mark.parametrize("kwargs,message", [
    (dict(jump=0, count=1), "jump must be >= 1"), (dict(jump=2, count=-1), "count must be >= 0"),
    (dict(jump=2.0, count=1), "jump must be an integer"), (dict(jump=2, count=True), "count must be an integer"),
    (dict(jump=2, count=1, sigma_min=-1.0), "0 <= sigma_min <= sigma_max"),
    (dict(jump=2, count=1, sigma_min=2.0, sigma_max=1.0), "0 <= sigma_min <= sigma_max")])
def test_bad_walk_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resampled_sigmas(poly_sigmas(5), **kwargs)


# -- LMAPS ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def parts():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(D, D, generator=gen, dtype=DT) / math.sqrt(D)
    prior = GaussianMixturePrior.from_covariances([1.0], 0.2 * torch.randn(1, D, generator=gen, dtype=DT),
                                                  (0.2 * f @ f.T + 0.05 * torch.eye(D, dtype=DT))[None],
                                                  img_shape=SHAPE)
    mask = torch.eye(D, dtype=DT)[::2]  # observe every other pixel: an inpainting
    op = MatrixOperator(mask, SHAPE, sigma_noise=0.05)
    y = op.forward(torch.randn(1, *SHAPE, generator=gen, dtype=DT))
    return prior, op, y


def run(parts, seed=3, **settings):
    prior, op, y = parts
    lmaps = LMAPS(prior, op, verbose=False, inner_solver="cg", num_steps=12, **settings)
    out = lmaps.inference(y, generator=torch.Generator().manual_seed(seed))
    return out, lmaps.last_run_stats["nfe"]


def test_off_is_alg4_on_the_plain_grid(parts):
    """Resampling off, whatever its other keys say, is the sampler on the plain poly-ρ grid, bit for bit."""
    prior, op, y = parts
    default, nfe = run(parts)
    ignored, _ = run(parts, resample_count=0, resample_jump=3, resample_sigma_min=0.5, resample_sigma_max=5.0)
    grid = poly_sigmas(12)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((1, *SHAPE), generator=gen, dtype=DT) * float(grid[0])
    lmaps = LMAPS(prior, op, inner_solver="cg", num_steps=12)
    direct = sample_lmaps(prior, x, grid, y, op, inner=lmaps.config.inner, weighting=lmaps.weighting(y),
                          disable=True, generator=gen)
    assert nfe == 12
    assert torch.equal(default, ignored)
    assert torch.equal(default, direct)


@pytest.mark.parametrize("count,jump,lo,hi", [(1, 3, 0.0, None), (2, 2, 0.5, 20.0), (1, 50, 0.1, 1.0)])
def test_on_changes_the_samples_and_costs_the_predicted_calls(parts, count, jump, lo, hi):
    off, _ = run(parts)
    on, nfe = run(parts, resample_count=count, resample_jump=jump, resample_sigma_min=lo, resample_sigma_max=hi)
    assert nfe == resampled_calls(poly_sigmas(12), count, lo, math.inf if hi is None else hi)
    assert nfe > 12
    assert not torch.allclose(on, off)


REFUSED = [("resample_count", -1, "an integer >= 0 (extra passes per resampled block; 0 = off)"),
           ("resample_count", 1.0, "an integer"), ("resample_count", True, "an integer"),
           ("resample_jump", 0, "an integer >= 1 (levels per resampled block)"), ("resample_jump", "4", "an integer"),
           ("resample_sigma_min", -0.1, ">= 0 (lowest σ that is resampled)"),
           ("resample_sigma_min", math.nan, "a finite number"),
           ("resample_sigma_max", -1.0, ">= resample_sigma_min (0.0), or null for no upper bound"),
           ("resample_sigma_max", "high", "a finite number")]


@pytest.mark.parametrize("key,value,allowed", REFUSED, ids=[f"{k}={v!r}" for k, v, _ in REFUSED])
def test_bad_settings_are_refused_naming_key_and_range(parts, key, value, allowed):
    prior, op, _ = parts
    with pytest.raises(ValueError) as info:
        LMAPS(prior, op, **{key: value})
    assert str(info.value) == f"LMAPS: {key}={value!r} is invalid; {key} must be {allowed}"


# -- the shipped configs ----------------------------------------------------------------------------------------

def lmaps_configs() -> list[str]:
    """The shipped LMAPS algorithm configs (configs/algorithm/lmaps*.yaml)."""
    folder = files("lmaps_plugin.configs") / "algorithm"
    return sorted(p.name[:-len(".yaml")] for p in folder.iterdir() if p.name.startswith("lmaps") and p.name.endswith(".yaml"))


@pytest.mark.parametrize("name", [n for n in lmaps_configs() if n != "lmaps_resample"])
def test_every_other_config_keeps_resampling_off(parts, name):
    prior, op, _ = parts
    lmaps = LMAPS(prior, op, **method_kwargs(name))
    assert lmaps.resample_count == 0
    assert torch.equal(lmaps.config.schedule.walk(), lmaps.sigmas())


def test_lmaps_resample_spends_the_budget_of_the_row_it_builds_on(parts):
    prior, op, _ = parts
    row = LMAPS(prior, op, **method_kwargs("lmaps_inpaint_random"))
    resample = LMAPS(prior, op, **method_kwargs("lmaps_resample"))
    assert resample.resample_count >= 1 and resample.num_steps < row.num_steps
    assert len(resample.config.schedule.walk()) == len(row.config.schedule.walk()) == row.num_steps + 1
