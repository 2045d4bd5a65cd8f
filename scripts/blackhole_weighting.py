#!/usr/bin/env python
"""lmaps_auto's data weight on InverseBench's black hole: the χ²-derived weight against Table 4's rows.

For each observation ratio (3 / 10 / 100 %) and test image, four LMAPS runs with the same seed and the same
(reduced) annealing grid N:

* ``row``       -- the Table-4 row (``configs/algorithm/lmaps_blackhole_<r>pct.yaml``: K, η, k1, k2);
* ``auto_chi2`` -- ``lmaps_auto`` (K = 20, η = 1/L_σ, λ = 1.4) with σ_y² = Σ W_t / Σ M_t read off the operator
  (:func:`lmaps_plugin.weighting.loss_weighting`);
* ``auto_row``  -- ``lmaps_auto`` with the Table-4 row's k1, k2 (its fallback when the counts cannot be read);
* ``auto_old``  -- ``lmaps_auto`` with the configured k1 = 0.22, k2 = 100 (the fallback for any non-least-squares
  loss);
* ``row_chi2``  -- the Table-4 row's solver (K, η, k1) with the χ²-derived weight in Table 4's form,
  k2 = k1²/(λ·σ_y²), σ_y² = Σ W_t / Σ M_t, λ = 1.4 (the derived weight with the row's inner solve).

Metrics are InverseBench's ``BlackHoleEvaluator`` (through :func:`lmaps_plugin.inversebench.BlackHoleEvaluator`):
PSNR after alignment, closure-phase χ² and log-closure-amplitude χ².

    INVERSEBENCH_ROOT=/path/to/InverseBench OMP_NUM_THREADS=1 \\
        python scripts/make_inversebench_data.py --out /tmp/bhw/data --problems blackhole --num-test 3 --num-train 0
    python scripts/blackhole_weighting.py --data /tmp/bhw/data --ratio 0.03 --steps 20 --out /tmp/bhw/r3.json
    python scripts/blackhole_weighting.py --summarise /tmp/bhw/r3.json /tmp/bhw/r10.json   # the Markdown table
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from lmaps_plugin import LMAPS
from lmaps_plugin.inversebench import BlackHoleData, BlackHoleEvaluator, BlackHoleImaging
from lmaps_plugin.priors import builtin_prior
from lmaps_plugin.weighting import chi2_noise_variance, chi2_terms, loss_weighting

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "algorithm"
ROW_FILE = {0.03: "lmaps_blackhole_3pct.yaml", 0.1: "lmaps_blackhole_10pct.yaml", 1.0: "lmaps_blackhole_100pct.yaml"}


def method(name: str) -> dict:
    """``algorithm.method`` of a config, merged over lmaps.yaml's (the configs' only default)."""
    base = yaml.safe_load((CONFIGS / "lmaps.yaml").read_text())["method"]
    own = yaml.safe_load((CONFIGS / name).read_text()).get("method", {})
    merged = {**base, **own}
    merged.pop("_target_", None)
    return merged


def variants(ratio: float, steps: int, row_inner: int | None, sigma_y2: float) -> dict:
    row = method(ROW_FILE[ratio])
    auto = method("lmaps_auto.yaml")
    row.update(num_steps=steps, verbose=False)
    if row_inner is not None:
        row["inner_steps"] = row_inner
    auto.update(num_steps=steps, verbose=False)
    return {"row": (row, False), "auto_chi2": (auto, True),
            "auto_row": ({**auto, "calibrate": False, "k1": row["k1"], "k2": row["k2"]}, False),
            "auto_old": ({**auto, "calibrate": False, "k1": 0.22, "k2": 100.0}, False),
            "row_chi2": ({**row, "k2": row["k1"] ** 2 / (auto["calib_lambda"] * sigma_y2)}, False)}


def summarise(paths) -> str:
    """One Markdown row per (ratio, variant) over all the files (runs of one ratio may be split across files, e.g.
    one image each): mean over the images of PSNR, χ²_cp, χ²_logcamp and seconds."""
    by_ratio: dict[float, list] = {}
    for path in paths:
        result = json.loads(Path(path).read_text())
        by_ratio.setdefault(result["ratio"], []).extend(result["runs"])
    lines = ["| obs. time | variant | images | PSNR (dB) | χ²cp | χ²logcamp | s / image |", "|---|---|---|---|---|---|---|"]
    for ratio, runs in sorted(by_ratio.items()):
        for name in dict.fromkeys(run["variant"] for run in runs):
            mine = [run for run in runs if run["variant"] == name]
            mean = {k: float(np.mean([run[k] for run in mine])) for k in ("psnr", "cp_chi2", "camp_chi2", "seconds")}
            lines.append(f"| {ratio:.0%} | {name} | {len(mine)} | {mean['psnr']:.2f} | {mean['cp_chi2']:.2f} "
                         f"| {mean['camp_chi2']:.2f} | {mean['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--summarise", nargs="+", type=Path, help="print the table of these result files and stop")
    p.add_argument("--data", type=Path, help="make_inversebench_data.py --out folder")
    p.add_argument("--ratio", type=float, choices=sorted(ROW_FILE))
    p.add_argument("--steps", type=int, default=50, help="annealing steps N for every variant")
    p.add_argument("--row-inner", type=int, default=None, help="K of the Table-4 row (default: the row's)")
    p.add_argument("--images", type=int, default=3, help="the first N test images")
    p.add_argument("--ids", default=None, help="comma-separated test image ids instead of --images")
    p.add_argument("--variants", default="row,auto_chi2,auto_row,auto_old")
    p.add_argument("--prior", default="rings64")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return {}
    if args.data is None or args.ratio is None or args.out is None:
        p.error("--data, --ratio and --out are required for a run")
    torch.set_num_threads(1)
    measure = args.data / "blackhole" / "measure"
    op = BlackHoleImaging(root=str(measure), imsize=64, noise_type="eht", ttype="direct",
                          observation_time_ratio=args.ratio, device="cpu")
    data = BlackHoleData(root=str(args.data / "blackhole" / "test"), resolution=64, original_resolution=64,
                         random_flip=False, zoom_in_out=False)
    net = builtin_prior(args.prior)
    evaluator = BlackHoleEvaluator(forward_op=op)
    np.random.seed(0)
    first = op({"target": data[0]["target"][None].float()})
    sigma_y2 = chi2_noise_variance(chi2_terms(op, first, torch.zeros(1, 1, 64, 64)))
    chosen = variants(args.ratio, args.steps, args.row_inner, sigma_y2)
    results = {"ratio": args.ratio, "steps": args.steps, "prior": args.prior, "chi2_sigma_y2": sigma_y2,
               "counts": {"amp": op.amp_dim, "cphase": op.cphase_dim, "logcamp": op.logcamp_dim},
               "settings": {k: v[0] for k, v in chosen.items()}, "runs": []}
    ids = [int(i) for i in args.ids.split(",")] if args.ids else range(min(args.images, len(data)))
    for i in ids:
        target = data[i]["target"][None].float()
        np.random.seed(i)  # ehtim draws its thermal noise from numpy's global generator
        y = op({"target": target})
        for name in args.variants.split(","):
            settings, chi2 = chosen[name]
            lm = LMAPS(net, op, **settings)
            if chi2:  # lmaps_auto on a non-least-squares loss (LMAPS.weighting's fallback branch)
                like = torch.zeros((1, *lm.sample_shape))
                lm.weighting = lambda obs, lm=lm, like=like: loss_weighting(
                    op, obs, like, net, lam=settings["calib_lambda"], variance=settings["calib_variance"],
                    k1=settings["k1"], k2=settings["k2"])
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x = lm.inference(y, generator=torch.Generator().manual_seed(1000 + i))
            seconds = time.perf_counter() - start
            metrics = evaluator(op.unnormalize(x.float()), op.unnormalize(target), y)
            row = {"image": i, "variant": name, "seconds": round(seconds, 1),
                   "warnings": sorted({str(w.message)[:120] for w in caught}),
                   **{k: float(v) for k, v in metrics.items()}}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
