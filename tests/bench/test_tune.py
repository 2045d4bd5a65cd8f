"""lmaps-bench tune / compare: search spaces, the val/test split, resumable studies, retried trials, tuned configs
that reload in the lmaps app, and the comparison table (tiny studies: N = 5 annealing steps, 1-2 images)."""
from __future__ import annotations

import json
import math
import pathlib
import time
import types

import pytest
import torch
import yaml

optuna = pytest.importorskip("optuna")

from lmaps_plugin.bench import compare_runs as CR  # noqa: E402
from lmaps_plugin.bench import compare_tables as CT  # noqa: E402
from lmaps_plugin.app import compose as CO  # noqa: E402
from lmaps_plugin.bench.tune import objective as OB  # noqa: E402
from lmaps_plugin.bench.tune import outputs as OUT  # noqa: E402
from lmaps_plugin.bench.tune import request as RQ  # noqa: E402
from lmaps_plugin.bench.tune import study as ST  # noqa: E402
from lmaps_plugin.bench.tune import command as T  # noqa: E402
from lmaps_plugin.bench.tune import space as S  # noqa: E402
from lmaps_plugin.data import builtin_dataset  # noqa: E402

TINY = ["algorithm.method.num_steps=5"]


def tiny_request(tmp_path, trials=2, val_ids=(0,), **kwargs) -> RQ.TuneRequest:
    return RQ.TuneRequest(task="inpaint_random", algorithm="lmaps_cpu", trials=trials, val_ids=list(val_ids),
                         exp_dir=str(tmp_path / "tune"), overrides=list(TINY), **kwargs)


def load(request: RQ.TuneRequest):
    return ST.open_study(request)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """One finished 2-trial study (baseline + one TPE draw) on one validation face."""
    tmp = tmp_path_factory.mktemp("tiny")
    request = tiny_request(tmp)
    result = T.tune(request, plots=True)
    return request, result


# --------------------------------------------------------------------------------------------- val / test
@pytest.mark.parametrize("name", ["faces", "cells", "rings", "phantoms", "photos"])
def test_val_and_test_images_are_disjoint(name):
    val = builtin_dataset(name, resolution=32, num_images=8, split="val").images.flatten(1).double()
    test = builtin_dataset(name, resolution=32, num_images=12, split="test").images.flatten(1).double()
    # the closest val/test pair is still far apart (a shared image would give 0)
    assert torch.cdist(val, test).min().item() > 1.0


def test_compare_refuses_overlapping_val_and_test_ids():
    CR.check_disjoint([0, 1], [0, 1], "val")          # different splits: fine
    CR.check_disjoint([0, 1], [2, 3], "none")         # one split, disjoint ids: fine
    with pytest.raises(RQ.TuneError, match=r"overlap \(\[1\]\)"):
        CR.check_disjoint([0, 1], [1, 2], "none")
    with pytest.raises(RQ.TuneError, match="test images"):
        CR.check_disjoint([0], [1], "test")


def test_trials_run_on_the_val_split(tiny_study):
    request, _ = tiny_study
    config = yaml.safe_load((pathlib.Path(request.study_dir) / RQ.BASE_CONFIG).read_text())
    assert config["problem"]["data"]["split"] == "val"
    trial = load(request).trials[0]
    folder = f"{request.study_dir}/{trial.user_attrs['results']}"
    saved = torch.load(f"{folder}/result_0.pt", weights_only=True)
    face = builtin_dataset("faces", resolution=64, id_list=[0], split="val").images[0]  # lfw face 92
    torch.testing.assert_close(saved["target"][0], face, atol=1e-6, rtol=0)  # the operators' unnormalize is 1


