"""lmaps-bench: sharding, launcher overrides, aggregation into the paper's table layout, the leaderboard schema,
and a real 2-worker joblib multirun that resumes."""
from __future__ import annotations

import copy
import csv
import io
import json
import statistics
import subprocess
import sys

import pytest
import torch

from lmaps_plugin.bench import aggregate as AG
from lmaps_plugin.bench import main as B
from lmaps_plugin.bench import sweep as SW
from lmaps_plugin.bench import leaderboard as L
from lmaps_plugin.app import results as R

HASH = "ab" * 32


def fake_run(root, task, algo, seed, values, failed=(), hash_=HASH):
    """Write result files and records as the app does: {root}/{task}/{algo}/seed{seed}/result_{id}.(pt|json)."""
    exp = root / task / algo / f"seed{seed}"
    for i, psnr in values.items():
        x = torch.full((1, 1, 4, 4), float(i))
        path = R.save_result(exp, i, x, x, x)
        R.write_record(exp, i, {"status": "ok", "metrics": {"psnr": psnr, "ssim": psnr / 40}, "config_hash": hash_,
                                "seed": seed, "task": task, "algorithm": algo, "dataset": "faces",
                                "prior": "faces64", "num_samples": 1, "seconds": 2.0,
                                "result_sha256": R.file_sha256(path),
                                "unavailable": {"lpips": "unavailable: no torchvision"}})
    for i in failed:
        R.write_record(exp, i, {"status": "failed", "reason": "diverged", "seed": seed, "task": task,
                                "algorithm": algo, "dataset": "faces", "prior": "faces64", "config_hash": hash_})


def manifest(root, tasks=("inpaint_random",), algorithms=("LMAPS-cpu", "DAPS"), seeds=(0,), ids=(0, 1, 2)):
    R.atomic_write_json(root / SW.MANIFEST, {"tasks": list(tasks), "algorithms": list(algorithms),
                                            "seeds": list(seeds), "ids": list(ids), "prior": "faces64",
                                            "dataset": "faces"})


# ------------------------------------------------------------------------------------------------ sweep
def test_shard_ranges_split_ids_into_consecutive_runs():
    assert SW.shard_ranges(range(8), 4) == ["0-3", "4-7"]
    assert SW.shard_ranges(range(5), 2) == ["0-1", "2-3", "4"]
    assert SW.shard_ranges([0, 1, 2, 7, 8, 12], 10) == ["0-2", "7-8", "12"]
    with pytest.raises(ValueError, match="shard_size"):
        SW.shard_ranges([0], 0)


def test_sweep_overrides_for_joblib_and_slurm():
    request = SW.SweepRequest(tasks=["sr4", "inpaint_random"], algorithms=["lmaps_cpu", "ib_daps"], seeds=[0, 1],
                             ids=list(range(6)), exp_dir="out", shard_size=3, jobs=2, threads=1,
                             extra=["algorithm.method.num_steps=5"])
    ov = request.overrides()
    assert ov[:4] == ["problem=sr4,inpaint_random", "algorithm=lmaps_cpu,ib_daps", "seed=0,1", "ids=0-2,3-5"]
    assert {"hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1",
            "figure.enabled=false"} <= set(ov)
    assert ov[-1] == "algorithm.method.num_steps=5"
    assert request.command()[3] == "-m"
    assert SW.launcher_overrides("submitit_slurm", 8) == ["hydra/launcher=submitit_slurm",
                                                          "hydra.launcher.array_parallelism=8"]
    # submitit's local executor has no array_parallelism (before: "Key 'array_parallelism' not in
    # 'LocalQueueConf'" on every run)
    assert SW.launcher_overrides("submitit_local", 8) == ["hydra/launcher=submitit_local"]
    with pytest.raises(ValueError, match="launcher must be one of"):
        SW.launcher_overrides("mpi", 2)


