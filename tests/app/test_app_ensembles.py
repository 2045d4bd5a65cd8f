"""Ensembles in the ``lmaps`` app and in ``lmaps-bench``: with ``num_samples=M >= 2`` every
record carries the ensemble keys, recomputed here independently (numpy, scipy, torchmetrics) from ``result_{id}.pt``;
metrics.json summarizes them, figure.png gains mean/std/|error| panels, and the leaderboard carries and checks them.
Runs use test_cli's tiny setting (exact GMM prior at 16×16, 4 LMAPS steps)."""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import struct

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from scipy import stats
from torchmetrics.functional.image import structural_similarity_index_measure

from lmaps_plugin.app.compose import compose_app
from lmaps_plugin.bench import aggregate as AG
from lmaps_plugin.bench import main as B
from lmaps_plugin.app import run as app_run
from lmaps_plugin.app import build
from lmaps_plugin.bench import leaderboard as L
from lmaps_plugin.app import results as R
from lmaps_plugin.app.figures import save_result_grid

TINY = ["prior=gmm", "prior.resolution=16", "algorithm.method.num_steps=4", "algorithm.method.inner_steps=2",
        "threads=1"]
ENSEMBLE = {"ensemble_size", "ensemble_psnr", "ensemble_ssim", "std_mean", "coverage_90", "coverage_90_quantile",
            "z2_mean"}


def config(*overrides):
    GlobalHydra.instance().clear()
    try:
        return compose_app(list(overrides))
    finally:
        GlobalHydra.instance().clear()


def unit(x) -> np.ndarray:
    """[-1, 1] -> [0, 1], not clipped, float64."""
    return (x.numpy().astype(np.float64) + 1) / 2


def expected_keys(recon, target) -> dict:
    """The ensemble keys computed from their definitions, independently of lmaps_plugin.ensemble."""
    s, t = unit(recon), unit(target[0])
    m = s.shape[0]
    mean, std = s.mean(0), s.std(0, ddof=1)
    mean_clipped = np.clip(mean, 0, 1)
    half = stats.t.ppf(0.95, m - 1) * math.sqrt(1 + 1 / m) * std
    lo, hi = np.quantile(s, [0.05, 0.95], axis=0)  # numpy's default: linear interpolation
    out = {"ensemble_size": m, "std_mean": std.mean(),
           "ensemble_psnr": 10 * math.log10(1 / np.mean((mean_clipped - np.clip(t, 0, 1)) ** 2)),
           "ensemble_ssim": structural_similarity_index_measure(
               torch.from_numpy(mean_clipped[None]).float(), torch.from_numpy(np.clip(t, 0, 1)[None]).float(),
               data_range=1.0).item(),
           "coverage_90": np.mean((t >= mean - half) & (t <= mean + half)),
           "coverage_90_quantile": np.mean((t >= lo) & (t <= hi))}
    if m >= 4:
        var = std ** 2 * (1 + 1 / m)
        keep = var > 1e-24
        out["z2_mean"] = np.mean((t - mean)[keep] ** 2 / var[keep]) * (m - 3) / (m - 1)
    return out


