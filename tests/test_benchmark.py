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

from lmaps_plugin.app import benchmark as B
from lmaps_plugin.app import leaderboard as L
from lmaps_plugin.app import results as R

HASH = "ab" * 32


def fake_run(root, task, algo, seed, values, failed=(), hash_=HASH):
    """Write result files and records as the app does: {root}/{task}/{algo}/seed{seed}/result_{id}.(pt|json)."""
    exp = root / task / algo / f"seed{seed}"
    for i, psnr in values.items():
        x = torch.zeros(1, 1, 4, 4)
        R.save_result(exp, i, x, x, x)
        R.write_record(exp, i, {"status": "ok", "metrics": {"psnr": psnr, "ssim": psnr / 40}, "config_hash": hash_,
                                "seed": seed, "task": task, "algorithm": algo, "dataset": "faces",
                                "prior": "faces64", "num_samples": 1, "seconds": 2.0,
                                "unavailable": {"lpips": "unavailable: no torchvision"}})
    for i in failed:
        R.write_record(exp, i, {"status": "failed", "reason": "diverged", "seed": seed, "task": task,
                                "algorithm": algo, "dataset": "faces", "prior": "faces64", "config_hash": hash_})


def manifest(root, tasks=("inpaint_random",), algorithms=("LMAPS-cpu", "DAPS"), seeds=(0,), ids=(0, 1, 2)):
    R.atomic_write_json(root / B.MANIFEST, {"tasks": list(tasks), "algorithms": list(algorithms),
                                            "seeds": list(seeds), "ids": list(ids), "prior": "faces64",
                                            "dataset": "faces"})


# ------------------------------------------------------------------------------------------------ sweep
def test_shard_ranges_split_ids_into_consecutive_runs():
    assert B.shard_ranges(range(8), 4) == ["0-3", "4-7"]
    assert B.shard_ranges(range(5), 2) == ["0-1", "2-3", "4"]
    assert B.shard_ranges([0, 1, 2, 7, 8, 12], 10) == ["0-2", "7-8", "12"]
    with pytest.raises(ValueError, match="shard_size"):
        B.shard_ranges([0], 0)


def test_sweep_overrides_for_joblib_and_slurm():
    request = B.SweepRequest(tasks=["sr4", "inpaint_random"], algorithms=["lmaps_cpu", "ib_daps"], seeds=[0, 1],
                             ids=list(range(6)), exp_dir="out", shard_size=3, jobs=2, threads=1,
                             extra=["algorithm.method.num_steps=5"])
    ov = request.overrides()
    assert ov[:4] == ["problem=sr4,inpaint_random", "algorithm=lmaps_cpu,ib_daps", "seed=0,1", "ids=0-2,3-5"]
    assert {"hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1",
            "figure.enabled=false"} <= set(ov)
    assert ov[-1] == "algorithm.method.num_steps=5"
    assert request.command()[3] == "-m"
    assert B.launcher_overrides("submitit_slurm", 8) == ["hydra/launcher=submitit_slurm",
                                                          "hydra.launcher.array_parallelism=8"]
    with pytest.raises(ValueError, match="launcher must be one of"):
        B.launcher_overrides("mpi", 2)


# ------------------------------------------------------------------------------------------ aggregation
def test_aggregation_tables_name_missing_samples_and_bold_the_best(tmp_path):
    fake_run(tmp_path, "inpaint_random", "LMAPS-cpu", 0, {0: 30.0, 1: 32.0, 2: 31.0})
    fake_run(tmp_path, "inpaint_random", "DAPS", 0, {0: 28.0}, failed=[2])
    manifest(tmp_path)
    out = B.aggregate(tmp_path)
    md = out.table_md.read_text()
    assert "| inpaint_random | LMAPS-cpu | **31.00 ± 0.82** |" in md
    assert "| DAPS | 28.00 ± 0.00 |" in md and "| 1/3 |" in md
    assert "missing inpaint_random / DAPS: seed 0 id 1 (not run); seed 0 id 2 (failed: diverged)" in md
    assert "lpips: unavailable: no torchvision" in md and "n/a" in md
    rows = {r["algorithm"]: r for r in csv.DictReader(io.StringIO(out.table_csv.read_text()))}
    assert float(rows["LMAPS-cpu"]["psnr_mean"]) == pytest.approx(statistics.fmean([30, 32, 31]))
    assert float(rows["LMAPS-cpu"]["psnr_std"]) == pytest.approx(statistics.pstdev([30, 32, 31]), rel=1e-5)
    assert rows["DAPS"]["missing"] == "0:1 0:2" and rows["DAPS"]["lpips_mean"] == "unavailable"
    doc = json.loads(out.leaderboard.read_text())
    L.validate(doc)
    daps = next(e for e in doc["entries"] if e["algorithm"] == "DAPS")
    assert daps["missing"] == [{"seed": 0, "id": 1, "reason": "not run"},
                               {"seed": 0, "id": 2, "reason": "failed: diverged"}]
    assert daps["per_sample"] == [{"seed": 0, "id": 0, "metrics": {"psnr": 28.0, "ssim": 0.7}, "seconds": 2.0}]


