"""``lmaps-bench export``: InverseBench-layout tables from synthetic results with known numbers."""
from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch
import yaml

from lmaps_plugin.app import results as R
from lmaps_plugin.bench.aggregate import aggregate
from lmaps_plugin.bench.main import main
from lmaps_plugin.evaluation.metrics_file import write_metrics_file

#: scattering, PSNR per (method, NR) over ids 0, 1 (one seed)
SCATTER = {("DPS", 360): [30.0, 32.0], ("DPS", 180): [28.0, 29.0],
           ("LMAPS", 360): [33.0, 35.0], ("LMAPS", 180): [31.0, 31.0]}
#: black hole, PSNR per (method, ratio) and seed over ids 0, 1: per image best (max) of the two seeds != mean
BLACK_HOLE = {("DPS", 0.1): {0: [20.0, 22.0], 1: [24.0, 21.0]}, ("DPS", 1.0): {0: [25.0, 25.0], 1: [27.0, 26.0]},
              ("LMAPS", 0.1): {0: [23.0, 20.0], 1: [21.0, 26.0]}, ("LMAPS", 1.0): {0: [26.0, 28.0], 1: [30.0, 24.0]}}
COST = {"nfe": 100, "forward_calls": 200, "vjp_calls": 100, "network_seconds": 1.5, "solver_seconds": 0.5}


def _stock(folder, problem: str, model: dict, algorithm: str, seed: int, samples: dict, requested=()):
    """A stock-main.py experiment folder: our metrics.json and InverseBench's .hydra/config.yaml."""
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "num_samples": 1, "exp_name": folder.name,
              "problem": {"name": problem, "model": model}, "algorithm": {"name": algorithm}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    write_metrics_file(folder, samples, requested=requested or samples.keys())


@pytest.fixture
def stock(tmp_path):
    root = tmp_path / "stock"
    for (method, nr), values in SCATTER.items():
        samples = {i: {"psnr": v, "ssim": v / 40, **COST} for i, v in enumerate(values)}
        _stock(root / "inv-scatter" / method / f"nr{nr}", "inverse-scatter-linear", {"numRec": nr}, method, 0,
               samples)
    for (method, ratio), by_seed in BLACK_HOLE.items():
        for seed, values in by_seed.items():
            samples = {i: {"psnr": v, "cp_chi2": 1 + v / 100, "camp_chi2": 2.0, "blur_psnr (f=10)": v + 1,
                           "blur_psnr (f=15)": v + 2, "blur_psnr (f=20)": v + 3} for i, v in enumerate(values)}
            _stock(root / "blackhole" / method / f"r{ratio}-s{seed}", "blackhole",
                   {"observation_time_ratio": ratio}, method, seed, samples)
    return root