# ------------------------------------------------------------------------------------------ search spaces
def test_lmaps_space_is_conditional_on_the_solver_and_drops_cg_for_nonlinear_operators():
    space = S.resolve_space("lmaps_cpu")                      # falls back on configs/tune/lmaps.yaml
    assert space.file.endswith("lmaps.yaml")
    keys = [p.key.rsplit(".", 1)[-1] for p in space.params]
    assert set(keys) == {"inner_solver", "lr", "inner_steps", "cg_max_iter", "cg_tol", "k1", "k2"}
    assert keys.index("inner_solver") < keys.index("lr")      # conditions come first
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        values = S.suggest(study.ask(), space)
        gd = values["algorithm.method.inner_solver"] == "gd"
        assert ("algorithm.method.lr" in values) == gd and ("algorithm.method.cg_tol" in values) == (not gd)
    nonlinear = S.restrict_to_operator(space, linear=False)
    assert nonlinear.describe()["algorithm.method.inner_solver"]["choices"] == ["gd"]
    assert S.resolve_space("lmaps_auto").describe() == {
        "algorithm.method.calib_lambda": {"type": "float", "low": 0.05, "high": 20.0, "log": True,
                                          "source": "ours (lmaps_auto.yaml)"},
        "algorithm.method.sigma_min": {"type": "float", "low": 1.0e-3, "high": 0.5, "log": True,
                                       "source": "ours (lmaps_auto.yaml)"}}


def _fake_inversebench(root, sweeps: dict):
    for rel, params in sweeps.items():
        path = root / "configs" / "sweep" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"method": "bayes", "parameters": params}))
    return root


def test_peer_knobs_come_from_the_checkouts_sweeps(tmp_path):
    root = _fake_inversebench(tmp_path, {
        "blackhole/dps.yaml": {"algorithm.method.guidance_scale": {"distribution": "log_uniform_values",
                                                                    "min": "1e-4", "max": "3e-3"}},
        "inv-scatter/dps.yaml": {"algorithm.method.guidance_scale": {"min": 1.0, "max": 128.0},
                                 "algorithm.method.extra_knob": {"min": 2, "max": 9}},
    })
    # an image task: knobs from the sweeps, ranges ours where we have one, the upstream envelope otherwise
    space = S.resolve_space("ib_dps", ("sr4",), inversebench_root=root).describe()
    assert space["algorithm.method.guidance_scale"]["low"] == 0.01      # ours (configs/tune/ib_dps.yaml)
    assert space["algorithm.method.extra_knob"] == {"type": "int", "low": 2, "high": 9, "log": False,
                                                   "source": "inversebench sweeps (inv-scatter): envelope"}
    # a task with its own sweep: verbatim (wandb's string numbers and log_uniform_values)
    own = S.resolve_space("ib_dps", ("blackhole-fixed", "blackhole"), inversebench_root=root).describe()
    assert own == {"algorithm.method.guidance_scale": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True,
                                                       "source": "inversebench:configs/sweep/blackhole/dps.yaml"}}
    # no checkout, or no sweep file for the algorithm (PiGDM): ours, and the notes say so
    assert "no InverseBench checkout" in S.resolve_space("ib_dps", ("sr4",)).notes[0]
    assert "the space is ours" in S.resolve_space("ib_pigdm", ("sr4",), inversebench_root=root).notes[0]


def test_excluded_upstream_knobs_stay_out(tmp_path):
    root = _fake_inversebench(tmp_path, {"fwi/diffpir.yaml": {
        "algorithm.method.lamb": {"min": 50, "max": 200},
        "algorithm.method.diffusion_scheduler_config.num_steps": {"values": [200, 400]}}})
    space = S.resolve_space("ib_diffpir", ("sr4",), inversebench_root=root)
    assert [p.key for p in space.params] == ["algorithm.method.lamb"]
    assert "excluded: algorithm.method.diffusion_scheduler_config.num_steps" in space.notes[0]


