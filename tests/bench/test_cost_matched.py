"""lmaps-bench compare --match / --pareto / --configs: the budget rule on hand-made records (closed-form N' and M),
the Pareto frontier on hand-made points, argument refusals, and one tiny end-to-end run (1 test image, 6 steps)."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
import yaml

from lmaps_plugin.bench import budget as B
from lmaps_plugin.bench import main as M
from lmaps_plugin.bench import pareto as P


def record(seconds, nfe, num_samples=1):
    return {"status": "ok", "seconds": seconds, "num_samples": num_samples, "metrics": {"psnr": 30.0, "nfe": nfe}}


# ------------------------------------------------------------------------------------------- budget rule
def test_measured_cost_is_the_mean_and_counts_every_image_of_an_ensemble():
    cost = B.measured_cost([record(0.3, 100), record(0.5, 100)])
    assert cost.seconds == pytest.approx(0.4) and cost.nfe == 100 and cost.n == 2
    ens = B.measured_cost([record(1.0, 100, num_samples=4)])
    assert ens.nfe == 400          # 100 batched calls of 4 images each
    with pytest.raises(B.BudgetError):
        B.measured_cost([{"status": "ok", "metrics": {}}])


def test_budget_is_the_most_expensive_peer():
    peers = {"PiGDM": B.Cost(0.9, 100, 8), "DPS": B.Cost(2.1, 200, 8), "DAPS": B.Cost(1.4, 250, 8)}
    assert B.budget(peers, "time") == (2.1, "DPS")
    assert B.budget(peers, "nfe") == (250, "DAPS")
    with pytest.raises(B.BudgetError, match="at least one peer"):
        B.budget({}, "time")
    with pytest.raises(B.BudgetError, match="unknown match"):
        B.budget(peers, "flops")


@pytest.mark.parametrize("steps, cost, budget, expected_steps, expected_m", [
    (100, 0.4, 2.1, 525, 5),      # 100 · 2.1 / 0.4 = 525 exactly (float product 524.99…), 2.1 / 0.4 = 5.25
    (100, 0.4, 0.9, 225, 2),      # ΠGDM's 0.9 s: 225 steps, 2 samples
    (100, 100, 200, 200, 2),      # nfe: 100 calls against DPS's 200
    (100, 0.5, 0.3, 60, 1),       # a budget below the tuned cost: fewer steps, never fewer than 1 sample
    (100, 0.6, 1.0, 166, 1),      # 166.67 steps and 1.67 samples round down: never above the budget
    (3, 10.0, 1.0, 1, 1),         # never below 1 step
])
def test_scaled_steps_and_ensemble_size_closed_form(steps, cost, budget, expected_steps, expected_m):
    assert B.scaled_steps(steps, cost, budget) == expected_steps
    assert B.ensemble_size(cost, budget) == expected_m
    # within the budget at the measured cost per step, and one more step would exceed it
    if expected_steps > 1:
        assert expected_steps * cost / steps <= budget * (1 + 1e-9)
        assert (expected_steps + 1) * cost / steps > budget


def test_second_round_rescales_from_the_scaled_runs_own_measurement():
    # N' = 367 measured 5.53 s against B = 9.13 s: 0.61 of B, off by more than 10 % -> floor(367 · 9.13 / 5.53)
    assert B.off_budget(5.53, 9.13) and not B.off_budget(9.5, 9.13) and not B.off_budget(8.3, 9.13)
    assert B.scaled_steps(367, 5.53, 9.13) == 605
    # M' = 3 measured 2.98 s: each sample 2.98 / 3 s -> floor(3 · 9.13 / 2.98) = 9
    assert B.ensemble_size(2.98, 9.13, samples=3) == 9
    assert B.ensemble_size(2.98, 9.13) == 3


def test_rule_refuses_non_positive_costs():
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(B.BudgetError):
            B.scaled_steps(100, bad, 1.0)
        with pytest.raises(B.BudgetError):
            B.ensemble_size(1.0, bad)


def test_step_key_of_each_peer_layout():
    assert B.step_key({"num_steps": 100, "inner_steps": 20}) == "num_steps"
    assert B.step_key({"scheduler_config": {"num_steps": 100}}) == "scheduler_config.num_steps"
    daps = {"annealing_scheduler_config": {"num_steps": 50}, "diffusion_scheduler_config": {"num_steps": 5},
            "lgvd_config": {"num_steps": 100}}
    assert B.step_key(daps) == "annealing_scheduler_config.num_steps"
    assert B.get_key(daps, B.step_key(daps)) == 50
    assert B.step_key({"diffusion_scheduler_config": {"num_steps": 200}}) == "diffusion_scheduler_config.num_steps"
    with pytest.raises(B.BudgetError):
        B.step_key({"lr": 0.1})


def test_scaled_step_counts_and_parse_scales():
    assert B.scaled_step_counts(100, [0.5, 1, 2]) == [50, 100, 200]
    assert B.scaled_step_counts(3, [0.1, 0.2, 1]) == [1, 3]          # repeats dropped
    assert B.parse_scales("0.5, 1,2") == [0.5, 1.0, 2.0]
    for bad in ("", "0.5,x", "0,1", "1,1", "-2"):
        with pytest.raises(B.BudgetError):
            B.parse_scales(bad)


# ------------------------------------------------------------------------------------------- Pareto
def test_pareto_front_on_hand_made_points():
    #            cost  psnr
    points = [(0.4, 28.0),   # 0 front
              (0.9, 31.0),   # 1 front
              (2.1, 29.7),   # 2 dominated by 1
              (0.2, 26.0),   # 3 front (cheapest)
              (0.9, 30.0),   # 4 dominated by 1 (same cost, lower)
              (1.6, 31.0),   # 5 dominated by 1 (more cost, same score)
              (3.0, 32.5),   # 6 front
              (math.nan, 40.0)]  # left out
    assert P.pareto_front(points) == [3, 0, 1, 6]
    assert P.pareto_front([]) == []
    assert P.pareto_front([(1.0, 5.0), (1.0, 5.0)]) == [0]


def test_plot_task_writes_a_small_png(tmp_path):
    pts = [P.Point("LMAPS", "single", 50, 1, 0.2, 50, 26.0), P.Point("LMAPS", "single", 100, 1, 0.4, 100, 28.0),
           P.Point("LMAPS", "ensemble", 100, 4, 1.6, 400, 30.5), P.Point("DPS", "single", 200, 1, 2.1, 200, 29.7)]
    path = P.plot_task("inpaint_random", pts, tmp_path / "p.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000


# ------------------------------------------------------------------------------------------- CLI
def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        M.main(argv)
    return exc.value.code, capsys.readouterr().err


def test_match_with_an_unknown_value_is_refused(capsys):
    code, err = run_cli(["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu,ib_dps",
                         "--match", "flops"], capsys)
    assert code == 2 and "invalid choice: 'flops'" in err and "time" in err and "nfe" in err


@pytest.mark.parametrize("algorithms, message", [("lmaps_cpu", "no peer"), ("ib_dps,ib_pigdm", "no LMAPS method")])
def test_match_needs_lmaps_and_a_peer(tmp_path, capsys, algorithms, message):
    code = M.main(["compare", "--tasks", "inpaint_random", "--algorithms", algorithms, "--configs",
                   "published/faces64", "--match", "time", "--test-ids", "0", "--exp-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "c" / "test").exists()     # refused before any run


def test_configs_prefix_must_name_existing_configs(tmp_path, capsys):
    code = M.main(["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu", "--configs", "nowhere",
                   "--test-ids", "0", "--exp-dir", str(tmp_path / "c")])
    assert code == 2 and "nowhere/inpaint_random/lmaps_cpu.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("split, ids, overrides, refused", [
    ("none", [0, 1, 2], [], True), ("test", [7], [], True), ("none", [5, 6], [], False),
    ("val", [0, 1, 2], [], False), ("none", [0, 1, 2], ["problem.data.root=/data/val"], False)])
def test_configs_tuned_on_the_test_images_are_refused(tmp_path, split, ids, overrides, refused):
    from lmaps_plugin.bench.compare_runs import CompareRequest, given_configs
    from lmaps_plugin.bench.tune.request import TuneError

    exp = tmp_path / "c"
    folder = exp / "tune" / "configs" / "algorithm" / "mine" / "inpaint_random"
    folder.mkdir(parents=True)
    doc = {"name": "x", "method": {}, "tuned": {"val_split": split, "val_ids": ids, "best_value": 1.0,
                                                "overrides": overrides}}
    (folder / "lmaps_cpu.yaml").write_text(yaml.safe_dump(doc))
    spec = CompareRequest(tasks=["inpaint_random"], algorithms=["lmaps_cpu"], test_ids=[0, 1], configs="mine",
                          exp_dir=str(exp))
    if refused:
        with pytest.raises(TuneError, match="tuned on test images"):
            given_configs(spec)
    else:
        assert given_configs(spec)[("inpaint_random", "lmaps_cpu")].best_value == 1.0


@pytest.mark.parametrize("flag, value", [("--pareto-scales", "0,1"), ("--pareto-ensembles", "1,2.5")])
def test_bad_pareto_values_are_refused(tmp_path, capsys, flag, value):
    code = M.main(["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu", "--configs",
                   "published/faces64", flag, value, "--test-ids", "0", "--exp-dir", str(tmp_path / "c")])
    assert code == 2 and flag in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("INVERSEBENCH_ROOT"), reason="INVERSEBENCH_ROOT is not set")
def test_tiny_matched_and_pareto_run(tmp_path, capsys):
    """LMAPS against ΠGDM at 6 steps on one test face: the matched table's N' and M follow the rule from the runs'
    own measured seconds, and the Pareto files hold every budget."""
    exp = tmp_path / "compare"
    folder = exp / "tune" / "configs" / "algorithm" / "tiny" / "inpaint_random"
    folder.mkdir(parents=True)
    root = Path(__file__).resolve().parents[2] / "configs" / "algorithm" / "published" / "faces64" / "inpaint_random"
    for name, key in (("lmaps_cpu", ("num_steps",)), ("ib_pigdm", ("scheduler_config", "num_steps"))):
        doc = yaml.safe_load((root / f"{name}.yaml").read_text())
        node = doc["method"]
        for part in key[:-1]:
            node = node[part]
        node[key[-1]] = 6
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    code = M.main(["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu,ib_pigdm", "--configs", "tiny",
                   "--test-ids", "0", "--match", "time", "--match-rounds", "1", "--pareto", "--pareto-scales", "0.5,1",
                   "--pareto-ensembles", "1,2", "--jobs", "1", "--threads", "1", "--exp-dir", str(exp)])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((exp / "matched.csv").open()))
    by_role = {r["role"]: r for r in rows}
    assert set(by_role) == {"peer", "tuned", "more steps", "ensemble mean"}
    peer, tuned = by_role["peer"], by_role["tuned"]
    budget = float(peer["seconds_per_image"])
    assert float(peer["budget"]) == pytest.approx(budget, rel=1e-5) and peer["budget_set_by"] == "PiGDM-tuned"
    c = float(tuned["seconds_per_image"])
    assert int(by_role["more steps"]["steps"]) == B.scaled_steps(6, c, budget)
    assert int(by_role["ensemble mean"]["num_samples"]) == B.ensemble_size(c, budget)
    assert float(by_role["ensemble mean"]["nfe_per_image"]) == 6 * int(by_role["ensemble mean"]["num_samples"])
    points = list(csv.DictReader((exp / "pareto.csv").open()))
    assert {(p["method"], p["steps"], p["num_samples"]) for p in points} == {
        ("LMAPS-cpu-tuned", "3", "1"), ("LMAPS-cpu-tuned", "6", "1"), ("LMAPS-cpu-tuned", "6", "2"),
        ("PiGDM-tuned", "3", "1"), ("PiGDM-tuned", "6", "1")}
    assert (exp / "pareto_inpaint_random.png").stat().st_size > 1000
    assert "budget B = " in (exp / "matched.md").read_text()
