"""Result files: InverseBench's layout, atomic writes that survive interruption, no NaN ever written, resume and
missing-sample bookkeeping, summary statistics against independent formulas."""
from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch

from lmaps_plugin.app import results as R


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


def test_metrics_files_name_missing_and_failed_samples(tmp_path):
    for i, value in ((0, 20.0), (2, 24.0)):
        R.save_result(tmp_path, i, *tensors(i))
        R.write_record(tmp_path, i, {"status": "ok", "metrics": {"psnr": value}, "config_hash": "h"})
    R.write_record(tmp_path, 3, {"status": "failed", "reason": "diverged at step 4"})
    json_path, csv_path = R.write_metrics(tmp_path, R.read_records(tmp_path), expected_ids=range(5),
                                          unavailable={"lpips": "unavailable: no weights"})
    doc = json.loads(json_path.read_text())
    assert doc["complete"] is False
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
    R.write_record(tmp_path, 0, {"status": "ok", "metrics": {}, "config_hash": "a" * 64})
    records = R.read_records(tmp_path)
    R.check_config(records, "a" * 64, tmp_path)  # same configuration: fine
    with pytest.raises(R.ConfigMismatchError, match="exp_name=.*overwrite=true"):
        R.check_config(records, "b" * 64, tmp_path)


def test_config_hash_ignores_key_order_and_sees_values():
    assert R.config_hash({"a": 1, "b": {"c": 2}}) == R.config_hash({"b": {"c": 2}, "a": 1})
    assert R.config_hash({"a": 1}) != R.config_hash({"a": 2})
