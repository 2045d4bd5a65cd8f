#!/usr/bin/env python
"""Side-by-side table of the image tasks: lmaps_auto, the task's Table-4 row and InverseBench's peers.

One `lmaps-bench run` per task (prior, operator, test images and seeds the same for every method), then one
`lmaps-bench aggregate` over all of them, whose Table-1 layout is copied into a results file with this command.
Needs INVERSEBENCH_ROOT for the peers (ib_*).

    INVERSEBENCH_ROOT=<checkout> python scripts/compare_image_tasks.py --num-images 4 \
        --exp-dir results/compare_image_tasks --out docs/results/image_tasks.md

nonlinear_deblur is left out by default: its blur network's weights (bkse, GOPRO) cannot be downloaded here.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("sr4", "inpaint_box", "inpaint_random", "gaussian_deblur", "motion_deblur", "phase_retrieval", "hdr",
         "jpeg", "quantization")
PEERS = ("ib_dps", "ib_daps", "ib_pigdm", "ib_reddiff", "ib_diffpir")


NOTES = """
Notes on the peers (their configs say the same):

- ΠGDM runs InverseBench's noiseless variant (`noisy: false`, a pseudo-inverse by conjugate gradient): on the
  deblurs the pseudo-inverse amplifies the σ_y = 0.05 noise through the blur's small singular values, hence its
  ~10 dB there; its noisy variant needs a dense matrix `forward_op.A`.
- DiffPIR runs InverseBench's gradient variant (`linear: false`), whose data step over-steps by
  σ_t²/(λ·σ_n²) ≫ 1 at large σ_t and diverges on the masks and blurs (recorded as failed samples); its closed-form
  variant needs a dense `forward_op.A` (a d × d inverse per step).
"""


def task_rows_only(table: str) -> str:
    """The table without rows of Table-4 configs that a task never ran (0 samples done, none failed) and without
    the aggregate's notes about them."""
    kept = []
    for line in table.splitlines():
        never_run = line.startswith("|") and "| 0/" in line and line.rstrip().endswith("| – |") and "| 0 | 0/" in line
        if never_run and " 0 | –" in line and "failed" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[-2] == "0":  # no failed sample either
                continue
        if line.startswith("- missing ") and "(not run)" in line:
            continue
        if line.startswith("- not ranked ") and ": no finished sample" in line and "/ LMAPS-" in line:
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def bench(*args: str) -> None:
    command = [sys.executable, "-m", "lmaps_plugin.bench.main", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--prior", default="faces64")
    parser.add_argument("--exp-dir", default="results/compare_image_tasks")
    parser.add_argument("--out", default=None, help="results markdown file to write")
    args = parser.parse_args(argv)
    if not os.environ.get("INVERSEBENCH_ROOT"):
        parser.error("set INVERSEBENCH_ROOT to an InverseBench checkout (the peers are its algorithm classes)")
    start = time.time()
    for task in args.tasks.split(","):
        algorithms = ",".join(["lmaps_auto", f"lmaps_{task}", *args.peers.split(",")])
        bench("run", "--tasks", task, "--algorithms", algorithms, "--num-images", str(args.num_images),
              "--seeds", args.seeds, "--jobs", str(args.jobs), "--shard-size", str(args.num_images),
              "--prior", args.prior, "--exp-dir", args.exp_dir, "--no-aggregate")
    bench("aggregate", "--exp-dir", args.exp_dir)
    # each task ran its own Table-4 row: drop the other tasks' rows, which were never run there
    minutes = (time.time() - start) / 60
    table = Path(args.exp_dir, "table.md")
    if args.out and table.is_file():
        command = "INVERSEBENCH_ROOT=<checkout> python scripts/compare_image_tasks.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        header = (f"# Image tasks: lmaps_auto, Table-4 rows and InverseBench's peers\n\n"
                  f"Prior `{args.prior}`, test ids 0–{args.num_images - 1} of its test set, seeds {args.seeds}, "
                  f"σ_y = 0.05; every method on the same operator, images and noise draws. Peers are InverseBench's "
                  f"algorithm classes with the configs in `configs/algorithm/ib_*.yaml` (untuned here; "
                  f"`docs/results/tuned_comparison.md` tunes every method on the val split with one budget). "
                  f"This invocation took {minutes:.0f} min on 2 shared CPU cores (samples finished by an earlier "
                  f"invocation into the same folder are reused; the per-image seconds are in the table).\n\n"
                  f"Command: `{command}`\n\n")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(header + task_rows_only(table.read_text(encoding="utf-8")) + NOTES,
                                  encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
