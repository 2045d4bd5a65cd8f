"""lmaps-bench run / aggregate / validate / tune / compare under hostile use: stale results beside a re-tuned
config, failed work that must not exit 0, a leaderboard that credits old results to a new command, broken
benchmark.json files and id ranges too large to build. Exit codes: 0 all done, 1 a run failed, 2 refused."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch

from lmaps_plugin.bench import aggregate as AG
from lmaps_plugin.bench import arguments as ARG
from lmaps_plugin.bench import main as B
from lmaps_plugin.bench import sweep as SW
from lmaps_plugin.bench import leaderboard as L
from lmaps_plugin.app import results as R

optuna = pytest.importorskip("optuna")

from lmaps_plugin.bench import compare as C  # noqa: E402
from lmaps_plugin.bench import compare_runs as CR  # noqa: E402
from lmaps_plugin.app import compose as CO  # noqa: E402
from lmaps_plugin.bench.tune import objective as OB  # noqa: E402
from lmaps_plugin.bench.tune import command as T  # noqa: E402
from lmaps_plugin.bench.tune import request as RQ  # noqa: E402

OLD, NEW = "0a" * 32, "0b" * 32
TINY = ["algorithm.method.num_steps=5"]


def fake_records(folder: pathlib.Path, ids, config_hash, task="inpaint_random", algorithm="LMAPS-cpu-tuned",
                 psnr=20.0):
    """Sample records and results as the lmaps app writes them (status ok, .pt checked by SHA-256)."""
    for i in ids:
        x = torch.full((1, 1, 4, 4), float(i))
        path = R.save_result(folder, i, x, x, x)
        R.write_record(folder, i, {"status": "ok", "metrics": {"psnr": psnr + i, "ssim": 0.5},
                                   "config_hash": config_hash, "seed": 0, "task": task, "algorithm": algorithm,
                                   "dataset": "faces", "prior": "faces64", "num_samples": 1, "seconds": 1.0,
                                   "result_sha256": R.file_sha256(path), "unavailable": {}})


def never(*args, **kwargs):
    pytest.fail("launched or tuned although the request should have been refused first")


# ------------------------------------------------------------------- a re-tuned config's own test results
def test_a_retuned_config_moves_the_old_test_results_aside_and_never_shows_them(tmp_path):
    """Before: compare --trials 1, then --trials 4: the test folder refused the new config (ConfigMismatchError),
    the command exited 0 and the table showed the old config's test PSNR beside the new budget."""
    spec = CR.CompareRequest(tasks=["inpaint_random"], algorithms=["lmaps_cpu"], test_ids=[0, 1],
                            exp_dir=str(tmp_path))
    folder = spec.test_dir / "inpaint_random" / "LMAPS-cpu-tuned" / "faces64-seed0"
    fake_records(folder, [0, 1], OLD)
    names = {"algorithms": {"tuned/faces64/inpaint_random/lmaps_cpu": "LMAPS-cpu-tuned"},
             "runs": [{"task": "inpaint_random", "algorithm": "LMAPS-cpu-tuned", "prior": "faces64",
                       "config_hash": NEW}],
             "folders": {"tuned/faces64/inpaint_random/lmaps_cpu": [folder]}}
    runs = names["runs"]
    # the old records are never a row of the new config's table
    with pytest.raises(CR.StaleResultsError, match="config hash 0a0a0a0a0a0a, the tuned config's is 0b0b0b0b0b0b"):
        CR.current_entries(spec, runs, None)
    (moved,) = CR.replace_stale_tests(names)
    assert moved.parent.name == ".replaced" and not folder.exists()
    assert sorted(p.name for p in moved.glob("result_*.json")) == ["result_0.json", "result_1.json"]
    assert CR.replace_stale_tests(names) == []                      # nothing left to move: resuming keeps results
    fake_records(folder, [0, 1, 5], NEW, psnr=30.0)                # the new config's test run (and an old extra id)
    (entry,) = CR.current_entries(spec, runs, None)
    assert entry.config_hash == NEW and sorted(entry.samples) == [(0, 0), (0, 1)]   # only the requested ids
    assert entry.summary()["psnr"]["mean"] == 30.5