# ------------------------------------------------------------------------------------------ aggregation
def test_aggregation_tables_name_missing_samples_and_bold_the_best(tmp_path):
    fake_run(tmp_path, "inpaint_random", "LMAPS-cpu", 0, {0: 30.0, 1: 32.0, 2: 31.0})
    fake_run(tmp_path, "inpaint_random", "DAPS", 0, {0: 28.0}, failed=[2])
    manifest(tmp_path)
    out = AG.aggregate(tmp_path)
    md = out.table_md.read_text()
    # ranked over the one sample both finished (seed 0, id 0); done/requested and failures counted
    assert "| inpaint_random | LMAPS-cpu | **30.00 ± 0.00** |" in md
    assert "| DAPS | 28.00 ± 0.00 |" in md and "| 1 | 1/3 | 1 | 2.0 |" in md and "| 1 | 3/3 | 0 | 2.0 |" in md
    assert "not compared inpaint_random / LMAPS-cpu: 2 finished sample(s) another method did not finish " \
           "(seed:id 0:1, 0:2)" in md
    assert "missing inpaint_random / DAPS: seed 0 id 1 (not run); seed 0 id 2 (failed: diverged)" in md
    assert "lpips: unavailable: no torchvision" in md and "n/a" in md
    rows = {r["algorithm"]: r for r in csv.DictReader(io.StringIO(out.table_csv.read_text()))}
    assert float(rows["LMAPS-cpu"]["psnr_mean"]) == 30.0 and rows["LMAPS-cpu"]["n"] == "1"
    assert rows["LMAPS-cpu"]["finished"] == "3" and rows["DAPS"]["failed"] == "1"
    assert rows["DAPS"]["missing"] == "0:1 0:2" and rows["DAPS"]["lpips_mean"] == "unavailable"
    doc = json.loads(out.leaderboard.read_text())
    L.validate(doc)
    assert L.consistency_problems(doc) == []
    lmaps = next(e for e in doc["entries"] if e["algorithm"] == "LMAPS-cpu")
    assert lmaps["summary"]["psnr"]["mean"] == pytest.approx(statistics.fmean([30, 32, 31]))
    assert lmaps["summary"]["psnr"]["std"] == pytest.approx(statistics.pstdev([30, 32, 31]))
    assert lmaps["compared"] == {"samples": [{"seed": 0, "id": 0}],
                                 "summary": {"psnr": {"mean": 30.0, "std": 0.0, "n": 1},
                                             "ssim": {"mean": 0.75, "std": 0.0, "n": 1}}}
    daps = next(e for e in doc["entries"] if e["algorithm"] == "DAPS")
    assert daps["missing"] == [{"seed": 0, "id": 1, "reason": "not run"},
                               {"seed": 0, "id": 2, "reason": "failed: diverged"}]
    assert daps["per_sample"] == [{"seed": 0, "id": 0, "metrics": {"psnr": 28.0, "ssim": 0.7}, "seconds": 2.0,
                                   "config_hash": HASH}]


def test_methods_are_ranked_only_over_samples_all_of_them_finished(tmp_path):
    """Guards against this failure: a method that failed the hard samples was ranked on its mean over the easy ones and won
    ("best in bold" compared means over different sample sets)."""
    fake_run(tmp_path, "sr4", "LMAPS-cpu", 0, {0: 30.0, 1: 20.0, 2: 21.0})   # finishes the hard samples 1, 2
    fake_run(tmp_path, "sr4", "DPS", 0, {0: 31.0}, failed=[1, 2])             # fails them: its own mean is 31
    manifest(tmp_path, tasks=("sr4",), algorithms=("LMAPS-cpu", "DPS"))
    md = AG.markdown_table(AG.collect(tmp_path, SW.read_manifest(tmp_path)))
    assert "| DPS | **31.00 ± 0.00** |" in md and "| sr4 | LMAPS-cpu | 30.00 ± 0.00 |" in md  # on sample 0 only
    assert "| 1 | 1/3 | 2 |" in md  # DPS: compared on 1, finished 1 of 3, 2 failures shown
    # a method that finished nothing is shown, not ranked, and does not empty the comparison
    fake_run(tmp_path, "sr4", "DAPS", 0, {}, failed=[0, 1, 2])
    manifest(tmp_path, tasks=("sr4",), algorithms=("LMAPS-cpu", "DPS", "DAPS"))
    md = AG.markdown_table(AG.collect(tmp_path, SW.read_manifest(tmp_path)))
    assert "not ranked sr4 / DAPS: no finished sample" in md and "**31.00 ± 0.00**" in md


def test_aggregation_validates_records_and_skips_hidden_folders(tmp_path):
    """The aggregator: a wrong record is named and left out; results moved aside by overwrite=true
    (.replaced/) never count."""
    fake_run(tmp_path, "sr4", "LMAPS-cpu", 0, {0: 30.0, 1: 31.0})
    exp = tmp_path / "sr4" / "LMAPS-cpu" / "seed0"
    (exp / "result_1.json").write_text("[]")
    fake_run(tmp_path / "sr4" / "LMAPS-cpu" / "seed0" / ".replaced", "old", "LMAPS-cpu", 0, {0: 99.0})
    with pytest.warns(RuntimeWarning, match="result_1.json is not a valid sample record"):
        entries = AG.collect(tmp_path)
    assert [(e.task, sorted(e.samples)) for e in entries] == [("sr4", [(0, 0)])]


