"""Result files: InverseBench's layout, atomic writes that survive interruption, no NaN ever written, resume and
missing-sample bookkeeping, summary statistics against independent formulas."""
from __future__ import annotations

import csv
import json
import math
import statistics
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmaps_plugin.app import results as R
from record_files import read_one


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 1, 4, 4, generator=g), torch.rand(1, 1, 8, 8, generator=g) * 2 - 1,
            torch.rand(1, 1, 8, 8, generator=g) * 2 - 1)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_result_file_has_inversebench_layout_and_loads_weights_only(tmp_path):
    obs, recon, target = tensors()
    path = R.save_result(tmp_path, 7, obs, recon, target, meta={"seed": 3, "seconds": 1.5})
    assert path.name == "result_7.pt"
    data = torch.load(path, weights_only=True)
    assert set(data) == {"observation", "recon", "target", "meta"}
    assert torch.equal(data["recon"], recon) and torch.equal(data["observation"], obs)
    assert data["meta"] == {"seed": 3, "seconds": 1.5}
    assert R.is_finished(tmp_path, 7) and not R.is_finished(tmp_path, 8)
    assert R.result_ids(tmp_path) == [7]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_reconstruction_is_never_written(tmp_path, bad):
    obs, recon, target = tensors()
    recon[0, 0, 3, 3] = bad
    with pytest.raises(R.NonFiniteResultError, match="recon holds NaN or inf"):
        R.save_result(tmp_path, 0, obs, recon, target)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result_0.pt"
    R.atomic_write_text(path, "old")

    def killed_midway(handle):
        handle.write(b"partial new conte")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        R.atomic_write(path, killed_midway)
    assert path.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_truncated_result_file_counts_as_unfinished(tmp_path):
    obs, recon, target = tensors()
    path = R.save_result(tmp_path, 2, obs, recon, target)
    path.write_bytes(path.read_bytes()[:40])  # what a non-atomic writer killed midway would leave
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        assert not R.is_finished(tmp_path, 2)


def test_json_never_holds_nan(tmp_path):
    with pytest.raises(R.NonFiniteResultError):
        R.write_record(tmp_path, 0, {"status": "ok", "metrics": {"psnr": float("nan")}})
    with pytest.raises(R.NonFiniteResultError):
        R.atomic_write_json(tmp_path / "x.json", {"a": [1.0, float("inf")]})
    assert list(tmp_path.iterdir()) == []


def test_summary_matches_population_statistics():
    samples = {0: {"psnr": 20.0, "ssim": 0.5}, 1: {"psnr": 23.0, "ssim": 0.7}, 2: {"psnr": 29.5}}
    stats = R.summarize(samples)
    assert stats["psnr"]["n"] == 3 and stats["ssim"]["n"] == 2
    assert stats["psnr"]["mean"] == pytest.approx(statistics.fmean([20.0, 23.0, 29.5]))
    assert stats["psnr"]["std"] == pytest.approx(statistics.pstdev([20.0, 23.0, 29.5]))
    assert stats["ssim"]["std"] == pytest.approx(0.1)
    flat = R.flat_summary(stats)
    assert flat["ssim"] == pytest.approx(0.6) and flat["ssim_std"] == pytest.approx(0.1)


HASH = "ab" * 32


def ok_record(folder, sample_id, metrics, **extra):
    """Save a result and its record, as the app does (the record carries the .pt's SHA-256)."""
    path = R.save_result(folder, sample_id, *tensors(sample_id))
    return R.write_record(folder, sample_id, {"status": "ok", "metrics": metrics, "config_hash": HASH, "seed": 0,
                                              "result_sha256": R.file_sha256(path), **extra})


def test_metrics_files_name_missing_and_failed_samples(tmp_path):
    for i, value in ((0, 20.0), (2, 24.0)):
        ok_record(tmp_path, i, {"psnr": value})
    R.write_record(tmp_path, 3, {"status": "failed", "reason": "diverged at step 4"})
    json_path, csv_path = R.write_metrics(tmp_path, R.read_records(tmp_path), expected_ids=range(5),
                                          unavailable={"lpips": "unavailable: no weights"})
    doc = json.loads(json_path.read_text())
    assert doc["complete"] is False
    assert doc["requested"] == [0, 1, 2, 3, 4]
    assert doc["missing"] == [1, 3, 4]
    assert doc["failed"] == {"3": "diverged at step 4"}
    assert doc["ids"] == [0, 2] and doc["per_sample"]["psnr"] == [20.0, 24.0]
    assert doc["summary"] == {"psnr": 22.0, "psnr_std": 2.0}
    assert doc["unavailable"] == {"lpips": "unavailable: no weights"}
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["id", "psnr", "lpips"]
    assert rows[1] == ["0", "20", "unavailable: no weights"]
    assert rows[3][:2] == ["mean", "22"] and rows[4][:2] == ["std", "2"]
    assert [r[0] for r in rows[5:]] == ["1", "3", "4"] and rows[5][1] == "missing"


