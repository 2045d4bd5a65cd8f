"""LMAPS's settings: every key refuses what it cannot use, naming the key, the value and what is allowed, and
accepts the edge of its range (the edges are the documented ranges of ``LMAPS``; docs/calibration.md for
``calib_*``)."""
from __future__ import annotations

import math
import re

import pytest
import torch

from lmaps_plugin import LMAPS
from lmaps_plugin.operators import MatrixOperator
from lmaps_plugin.priors.gmm import GaussianMixturePrior

DT = torch.float64
SHAPE = (1, 2, 2)


@pytest.fixture(scope="module")
def parts():
    prior = GaussianMixturePrior.from_covariances([1.0], torch.zeros(1, 4, dtype=DT), torch.eye(4, dtype=DT)[None],
                                                  img_shape=SHAPE)
    return prior, MatrixOperator(torch.eye(4, dtype=DT), SHAPE)


REFUSED = [
    ("num_steps", 0, "an integer >= 1 (N, annealing steps)"),
    ("num_steps", 2.0, "an integer"),
    ("num_steps", True, "an integer"),
    ("inner_steps", 0, "an integer >= 1 (K, gradient steps)"),
    ("power_iters", 0, "an integer >= 1"),
    ("power_iters", 1.5, "an integer"),
    ("max_backoffs", -1, "an integer >= 0"),
    ("max_backoffs", None, "an integer"),
    ("cg_max_iter", 0, "an integer >= 1 (conjugate-gradient iteration cap)"),
    ("cg_max_iter", "9", "an integer"),
    ("step_guard", 1, "true or false"),
    ("calibrate", "yes", "true or false"),
    ("gd_closed_form", None, "true or false"),
    ("compile_net", 0, "true or false"),
    ("lr", 0.0, "> 0 (η, the inner learning rate), or null for η = 1/L"),
    ("lr", True, "a finite number"),
    ("lr", "0.1", "a finite number"),
    ("k1", -1e-9, ">= 0 (0 makes r ≈ 1: data term only)"),
    ("k1", math.inf, "a finite number"),
    ("k2", 0.0, "> 0 (scale of the data-consistency term)"),
    ("k2", math.nan, "a finite number"),
    ("sigma_min", 0.0, "> 0"),
    ("sigma_max", 0.05, ">= sigma_min (0.1)"),
    ("rho", 0.0, "> 0 (poly-ρ grid exponent, 7 in EDM)"),
    ("sigma_final", -0.01, "in [0, sigma_min]"),
    ("sigma_final", 0.2, "in [0, sigma_min]"),
    ("ddim_eta", -0.1, "in [0, 1] (1 = Alg. 4's fresh noise, 0 = DDIM)"),
    ("ddim_eta", 1.01, "in [0, 1] (1 = Alg. 4's fresh noise, 0 = DDIM)"),
    ("cg_tol", 0.0, "> 0 (conjugate gradient's relative residual tolerance)"),
    ("calib_lambda", 0.0, "> 0 (lmaps_auto's noise-variance multiplier; 1 = Bayes)"),
    ("calib_variance", "sigma", "one of ('gaussian', 'sigma2')"),
    ("inner_solver", "exact", "one of ('gd', 'cg', 'auto')"),
]


@pytest.mark.parametrize("key,value,allowed", REFUSED, ids=[f"{k}={v!r}" for k, v, _ in REFUSED])
def test_a_bad_setting_is_refused_naming_key_value_and_range(parts, key, value, allowed):
    prior, op = parts
    with pytest.raises(ValueError) as info:
        LMAPS(prior, op, **{key: value})
    message = str(info.value)
    assert message.startswith(f"LMAPS: {key}={value!r} is invalid; {key} must be ")
    assert message.endswith(allowed), message


EDGES = [dict(num_steps=1), dict(inner_steps=1), dict(power_iters=1), dict(max_backoffs=0), dict(cg_max_iter=1),
         dict(lr=None), dict(lr=1e-12), dict(k1=0.0), dict(k2=1e-12), dict(sigma_min=1e-9),
         dict(sigma_max=0.1, sigma_min=0.1), dict(rho=1e-3), dict(sigma_final=0.0), dict(sigma_final=0.1),
         dict(ddim_eta=0.0), dict(ddim_eta=1.0), dict(cg_tol=1e-300), dict(calib_lambda=1e-9),
         dict(calib_variance="sigma2"), dict(inner_solver="cg"), dict(inner_solver="auto"),
         dict(step_guard=False, calibrate=True, gd_closed_form=False, compile_net=True), dict(num_steps=3, lr=2)]


@pytest.mark.parametrize("kwargs", EDGES, ids=[",".join(f"{k}={v}" for k, v in e.items()) for e in EDGES])
def test_the_edges_of_each_range_are_accepted(parts, kwargs):
    prior, op = parts
    solver = LMAPS(prior, op, **kwargs)
    for key, value in kwargs.items():
        assert getattr(solver, key) == value


def test_settings_are_stored_as_their_types(parts):
    prior, op = parts
    s = LMAPS(prior, op, num_steps=3, inner_steps=2, lr=1, k1=0, k2=5, ddim_eta=0, cg_tol=1, calib_lambda=2)
    assert [type(v) for v in (s.lr, s.k1, s.k2, s.ddim_eta, s.cg_tol, s.calib_lambda)] == [float] * 6
    assert re.fullmatch(r"LMAPS\(N=3, K=2, lr=1\.0, k1=0\.0, k2=5\.0, inner_solver='gd'\)", repr(s))
    auto = LMAPS(prior, op, calibrate=True, calib_lambda=1.5, inner_solver="auto")
    assert repr(auto) == "LMAPS(N=200, K=100, calibrate=True, calib_lambda=1.5, inner_solver='auto')"