def test_compare_exits_1_when_test_runs_failed(tmp_path, monkeypatch, capsys):
    """Before: a failing test sweep printed 'some test runs failed' and exited 0."""
    out = tmp_path / "table.md"
    out.write_text("| table |\n")
    monkeypatch.setattr(C, "compare", lambda spec, template: C.CompareOutput(out, out, out, out, status=1))
    code = B.main(["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu", "--exp-dir", str(tmp_path)])
    assert code == 1 and "some test runs exited with status 1" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_twice_with_a_larger_budget_tests_the_new_config(tmp_path, capsys):
    """The real thing: compare --trials 1, then --trials 2 into the same folder; both exit 0, the second table is
    built from the re-tuned config's own test records (the first ones sit in .replaced/)."""
    argv = ["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu", "--val-ids", "0", "--test-ids",
            "0-1", "--jobs", "1", "--exp-dir", str(tmp_path), "algorithm.method.num_steps=10",
            "algorithm.method.inner_steps=2", "figure.enabled=false"]
    assert B.main([*argv[:1], "--trials", "1", *argv[1:]]) == 0
    assert B.main([*argv[:1], "--trials", "2", *argv[1:]]) == 0
    assert "moved to" in capsys.readouterr().out
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    (entry,) = board["entries"]
    tuned = CR.test_names(CR.CompareRequest(["inpaint_random"], ["lmaps_cpu"], [0, 1], exp_dir=str(tmp_path)),
                         "inpaint_random", ["tuned/faces64/inpaint_random/lmaps_cpu"], None,
                         ["algorithm.method.num_steps=10", "algorithm.method.inner_steps=2", "figure.enabled=false"])
    assert entry["config_hash"] == tuned["runs"][0]["config_hash"]
    assert {r["config_hash"] for r in entry["per_sample"]} == {entry["config_hash"]}
    assert json.loads((tmp_path / "tuning.json").read_text())["inpaint_random"]["LMAPS-cpu-tuned"]["budget"] == 2
    assert list((tmp_path / "test").rglob(".replaced/*/result_0.json"))
    assert L.consistency_problems(board) == []


