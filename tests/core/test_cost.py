"""Counted cost: network calls, operator applications and gradients, network and solver seconds, counted by
wrapping the objects a run uses; the objects are restored afterwards."""
from __future__ import annotations

import math

import pytest
import torch

from lmaps_plugin import LMAPS
from lmaps_plugin.cost import COST_KEYS, count_cost, take_last_run
from lmaps_plugin.inversebench.adapters import record_cost
from lmaps_plugin.operators.matrix import MatrixOperator
from lmaps_plugin.priors import build_edm_unet

SHAPE = (1, 8, 8)


def prior():
    torch.manual_seed(0)
    return build_edm_unet(dict(img_channels=1, img_resolution=8, model_channels=8, channel_mult=[1], num_blocks=1,
                               attn_resolutions=[], patch_size=1)).eval()


def operator():
    a = torch.randn(20, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64) / 8
    return MatrixOperator(a, SHAPE, sigma_noise=0.01)


@pytest.mark.parametrize("n, k", [(3, 4), (5, 1)])
def test_gradient_descent_counts_match_algorithm_4(n, k):
    """N network calls; K operator gradients per step; two data losses per step (at x̂0 and at the local MAP) and
    one forward that checks the observation's shape before sampling."""
    net, op = prior(), operator()
    y = op({"target": torch.zeros(1, *SHAPE, dtype=torch.float64)})
    lmaps = LMAPS(net, op, num_steps=n, inner_steps=k, step_guard=False, gd_closed_form=False, verbose=False)
    with count_cost(net, op) as outer:
        lmaps.inference(y)
    stats = lmaps.last_run_stats
    assert (stats["nfe"], stats["vjp_calls"], stats["forward_calls"]) == (n, n * k, 2 * n + 1)
    assert (outer.nfe, outer.vjp_calls, outer.forward_calls) == (n, n * k, 2 * n + 1)   # the same, counted outside
    assert 0 < stats["network_seconds"] and 0 <= stats["solver_seconds"]
    assert take_last_run(y.clone()) is None                                         # another observation
    assert take_last_run(y) == {key: stats[key] for key in COST_KEYS}               # the one reconstructed
    assert take_last_run(y) is None                                                 # taken once


def test_the_wrapped_objects_are_restored_even_after_an_error():
    net, op = prior(), operator()
    before = (dict(vars(op)), "forward" in vars(net))
    with pytest.raises(RuntimeError):
        with count_cost(net, op):
            op.forward(torch.zeros(1, *SHAPE, dtype=torch.float64))
            raise RuntimeError("stop")
    assert (dict(vars(op)), "forward" in vars(net)) == before
    assert type(op).forward is MatrixOperator.forward


def test_a_gradient_counts_once_however_many_calls_it_makes_inside():
    op = operator()
    x = torch.zeros(1, *SHAPE, dtype=torch.float64)
    with count_cost(None, op) as cost:
        op.gradient(x, op.forward(x))            # gradient runs forward and adjoint itself
    assert (cost.forward_calls, cost.vjp_calls, cost.nfe) == (1, 1, 0)


def test_record_cost_keeps_one_value_per_sample():
    state = {"psnr": [20.0]}
    record_cost(state, None)                        # a peer publishes nothing: nothing is added
    assert state == {"psnr": [20.0]}
    state["psnr"].append(21.0)
    record_cost(state, dict.fromkeys(COST_KEYS, 3.0))
    assert state["nfe"][1] == 3.0 and math.isnan(state["nfe"][0]) and len(state["nfe"]) == 2
    state["psnr"].append(22.0)
    record_cost(state, None)
    assert math.isnan(state["nfe"][2]) and len(state["vjp_calls"]) == 3
