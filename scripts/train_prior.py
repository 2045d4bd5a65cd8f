#!/usr/bin/env python
"""Train a small EDM-preconditioned UNet prior on a built-in dataset's train split and save it with save_prior.

Loss: EDM's (Karras et al. 2022): ln σ ~ N(P_mean, P_std²), weight (σ² + σ_d²)/(σ·σ_d)². Adam with a linear
warm-up and cosine decay of the learning rate; an exponential moving average (EMA) of the weights is what gets saved.
Training images: a fixed pool of the dataset's *train* split (procedural sets: ``--train-images`` draws; faces: all
80 train faces) with random flips/rotations (and small shifts for faces), never the test split.

Example (the shipped faces prior; see lmaps_plugin/priors/weights/README.md)::

    python scripts/train_prior.py --dataset faces --steps 2000 --seed 0 --out lmaps_plugin/priors/weights/faces64.pt
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lmaps_plugin.data import BUILTIN_DATASETS, builtin_dataset
from lmaps_plugin.data.packaged import num_faces
from lmaps_plugin.priors import build_edm_unet, default_unet_config, edm_loss, save_prior

# augmentation per dataset: (dihedral flips/rotations, horizontal flip only, max shift in pixels)
AUGMENT = {"cells": ("dihedral", 0), "rings": ("dihedral", 0), "phantoms": ("hflip", 0),
           "faces": ("hflip", 2), "photos": ("hflip", 0)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, choices=BUILTIN_DATASETS)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--channels", type=int, default=None, help="1 or 3 (default: the dataset's own)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    p.add_argument("--ema-halflife", type=float, default=150.0, help="EMA half-life in steps")
    p.add_argument("--train-images", type=int, default=2000, help="pool size for procedural/crop datasets")
    p.add_argument("--model-channels", type=int, default=None, help="override the UNet width")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--float16", action="store_true", help="store the weights in float16 (halves the file)")
    p.add_argument("--out", required=True, help="output .pt path")
    return p.parse_args(argv)


def training_pool(args) -> torch.Tensor:
    """(N, C, H, W) train-split images."""
    n = num_faces("train") if args.dataset == "faces" else args.train_images
    return builtin_dataset(args.dataset, resolution=args.resolution, num_images=n, channels=args.channels,
                           seed=args.seed, split="train").images


def augment(batch: torch.Tensor, mode: str, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random flips (and for 'dihedral' also 90° rotations, transposes) and integer shifts (reflect padding)."""
    b = batch.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    if mode == "dihedral":
        vflip = torch.rand(b, generator=gen) < 0.5
        batch = torch.where(vflip[:, None, None, None], batch.flip(-2), batch)
        transpose = torch.rand(b, generator=gen) < 0.5
        batch = torch.where(transpose[:, None, None, None], batch.transpose(-1, -2), batch)
    if shift > 0:
        padded = F.pad(batch, (shift,) * 4, mode="reflect")
        dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=gen)
        h, w = batch.shape[-2:]
        batch = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return batch


def learning_rate(step: int, args) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, step: int, halflife: float) -> None:
    beta = min(0.5 ** (1 / halflife), (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p, 1 - beta)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    pool = training_pool(args)
    data_seconds = time.perf_counter() - start
    config = default_unet_config(pool.shape[1], args.resolution)
    if args.model_channels:
        config["model_channels"] = args.model_channels
    net = build_edm_unet(config).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"dataset={args.dataset} pool={tuple(pool.shape)} ({data_seconds:.1f} s) params={n_params}")

    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    mode, shift = AUGMENT[args.dataset]
    losses = []
    pbar = tqdm(range(args.steps), desc=f"train {args.dataset}", mininterval=5)
    for step in pbar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args)
        idx = torch.randint(pool.shape[0], (args.batch_size,), generator=gen)
        batch = augment(pool[idx], mode, shift, gen)
        loss = edm_loss(net, batch, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        update_ema(ema, net, step, args.ema_halflife)
        losses.append(loss.item())
        if step % 50 == 0:
            pbar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    final_loss = sum(losses[-200:]) / len(losses[-200:])
    meta = dict(dataset=args.dataset, split="train", train_images=int(pool.shape[0]), resolution=args.resolution,
                channels=int(pool.shape[1]), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                warmup=args.warmup, ema_halflife_steps=args.ema_halflife, seed=args.seed, threads=args.threads,
                P_mean=-1.2, P_std=1.2, final_loss_last200=round(final_loss, 5),
                wall_time_s=round(wall, 1), cpu_time_s=round(cpu, 1), torch=torch.__version__, params=n_params,
                augment=dict(mode=mode, shift=shift))
    path = save_prior(args.out, ema, meta, dtype=torch.float16 if args.float16 else None)
    print(f"done: {args.steps} steps, wall time {wall:.1f} s (CPU time {cpu:.1f} s), "
          f"final loss (mean of last 200) {final_loss:.4f}, "
          f"saved {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
