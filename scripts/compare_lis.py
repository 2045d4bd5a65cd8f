#!/usr/bin/env python
"""Linear inverse scattering through stock InverseBench ``main.py``: LMAPS (Table-4 rows and lmaps_auto) vs
InverseBench's DPS, DAPS and RED-diff, same prior, operator, images and machine, one run per table.

1. synthetic 64² scattering images and a small prior trained on them (``make_inversebench_data.py`` /
   ``make_inversebench_ckpt.py``: InverseBench's own EDMPrecond + DhariwalUNet, ``model_channels=16``), once per
   ``--work`` folder;
2. for every receiver count NR: the checkout's unmodified ``main.py`` with ``problem=inv-scatter-fixed`` (InverseBench's
   operator through our adapter: batched, analytic adjoint, Gram eigenbasis) at ``Nx = Ny = 64``, ``numRec = NR``,
   once per algorithm: ``lmaps_lis_nr<NR>`` (the paper's row), ``lmaps_auto``, and InverseBench's stock ``dps``,
   ``daps`` and ``reddiff`` configs (their defaults, untuned);
3. PSNR / SSIM from InverseBench's own evaluator (``metrics.json`` of our evaluator subclass) and the wall time of
   each ``main.py`` process, written as a markdown table.

    INVERSEBENCH_ROOT=<checkout> python scripts/compare_lis.py --work /tmp/lis --num-images 2 \
        --receivers 360,180,60 --out docs/results/lis.md

The Gram eigenbasis of each geometry is computed once and cached (``~/.cache/lmaps-plugin``); the first LMAPS run of
a geometry pays for it (its time is reported separately, ``--warm-cache`` builds it before timing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ALGORITHM_DIRS = {"dps": "DPS", "daps": "DAPS", "reddiff": "REDDiff", "lmaps_auto": "LMAPS-auto"}


def run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def prepare(work: Path, ib_root: Path, num_images: int, train_seconds: float) -> list[str]:
    """Data and prior (once per work folder); returns the main.py overrides that point at them."""
    data, ckpt = work / "data", work / "ckpt"
    if not (data / "manifest.json").exists():
        proc = run([sys.executable, str(SCRIPTS / "make_inversebench_data.py"), "--out", str(data), "--problems",
                    "scatter", "--scatter-resolutions", "64", "--num-test", str(num_images), "--num-train", "512"])
        if proc.returncode:
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    if not (ckpt / "checkpoints.json").exists():
        proc = run([sys.executable, str(SCRIPTS / "make_inversebench_ckpt.py"), "--out", str(ckpt), "--data",
                    str(data), "--ib-root", str(ib_root), "--problems", "scatter", "--scatter-resolution", "64",
                    "--train-steps", "1000000", "--train-seconds", str(train_seconds)])
        if proc.returncode:
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    prior = json.loads((ckpt / "checkpoints.json").read_text())["scatter"]["overrides"]
    return [*prior, f"problem.data.root={data / 'inv-scatter-test-64'}", "problem.data.resolution=64",
            "++problem.data.raw_resolution=64", f"problem.data.id_list=0-{num_images - 1}", "problem.model.Nx=64",
            "problem.model.Ny=64"]


def main_py(ib_root: Path, algorithm: str, receivers: int, overrides: list[str], exp_dir: Path) -> dict:
    """One stock main.py run; returns its metrics summary and wall seconds."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "main.py", "problem=inv-scatter-fixed", "pretrain=inv-scatter", f"algorithm={algorithm}",
           *overrides, f"problem.model.numRec={receivers}", f"problem.exp_dir={exp_dir}", "exp_name=lis",
           "wandb=false", f"hydra.run.dir={exp_dir / 'hydra' / algorithm}"]
    start = time.perf_counter()
    proc = run(cmd, cwd=ib_root, env=env)
    seconds = time.perf_counter() - start
    folder = ALGORITHM_DIRS.get(algorithm, f"LMAPS-lis-nr{receivers}")
    metrics_file = exp_dir / folder / "lis" / "metrics.json"
    if proc.returncode or not metrics_file.exists():
        tail = (proc.stdout + proc.stderr)[-1500:]
        print(f"FAILED {algorithm} NR={receivers}:\n{tail}", flush=True)
        return {"seconds": seconds, "failed": tail.strip().splitlines()[-1] if tail.strip() else "failed"}
    per_sample = json.loads(metrics_file.read_text())["per_sample"]
    return {"seconds": seconds, "psnr": statistics.mean(per_sample["psnr"]),
            "ssim": statistics.mean(per_sample["ssim"]), "n": len(per_sample["psnr"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--receivers", default="360,180,60")
    parser.add_argument("--algorithms", default="lmaps_lis,lmaps_auto,dps,daps,reddiff",
                        help="lmaps_lis = the Table-4 row of each NR")
    parser.add_argument("--num-images", type=int, default=2)
    parser.add_argument("--train-seconds", type=float, default=300.0)
    parser.add_argument("--warm-cache", action="store_true", help="factorise each geometry before timing")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make the data and the prior (and with --warm-cache the factorisations), run nothing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    ib_root = Path(os.environ.get("INVERSEBENCH_ROOT", "")).resolve()
    if not (ib_root / "main.py").is_file():
        parser.error("set INVERSEBENCH_ROOT to an InverseBench checkout")
    overrides = prepare(args.work, ib_root, args.num_images, args.train_seconds)
    rows = ["| NR | algorithm | PSNR | SSIM | n | wall s (main.py) | time / DPS |", "|---|---|---|---|---|---|---|"]
    for receivers in (int(r) for r in args.receivers.split(",")):
        exp_dir = args.work / f"runs-nr{receivers}"
        if args.warm_cache:
            warm = main_py(ib_root, "lmaps_auto", receivers, [*overrides, "algorithm.method.num_steps=1"],
                           args.work / f"warm-nr{receivers}")
            print(f"NR={receivers}: factorisation run (1 step) took {warm['seconds']:.0f} s", flush=True)
        if args.prepare_only:
            continue
        results = {}
        for algorithm in args.algorithms.split(","):
            name = f"lmaps_lis_nr{receivers}" if algorithm == "lmaps_lis" else algorithm
            results[name] = main_py(ib_root, name, receivers, overrides, exp_dir)
        dps_seconds = results.get("dps", {}).get("seconds")
        for name, res in results.items():
            ratio = f"{res['seconds'] / dps_seconds:.2f}" if dps_seconds else "-"
            if "failed" in res:
                rows.append(f"| {receivers} | {name} | failed: {res['failed'][:60]} | | | {res['seconds']:.0f} | "
                            f"{ratio} |")
            else:
                rows.append(f"| {receivers} | {name} | {res['psnr']:.2f} | {res['ssim']:.3f} | {res['n']} | "
                            f"{res['seconds']:.0f} | {ratio} |")
        print("\n".join(rows), flush=True)
    if args.out:
        command = "INVERSEBENCH_ROOT=<checkout> python scripts/compare_lis.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        header = ("# Linear inverse scattering at 64², through stock InverseBench main.py\n\n"
                  f"{args.num_images} synthetic test images (procedural cells), a prior trained "
                  f"{args.train_seconds:.0f} s on 512 training images (InverseBench's EDMPrecond + DhariwalUNet, "
                  "model_channels=16), 20 transmitters, σ_noise = 1e-4, one CPU thread per run, runs one after "
                  "another on the same machine. PSNR/SSIM are InverseBench's `eval.InverseScatter` metrics "
                  "(mean over images); wall time is the whole main.py process (start-up, data, prior, all images).\n\n"
                  f"Command: `{command}`\n\n")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