@pytest.mark.parametrize("spec, message", [
    ({"params": {"a": {"low": 1, "high": 0}}}, "low < high"),
    ({"params": {"a": {"low": 0, "high": 1, "log": True}}}, "low > 0"),
    ({"params": {"a": {"choices": []}}}, "non-empty list"),
    ({"params": {"a": {"low": 0, "high": 1, "when": {"b": 1}}}}, "not a parameter"),
    ({"params": {"a": {"low": 0, "high": 1, "step": 2}}}, "unknown key"),
    ({"knobs": {}}, "unknown top-level"),
])
def test_malformed_space_files_are_refused_by_name(tmp_path, spec, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(S.SpaceError, match=message):
        S.resolve_space("bad", path=path)


def test_space_arguments_must_exist_on_the_algorithm(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"params": {"algorithm.method.k3": {"low": 1, "high": 2}}}))
    with pytest.raises(S.SpaceError, match="k3 is not an argument of lmaps_plugin.LMAPS"):
        RQ.prepare(RQ.TuneRequest(task="inpaint_random", algorithm="lmaps_cpu", space=str(path),
                                exp_dir=str(tmp_path)))


def test_misfit_gap_is_the_discrepancy_principle():
    assert RQ.metric_value({"misfit_rms": 0.05}, "misfit_gap", 0.05) == 0
    assert RQ.metric_value({"misfit_rms": 0.075}, "misfit_gap", 0.05) == pytest.approx(0.5)
    assert RQ.metric_direction("misfit_gap") == "minimize" and RQ.metric_direction("psnr") == "maximize"
    assert RQ.metric_direction("lpips") == "minimize"


# ---------------------------------------------------------------------------------------- budget and best
def test_best_is_chosen_among_the_first_budget_finished_trials():
    study = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for value, state in [(1.0, "COMPLETE"), (None, "PRUNED"), (3.0, "COMPLETE"), (None, "FAIL"), (9.0, "COMPLETE")]:
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=value,
                                                  state=getattr(optuna.trial.TrialState, state)))
    counted = OUT.counted_trials(study, budget=3)
    assert [t.number for t in counted] == [0, 1, 2]            # the failed trial does not count; 4 is over budget
    assert OUT.best_trial(counted, "maximize").number == 2
    assert ST.budget_left(study, 5) == 1


# -------------------------------------------------------------------------------------- resume and retries
def test_tiny_study_resumes_without_repeating_finished_trials(tmp_path):
    request = tiny_request(tmp_path, trials=2)
    first = T.tune(request, plots=False)
    study = load(request)
    finished = {t.number: t.datetime_complete for t in study.trials}
    assert first.finished == 2 and len(finished) == 2
    assert study.trials[0].user_attrs.get("baseline") is True   # the base config is trial 0
    again = T.tune(tiny_request(tmp_path, trials=2), plots=False)  # budget spent: nothing runs
    assert len(load(request).trials) == 2 and again.best_value == first.best_value
    T.tune(tiny_request(tmp_path, trials=3), plots=False)       # a larger budget: exactly one more trial
    trials = load(request).trials
    assert len(trials) == 3
    assert {t.number: t.datetime_complete for t in trials[:2]} == finished  # finished trials untouched
    params = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(params)) == 3                                # a rerun does not replay earlier draws


def test_a_killed_running_trial_is_marked_failed_and_retried(tmp_path):
    request = tiny_request(tmp_path, trials=1)
    T.tune(request, plots=False)
    study = load(request)
    # a worker that died mid-trial: its trial is RUNNING, its lease (lock) is gone
    dead = study.ask()
    values = S.suggest(dead, RQ.space_of(request))
    dead.set_user_attr("worker", "elsewhere-1234-deadbeef")
    # a live worker's trial is left alone
    with ST.WorkerLease(request.study_dir) as lease:
        assert ST.lease_alive(request.study_dir, lease.token)
        live = study.ask()
        live.set_user_attr("worker", lease.token)
        assert ST.reclaim(study, request.study_dir) == [dead.number]
        assert study.trials[live.number].state.name == "RUNNING"
        study.tell(live.number, state=optuna.trial.TrialState.FAIL)
    assert not ST.lease_alive(request.study_dir, lease.token)
    result = T.tune(tiny_request(tmp_path, trials=3), plots=False)
    trials = load(request).trials
    states = [t.state.name for t in trials]
    assert states[:3] == ["COMPLETE", "FAIL", "FAIL"] and states.count("COMPLETE") == 3
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == values
    assert result.counts["fail"] == 2 and result.finished == 3


