"""The bookkeeping of the speed benchmark's overhead section (a) (``lmaps_plugin.bench.speed``): no timings,
only the arithmetic and the configurations the timings are taken with (the timings themselves are the
benchmark's output, not tests)."""
from __future__ import annotations

import pytest
import torch

from lmaps_plugin.bench.speed import cases, overhead, problems, timing


def test_ratios_are_paired_within_rounds_and_take_the_median():
    cost = timing.Cost
    net = [cost(1.0, 1.0), cost(2.0, 2.0), cost(4.0, 4.0)]
    run = [cost(1.5, 1.1), cost(2.2, 2.2), cost(8.0, 4.4)]       # per-round ratios 1.5, 1.1, 2.0 (wall)
    assert timing.median_ratio(run, net, "wall") == pytest.approx(1.5)
    assert timing.median_ratio(run, net, "cpu") == pytest.approx(1.1)
    assert timing.ratio_quartiles(run, net, "wall") == pytest.approx((1.3, 1.75))


def test_interleaved_warms_up_with_the_stand_ins_and_rotates():
    calls = []
    variants = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    warm = {name: (lambda n=name: calls.append("warm-" + n)) for name in ("a", "b", "c")}
    samples = timing.interleaved(variants, 3, warm_ups=warm)
    assert calls == ["warm-a", "warm-b", "warm-c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(s) == 3 for s in samples.values())


def test_interleaved_adds_rounds_within_the_budget_up_to_the_cap():
    samples = timing.interleaved({"x": lambda: None}, 2, budget_s=60.0, max_rounds=7)
    assert len(samples["x"]) == 7
    samples = timing.interleaved({"x": lambda: None}, 2, budget_s=0.0, max_rounds=7)
    assert len(samples["x"]) == 2


def test_algorithm_kwargs_compose_the_row_over_lmaps_yaml():
    auto = problems.algorithm_kwargs("lmaps_auto", 7)
    assert auto["num_steps"] == 7 and auto["inner_solver"] == "auto" and auto["calibrate"] is True
    assert auto["lr"] is None and auto["sigma_max"] == 100.0 and "_target_" not in auto
    row = problems.algorithm_kwargs("lmaps_lis_nr360", 3)
    assert (row["inner_steps"], row["lr"], row["k1"], row["k2"], row["inner_solver"]) == (50, 1.0, 0.0, 5000.0, "gd")


def test_channels_as_batch_applies_the_prior_to_each_channel():
    class Toy(torch.nn.Module):
        img_resolution, sigma_data = 4, 0.5

        def forward(self, x, sigma):
            assert x.shape[1] == 1
            return torch.tanh(x * x.mean(dim=(1, 2, 3), keepdim=True)) / (1 + sigma)

    toy = Toy()
    wrapped = cases.ChannelsAsBatch(toy, 2)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor(0.7)
    expected = torch.cat([toy(x[:, c:c + 1], sigma) for c in range(2)], dim=1)
    torch.testing.assert_close(wrapped(x, sigma), expected, rtol=0, atol=0)
    assert (wrapped.img_channels, wrapped.img_resolution, wrapped.sigma_data) == (2, 4, 0.5)


def variant(ratio: float, solve: str = "s") -> dict:
    return {"ratio_wall": ratio, "solve": solve}


def test_targets_are_judged_per_config_and_before_after_rows_name_missing_cases():
    after = {"motion_deblur": {"steps": 50, "variants": {"table4": variant(4.4), "auto": variant(1.29)}},
             "jpeg": {"steps": 50, "variants": {"table4": variant(17.0), "auto": variant(5.1)}},
             "mri-ours": {"steps": 50, "variants": {"table4": variant(11.0), "auto": variant(1.31)}}}
    before = {"motion_deblur": {"steps": 50, "variants": {"table4": variant(4.5), "auto": variant(5.9, "CG")}},
              "jpeg": {"steps": 50, "variants": {"table4": variant(16.0), "auto": None}}}
    rows = {row[0]: row for row in overhead.before_after_rows(before, after)}
    assert rows["motion_deblur"][-2:] == ["<= 1.3", "lmaps_auto met (1.29); Table-4 row not met (4.40)"]
    assert rows["motion_deblur"][3] == "5.90 (CG, N=50)"
    assert rows["jpeg"][3] == "n/a (non-linear: no exact solve)" and rows["jpeg"][-1] == "-"
    assert rows["mri-ours"][1] == "not run" and rows["mri-ours"][-1].startswith("lmaps_auto not met (1.31)")


def test_accepted_keeps_every_keyword_the_solver_takes():
    auto = problems.algorithm_kwargs("lmaps_auto", 7)
    assert problems.accepted(auto) == auto
    assert problems.accepted({**auto, "no_such_keyword": 1}) == auto
