#!/usr/bin/env python
"""PSNR of each sample and of the mean of the samples, per image, for one ``lmaps`` results folder.

LMAPS draws posterior samples; a sample's expected squared error is the posterior mean's plus the
posterior variance, so averaging a run's ``num_samples`` reconstructions moves PSNR toward the
MMSE floor. Reads ``result_<id>.pt`` (``recon``: (num_samples, C, H, W), images in [-1, 1]) and prints a
Markdown table (the app's PSNR, :func:`lmaps_plugin.evaluation.metrics.psnr`: (x + 1)/2 clipped to [0, 1], data range 1).

    lmaps problem=sr4 num_samples=8 exp_dir=/tmp/sr4
    python scripts/sample_mean_psnr.py /tmp/sr4/sr4/LMAPS-cpu/faces64-seed0
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lmaps_plugin.evaluation.metrics import psnr
from lmaps_plugin.app.results import load_result, result_ids, result_path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a run's results folder (holds result_<id>.pt)")
    args = p.parse_args(argv)
    ids = result_ids(args.folder)
    if not ids:
        p.error(f"no result_<id>.pt in {args.folder}")
    print("| id | samples | mean PSNR of the samples [dB] | PSNR of their mean [dB] |")
    print("|---|---|---|---|")
    each_all, mean_all = [], []
    for sample_id in ids:
        result = load_result(result_path(args.folder, sample_id))
        recon = result["recon"]
        target = result["target"].reshape(1, *recon.shape[1:])
        each = float(psnr(recon, target).mean())
        mean = float(psnr(recon.mean(0, keepdim=True), target))
        each_all.append(each)
        mean_all.append(mean)
        print(f"| {sample_id} | {len(recon)} | {each:.2f} | {mean:.2f} |")
    print(f"| mean | | {sum(each_all) / len(each_all):.2f} | {sum(mean_all) / len(mean_all):.2f} |")


if __name__ == "__main__":
    main()
