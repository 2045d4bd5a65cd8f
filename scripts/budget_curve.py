"""Budget curve of `lmaps-bench tune`: the best validation value so far against the trial number, for several
methods and study seeds on one task. Runs the studies that are missing or unfinished (`lmaps-bench tune` resumes a
study from its folder), reads their trials and writes the figure and a Markdown table.

    INVERSEBENCH_ROOT=/path/to/InverseBench python scripts/budget_curve.py \\
        --task inpaint_random --methods lmaps_auto,ib_pigdm,ib_dps,ib_daps --seeds 0,1,2 --trials 24 \\
        --val-ids 0-2 --exp-dir results/budget_curve \\
        --figure docs/results/figures/budget_curve_inpaint_random.png --table results/budget_curve/table.md

Study of method m with seed s: <exp-dir>/seed<s>/<prior>/<task>/<m> (its own Optuna SQLite database).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from lmaps_plugin.bench.tune.curve import (counted_values, format_table, plot_curves, read_study, running_best,
                                           summarize)

LABELS = {"lmaps_auto": "LMAPS-auto", "lmaps_cpu": "LMAPS-cpu", "ib_pigdm": "ΠGDM", "ib_dps": "DPS",
          "ib_daps": "DAPS", "ib_reddiff": "RED-diff", "ib_diffpir": "DiffPIR"}


def study_dir(exp_dir: Path, seed: int, prior: str, task: str, method: str) -> Path:
    return exp_dir / f"seed{seed}" / prior / task / method


def tune_command(args, method: str, seed: int) -> list[str]:
    exe = Path(sys.executable).with_name("lmaps-bench")
    return [str(exe) if exe.exists() else "lmaps-bench", "tune", "--task", args.task, "--algorithm", method,
            "--prior", args.prior, "--trials", str(args.trials), "--val-ids", args.val_ids, "--seed", str(seed),
            "--workers", "1", "--threads", str(args.threads), "--no-plots",
            "--exp-dir", str(args.exp_dir / f"seed{seed}")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="inpaint_random")
    p.add_argument("--prior", default="faces64")
    p.add_argument("--methods", default="lmaps_auto,ib_pigdm,ib_dps,ib_daps")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--seeds-of", action="append", default=[], metavar="METHOD=SEEDS",
                   help="other seeds for one method (e.g. ib_daps=0,2); repeatable")
    p.add_argument("--trials", type=int, default=24, help="trial budget of every study (the curve's length)")
    p.add_argument("--val-ids", default="0-2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--exp-dir", type=Path, default=Path("results/budget_curve"))
    p.add_argument("--points", default="6,12,18,24", help="trial counts of the table")
    p.add_argument("--tol", type=float, default=0.1, help="plateau: the best improves by less than this afterwards")
    p.add_argument("--mark", type=int, default=12, help="trial count marked in the figure")
    p.add_argument("--no-run", action="store_true", help="only read the studies that exist")
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None, help="write the curves (per method and seed) here")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    seeds_of = {}
    for item in args.seeds_of:
        method, sep, listed = item.partition("=")
        if not sep or method not in methods:
            p.error(f"--seeds-of {item!r}: expected METHOD=SEEDS with METHOD one of --methods")
        seeds_of[method] = [int(s) for s in listed.split(",") if s]
    points = [int(x) for x in args.points.split(",") if x]

    summaries, raw = [], {}
    for method in methods:
        curves = []
        for seed in seeds_of.get(method, seeds):
            folder = study_dir(args.exp_dir, seed, args.prior, args.task, method)
            if not args.no_run:
                cmd = tune_command(args, method, seed)
                print("+", " ".join(cmd), flush=True)
                rc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}).returncode
                if rc not in (0, 1):
                    print(f"budget_curve: {method} seed {seed}: lmaps-bench tune exited {rc}", file=sys.stderr)
            if not (folder / "request.json").is_file():
                print(f"budget_curve: no study in {folder}; {method} seed {seed} left out", file=sys.stderr)
                continue
            records, direction = read_study(folder)
            values = counted_values(records, args.trials)
            curves.append(running_best(values, direction))
            raw.setdefault(method, {})[seed] = {"values": values, "best": curves[-1]}
            if len(values) < args.trials:
                print(f"budget_curve: {method} seed {seed}: {len(values)} of {args.trials} trials", file=sys.stderr)
        if curves:
            summaries.append(summarize(method, curves, points, args.tol, args.trials))

    table = format_table(summaries, LABELS)
    print(table)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(table, encoding="utf-8")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    if args.figure and summaries:
        title = (f"{args.task}, prior {args.prior}, val ids {args.val_ids}: best so far after each trial\n"
                 f"thick: mean over seeds; thin: each seed; dot: plateau (< {args.tol:g} to go)")
        plot_curves(summaries, args.figure, title=title, labels=LABELS, mark=args.mark)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