def test_missing_samples_are_grouped_by_seed_and_reason():
    missing = [{"seed": 0, "id": i, "reason": "failed: NaN"} for i in (0, 1, 3)] + \
        [{"seed": 1, "id": 2, "reason": "not run"}]
    assert B._describe_missing(missing) == "seed 0 ids 0, 1, 3 (failed: NaN); seed 1 id 2 (not run)"


def test_requested_but_never_run_entries_are_listed(tmp_path):
    fake_run(tmp_path, "inpaint_random", "LMAPS-cpu", 0, {0: 30.0})
    manifest(tmp_path, algorithms=("LMAPS-cpu", "DPS"), ids=(0,))
    entries = B.collect(tmp_path, B.read_manifest(tmp_path))
    dps = next(e for e in entries if e.algorithm == "DPS")
    assert dps.samples == {} and dps.missing() == [{"seed": 0, "id": 0, "reason": "not run"}]
    L.validate(B.submission(entries, B.read_manifest(tmp_path)))


def test_entries_mixing_configurations_are_refused(tmp_path):
    fake_run(tmp_path, "sr4", "LMAPS-cpu", 0, {0: 30.0})
    fake_run(tmp_path, "sr4", "LMAPS-cpu", 1, {0: 30.0}, hash_="cd" * 32)
    with pytest.raises(R.ConfigMismatchError, match="different configurations"):
        B.collect(tmp_path)


# --------------------------------------------------------------------------------------------- schema
def valid_document(tmp_path):
    fake_run(tmp_path, "sr4", "LMAPS-cpu", 0, {0: 25.0, 1: 27.0})
    manifest(tmp_path, tasks=("sr4",), algorithms=("LMAPS-cpu",), ids=(0, 1))
    return B.submission(B.collect(tmp_path, B.read_manifest(tmp_path)), B.read_manifest(tmp_path))


def test_schema_file_uses_only_supported_keywords_and_a_real_document_validates(tmp_path):
    schema = L.load_schema()
    assert schema["properties"]["schema_version"]["const"] == L.SCHEMA_VERSION
    doc = valid_document(tmp_path)
    L.validate(doc)  # would raise on an unsupported keyword anywhere it is used
    entry = doc["entries"][0]
    assert set(entry) == set(schema["$defs"]["entry"]["required"])
    assert entry["summary"]["psnr"] == {"mean": 26.0, "std": 1.0, "n": 2}
    assert doc["package_versions"]["torch"] == torch.__version__.split("+")[0] or \
        doc["package_versions"]["torch"].startswith(torch.__version__.split("+")[0])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("entries"), "missing required key 'entries'"),
    (lambda d: d["entries"][0].update(config_hash="xyz"), "does not match"),
    (lambda d: d["entries"][0]["summary"]["psnr"].update(std=-1.0), "below the minimum"),
    (lambda d: d["entries"][0]["per_sample"][0]["metrics"].update(psnr=float("nan")), "expected number"),
    (lambda d: d["entries"][0].update(seeds=[]), "at least 1 item"),
    (lambda d: d["entries"][0].update(extra=1), "unexpected key 'extra'"),
    (lambda d: d["entries"][0]["unavailable"].update(lpips="no weights"), "does not match '^unavailable: '"),
    (lambda d: d.update(kind="other"), "must be 'lmaps-leaderboard-submission'"),
])
def test_schema_rejects_broken_documents_and_names_where(tmp_path, mutate, message):
    doc = copy.deepcopy(valid_document(tmp_path))
    mutate(doc)
    with pytest.raises(L.SchemaValidationError) as info:
        L.validate(doc)
    assert any(message in e for e in info.value.errors), info.value.errors


def test_validator_rejects_unknown_schema_keywords():
    with pytest.raises(ValueError, match="unsupported keywords"):
        L.validate({}, {"type": "object", "oneOf": []})


def test_validate_command(tmp_path, capsys):
    path = R.atomic_write_json(tmp_path / "board.json", valid_document(tmp_path))
    assert B.main(["validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ a real multirun
@pytest.mark.slow
def test_two_worker_joblib_multirun_resumes_and_aggregates(tmp_path):
    """2 tasks × 2 shards = 4 Hydra jobs on 2 joblib workers; then a lost result is redone and nothing else."""
    exp = tmp_path / "bench"
    cmd = [sys.executable, "-m", "lmaps_plugin.app.benchmark", "run", "--tasks", "inpaint_random,sr4",
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
    interim = B.aggregate(exp)
    assert "missing sr4 / LMAPS-cpu: seed 0 id 3 (not run)" in interim.table_md.read_text()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sr4 / "result_3.pt").is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished samples untouched
    board = json.loads((exp / "leaderboard.json").read_text())
    assert all(not e["missing"] for e in board["entries"])


def test_shipped_example_submission_validates():
    """lmaps_plugin/app/leaderboard.example.json: a real submission (faces64, inpaint_random and sr4, LMAPS and
    InverseBench's peers) kept as documentation; it must stay valid under the schema."""
    import json
    from importlib import resources

    from lmaps_plugin.app import leaderboard

    doc = json.loads((resources.files("lmaps_plugin.app") / "leaderboard.example.json").read_text())
    leaderboard.validate(doc)
    assert {e["task"] for e in doc["entries"]} == {"inpaint_random", "sr4"}
