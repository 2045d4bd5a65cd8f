#!/usr/bin/env python
"""The InverseBench submission folder for linear inverse scattering (NR = 360 / 180 / 60) at 64², from a clean
checkout: LMAPS (the paper's Table-4 row of each NR, ``lmaps_auto``, and ``lmaps_auto`` tuned) against DPS, DAPS and
RED-diff, tuned the way InverseBench tunes them.

1. ``prepare``: the rig's synthetic 64² scattering data (test images, 512 training images) and a prior trained on
   them for ``--train-seconds`` (``compare_lis.py``'s data and prior: InverseBench's EDMPrecond + DhariwalUNet,
   ``model_channels=16``), and validation images from another seed (``inv-scatter-val-64``), never test images;
2. ``tune``: ``lmaps-bench tune`` of each tuned method on the 3 validation images at NR = 360 (InverseBench's
   sweeps use ``id_list=0-2`` of their validation set and the problem's default NR), the metric PSNR, one seed,
   12 trials each:
   DPS over InverseBench's own scattering sweep (``configs/sweep/inv-scatter/dps.yaml``: guidance_scale 1..128);
   DAPS over ``configs/tune/ib_daps_inv_scatter.yaml`` (InverseBench has no DAPS sweep for this problem: the knobs
   of its other DAPS sweeps at this operator's scale); RED-diff over ``configs/tune/ib_reddiff_inv_scatter.yaml``
   (the knobs of InverseBench's RED-diff sweeps, observation_weight moved to this operator's scale as InverseBench
   moves it per problem); ``lmaps_auto`` over ``configs/tune/lmaps_auto.yaml`` (its λ and σ_min);
3. ``test``: the ``lmaps`` app at every NR on the test images: the tuned configs, and LMAPS's untuned Table-4 rows
   and ``lmaps_auto``; the app counts each run's network calls, operator calls and seconds;
4. ``export``: ``lmaps-bench export`` into ``--out``, and each study's ``trials.csv`` and ``summary.json`` into
   ``--out``/tuning/<algorithm>/.

    INVERSEBENCH_ROOT=<checkout> python scripts/submission_scattering.py --work /tmp/sub \\
        --out docs/results/inversebench_submission

Every stage resumes: finished data, prior, trials and test samples are never redone.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(SCRIPTS))

#: tuned algorithm config -> its search space and trial budget (the peers, and LMAPS's lmaps_auto)
TUNED = {"dps": ("configs/tune/ib_dps.yaml", 12),
         "ib_daps": ("configs/tune/ib_daps_inv_scatter.yaml", 12),
         "ib_reddiff": ("configs/tune/ib_reddiff_inv_scatter.yaml", 12),
         "lmaps_auto": ("configs/tune/lmaps_auto.yaml", 12)}
PRIOR_NAME = "cells64ib"
TASK = "inv-scatter-fixed"
#: the trained prior's network: InverseBench's pretrain/inv-scatter.yaml model at 64² with 16 channels
PRIOR_MODEL = ("{_target_:models.precond.EDMPrecond,model_type:DhariwalUNet,img_resolution:64,img_channels:1,"
               "label_dim:0,model_channels:16,channel_mult:[1,1,1,2,2],attn_resolutions:[16],num_blocks:1,"
               "dropout:0.0}")
RENAMES = ["LMAPS-lis-*=LMAPS (Table 4 row)", "REDDiff-tuned=RED-diff-tuned"]


def run(cmd: list[str]) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True)


def prepare(work: Path, ib_root: Path, num_images: int, train_seconds: float) -> None:
    import compare_lis

    compare_lis.prepare(work, ib_root, num_images, train_seconds)
    val = work / "valdata" / "inv-scatter-val-64"
    if not val.exists():
        run([sys.executable, str(SCRIPTS / "make_inversebench_data.py"), "--out", str(work / "valdata"),
             "--problems", "scatter", "--scatter-resolutions", "64", "--num-test", "3", "--num-train", "0",
             "--seed", "1"])
        (work / "valdata" / "inv-scatter-test-64").rename(val)


def common(work: Path) -> list[str]:
    """Overrides of every run: the trained prior, the 64² geometry."""
    return ["prior=inversebench", f"prior.path={work / 'ckpt' / 'scatter.pt'}", "prior.channels=1",
            "prior.resolution=64", f"prior.name={PRIOR_NAME}", f"+prior.model={PRIOR_MODEL}",
            "problem.data.resolution=64", "++problem.data.raw_resolution=64", "problem.model.Nx=64",
            "problem.model.Ny=64"]


def tune(work: Path, methods: list[str]) -> None:
    for algorithm, (space, trials) in TUNED.items():
        if algorithm not in methods:
            continue
        run([str(BIN / "lmaps-bench"), "tune", "--task", TASK, "--algorithm", algorithm, "--space", str(ROOT / space),
             "--trials", str(trials), "--exp-dir", str(work / "tune"), "--val-ids", "0-2",
             "--val-split", "none", "--metric", "psnr", "--seed", "0", "--threads", "1", "--no-plots",
             *common(work), f"problem.data.root={work / 'valdata' / 'inv-scatter-val-64'}"])


def test_algorithms(receivers: int, methods: list[str]) -> list[str]:
    """The algorithm configs of the test runs at NR = ``receivers``: LMAPS's untuned ones (``lmaps`` in ``methods``:
    the Table-4 row of this NR and ``lmaps_auto``) and the tuned configs of the other ``methods``."""
    lmaps = [f"lmaps_lis_nr{receivers}", "lmaps_auto"] if "lmaps" in methods else []
    return lmaps + [f"tuned/{PRIOR_NAME}/{TASK}/{algorithm}" for algorithm in TUNED if algorithm in methods]


def test(work: Path, receivers: list[int], num_images: int, methods: list[str]) -> None:
    for nr in receivers:
        for algorithm in test_algorithms(nr, methods):
            run([str(BIN / "lmaps"), "--config-dir", str(work / "tune" / "configs"), f"problem={TASK}",
                 f"algorithm={algorithm}", *common(work), f"problem.data.root={work / 'data' / 'inv-scatter-test-64'}",
                 f"problem.model.numRec={nr}", f"ids=0-{num_images - 1}", f"exp_dir={work / 'runs' / f'nr{nr}'}",
                 "threads=1", "verbose=false"])


def export(work: Path, out: Path) -> None:
    """The export of the test runs, with the peers' tuned configs beside them (the studies stay in ``tune/``)."""
    shutil.copytree(work / "tune" / "configs", work / "runs" / "configs", dirs_exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    renames = [arg for pair in RENAMES for arg in ("--rename", pair)]
    run([str(BIN / "lmaps-bench"), "export", str(work / "runs"), "--format", "inversebench", "--out", str(out),
         *renames])
    for algorithm in TUNED:      # the evidence of the tuning: every trial's values and val PSNR, the study summary
        study = work / "tune" / PRIOR_NAME / TASK / algorithm
        for name in ("trials.csv", "summary.json"):
            if (study / name).is_file():
                (out / "tuning" / algorithm).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(study / name, out / "tuning" / algorithm / name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "inversebench_submission")
    parser.add_argument("--stages", default="prepare,tune,test,export")
    parser.add_argument("--receivers", default="360,180,60")
    parser.add_argument("--num-images", type=int, default=4, help="test images")
    parser.add_argument("--train-seconds", type=float, default=300.0)
    parser.add_argument("--methods", default=",".join(["lmaps", *TUNED]),
                        help="the methods of the tune and test stages (default: all)")
    args = parser.parse_args(argv)
    ib_root = Path(os.environ.get("INVERSEBENCH_ROOT", "")).resolve()
    if not (ib_root / "main.py").is_file():
        parser.error("set INVERSEBENCH_ROOT to an InverseBench checkout")
    stages = args.stages.split(",")
    unknown = set(stages) - {"prepare", "tune", "test", "export"}
    if unknown:
        parser.error(f"--stages: unknown {sorted(unknown)}")
    receivers = [int(r) for r in args.receivers.split(",")]
    methods = args.methods.split(",")
    if set(methods) - {"lmaps", *TUNED}:
        parser.error(f"--methods: unknown {sorted(set(methods) - {'lmaps', *TUNED})}")
    if "prepare" in stages:
        prepare(args.work, ib_root, args.num_images, args.train_seconds)
    if "tune" in stages:
        tune(args.work, methods)
    if "test" in stages:
        test(args.work, receivers, args.num_images, methods)
    if "export" in stages:
        export(args.work, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