def png_width(path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """``lmaps <TINY> num_images=2 num_samples=4`` (figures on), its stdout and its folder."""
    root = tmp_path_factory.mktemp("ens") / "res"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        summary = app_run.run(config(*TINY, "num_images=2", "num_samples=4", f"exp_dir={root}"))
    return summary, buffer.getvalue(), root


def test_num_samples_4_writes_ensemble_keys_that_match_their_definitions(ensemble_run):
    summary, out, _ = ensemble_run
    exp = summary.exp_dir
    assert [o.status for o in summary.outcomes] == ["ok", "ok"]
    for sample_id in (0, 1):
        record = json.loads((exp / f"result_{sample_id}.json").read_text())
        data = torch.load(exp / f"result_{sample_id}.pt", weights_only=True)
        assert data["recon"].shape == (4, 1, 16, 16)
        want = expected_keys(data["recon"], data["target"])
        assert set(want) == ENSEMBLE
        for key, value in want.items():
            assert record["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        # the ensemble's mean beats its average sample here (the mean's error is the samples' minus their spread)
        assert record["metrics"]["ensemble_psnr"] > record["metrics"]["psnr"]
    assert "mean of 4: PSNR" in out and "90% coverage" in out and "ens. PSNR" in out and "cov. 90%" in out


def test_metrics_json_and_csv_summarize_the_ensemble_keys_per_id(ensemble_run):
    summary, _, _ = ensemble_run
    exp = summary.exp_dir
    doc = json.loads((exp / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} written"))
    assert doc["complete"] and doc["ids"] == [0, 1]
    assert doc["info"]["num_samples"] == 4 and doc["info"]["ensemble"]["size"] == 4
    assert "without clipping" in doc["info"]["ensemble"]["units"]
    assert set(doc["info"]["ensemble"]["keys"]) == ENSEMBLE
    for key in ENSEMBLE:
        values = [json.loads((exp / f"result_{i}.json").read_text())["metrics"][key] for i in (0, 1)]
        assert [doc["samples"][str(i)][key] for i in (0, 1)] == values == doc["per_sample"][key]
        assert doc["stats"][key]["mean"] == pytest.approx(np.mean(values))
        assert doc["stats"][key]["std"] == pytest.approx(np.std(values))
        assert doc["summary"][f"{key}_std"] == pytest.approx(np.std(values))
    rows = list(csv.DictReader(io.StringIO((exp / "metrics.csv").read_text())))
    assert [r["id"] for r in rows] == ["0", "1", "mean", "std"]
    assert float(rows[2]["coverage_90"]) == pytest.approx(doc["stats"]["coverage_90"]["mean"], rel=1e-5)
    assert float(rows[0]["ensemble_size"]) == 4


def test_figure_gains_the_ensemble_panels(ensemble_run, tmp_path):
    summary, _, _ = ensemble_run
    exp = summary.exp_dir
    data = torch.load(exp / "result_0.pt", weights_only=True)
    one = save_result_grid(tmp_path / "one.png", [{"recon": data["recon"][:1], "target": data["target"],
                                                    "observation": data["observation"]}])
    # 7 panels (truth, measurement, sample, |error|, mean, std, |mean - truth|) instead of 4, 2.3 inches each
    assert png_width(one) == round(4 * 2.3 * 110)
    assert png_width(exp / "figure.png") == round(7 * 2.3 * 110)


def test_single_sample_runs_are_unchanged_and_m3_has_no_z2(tmp_path):
    common = [*TINY, "num_images=1", f"exp_dir={tmp_path}", "figure.enabled=false", "verbose=false"]
    one = app_run.run(config(*common, "exp_name=m1"))
    assert not ENSEMBLE & set(one.outcomes[0].metrics)
    doc = json.loads((one.exp_dir / "metrics.json").read_text())
    assert "ensemble" not in doc["info"] and not ENSEMBLE & set(doc["stats"])
    # the config hash counts num_samples (as before), nothing else of the ensembles
    assert build.run_config_hash(config(*common, "exp_name=m1")) != build.run_config_hash(config(*common,
                                                                                            "num_samples=3"))
    three = app_run.run(config(*common, "num_samples=3", "exp_name=m3"))
    metrics = three.outcomes[0].metrics
    assert three.outcomes[0].status == "ok" and "z2_mean" not in metrics and metrics["ensemble_size"] == 3
    data = torch.load(three.exp_dir / "result_0.pt", weights_only=True)
    assert metrics["coverage_90"] == pytest.approx(expected_keys(data["recon"], data["target"])["coverage_90"])
    doc = json.loads((three.exp_dir / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert "z2_mean" not in doc["stats"] and doc["stats"]["coverage_90"]["n"] == 1


def test_records_written_before_the_ensemble_keys_gain_them_on_resume(tmp_path):
    args = [*TINY, "num_images=2", "num_samples=4", f"exp_dir={tmp_path}", "figure.enabled=false", "verbose=false"]
    first = app_run.run(config(*args))
    exp = first.exp_dir
    path = exp / "result_1.json"
    old = json.loads(path.read_text())
    new_keys = {k: old["metrics"].pop(k) for k in ENSEMBLE}       # as a run before this change wrote it
    R.write_record(exp, 1, old)
    pt = (exp / "result_1.pt").stat().st_mtime_ns
    # an old folder still aggregates: the ids without the keys simply do not count for them
    records = app_run.folder_records(exp, old["config_hash"], 0)
    R.write_metrics(exp, records, expected_ids=[0, 1])
    doc = json.loads((exp / "metrics.json").read_text())
    assert doc["complete"] and doc["stats"]["coverage_90"]["n"] == 1 and doc["per_sample"]["coverage_90"][1] is None
    again = app_run.run(config(*args))
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert (exp / "result_1.pt").stat().st_mtime_ns == pt                 # not rerun
    record = json.loads(path.read_text())
    assert {k: record["metrics"][k] for k in ENSEMBLE} == pytest.approx(new_keys)
    assert record["solver"] == old["solver"] and record["seconds"] == old["seconds"]
    assert json.loads((exp / "metrics.json").read_text())["stats"]["coverage_90"]["n"] == 2


# ------------------------------------------------------------------------------------------ lmaps-bench
@pytest.fixture(scope="module")
def board(ensemble_run):
    _, _, root = ensemble_run
    out = AG.aggregate(root, root.parent / "agg")
    return out, json.loads(out.leaderboard.read_text())


def test_leaderboard_carries_the_ensemble_keys_with_m(board, ensemble_run):
    out, doc = board
    (entry,) = doc["entries"]
    assert entry["num_samples"] == 4 and L.file_problems(out.leaderboard) == []
    exp = ensemble_run[0].exp_dir
    for key in ENSEMBLE:
        values = [json.loads((exp / f"result_{i}.json").read_text())["metrics"][key] for i in (0, 1)]
        assert [r["metrics"][key] for r in entry["per_sample"]] == values
        assert entry["summary"][key]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    md = out.table_md.read_text()
    stats_ = entry["summary"]["ensemble_psnr"]
    assert "ensemble PSNR (M) ↑" in md and f"{stats_['mean']:.2f} ± {stats_['std']:.2f} (4)" in md
    row = next(csv.DictReader(io.StringIO(out.table_csv.read_text())))
    assert row["num_samples"] == "4" and float(row["coverage_90_mean"]) == pytest.approx(
        entry["summary"]["coverage_90"]["mean"], rel=1e-5)


@pytest.mark.parametrize("mutate, line", [
    (lambda e: e["summary"]["ensemble_psnr"].update(mean=e["summary"]["ensemble_psnr"]["mean"] + 1.0),
     "summary.ensemble_psnr.mean is"),
    (lambda e: e["per_sample"][0]["metrics"].update(ensemble_size=8.0),
     "ensemble_size is 8.0, but the entry's num_samples is 4"),
    (lambda e: e.update(num_samples=1), "but the entry's num_samples is 1 (they need num_samples >= 2)"),
    (lambda e: e["per_sample"][0]["metrics"].update(coverage_90=1.5), "1.5 is greater than the maximum of 1"),
    (lambda e: e["per_sample"][0]["metrics"].update(std_mean=-0.1), "-0.1 is less than the minimum of 0"),
])
def test_validate_refuses_a_doctored_ensemble(board, tmp_path, capsys, mutate, line):
    _, doc = board
    doc = copy.deepcopy(doc)
    mutate(doc["entries"][0])
    path = R.atomic_write_json(tmp_path / "board.json", doc)
    assert B.main(["validate", str(path)]) == 1
    assert line in capsys.readouterr().out


def test_single_sample_tables_have_no_ensemble_column(tmp_path):
    exp = tmp_path / "inpaint_random" / "DAPS" / "seed0"
    path = R.save_result(exp, 0, *(torch.zeros(1, 1, 4, 4),) * 3)
    R.write_record(exp, 0, {"status": "ok", "metrics": {"psnr": 20.0}, "config_hash": "ab" * 32, "seed": 0,
                            "task": "inpaint_random", "algorithm": "DAPS", "num_samples": 1,
                            "result_sha256": R.file_sha256(path)})
    out = AG.aggregate(tmp_path)
    assert "ensemble PSNR" not in out.table_md.read_text() and L.file_problems(out.leaderboard) == []
