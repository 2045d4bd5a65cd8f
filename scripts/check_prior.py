#!/usr/bin/env python
"""Sanity-check a diffusion prior: denoising PSNR on the test split (vs. the noisy input and the best Gaussian blur)
and a grid of unconditional samples from EDM's Heun sampler.

    python scripts/check_prior.py faces64 --out /tmp/faces64_check.png
    python scripts/check_prior.py path/to/prior.pt --dataset cells
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from lmaps_plugin.data import builtin_dataset
from lmaps_plugin.data.packaged import num_faces
from lmaps_plugin.priors import builtin_prior, builtin_prior_names, heun_sample, load_prior
from lmaps_plugin.evaluation.prior_check import denoising_report


def image_grid(rows: list[torch.Tensor]) -> Image.Image:
    """Tile rows of (N, C, H, W) images in [-1, 1] into one PIL image."""
    grid = torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)
    grid = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte()
    array = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prior", help=f"a built-in name ({', '.join(builtin_prior_names())}) or a .pt path")
    p.add_argument("--dataset", default=None, help="test set (default: the prior's training dataset)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--sample-steps", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="PNG path for noisy/denoised/sample grids")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    net = load_prior(args.prior) if Path(args.prior).is_file() else builtin_prior(args.prior)
    meta = getattr(net, "meta", {})
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        p.error("--dataset is required for a prior without metadata")
    num_images = min(args.num_images, num_faces("test")) if dataset == "faces" else args.num_images
    images = builtin_dataset(dataset, resolution=net.img_resolution, num_images=num_images,
                             channels=net.img_channels, split="test").images
    print(f"prior {args.prior}: trained on {meta.get('dataset')} ({meta.get('steps')} steps, "
          f"{meta.get('wall_time_s')} s); test set {dataset} ({images.shape[0]} images)")
    print(f"{'sigma':>6} {'noisy':>8} {'blur*':>8} {'denoised':>9}   (mean PSNR dB; blur* = best Gaussian blur)")
    rows = [images[:8]]
    for sigma in args.sigmas:
        r = denoising_report(net, images, sigma, seed=args.seed)
        print(f"{sigma:6.2f} {r['noisy']:8.2f} {r['best_blur']:8.2f} {r['denoised']:9.2f}")
        gen = torch.Generator().manual_seed(args.seed)
        noisy = images[:8] + sigma * torch.randn(images[:8].shape, generator=gen)
        rows += [noisy, net(noisy, sigma).detach()]
    if args.samples:
        t = time.perf_counter()
        samples = heun_sample(net, args.samples, num_steps=args.sample_steps,
                              generator=torch.Generator().manual_seed(args.seed))
        print(f"{args.samples} Heun samples ({args.sample_steps} steps) in {time.perf_counter() - t:.1f} s; "
              f"range [{samples.min():.2f}, {samples.max():.2f}]")
        rows += [samples[i:i + 8] for i in range(0, args.samples, 8) if samples[i:i + 8].shape[0] == 8]
    if args.out:
        image_grid(rows).resize((8 * net.img_resolution * 2, len(rows) * net.img_resolution * 2),
                                Image.NEAREST).save(args.out)
        print(f"grid (rows: test images, then noisy/denoised per sigma, then samples) -> {args.out}")


if __name__ == "__main__":
    main()