def _pop(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _cell(values, digits=2):
    mean, std = _pop(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _row(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip().strip("*") for c in line.strip("|").split("|")][1:]


def test_scattering_and_black_hole_tables(stock, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", str(stock), "--format", "inversebench", "--out", str(out)]) == 0
    md = (out / "inverse-scatter-linear.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| Method |"))
    assert header.index("NR = 360: PSNR") < header.index("NR = 360: SSIM") < header.index("NR = 180: PSNR")
    assert _row(md, "LMAPS")[:4] == [_cell([33, 35]), _cell([33 / 40, 35 / 40], 4), _cell([31, 31]),
                                     _cell([31 / 40, 31 / 40], 4)]
    assert "**34.00 ± 1.00**" in md  # the best PSNR at NR = 360 is bold
    cost_row = [line for line in md.splitlines() if line.startswith("| DPS |")][1]
    assert cost_row.split("|")[2:6] == [" 100 ", " 200 ", " 100 ", " 2.00 "]

    bh = (out / "blackhole.md").read_text(encoding="utf-8")
    for method in ("DPS", "LMAPS"):
        for k, ratio in enumerate((0.1, 1.0)):
            draws = BLACK_HOLE[(method, ratio)]
            best = [max(draws[0][i], draws[1][i]) for i in (0, 1)]
            every = draws[0] + draws[1]
            assert _row(bh, f"{method} (best of N=2)")[6 * k] == _cell(best)
            assert _row(bh, f"{method} (mean over samples)")[6 * k] == _cell(every)
            assert _cell(best) != _cell(every)
            chi2_best = [min(1 + draws[0][i] / 100, 1 + draws[1][i] / 100) for i in (0, 1)]
            assert _row(bh, f"{method} (best of N=2)")[6 * k + 4] == _cell(chi2_best)
    assert "10 %: PSNR ↑" in bh and "100 %: χ²cp ↓" in bh and "best of N: per test image the best" in bh
    assert bh.count("| – | – | – | – |") == 2  # the black-hole folders hold no counted cost

    tex = (out / "blackhole.tex").read_text(encoding="utf-8")
    assert tex.count("{") == tex.count("}") and tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 2
    assert tex.index(r"\begin{tabular}") < tex.index(r"\end{tabular}")
    assert r"\multicolumn{6}{c}{10 \%}" in tex and "(best of N=2)" in tex
    for tabular in tex.split(r"\begin{tabular}")[1:]:
        body = tabular.split(r"\end{tabular}")[0].splitlines()
        widths = {line.count("&") for line in body if line.endswith(r"\\") and "multicolumn" not in line}
        assert len(widths) == 1, body  # every row of a tabular has the header's columns

    rows = list(csv.DictReader((out / "blackhole_samples.csv").open(encoding="utf-8")))
    assert len(rows) == 2 * 2 * 2 * 2
    first = next(r for r in rows if r["method"] == "LMAPS" and r["setting"] == "10 %" and r["seed"] == "1"
                 and r["id"] == "1")
    assert float(first["psnr"]) == 26.0 and first["config_file"].startswith("configs/blackhole/LMAPS/")
    scatter_rows = list(csv.DictReader((out / "inverse-scatter-linear_samples.csv").open(encoding="utf-8")))
    assert {float(r["seconds_per_image"]) for r in scatter_rows} == {2.0}

    prov = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    for key in ("created_utc", "command", "package_versions", "inversebench", "hardware", "configs",
                "config_hashes", "files", "missing"):
        assert key in prov
    assert prov["command"][:2] == ["lmaps-bench", "export"] and prov["missing"] == []
    assert {"torch", "lmaps-plugin"} <= set(prov["package_versions"])
    assert len(prov["inversebench"]["pinned_commit"]) == 40
    assert {"platform", "cpu_count", "torch_device"} <= set(prov["hardware"])
    assert len(prov["configs"]) == len(SCATTER) + 2 * len(BLACK_HOLE)
    assert all((out / c["file"]).is_file() for c in prov["configs"])


def _records(root, task: str, algorithm: str, ids, failed=()):
    folder = root / task / algorithm / "faces64-seed0"
    config = {"problem": {"name": task}, "algorithm": {"name": algorithm}, "prior": {"name": "faces64"}}
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    chash = R.config_hash(config)
    records = {}
    for i in ids:
        base = {"config_hash": chash, "seed": 0, "task": task, "algorithm": algorithm, "prior": "faces64",
                "dataset": "faces", "num_samples": 1}
        if i in failed:
            records[i] = R.read_record(R.write_record(folder, i, {**base, "status": "failed", "reason": "diverged"}), i)
            continue
        path = R.save_result(folder, i, torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
        metrics = {"psnr": 20.0 + i, "ssim": 0.5, **COST}
        records[i] = R.read_record(R.write_record(folder, i, {**base, "metrics": metrics, "seconds": 2.1,
                                                             "result_sha256": R.file_sha256(path)}), i)
    R.write_metrics(folder, records, expected_ids=ids)


def test_records_missing_samples_and_exit_codes(tmp_path, capsys):
    root = tmp_path / "bench"
    _records(root, "sr4", "LMAPS-cpu", [0, 1])
    _records(root, "sr4", "DPS", [0, 1], failed={1})
    aggregate(root)
    out = tmp_path / "out"
    assert main(["export", str(root), "--out", str(out), "--rename", "LMAPS-*=LMAPS"]) == 1
    assert "DPS seed 0 id 1 (failed: diverged)" in capsys.readouterr().err
    md = (out / "image_faces64.md").read_text(encoding="utf-8")
    assert _row(md, "LMAPS")[:2] == [_cell([20, 21]), "0.5000 ± 0.0000"]
    assert _row(md, "DPS")[0] == _cell([20]) and "missing DPS @ sr4: seed 0 id 1 (failed: diverged)" in md
    assert json.loads((out / "leaderboard.json").read_text())["kind"] == "lmaps-leaderboard-submission"
    prov = json.loads((out / "provenance.json").read_text())
    assert [(m["method"], m["id"]) for m in prov["missing"]] == [("DPS", 1)]
    assert re.fullmatch(r"[0-9a-f]{64}", prov["config_hashes"][0])
    rows = list(csv.DictReader((out / "image_faces64_samples.csv").open(encoding="utf-8")))
    assert [r["psnr"] for r in rows if r["method"] == "DPS"] == ["20.0", "missing"]

    (root / "leaderboard.json").write_text('{"kind": "something else"}', encoding="utf-8")
    assert main(["export", str(root), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a valid leaderboard" in err[0]

    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o3")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "o4")]) == 2
    assert "holds no results" in capsys.readouterr().err


@pytest.mark.parametrize("relative, name", [
    ("tune/configs/algorithm/tuned/faces64/sr4/ib_dps.yaml", "faces64/sr4/ib_dps.yaml"),   # a compare folder
    ("configs/algorithm/tuned/cells64ib/inv-scatter-fixed/dps.yaml", "cells64ib/inv-scatter-fixed/dps.yaml")])
def test_tuned_configs_keep_only_their_name_below_the_tuned_folder(relative, name):
    from pathlib import Path

    from lmaps_plugin.bench.export import tuned_config_name

    assert tuned_config_name(Path(relative)) == name

