#!/usr/bin/env python
"""PSNR of each sample and of the mean of the samples, per image, for one ``lmaps`` results folder.

LMAPS draws posterior samples; a sample's expected squared error is the posterior mean's plus the
posterior variance, so averaging a run's ``num_samples`` reconstructions moves PSNR toward the
MMSE floor. Reads ``result_<id>.pt`` (``recon``: (num_samples, C, H, W), images in [-1, 1]) and prints a
Markdown table (PSNR on (x + 1)/2 clipped to [0, 1], data range 1, as the app's metrics).

    lmaps problem=sr4 num_samples=8 exp_dir=/tmp/sr4
    python scripts/sample_mean_psnr.py /tmp/sr4/sr4/LMAPS-cpu/faces64-seed0
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio


def unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.double() + 1) / 2).clamp(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(unit(pred), unit(target), data_range=1.0))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a run's results folder (holds result_<id>.pt)")
    args = p.parse_args(argv)
    files = sorted(args.folder.glob("result_*.pt"), key=lambda f: int(re.findall(r"\d+", f.stem)[-1]))
    if not files:
        p.error(f"no result_<id>.pt in {args.folder}")
    print("| id | samples | mean PSNR of the samples [dB] | PSNR of their mean [dB] |")
    print("|---|---|---|---|")
    each_all, mean_all = [], []
    for f in files:
        result = torch.load(f, map_location="cpu", weights_only=True)
        recon = result["recon"]
        target = result["target"].reshape(1, *recon.shape[1:])
        each = sum(psnr(s[None], target) for s in recon) / len(recon)
        mean = psnr(recon.mean(0, keepdim=True), target)
        each_all.append(each)
        mean_all.append(mean)
        print(f"| {f.stem.split('_')[-1]} | {len(recon)} | {each:.2f} | {mean:.2f} |")
    print(f"| mean | | {sum(each_all) / len(each_all):.2f} | {sum(mean_all) / len(mean_all):.2f} |")


if __name__ == "__main__":
    main()