def test_a_different_request_is_refused_on_the_same_study(tmp_path):
    T.tune(tiny_request(tmp_path, trials=1), plots=False)
    with pytest.raises(RQ.TuneError, match="val_ids"):
        T.tune(tiny_request(tmp_path, trials=1, val_ids=(1,)), plots=False)


def test_a_failing_sample_prunes_its_trial(tmp_path, monkeypatch):
    def fail(self, cfg, sample_id, messages):
        return types.SimpleNamespace(status="failed", reason="diverged: test", metrics={})

    monkeypatch.setattr(OB.Objective, "_run_image", fail)
    request = tiny_request(tmp_path, trials=2)
    with pytest.raises(OUT.TuningFailed, match="first failure: trial 0: val id 0: diverged: test"):
        T.tune(request, plots=False)
    trials = load(request).trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert trials[0].user_attrs["failure"] == "val id 0: diverged: test"
    # nothing finished, so nothing is tuned: no config written (trials.csv and summary.json say why)
    assert not (tmp_path / "tune" / "configs").exists()
    summary = json.loads((pathlib.Path(request.study_dir) / RQ.SUMMARY).read_text())
    assert summary["tuned_config"] is None and "diverged: test" in summary["note"]


def test_an_algorithm_crash_prunes_the_trial_and_the_study_goes_on(tmp_path, monkeypatch):
    from lmaps_plugin.app import run as app_run

    def crash(cfg):
        raise TypeError("sqrt(): argument 'input' (position 1) must be Tensor, not numpy.float64")

    monkeypatch.setattr(app_run, "run", crash)
    request = tiny_request(tmp_path, trials=2)
    with pytest.raises(OUT.TuningFailed, match="2 of 2 counted trials pruned or failed"):
        T.tune(request, plots=False)
    trials = load(request).trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert trials[1].user_attrs["failure"].startswith("val id 0: TypeError: sqrt(): argument")


# -------------------------------------------------------------------------------------------- outputs
def test_tuned_config_has_provenance_and_plots(tiny_study):
    request, result = tiny_study
    doc = yaml.safe_load(result.tuned_config.read_text())
    assert result.tuned_config.parts[-5:] == ("algorithm", "tuned", "faces64", "inpaint_random", "lmaps_cpu.yaml")
    prov = doc["tuned"]
    study = load(request)
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    assert prov["best_value"] == pytest.approx(best.value) and prov["best_trial"] == best.number
    assert prov["budget"] == 2 and prov["trials_counted"] == 2 and prov["val_ids"] == [0]
    assert prov["study"] == "faces64/inpaint_random/lmaps_cpu" and prov["package_versions"]["optuna"]
    for key, value in best.params.items():                       # the best values are in the method
        assert doc["method"][key.rsplit(".", 1)[-1]] == value
    assert doc["name"] == "LMAPS-cpu-tuned" and doc["method"]["num_steps"] == 5
    for name in ("history", "importance"):
        png = result.plots[name].read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    rows = (result.study_dir / RQ.TRIALS_CSV).read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("number,state,value")


def test_tuned_config_reloads_in_the_lmaps_app(tiny_study, tmp_path):
    from lmaps_plugin.app import run as app_run

    request, result = tiny_study
    cfg = CO.compose_app([f"algorithm={result.option}", "problem=inpaint_random", "ids=[0]", f"exp_dir={tmp_path}",
                         "figure.enabled=false", "verbose=false"], config_dir=result.config_dir)
    assert cfg.algorithm.name == "LMAPS-cpu-tuned"
    for key, value in result.best_params.items():
        assert cfg.algorithm.method[key.rsplit(".", 1)[-1]] == value
    summary = app_run.run(cfg)
    outcome = summary.outcomes[0]
    assert outcome.status == "ok" and math.isfinite(outcome.metrics["psnr"])
    assert summary.exp_dir == tmp_path / "inpaint_random" / "LMAPS-cpu-tuned" / "faces64-seed0"