def test_missing_samples_are_grouped_by_seed_and_reason():
    missing = [{"seed": 0, "id": i, "reason": "failed: NaN"} for i in (0, 1, 3)] + \
        [{"seed": 1, "id": 2, "reason": "not run"}]
    assert AG._describe_missing(missing) == "seed 0 ids 0, 1, 3 (failed: NaN); seed 1 id 2 (not run)"


def test_requested_but_never_run_entries_are_listed(tmp_path):
    fake_run(tmp_path, "inpaint_random", "LMAPS-cpu", 0, {0: 30.0})
    manifest(tmp_path, algorithms=("LMAPS-cpu", "DPS"), ids=(0,))
    entries = AG.collect(tmp_path, SW.read_manifest(tmp_path))
    dps = next(e for e in entries if e.algorithm == "DPS")
    assert dps.samples == {} and dps.missing() == [{"seed": 0, "id": 0, "reason": "not run"}]
    L.validate(AG.submission(entries, SW.read_manifest(tmp_path)))


def test_entries_mixing_configurations_are_refused(tmp_path):
    fake_run(tmp_path, "sr4", "LMAPS-cpu", 0, {0: 30.0})
    fake_run(tmp_path, "sr4", "LMAPS-cpu", 1, {0: 30.0}, hash_="cd" * 32)
    with pytest.raises(R.ConfigMismatchError, match="different configurations"):
        AG.collect(tmp_path)


# --------------------------------------------------------------------------------------------- schema
def valid_document(tmp_path):
    fake_run(tmp_path, "sr4", "LMAPS-cpu", 0, {0: 25.0, 1: 27.0})
    manifest(tmp_path, tasks=("sr4",), algorithms=("LMAPS-cpu",), ids=(0, 1))
    return AG.submission(AG.collect(tmp_path, SW.read_manifest(tmp_path)), SW.read_manifest(tmp_path))


def test_schema_file_uses_only_supported_keywords_and_a_real_document_validates(tmp_path):
    schema = L.load_schema()
    assert schema["properties"]["schema_version"]["const"] == L.SCHEMA_VERSION
    doc = valid_document(tmp_path)
    L.validate(doc)  # would raise on an unsupported keyword anywhere it is used
    entry = doc["entries"][0]
    assert set(entry) == set(schema["$defs"]["entry"]["required"]) | {"compared"}
    assert entry["summary"]["psnr"] == {"mean": 26.0, "std": 1.0, "n": 2}
    assert doc["package_versions"]["torch"] == torch.__version__.split("+")[0] or \
        doc["package_versions"]["torch"].startswith(torch.__version__.split("+")[0])


@pytest.mark.parametrize("mutate, path, message", [
    (lambda d: d.pop("entries"), "$", "'entries' is a required property"),
    (lambda d: d["entries"][0].update(config_hash="xyz"), "$.entries[0].config_hash", "does not match"),
    (lambda d: d["entries"][0]["summary"]["psnr"].update(std=-1.0), "$.entries[0].summary.psnr.std",
     "less than the minimum"),
    (lambda d: d["entries"][0]["per_sample"][0]["metrics"].update(psnr=float("nan")),
     "$.entries[0].per_sample[0].metrics.psnr", "is not of type 'number'"),
    (lambda d: d["entries"][0]["per_sample"][0]["metrics"].update(psnr=10 ** 400),
     "$.entries[0].per_sample[0].metrics.psnr", "is not of type 'number'"),
    (lambda d: d["entries"][0].update(seeds=[]), "$.entries[0].seeds", "should be non-empty"),
    (lambda d: d["entries"][0].update(extra=1), "$.entries[0]", "('extra' was unexpected)"),
    (lambda d: d["entries"][0]["unavailable"].update(lpips="no weights"), "$.entries[0].unavailable.lpips",
     "does not match '^unavailable: '"),
    (lambda d: d.update(kind="other"), "$.kind", "'lmaps-leaderboard-submission' was expected"),
])
def test_schema_rejects_broken_documents_and_names_where(tmp_path, mutate, path, message):
    doc = copy.deepcopy(valid_document(tmp_path))
    mutate(doc)
    with pytest.raises(L.SchemaValidationError) as info:
        L.validate(doc)
    assert any(e.startswith(f"{path}: ") and message in e for e in info.value.errors), info.value.errors