# --------------------------------------------------------------------------- failed work does not exit 0
def test_tune_refuses_val_ids_past_the_split_before_any_trial(tmp_path, monkeypatch, capsys):
    """Before: --val-ids 50-51 pruned every trial, printed 'best value: none', wrote a 'tuned' config, exit 0."""
    monkeypatch.setattr(T, "start_study", never)
    code = B.main(["tune", "--task", "inpaint_random", "--algorithm", "lmaps_cpu", "--val-ids", "50-51",
                   "--exp-dir", str(tmp_path / "tune"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "--val-ids: id(s) 50, 51 are not allowed: the faces val split has 8 images" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "tune").exists()


@pytest.mark.parametrize("command", [
    ["tune", "--task", "inpaint_random", "--algorithm", "lmaps_cpu", "--val-ids", "0"],
    ["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu", "--val-ids", "0", "--test-ids", "0"],
    ["run", "--num-images", "1"],
])
def test_cuda_without_cuda_is_refused_before_any_work(tmp_path, monkeypatch, capsys, command):
    """Before: tune device=cuda on a CPU machine pruned every trial and exited 0; run passed its pre-launch check
    and failed every job."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(T, "start_study", never)
    monkeypatch.setattr(SW.subprocess, "call", never)
    code = B.main([*command, "--exp-dir", str(tmp_path / "out"), *TINY, "device=cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "device=cuda is not allowed here: CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cuda_on_a_slurm_launcher_is_left_to_the_cluster(tmp_path, monkeypatch):
    """A login node without CUDA submits device=cuda jobs to GPU nodes: not refused there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = CO.compose_app(["device=cuda"])
    assert SW.runnable_problems(cfg, [0], "--ids", local=False) == []
    assert SW.runnable_problems(cfg, [0], "--ids", local=True)


def test_compare_refuses_test_ids_past_the_split_before_tuning(tmp_path, monkeypatch, capsys):
    """Before: compare --test-ids 30-31 tuned, then every test job failed, and the command exited 0."""
    monkeypatch.setattr(C, "tune_all", never)
    code = B.main(["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu", "--val-ids", "0",
                   "--test-ids", "30-31", "--exp-dir", str(tmp_path / "cmp"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "--test-ids: id(s) 30, 31 are not allowed: the faces test split has 12 images" in err
    assert not (tmp_path / "cmp").exists()


def test_a_study_where_no_trial_finished_exits_1_without_a_tuned_config(tmp_path, monkeypatch, capsys):
    """Every trial pruned (here: every sample fails): exit 1, the reason in one line, no tuned config."""
    import types

    monkeypatch.setattr(OB.Objective, "_run_image", lambda self, cfg, sample_id, messages: types.SimpleNamespace(
        status="failed", reason="diverged: test", metrics={}))
    code = B.main(["tune", "--task", "inpaint_random", "--algorithm", "lmaps_cpu", "--trials", "2", "--val-ids", "0",
                   "--no-plots", "--exp-dir", str(tmp_path), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("lmaps-bench tune: failed: no trial of lmaps_cpu on inpaint_random")
    assert "first failure: trial 0: val id 0: diverged: test" in err[-1]
    assert not list(tmp_path.rglob("configs/**/*.yaml"))
    summary = json.loads(next(tmp_path.rglob(RQ.SUMMARY)).read_text())
    assert summary["tuned_config"] is None and summary["best_value"] is None


# --------------------------------------------------------------- the leaderboard credits each command's own
def test_run_refuses_new_overrides_into_a_folder_of_another_configuration(tmp_path, monkeypatch, capsys):
    """Before: the jobs were refused one by one, 'aggregating what finished', exit 1, and leaderboard.json named
    the new command beside the old config's results."""
    from lmaps_plugin.app import build

    cfg = CO.compose_app(["problem=inpaint_random", "algorithm=lmaps_cpu", f"exp_dir={tmp_path}", "seed=0"])
    fake_records(build.experiment_dir(cfg), [0, 1], OLD, algorithm="LMAPS-cpu")
    monkeypatch.setattr(SW.subprocess, "call", never)
    assert B.main(["run", "--num-images", "2", "--exp-dir", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err
    assert "holds 2 sample(s) made with a different configuration (config hash 0a0a0a0a0a0a" in err
    assert not (tmp_path / SW.MANIFEST).exists() and not (tmp_path / AG.LEADERBOARD).exists()


def test_leaderboard_entries_name_their_own_command_and_validate_checks_the_request(tmp_path, capsys):
    fake_records(tmp_path / "inpaint_random" / "LMAPS-cpu" / "seed0", [0, 1], OLD, algorithm="LMAPS-cpu")
    old_command, new_command = ["-m", "algorithm.method.num_steps=10"], ["-m", "algorithm.method.num_steps=12"]
    R.atomic_write_json(tmp_path / SW.MANIFEST, {
        "tasks": ["inpaint_random"], "algorithms": ["lmaps_cpu"], "seeds": [0], "ids": [0, 1], "prior": "faces64",
        "dataset": "faces", "algorithm_names": {"lmaps_cpu": "LMAPS-cpu"}, "command": new_command,
        "commands": {OLD: old_command, NEW: new_command},
        "requested": [{"task": "inpaint_random", "algorithm": "LMAPS-cpu", "prior": "faces64", "config_hash": NEW}]})
    AG.aggregate(tmp_path)
    board = json.loads((tmp_path / AG.LEADERBOARD).read_text())
    (entry,) = board["entries"]
    assert entry["config_hash"] == OLD and entry["command"] == old_command       # its own command, not the last
    assert [r["config_hash"] for r in entry["per_sample"]] == [OLD, OLD]
    assert B.main(["validate", str(tmp_path / AG.LEADERBOARD)]) == 1
    out = capsys.readouterr().out
    assert "holds results of config hash 0a0a0a0a0a0a, but the request (benchmark.command) asked for " \
           "0b0b0b0b0b0b: these are an earlier command's results" in out
    # a row moved in from another configuration is named too
    board["benchmark"]["requested"][0]["config_hash"] = OLD
    board["entries"][0]["per_sample"][1]["config_hash"] = NEW
    assert L.consistency_problems(board) == [
        "$.entries[0] (inpaint_random / LMAPS-cpu).per_sample seed 0 id 1: config hash 0b0b0b0b0b0b is not the "
        "entry's (0a0a0a0a0a0a)"]


def test_write_manifest_keeps_each_config_hashs_command(tmp_path):
    request = SW.SweepRequest(tasks=["inpaint_random"], algorithms=["lmaps_cpu"], seeds=[0], ids=[0],
                             exp_dir=str(tmp_path), extra=["algorithm.method.num_steps=10"])
    run = {"task": "inpaint_random", "algorithm": "LMAPS-cpu", "prior": "faces64"}
    names = {"tasks": {}, "algorithms": {}, "prior": "faces64", "dataset": "faces"}
    SW.write_manifest(request, {**names, "runs": [{**run, "config_hash": OLD}]})
    request.extra = ["algorithm.method.num_steps=12"]
    SW.write_manifest(request, {**names, "runs": [{**run, "config_hash": NEW}]})
    manifest = SW.read_manifest(tmp_path)
    assert manifest["commands"][OLD][-1] == "algorithm.method.num_steps=10"
    assert manifest["commands"][NEW][-1] == "algorithm.method.num_steps=12"
    assert manifest["requested"] == [{**run, "config_hash": NEW}]


# ------------------------------------------------------------------ broken inputs: one line, exit 2
@pytest.mark.parametrize("content, line", [
    ("{garbage", "benchmark.json cannot be read as JSON"),
    ("[1, 2]", "not a valid sweep request: expected a JSON object, got list"),
    ('{"tasks": 5, "ids": ["x"]}', "'tasks' must be a list of names, got 5; 'ids' must be a list of non-negative"),
    ('{"seeds": [-1], "commands": {"h": "ls"}}', "'seeds' must be a list of non-negative integers"),
])
def test_a_broken_benchmark_json_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, content, line):
    """Before: JSONDecodeError / TypeError tracebacks from aggregate and run."""
    (tmp_path / SW.MANIFEST).write_text(content)
    assert B.main(["aggregate", "--exp-dir", str(tmp_path)]) == 2
    monkeypatch.setattr(SW.subprocess, "call", never)
    assert B.main(["run", "--num-images", "1", "--exp-dir", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line in e for e in err) and not (tmp_path / AG.LEADERBOARD).exists()


@pytest.mark.parametrize("command", [
    ["run", "--ids", "0-999999999"],
    ["tune", "--task", "inpaint_random", "--algorithm", "lmaps_cpu", "--val-ids", "0-999999999"],
    ["compare", "--tasks", "inpaint_random", "--algorithms", "lmaps_cpu", "--test-ids", "5,0-999999999"],
])
def test_id_ranges_beyond_the_apps_limit_are_refused_without_building_them(tmp_path, monkeypatch, capsys, command):
    """Before: --ids 0-999999999 built the whole list (MemoryError)."""
    from lmaps_plugin.app import schema
    from lmaps_plugin.data import base

    monkeypatch.setattr(ARG, "parse_id_list", never)   # the list is never built
    monkeypatch.setattr(base, "parse_id_list", never)
    code = B.main([*command, "--exp-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"is not allowed: it names more than {schema.MAX_IDS} ids" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