# ---------------------------------------------------------------------------------------------- compare
def _entry(algorithm, psnrs: dict, failed=()):
    from lmaps_plugin.bench.aggregate import Entry

    e = Entry("sr4", algorithm, "faces", "faces64")
    e.samples = {(0, i): {"metrics": {"psnr": p, "ssim": 0.5}, "seconds": 1.0} for i, p in psnrs.items()}
    e.failed = {(0, i): "diverged: step 3" for i in failed}
    e.expected = {(0, i) for i in (*psnrs, *failed)}
    return e


def test_compare_table_counts_failures_and_averages_over_common_samples():
    a = _entry("A-tuned", {0: 30.0, 1: 20.0, 2: 25.0})
    b = _entry("B-tuned", {0: 28.0, 2: 27.0}, failed=(1,))
    tuning = {"sr4": {"A-tuned": {"budget": 12, "trials_counted": 12, "trials_pruned": 3, "best_value": 26.5},
                      "B-tuned": {"budget": 12, "trials_counted": 12, "trials_pruned": 0, "best_value": 24.0}}}
    md = CT.compare_markdown([a, b], tuning, "psnr")
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in md.splitlines() if "-tuned" in line and line.startswith("|")}
    # means over ids 0 and 2 (B failed id 1): A 27.5 ± 2.5, B 27.5 ± 0.5; equal means are both best
    assert rows["A-tuned"][2:5] == ["12 (3 pruned)", "26.50", "**27.50 ± 2.50**"]
    assert rows["B-tuned"][4] == "**27.50 ± 0.50**"
    assert rows["A-tuned"][-4:-1] == ["2", "3/3", "0"] and rows["B-tuned"][-4:-1] == ["2", "2/3", "1"]
    assert "failed sr4 / B-tuned seed 0 id 1: diverged: step 3" in md


@pytest.mark.parametrize("flag, value, message", [("--jobs", "0", "an integer >= 1"),
                                                  ("--shard-size", "0", "an integer >= 1"),
                                                  ("--seeds", "0,0", "seed 0 is repeated"),
                                                  ("--seeds", "-1", "seed -1 is negative")])