def test_the_shipped_schema_is_a_valid_draft_2020_12_schema():
    L.FiniteValidator.check_schema(L.load_schema())
    with pytest.raises(Exception, match="is not valid under any of the given schemas|is not of type"):
        L.validate({}, {"type": 5})


def test_validate_command(tmp_path, capsys):
    path = R.atomic_write_json(tmp_path / "board.json", valid_document(tmp_path))
    assert B.main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("mutate, line", [
    (lambda d: d["entries"][0]["summary"]["psnr"].update(mean=99.0, n=7),
     "summary.psnr.n is 7, but 2 per-sample row(s) have 'psnr'"),
    (lambda d: d["entries"][0]["summary"]["psnr"].update(mean=99.0),
     "summary.psnr.mean is 99.0, but its 2 per-sample values have mean 26.0"),
    (lambda d: d["entries"][0]["summary"]["psnr"].update(std=0.5),
     "summary.psnr.std is 0.5, but its 2 per-sample values have (population) std 1.0"),
    (lambda d: d["entries"][0]["per_sample"].append(copy.deepcopy(d["entries"][0]["per_sample"][0])),
     "per_sample: seed 0 id 0 appears 2 times"),
    (lambda d: d["entries"].append(copy.deepcopy(d["entries"][0])), "duplicates $.entries[0]"),
    (lambda d: d["entries"][0]["missing"].append({"seed": 0, "id": 1, "reason": "not run"}),
     "seed 0 id 1 is both in per_sample and in missing"),
    (lambda d: d["entries"][0]["summary"].pop("ssim"), "metric 'ssim' has 2 per-sample value(s) but no summary"),
])
def test_validate_checks_summaries_against_per_sample_rows(tmp_path, capsys, mutate, line):
    """Guards against this failure: a leaderboard with mean 99 and n = 7, or with duplicated rows, was 'valid'."""
    doc = copy.deepcopy(valid_document(tmp_path))
    mutate(doc)
    path = R.atomic_write_json(tmp_path / "board.json", doc)
    assert B.main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert line in out and "Traceback" not in out and "INVALID" in out


@pytest.mark.parametrize("content, line", [(None, "cannot be read"), ("{oops", "not JSON"),
                                           ("{}", "'entries' is a required property")])
