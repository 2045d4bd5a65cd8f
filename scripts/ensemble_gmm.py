#!/usr/bin/env python
"""LMAPS ensembles against the exact posterior of a Gaussian-mixture prior.

The prior is an exact Gaussian mixture fitted on the faces train split (scikit-image's ``lfw_subset``, 32×32,
6 components, rank 16), so for a linear task the posterior is a Gaussian mixture in closed form
(``GaussianMixturePrior.posterior``): its mean is the MMSE limit and its per-pixel std the truth that an
ensemble's spread should match. For each task and LMAPS setting, per image (M samples in one batched run):

- ``single``: mean PSNR of the M samples; ``mean``: PSNR of their mean; ``MMSE``: PSNR of the exact
  posterior mean; ``gap`` = MMSE − mean (dB);
- ``cov90``: coverage of the truth by the ensemble's central 90 % interval (Student-t predictive, see
  ``lmaps_plugin.ensemble``), next to the same estimator fed M exact posterior draws (``exact cov90``);
- ``std ratio``: mean LMAPS pixel std / mean exact posterior std; ``corr``: correlation of the two std maps;
- ``z2``: mean squared z-score (1 when calibrated); ``s``: seconds for the M-sample run;
- ``DAPS s``: seconds of one DAPS sample (InverseBench's class, ``configs/algorithm/ib_daps.yaml``), and its
  PSNR, when ``INVERSEBENCH_ROOT`` is set.

``--spreads`` (on ``--split val``) also prints the coverage of lmaps_auto's samples widened by each factor
(``ensemble_spread``; the widening is exact post-processing, see tests/core/test_ensemble_spread.py), to choose
``lmaps_ensemble.yaml``'s factor. Settings: ``row`` (the task's Table-4 config), ``auto`` (lmaps_auto),
``ensemble`` (lmaps_ensemble).

    python scripts/ensemble_gmm.py --split val --num-images 8 --settings auto --spreads 1,1.25,1.5,1.75,2,2.5
    python scripts/ensemble_gmm.py --split test --num-images 8 --out docs/results/ensembles_gmm.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from lmaps_plugin import LMAPS  # noqa: E402
from lmaps_plugin.evaluation.metrics import psnr  # noqa: E402
from lmaps_plugin.app.compose import method_kwargs  # noqa: E402
from lmaps_plugin.data import builtin_dataset  # noqa: E402
from lmaps_plugin.ensemble import coverage, ensemble_std, inflate, z2_mean  # noqa: E402
from lmaps_plugin.operators.registry import build_operator  # noqa: E402
from lmaps_plugin.operators.matrix import operator_matrix  # noqa: E402
from lmaps_plugin.priors.factories import fitted_gmm  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "algorithm"
TASKS = ("inpaint_random", "inpaint_box", "gaussian_deblur", "sr4")
SETTING_CONFIGS = {"auto": "lmaps_auto", "ensemble": "lmaps_ensemble"}


def setting_kwargs(setting: str, task: str) -> dict:
    """LMAPS keywords of a setting: ``method`` of its algorithm config as the ``lmaps`` app composes it."""
    return method_kwargs(f"lmaps_{task}" if setting == "row" else SETTING_CONFIGS[setting])


def daps(net, op):
    from hydra.utils import instantiate

    method = OmegaConf.load(str(CONFIGS / "ib_daps.yaml")).method
    return instantiate(method, net=net, forward_op=op)


def mean_of(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def run_task(task: str, net, images, args) -> tuple[list[str], dict]:
    resolution, m = args.resolution, args.num_samples
    op = build_operator(task, resolution=resolution, channels=1, sigma_noise=args.sigma)
    a = operator_matrix(op, net.img_shape)
    spreads = [float(s) for s in args.spreads.split(",")] if args.spreads else []
    per_setting: dict[str, list[dict]] = {s: [] for s in args.settings.split(",")}
    kwargs = {s: setting_kwargs(s, task) for s in per_setting}
    exact_rows, daps_rows = [], []
    with_daps = args.daps and bool(os.environ.get("INVERSEBENCH_ROOT"))
    for i, x in enumerate(images):
        torch.manual_seed(10_000 * args.seed + i)
        y = op({"target": x[None]})
        post = net.posterior(a, y.double(), args.sigma)
        truth = x.double()
        exact_std = post.variance().sqrt()
        draws = post.sample(m, generator=torch.Generator().manual_seed(i))
        exact_rows.append(dict(mmse=psnr(post.mean()[None].float(), x[None]).item(),
                               cov=coverage(draws, truth), std=float(exact_std.mean())))
        for setting, rows in per_setting.items():
            solver = LMAPS(net, op, verbose=False, **kwargs[setting])
            start = time.perf_counter()
            out = solver.inference(y, num_samples=m, generator=torch.Generator().manual_seed(10_000 * args.seed + i))
            seconds = time.perf_counter() - start
            samples = out.double()
            std = ensemble_std(samples)
            corr = torch.corrcoef(torch.stack([std.flatten(), exact_std.flatten()]))[0, 1]
            row = dict(single=statistics.fmean(psnr(s[None].float(), x[None]).item() for s in out),
                       mean=psnr(out.mean(0, keepdim=True), x[None]).item(), cov=coverage(samples, truth),
                       ratio=float(std.mean()) / float(exact_std.mean()), corr=float(corr),
                       z2=z2_mean(samples, truth), seconds=seconds)
            for factor in spreads:
                row[f"cov@{factor:g}"] = coverage(inflate(samples, factor), truth)
            rows.append(row)
        if with_daps:
            algo = daps(net, op)
            start = time.perf_counter()
            out = algo.inference(y, num_samples=1)
            daps_rows.append(dict(seconds=time.perf_counter() - start, psnr=psnr(out[:1].float(), x[None]).item()))
    mmse, exact_cov = mean_of(exact_rows, "mmse"), mean_of(exact_rows, "cov")
    lines, record = [], {"mmse": mmse, "exact_cov90": exact_cov}
    daps_s = f"{mean_of(daps_rows, 'seconds'):.1f} ({mean_of(daps_rows, 'psnr'):.2f} dB)" if daps_rows else "n/a"
    for setting, rows in per_setting.items():
        name = f"lmaps_{task} (Table 4)" if setting == "row" else SETTING_CONFIGS[setting]
        mean = mean_of(rows, "mean")
        lines.append(f"| {task} | {name} | {mean_of(rows, 'single'):.2f} | {mean:.2f} | {mmse:.2f} | "
                     f"{mmse - mean:+.2f} | {mean_of(rows, 'cov'):.3f} | {exact_cov:.3f} | "
                     f"{mean_of(rows, 'ratio'):.2f} | {mean_of(rows, 'corr'):.2f} | {mean_of(rows, 'z2'):.2f} | "
                     f"{mean_of(rows, 'seconds'):.2f} | {daps_s} |")
        record[setting] = {k: mean_of(rows, k) for k in rows[0]}
        if spreads:
            lines.append(f"|  | {name}, coverage_90 widened by " + ", ".join(
                f"{f:g}: {mean_of(rows, f'cov@{f:g}'):.3f}" for f in spreads) + " |" + " |" * 10)
    return lines, record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--settings", default="row,auto,ensemble", help="comma-separated: row, auto, ensemble")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=8, help="M")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--components", type=int, default=6)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--sigma", type=float, default=0.05, help="σ_y")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spreads", default="", help="widening factors whose coverage to print (choosing the knob)")
    parser.add_argument("--no-daps", dest="daps", action="store_false", help="skip DAPS's one-sample timing")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    net = fitted_gmm("faces", resolution=args.resolution, channels=1, n_components=args.components, rank=args.rank)
    images = builtin_dataset("faces", resolution=args.resolution, num_images=args.num_images, channels=1,
                             split=args.split).images
    lines = [f"| task | setting | single PSNR | M={args.num_samples} mean PSNR | MMSE limit | gap | coverage_90 | "
             "exact draws' coverage_90 | std ratio | std corr | z2_mean | s (M samples) | DAPS s (1 sample) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for task in args.tasks.split(","):
        rows, _ = run_task(task, net, images, args)
        print("\n".join(rows), flush=True)
        lines += rows
    if args.out:
        command = "python scripts/ensemble_gmm.py " + " ".join(sys.argv[1:] if argv is None else argv)
        header = (f"# LMAPS ensembles against the exact posterior\n\nExact Gaussian-mixture prior on faces "
                  f"({args.resolution}², {args.components} components, rank {args.rank}, fitted on the 80 train "
                  f"faces), {args.num_images} {args.split} faces, σ_y = {args.sigma}, M = {args.num_samples}, "
                  f"seed {args.seed}, 1 CPU thread.\n\nCommand: `{command}`\n\n")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