def test_records_from_another_configuration_are_refused(tmp_path):
    R.write_record(tmp_path, 0, {"status": "ok", "metrics": {}, "config_hash": "a" * 64, "seed": 0,
                                 "result_sha256": "0" * 64})
    records = R.read_records(tmp_path)
    R.check_config(records, "a" * 64, tmp_path)  # same configuration: fine
    with pytest.raises(R.ConfigMismatchError, match="exp_name=.*overwrite=true"):
        R.check_config(records, "b" * 64, tmp_path)
    with pytest.raises(R.ConfigMismatchError, match="seed 0, this run has seed 1"):
        R.check_config(records, "a" * 64, tmp_path, seed=1)


def test_config_hash_ignores_key_order_and_sees_values():
    assert R.config_hash({"a": 1, "b": {"c": 2}}) == R.config_hash({"b": {"c": 2}, "a": 1})
    assert R.config_hash({"a": 1}) != R.config_hash({"a": 2})


# ------------------------------------------------------------------------ records are validated on read
@pytest.mark.parametrize("text, problem", [
    ("[]", "expected a JSON object, got list"),
    ('{"id": 2, "status": "ok", "metrics": {"psnr": NaN}, "result_sha256": "' + "0" * 64 + '"}',
     "metrics must hold finite numbers only, got psnr=nan"),
    ('{"id": 3, "status": "ok", "metrics": {}, "result_sha256": "' + "0" * 64 + '"}', "id is 3, expected 2"),
    ('{"id": 2, "status": "done"}', "status is 'done'"),
    ('{"id": true, "status": "failed", "reason": "x"}', "id is True, expected 2"),
    ('{"id": 2, "status": "ok", "metrics": {"psnr": 1.0}}', "result_sha256 is None"),
    ('{"id": 2, "status": "failed"}', "a failed record needs a reason"),
    ('{"id": 2, "status": "failed", "reason": "x", "seed": -1}', "seed is -1, expected a non-negative integer"),
    ('{"id": 2, "status": "ok", "metrics": {"psnr": "high"}, "result_sha256": "' + "0" * 64 + '"}',
     "psnr='high'"),
    ("{not json", "cannot be read"),
])
def test_a_bad_record_is_named_in_a_warning_and_left_out(tmp_path, text, problem):
    """Before: '[]' raised AttributeError ('list' object has no attribute 'get') and a NaN metric an error that did
    not name the file; now the file is named, with what is wrong, and its sample counts as not done."""
    ok_record(tmp_path, 0, {"psnr": 20.0})
    (tmp_path / "result_2.json").write_text(text)
    with pytest.warns(RuntimeWarning) as caught:
        records = R.read_records(tmp_path)
    assert sorted(records) == [0]
    messages = [str(w.message) for w in caught]
    assert any("result_2.json" in m and problem in m and "run again" in m for m in messages), messages


def test_writer_refuses_what_the_reader_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="result_sha256"):
        R.write_record(tmp_path, 0, {"status": "ok", "metrics": {"psnr": 1.0}})
    with pytest.raises(ValueError, match="status is 'maybe'"):
        R.write_record(tmp_path, 0, {"status": "maybe"})
    assert list(tmp_path.iterdir()) == []


def test_a_record_is_checked_against_its_result_file(tmp_path):
    """The .pt and .json of one sample are tied by the .pt's SHA-256: a .pt written by another run is caught."""
    ok_record(tmp_path, 0, {"psnr": 20.0})
    record = R.read_records(tmp_path)[0]
    assert R.verified(tmp_path, 0, record)
    R.save_result(tmp_path, 0, *tensors(7))  # another run's reconstruction replaces the .pt only
    with pytest.warns(RuntimeWarning, match="result_0.pt does not match result_0.json"):
        assert not R.verified(tmp_path, 0, record)
    R.result_path(tmp_path, 0).unlink()
    with pytest.warns(RuntimeWarning, match="says ok but result_0.pt is missing"):
        assert not R.verified(tmp_path, 0, record)