def test_validate_prints_one_readable_line_per_problem(tmp_path, capsys, content, line):
    """A missing file, bad JSON or a schema error is one line each, never a traceback."""
    path = tmp_path / "board.json"
    if content is not None:
        path.write_text(content)
    assert B.main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert line in captured.out and "Traceback" not in captured.out + captured.err
    assert all(row.startswith(f"{path}: ") for row in captured.out.splitlines())


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "-1"], "seed -1 is negative"), (["--seeds", "0,x"], "seed 'x' is not an integer"),
    (["--seeds", "1,1"], "seed 1 is repeated"), (["--shard-size", "0"], "0 is not allowed: an integer >= 1"),
    (["--jobs", "0"], "0 is not allowed"), (["--threads", "abc"], "'abc' is not an integer"),
    (["--num-images", "0"], "0 is not allowed"),
])
def test_run_refuses_bad_arguments_before_launching(monkeypatch, capsys, argv, message):
    """Guards against this failure: `lmaps-bench run --seeds -1` ran the whole sweep and failed at aggregation."""
    monkeypatch.setattr(SW.subprocess, "call", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(SystemExit) as info:
        B.main(["run", *argv, "--exp-dir", "unused"])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--ids", "3-1"], "--ids '3-1': id_list '3-1' names no images"),
    (["--ids", "1,1"], "ids must not repeat"),
    (["num_samples=1.5"], "--tasks inpaint_random --algorithms lmaps_cpu: num_samples=1.5 is not allowed"),
    (["overwrite=no"], "overwrite='no' is not allowed: a boolean"),
    (["--tasks", "no_such_task"], "--tasks no_such_task --algorithms lmaps_cpu: "),
])
def test_run_checks_ids_and_every_job_configuration_before_launching(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(SW.subprocess, "call", lambda *a, **k: pytest.fail("launched"))
    assert B.main(["run", *argv, "--exp-dir", str(tmp_path / "bench")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "bench").exists()


def test_a_failed_sweep_with_nothing_finished_writes_no_leaderboard(tmp_path, monkeypatch, capsys):
    """Guards against this failure: a failing launcher was followed by an empty leaderboard."""
    monkeypatch.setattr(SW.subprocess, "call", lambda *a, **k: 1)
    assert B.main(["run", "--exp-dir", str(tmp_path / "bench"), "--prior", "gmm", "prior.resolution=16"]) == 1
    assert "no sample finished; no leaderboard written" in capsys.readouterr().err
    assert not (tmp_path / "bench" / AG.LEADERBOARD).exists()


def test_subcommands_are_a_registry():
    """Adding a subcommand (e.g. tune, compare) is one Subcommand entry."""
    extra = B.Subcommand("hello", "say hello", lambda p: p.add_argument("--name", default="x"),
                         lambda args: 7 if args.name == "y" else 0)
    parser = B.build_parser([*B.SUBCOMMANDS, extra])
    args = parser.parse_args(["hello", "--name", "y"])
    assert args.handler(args) == 7
    assert [c.name for c in B.SUBCOMMANDS][:3] == ["run", "aggregate", "validate"]


# ------------------------------------------------------------------------------------ a real multirun
@pytest.mark.slow
def test_two_worker_joblib_multirun_resumes_and_aggregates(tmp_path):
    """2 tasks × 2 shards = 4 Hydra jobs on 2 joblib workers; then a lost result is redone and nothing else."""
    exp = tmp_path / "bench"
    cmd = [sys.executable, "-m", "lmaps_plugin.bench.main", "run", "--tasks", "inpaint_random,sr4",
           "--algorithms", "lmaps_cpu", "--seeds", "0", "--num-images", "4", "--shard-size", "2", "--jobs", "2",
           "--threads", "1", "--exp-dir", str(exp), "--prior", "gmm", "prior.resolution=16",
           "algorithm.method.num_steps=4", "algorithm.method.inner_steps=2", "verbose=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hydra.launcher.n_jobs=2" in done.stdout
    pids = set()
    for log in (exp / "multirun").rglob("lmaps.log"):
        pids.add(log.parent.name)
    assert len(pids) == 4  # one Hydra job per task × shard
    board = json.loads((exp / "leaderboard.json").read_text())
    L.validate(board)
    assert sorted((e["task"], len(e["per_sample"]), len(e["missing"])) for e in board["entries"]) == \
        [("inpaint_random", 4, 0), ("sr4", 4, 0)]
    # lose one result (as if its worker had been killed before writing it), then run the same command again
    sr4 = exp / "sr4" / "LMAPS-cpu" / "gmm_faces-seed0"
    (sr4 / "result_3.pt").unlink()
    (sr4 / "result_3.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in exp.rglob("result_*.pt")}
    interim = AG.aggregate(exp)
    assert "missing sr4 / LMAPS-cpu: seed 0 id 3 (not run)" in interim.table_md.read_text()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sr4 / "result_3.pt").is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished samples untouched
    board = json.loads((exp / "leaderboard.json").read_text())
    assert all(not e["missing"] for e in board["entries"])


@pytest.mark.slow
def test_submitit_local_launcher_runs_one_job(tmp_path):
    """`--launcher submitit_local` runs (1 task × 1 algorithm × 1 seed × 1 shard = 1 job) and aggregates."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher (the bench extra)")
    exp = tmp_path / "bench"
    cmd = [sys.executable, "-m", "lmaps_plugin.bench.main", "run", "--tasks", "inpaint_random", "--algorithms",
           "lmaps_cpu", "--seeds", "0", "--num-images", "2", "--shard-size", "2", "--launcher", "submitit_local",
           "--threads", "1", "--exp-dir", str(exp), "--prior", "gmm", "prior.resolution=16",
           "algorithm.method.num_steps=4", "algorithm.method.inner_steps=2", "verbose=false"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "hydra/launcher=submitit_local" in done.stdout and "array_parallelism" not in done.stdout
    board = json.loads((exp / "leaderboard.json").read_text())
    assert L.consistency_problems(board) == []
    assert [(e["task"], len(e["per_sample"]), e["missing"]) for e in board["entries"]] == [("inpaint_random", 2, [])]


def test_shipped_example_submission_validates():
    """lmaps_plugin/bench/leaderboard.example.json: a real submission (faces64, inpaint_random and sr4, LMAPS and
    InverseBench's peers) kept as documentation; it must stay valid under the schema."""
    import json
    from importlib import resources

    from lmaps_plugin.bench import leaderboard

    doc = json.loads((resources.files("lmaps_plugin.bench") / "leaderboard.example.json").read_text())
    leaderboard.validate(doc)
    assert leaderboard.consistency_problems(doc) == []
    assert {e["task"] for e in doc["entries"]} == {"inpaint_random", "sr4"}