def test_compare_refuses_bad_sizes_and_seeds_before_tuning(capsys, flag, value, message):
    from lmaps_plugin.bench.main import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["compare", "--tasks", "sr4", "--algorithms", "lmaps_cpu", flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_compare_table_shows_a_method_that_finished_no_test_sample():
    a = _entry("A-tuned", {0: 30.0, 1: 20.0})
    b = _entry("B-tuned", {0: 28.0, 1: 24.0})
    c = _entry("C-tuned", {}, failed=(0, 1))
    md = CT.compare_markdown([a, b, c], {}, "psnr")
    rows = {line.split("|")[2].strip(): [x.strip() for x in line.split("|")[1:-1]]
            for line in md.splitlines() if "-tuned" in line and line.startswith("|")}
    assert rows["A-tuned"][4] == "25.00 ± 5.00" and rows["B-tuned"][4] == "**26.00 ± 2.00**"
    assert rows["C-tuned"][4:] == ["–", "–", "–", "0", "0/2", "2", "–"]
    assert "failed sr4 / C-tuned seed 0 id 1: diverged: step 3" in md


@pytest.mark.slow
def test_two_local_workers_fill_one_study_without_duplicates(tmp_path):
    """2 joblib workers on one SQLite study, then on one journal file: the budget is met, no trial runs twice."""
    for storage in (None, f"journal:{tmp_path / 'shared.journal'}"):
        folder = tmp_path / ("sqlite" if storage is None else "journal")
        request = RQ.TuneRequest(task="inpaint_random", algorithm="lmaps_cpu", trials=6, val_ids=[0, 1, 2],
                                exp_dir=str(folder), overrides=["algorithm.method.num_steps=20"], workers=2,
                                launcher="joblib", storage=storage)
        result = T.tune(request, plots=False)
        trials = load(request).trials
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert 6 <= len(finished) <= 7 and result.finished == 6, f"{len(finished)} trials in {storage}"
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING", "FAIL")]
        assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == len(finished)
        assert len({t.user_attrs["results"] for t in finished}) == len(finished)   # one folder per trial
        jobs = sorted(p.name for p in (pathlib.Path(request.study_dir) / "workers").iterdir() if p.is_dir())
        assert jobs == ["0", "1"]                                                  # two workers started
        tokens = {t.user_attrs["worker"] for t in finished}
        # on an idle machine both run trials; a worker that starts after the budget is spent runs none
        assert 1 <= len(tokens) <= 2


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_retries_it_and_reuses_its_finished_images(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    args = ["--task", "inpaint_random", "--algorithm", "lmaps_cpu", "--trials", "2", "--val-ids", "0-3",
            "--exp-dir", str(tmp_path), "--no-plots", "algorithm.method.num_steps=60"]
    code = "import sys; from lmaps_plugin.bench.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "tune", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / "faces64" / "inpaint_random" / "lmaps_cpu" / "trials" / "inpaint_random" / "LMAPS-cpu"
    deadline = time.time() + 300
    while not list(first.glob("*/result_1.json")) and time.time() < deadline:   # trial 0 is 2 images in
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (done,) = first.glob("*/result_1.json")
    stamp = done.stat().st_mtime_ns
    request = RQ.TuneRequest(task="inpaint_random", algorithm="lmaps_cpu", trials=2, val_ids=[0, 1, 2, 3],
                            exp_dir=str(tmp_path), overrides=["algorithm.method.num_steps=60"])
    T.tune(request, plots=False)
    trials = load(request).trials
    assert trials[0].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == trials[0].params
    assert done.stat().st_mtime_ns == stamp                         # its finished images were not run again
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


# ------------------------------------------------------------------------ shipped tuned configs
PUBLISHED = sorted((pathlib.Path(__file__).parents[2] / "configs" / "algorithm" / "published").rglob("*.yaml"))


def test_published_configs_cover_the_tuned_comparison():
    """docs/results/tuned_comparison.md: 6 tasks × 7 configs (6 methods, LMAPS tuned over two spaces), each with
    its provenance."""
    assert len(PUBLISHED) == 42
    tasks = {p.parent.name for p in PUBLISHED}
    assert tasks == {"sr4", "inpaint_box", "inpaint_random", "gaussian_deblur", "motion_deblur", "jpeg"}
    assert {p.stem for p in PUBLISHED} == {"lmaps_cpu", "lmaps_auto", "ib_dps", "ib_daps", "ib_pigdm", "ib_reddiff",
                                           "ib_diffpir"}


@pytest.mark.parametrize("path", [p for p in PUBLISHED if p.stem in ("lmaps_cpu", "lmaps_auto")],
                         ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_published_lmaps_config_composes_with_its_best_trial(path):
    doc = yaml.safe_load(path.read_text())
    prov = doc["tuned"]
    assert prov["budget"] == 12 and prov["val_ids"] == [0, 1, 2] and prov["prior"] == "faces64"
    option = "/".join(path.relative_to(path.parents[3]).with_suffix("").parts)
    cfg = CO.compose_app([f"algorithm={option}", f"problem={prov['task']}"])
    assert cfg.algorithm.name == {"lmaps_cpu": "LMAPS-cpu-tuned", "lmaps_auto": "LMAPS-auto-tuned"}[path.stem]
    for key, value in prov["params"].items():
        assert cfg.algorithm.method[key.rsplit(".", 1)[-1]] == value


@pytest.mark.parametrize("counts, words", [({"running": 1, "complete": 7}, "1 still running in another worker"),
                                           ({"running": 0, "complete": 7}, "run the same command again")])
def test_an_unspent_budget_says_whether_another_worker_is_finishing_it(tmp_path, counts, words):
    from lmaps_plugin.bench.tune.command import unfinished_message
    from lmaps_plugin.bench.tune.outputs import TuneResult

    result = TuneResult(tmp_path, tmp_path / "t.yaml", tmp_path, "tuned/x", 1.0, {}, counts, finished=7)
    message = unfinished_message(result, 8)
    assert "7 of 8 trials finished" in message and words in message
