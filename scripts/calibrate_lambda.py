#!/usr/bin/env python
"""Choose lmaps_auto's calib_lambda (and its v_sigma model) on VALIDATION images, and compare with Table 4.

For each task, prior image set and setting it runs LMAPS on the validation split (never the test split) and prints
mean PSNR, SSIM, the final data misfit RMS(H(x) - y) (the discrepancy principle puts it near sigma_y) and seconds per
image. Settings: lmaps_auto at every calib_lambda x variance model given, and the task's Table-4 row at the same N.

    python scripts/calibrate_lambda.py --tasks sr4,inpaint_box,inpaint_random,gaussian_deblur,motion_deblur \
        --lambdas 0.25,0.5,1,2,4 --variances gaussian,sigma2 --num-images 8 --out docs/results/calibration.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from lmaps_plugin import LMAPS  # noqa: E402
from lmaps_plugin.evaluation.metrics import psnr, ssim  # noqa: E402
from lmaps_plugin.app.compose import method_kwargs  # noqa: E402
from lmaps_plugin.data import builtin_dataset  # noqa: E402
from lmaps_plugin.operators.registry import build_operator  # noqa: E402
from lmaps_plugin.priors import builtin_prior  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "algorithm"


def run_setting(net, op, images, settings: dict, num_steps: int, seed: int) -> dict:
    rows = []
    for i, x in enumerate(images):
        torch.manual_seed(10_000 * seed + i)
        y = op({"target": x[None]})
        solver = LMAPS(net, op, verbose=False, **{**settings, "num_steps": num_steps})
        start = time.perf_counter()
        out = solver.inference(y, generator=torch.Generator().manual_seed(10_000 * seed + i))
        seconds = time.perf_counter() - start
        misfit = (op.loss(out, y).sum() / y.numel()).sqrt().item()
        rows.append((psnr(out, x[None]).item(), ssim(out, x[None]).item(), misfit, seconds))
    return {key: statistics.mean(r[k] for r in rows) for k, key in enumerate(("psnr", "ssim", "misfit", "seconds"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sr4,inpaint_box,inpaint_random,gaussian_deblur,motion_deblur")
    parser.add_argument("--lambdas", default="0.25,0.5,1,2,4")
    parser.add_argument("--variances", default="gaussian,sigma2")
    parser.add_argument("--prior", default="faces64")
    parser.add_argument("--dataset", default="faces")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-table4", action="store_true", help="skip the Table-4 rows")
    parser.add_argument("--out", default=None, help="write the markdown table here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    net = builtin_prior(args.prior)
    channels, resolution = int(net.img_channels), int(net.img_resolution)
    images = builtin_dataset(args.dataset, resolution=resolution, num_images=args.num_images, channels=channels,
                             split=args.split).images
    auto = method_kwargs("lmaps_auto")
    lines = [f"| task | setting | PSNR | SSIM | misfit RMS (σ_y = 0.05) | s/image |", "|---|---|---|---|---|---|"]
    for task in args.tasks.split(","):
        op = build_operator(task, resolution=resolution, channels=channels, sigma_noise=0.05)
        settings = {}
        for variance in args.variances.split(","):
            for lam in (float(v) for v in args.lambdas.split(",")):
                settings[f"auto λ={lam:g} ({variance})"] = {**auto, "calib_lambda": lam, "calib_variance": variance}
        if not args.no_table4 and (CONFIGS / f"lmaps_{task}.yaml").is_file():
            settings["Table 4 row (K=100 GD)"] = method_kwargs(f"lmaps_{task}")
        for name, setting in settings.items():
            result = run_setting(net, op, images, setting, args.num_steps, args.seed)
            line = (f"| {task} | {name} | {result['psnr']:.2f} | {result['ssim']:.3f} | {result['misfit']:.4f} | "
                    f"{result['seconds']:.2f} |")
            print(line, flush=True)
            lines.append(line)
    if args.out:
        command = "python scripts/calibrate_lambda.py " + " ".join(sys.argv[1:] if argv is None else argv)
        header = (f"# lmaps_auto calibration on {args.split} images\n\nPrior `{args.prior}`, {args.num_images} "
                  f"{args.split} images of `{args.dataset}`, N = {args.num_steps}, σ_y = 0.05, seed {args.seed}, "
                  f"1 CPU thread.\n\nCommand: `{command}`\n\n")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
