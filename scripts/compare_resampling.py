#!/usr/bin/env python
"""LMAPS with and without resampling on random inpainting: PSNR overall and over the unobserved pixels, counted
network calls (NFE) and seconds per image, one row per configuration.

Each row is an algorithm config with optional ``algorithm.method`` overrides, e.g.
``--row lmaps_auto --row "lmaps_auto num_steps=100 resample_count=1"``. Images, measurement noise and sampler
seeds are drawn as the ``lmaps`` app draws them (the same for every row).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/compare_resampling.py --split test --ids 0-7 \
        --row lmaps_auto --row lmaps_inpaint_random --row lmaps_resample
"""
from __future__ import annotations

import argparse
import time

import torch

from lmaps_plugin.app.build import build_dataset, build_task, sample_seed
from lmaps_plugin.app.compose import compose_app
from lmaps_plugin.evaluation.metrics import psnr, to_unit_range


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> float:
    """PSNR in dB on [0, 1] (inputs in [-1, 1], clipped as :func:`psnr` clips) over the pixels where ``keep``."""
    error = (to_unit_range(pred) - to_unit_range(target)) ** 2
    keep = keep.expand_as(error).bool()
    return float(10 * torch.log10(1.0 / error[keep].mean()))


def run_row(row: str, problem: str, split: str, ids: str, seed: int, num_samples: int = 1) -> dict:
    """Mean PSNR, unobserved-pixel PSNR, NFE and seconds per image of one row over the selected images (of the mean
    of ``num_samples`` samples per image, as the ``lmaps`` app scores an ensemble)."""
    algorithm, *overrides = row.split()
    cfg = compose_app([f"problem={problem}", f"algorithm={algorithm}", "prior=faces64", f"ids={ids}",
                       f"seed={seed}", f"++problem.data.split={split}", "++algorithm.method.verbose=false",
                       *(f"++algorithm.method.{o}" for o in overrides)])
    dataset = build_dataset(cfg)
    task = build_task(cfg, dataset, torch.device("cpu"))
    unobserved = task.forward_op.mask == 0
    scores = {"psnr": [], "psnr_unobserved": [], "nfe": [], "seconds": []}
    for index, sample_id in enumerate(dataset.id_list):
        target = dataset[index]["target"][None]
        torch.manual_seed(sample_seed(cfg.seed, sample_id, "observation"))
        observation = task.forward_op({"target": target})
        torch.manual_seed(sample_seed(cfg.seed, sample_id, "algorithm"))
        start = time.perf_counter()
        recon = task.algo.inference(observation, num_samples=num_samples).detach().mean(0, keepdim=True)
        scores["seconds"].append(time.perf_counter() - start)
        recon, truth = task.forward_op.unnormalize(recon), task.forward_op.unnormalize(target)
        scores["psnr"].append(float(psnr(recon, truth).mean()))
        scores["psnr_unobserved"].append(masked_psnr(recon, truth, unobserved))
        scores["nfe"].append(task.algo.last_run_stats["nfe"])
    return {key: sum(values) / len(values) for key, values in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", action="append", required=True,
                        help="an algorithm config and optional method overrides, e.g. 'lmaps_auto num_steps=100'")
    parser.add_argument("--problem", default="inpaint_random")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--ids", default="0-2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1, help="score the mean of this many samples per image")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{args.problem}, faces64, {args.split} ids {args.ids}, seed {args.seed}, "
          f"{args.num_samples} sample(s) per image\n")
    print("| row | PSNR | PSNR unobserved | NFE | s/image |\n|---|---|---|---|---|", flush=True)
    for row in args.row:
        r = run_row(row, args.problem, args.split, args.ids, args.seed, args.num_samples)
        print(f"| `{row}` | {r['psnr']:.2f} | {r['psnr_unobserved']:.2f} | {r['nfe']:.0f} | {r['seconds']:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