def test_solver_statistics_summary_is_max_of_residuals_and_mean_of_means(tmp_path):
    ok_record(tmp_path, 0, {"psnr": 1.0}, solver={"cg_relative_residual_max": 3e-7, "cg_iterations_mean": 12.0,
                                                   "guard_steps": 1})
    ok_record(tmp_path, 1, {"psnr": 1.0}, solver={"cg_relative_residual_max": 9e-6, "cg_iterations_mean": 13.0})
    ok_record(tmp_path, 2, {"psnr": 1.0})
    R.write_record(tmp_path, 3, {"status": "failed", "reason": "x"})
    summary = R.solver_summary(R.read_records(tmp_path))
    assert summary == {"cg_relative_residual_max": 9e-6, "cg_iterations_mean": 12.5}
    doc = json.loads(R.write_metrics(tmp_path, R.read_records(tmp_path), range(4))[0].read_text())
    assert doc["solver"] == summary
    with pytest.raises(ValueError, match="solver must hold finite numbers only"):
        R.write_record(tmp_path, 4, {"status": "failed", "reason": "x", "solver": {"a": "b"}})


# ------------------------------------------------------------------------- the record reader, fuzzed (Hypothesis)
# Settings: max_examples=200, deadline=None, derandomize=True (reproducible in CI); each example writes one file in a
# fresh temporary folder.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) |
                    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def _finite_number(v):
    return type(v) in (int, float) and math.isfinite(v)



def _assert_reader_contract(records, messages, sample_id=5):
    """Either the record comes back, valid by this test's own reading of the contract, or a warning names the file."""
    if sample_id in records:
        r = records[sample_id]
        assert type(r) is dict and type(r["id"]) is int and r["id"] == sample_id and r["status"] in ("ok", "failed")
        if r["status"] == "ok":
            assert all(_finite_number(v) for v in r["metrics"].values())
            assert isinstance(r["result_sha256"], str) and len(r["result_sha256"]) == 64
        else:
            assert isinstance(r["reason"], str)
        assert not messages
    else:
        assert any(f"result_{sample_id}.json" in m and "run again" in m for m in messages), messages


@FUZZ
@given(value=JSON)
def test_reader_never_crashes_on_any_json(value):
    records, messages = read_one(json.dumps(value, allow_nan=True))
    _assert_reader_contract(records, messages)
    if not isinstance(value, dict):
        assert records == {}


@FUZZ
@given(data=st.binary(max_size=64))
def test_reader_never_crashes_on_any_bytes(data):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "result_5.json").write_bytes(data)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            records = R.read_records(folder)
    _assert_reader_contract(records, [] if records else ["result_5.json run again"])


VALID = {"id": 5, "status": "ok", "metrics": {"psnr": 20.0, "ssim": 0.5}, "result_sha256": "0" * 64,
         "config_hash": "a" * 64, "seed": 0, "seconds": 1.0, "num_samples": 1}
#: (where, oracle): oracle(value) is True when the record stays valid with that value there
MUTATIONS = {
    "id": lambda v: type(v) is int and v == 5,
    "status": lambda v: v == "ok",
    "metrics.psnr": _finite_number,
    "result_sha256": lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
    "config_hash": lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
    "seed": lambda v: type(v) is int and v >= 0,
    "seconds": lambda v: v is None or (_finite_number(v) and v >= 0),
    "num_samples": lambda v: type(v) is int and v >= 1,
    "unknown_key": lambda v: True,
}


@FUZZ
@given(where=st.sampled_from(sorted(MUTATIONS)),
       value=JSON | st.sampled_from([5, 0, -1, "ok", "failed", "0" * 64, "A" * 64, float("nan"), 1e308]))
def test_reader_accepts_exactly_the_valid_mutations(where, value):
    record = json.loads(json.dumps(VALID))
    if where.startswith("metrics."):
        record["metrics"][where.split(".")[1]] = value
    else:
        record[where] = value
    records, messages = read_one(json.dumps(record, allow_nan=True))
    _assert_reader_contract(records, messages)
    assert (5 in records) == MUTATIONS[where](value), (where, value, messages)


@FUZZ
@given(missing=st.sampled_from(["id", "status", "metrics", "result_sha256"]))
def test_reader_refuses_a_record_without_a_required_key(missing):
    record = {k: v for k, v in VALID.items() if k != missing}
    records, messages = read_one(json.dumps(record))
    assert records == {} and any("result_5.json" in m for m in messages)
