#!/usr/bin/env python
"""Does the structured JPEG surrogate beat the identity one for LMAPS?

Same prior, same test images, same observation noise and same sampler noise for every arm;
only the JPEG operator's ``surrogate=`` differs. For each quality factor it prints PSNR / SSIM
(torchmetrics, on (x+1)/2 clipped to [0, 1], data range 1) as mean ± std over images × seeds of

* ``measurement``  -- the noisy JPEG-decoded observation y itself,
* ``LMAPS+<name>`` -- LMAPS with the JPEG operator's surrogate ``<name>``,

then the paired differences (per image and seed) between surrogates, mean ± std and the
standard error of the mean, and the RMS data misfit ‖H(x̂) − y‖ per pixel (σ_y for reference).

Setup (defaults):

* Images: ``builtin_dataset('photos', 32, split='test')`` ids 0-7 (RGB, so 4:2:0 chroma
  subsampling matters); 2 seeds each, all 16 reconstructions of an arm in one batch.
* Prior: the exact :class:`~lmaps_plugin.priors.gmm.GaussianMixturePrior` fitted on 1000 crops
  of the *train* split (different source pictures) plus their mirror images; with
  ``--prior-data test-crops`` on other random crops of the four test pictures instead (an
  optimistic, in-distribution prior standing in for a strong learned one).
* Operator: :class:`~lmaps_plugin.operators.jpeg.JPEG` at QF 5 (paper) and 10,
  σ_y = 0.05 in [-1, 1] units. The noise is added *after* the codec, y = JPEG(x) + σ_y·ε:
  that is the operator contract (``Operator.__call__``: forward, then Gaussian noise), what
  InverseBench and DAPS do for every task, and the likelihood LMAPS's data term assumes.
  (Noise before the codec, y = JPEG(x + σ_y·ε), would put y back on the 8-bit JPEG grid but
  is not the model ‖y − H(x)‖² describes.)
* LMAPS: Table 4's JPEG row (η = 0.2, k1 = 0.5, k2 = 5) with N and K reduced from 200/100 to
  fit a CPU budget (``--num-steps``, ``--inner-steps``; the same for all arms). ``step_guard``
  is off by default: its λ_max(JᵀJ) estimate (finite differences of ``gradient``) sees the
  piecewise-constant exact JPEG, not the surrogate, and returns 0 or ~20 instead of the
  surrogate's true 1 (identity), 1.38 (jpeg_linear) or 0.7 (jpeg_kornia), which would change
  the step size by arm. Without it η·k2·λ_max ≤ 1.38 < 2: plain gradient descent is stable for
  all three.

Sampler noise: one ``torch.Generator`` seeded with ``--sampler-seed`` drives the initial noise
and re-noising of the whole batch, identically for every arm (the batch rows of seed s are
different draws from those of seed s'). Observation noise of seed s: ``Generator(s)``.

    python scripts/compare_jpeg_surrogates.py            # ~2 min CPU, 3.5 min wall on a busy 2-core box
    python scripts/compare_jpeg_surrogates.py --surrogates identity jpeg_linear --num-steps 100 --inner-steps 50
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
import warnings

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from lmaps_plugin.data import builtin_dataset
from lmaps_plugin.operators.jpeg import JPEG
from lmaps_plugin.priors.gmm import GaussianMixturePrior
from lmaps_plugin import LMAPS
from lmaps_plugin.operators.surrogates import available_surrogates


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--qualities", type=int, nargs="+", default=[5, 10])
    p.add_argument("--surrogates", nargs="+", default=["identity", "jpeg_linear", "jpeg_kornia"])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sampler-seed", type=int, default=1234)
    p.add_argument("--sigma-noise", type=float, default=0.05)
    p.add_argument("--num-steps", type=int, default=50, help="N (Table 4: 200)")
    p.add_argument("--inner-steps", type=int, default=20, help="K (Table 4: 100)")
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--k1", type=float, default=0.5)
    p.add_argument("--k2", type=float, default=5.0)
    p.add_argument("--step-guard", action="store_true", help="enable LMAPS's step-size guard")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--prior-data", choices=["train", "test-crops"], default="train",
                   help="fit the GMM on the train split (different pictures), or on random crops (ids 1000+) "
                        "of the test pictures: an optimistic, in-distribution prior")
    p.add_argument("--gmm-components", type=int, default=4)
    p.add_argument("--gmm-rank", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write all per-image numbers to this file")
    return p.parse_args(argv)


# -- setup ---------------------------------------------------------------------------------
def load_images(split: str, resolution: int, ids) -> torch.Tensor:
    """(len(ids), 3, R, R) photo crops in [-1, 1]."""
    ds = builtin_dataset("photos", resolution, channels=3, split=split, id_list=list(ids))
    return torch.stack([ds[i]["target"] for i in range(len(ds))])


#: first id of the test-split crops used by ``--prior-data test-crops`` (far from the evaluated ids).
TEST_CROPS_START = 1000


def fit_prior(args) -> GaussianMixturePrior:
    """Exact GMM prior on ``--train-images`` crops and their horizontal mirrors.

    ``--prior-data train``: the train split (other source pictures than the test images).
    ``--prior-data test-crops``: random crops of the four test pictures (ids from 1000 on, not
    the evaluated ids), an in-distribution prior standing in for a strong learned one.
    """
    if args.prior_data == "train":
        train = load_images("train", args.resolution, range(args.train_images))
    else:
        train = load_images("test", args.resolution,
                            range(TEST_CROPS_START, TEST_CROPS_START + args.train_images))
    return GaussianMixturePrior.fit(torch.cat([train, train.flip(-1)]),
                                    n_components=args.gmm_components, rank=args.gmm_rank)


def observe(op: JPEG, targets: torch.Tensor, seeds: list[int], sigma: float) -> torch.Tensor:
    """y = JPEG(x) + σ·ε, rows grouped by seed (seed-major); ε of seed s from Generator(s)."""
    clean = op.forward_exact(targets)
    noisy = [clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(s))
             for s in seeds]
    return torch.cat(noisy)


# -- metrics -------------------------------------------------------------------------------
def to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def image_metrics(estimate: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR and SSIM on [0, 1]."""
    est, tgt = to_unit(estimate), to_unit(target)
    return {
        "psnr": peak_signal_noise_ratio(est, tgt, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": structural_similarity_index_measure(est, tgt, data_range=1.0, reduction="none"),
    }


def mean_std(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return float(values.mean()), float(values.std()) if values.numel() > 1 else 0.0


# -- one arm -------------------------------------------------------------------------------
def run_lmaps(prior, op: JPEG, observation: torch.Tensor, args) -> tuple[torch.Tensor, int, float]:
    """Reconstructions, number of LMAPS warnings (guard / back-off) and wall time."""
    solver = LMAPS(prior, op, num_steps=args.num_steps, inner_steps=args.inner_steps, lr=args.lr,
                   k1=args.k1, k2=args.k2, step_guard=args.step_guard, verbose=False)
    generator = torch.Generator().manual_seed(args.sampler_seed)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recon = solver.inference(observation, generator=generator)
    return recon.detach(), len(caught), time.perf_counter() - start


def misfit_rms(op: JPEG, recon: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
    """Per-image RMS of H(x̂) − y (in [-1, 1] units; ≈ σ_y when x̂ explains y)."""
    return (op.forward_exact(recon) - observation).square().flatten(1).mean(1).sqrt()


# -- report --------------------------------------------------------------------------------
def print_table(quality: int, rows: dict[str, dict[str, torch.Tensor]], extra: dict[str, str]) -> None:
    print(f"\nQF={quality}   (mean ± std over {len(next(iter(rows.values()))['psnr'])} image×seed pairs)")
    print(f"{'arm':<22}{'PSNR [dB]':>16}{'SSIM':>18}{'misfit RMS':>13}  notes")
    for name, m in rows.items():
        (p, ps), (s, ss) = mean_std(m["psnr"]), mean_std(m["ssim"])
        fit = f"{m['misfit'].mean():.4f}" if "misfit" in m else "-"
        print(f"{name:<22}{p:>9.2f} ± {ps:<4.2f}{s:>11.4f} ± {ss:<5.3f}{fit:>12}  {extra.get(name, '')}")


def paired_differences(rows: dict[str, dict[str, torch.Tensor]], names: list[str]) -> dict:
    """Mean, std and standard error of per-image differences (b − a) for each pair of arms."""
    out = {}
    for a, b in itertools.combinations(names, 2):
        entry = {}
        for metric in ("psnr", "ssim"):
            diff = rows[b][metric].double() - rows[a][metric].double()
            mean, std = mean_std(diff)
            entry[metric] = {"mean": mean, "std": std, "sem": std / math.sqrt(diff.numel()),
                             "wins": int((diff > 0).sum()), "n": diff.numel()}
        out[f"{b} - {a}"] = entry
    return out


def print_differences(diffs: dict) -> None:
    print("paired differences (per image×seed):")
    for pair, entry in diffs.items():
        p, s = entry["psnr"], entry["ssim"]
        print(f"  {pair:<40} ΔPSNR {p['mean']:+.3f} ± {p['std']:.3f} dB (sem {p['sem']:.3f}, "
              f"{p['wins']}/{p['n']} better)   ΔSSIM {s['mean']:+.4f} ± {s['std']:.4f} "
              f"(sem {s['sem']:.4f}, {s['wins']}/{s['n']} better)")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    registered = available_surrogates()
    surrogates = [s for s in args.surrogates if s in registered]
    for missing in sorted(set(args.surrogates) - set(surrogates)):
        print(f"surrogate {missing!r} is not registered; skipped (registered: {', '.join(registered)})")
    t0 = time.perf_counter()
    targets = load_images("test", args.resolution, range(args.num_images))
    prior = fit_prior(args)
    print(f"prior: GMM K={args.gmm_components} rank={args.gmm_rank} on {2 * args.train_images} {args.prior_data} crops "
          f"({time.perf_counter() - t0:.1f} s); {args.num_images} test photos {args.resolution}px × seeds "
          f"{args.seeds}; N={args.num_steps} K={args.inner_steps} η={args.lr} k1={args.k1} k2={args.k2} "
          f"σ_y={args.sigma_noise} (added after the codec) step_guard={args.step_guard}")
    truth = targets.repeat(len(args.seeds), 1, 1, 1)
    results = {"args": vars(args), "qualities": {}}
    for quality in args.qualities:
        observation = observe(JPEG(quality=quality), targets, args.seeds, args.sigma_noise)
        rows = {"measurement": image_metrics(observation, truth)}
        extra = {}
        for name in surrogates:
            op = JPEG(quality=quality, surrogate=name, sigma_noise=args.sigma_noise)
            recon, n_warn, seconds = run_lmaps(prior, op, observation, args)
            rows[f"LMAPS+{name}"] = {**image_metrics(recon, truth), "misfit": misfit_rms(op, recon, observation)}
            extra[f"LMAPS+{name}"] = f"{seconds:.0f} s" + (f", {n_warn} solver warnings" if n_warn else "")
        print_table(quality, rows, extra)
        diffs = paired_differences(rows, [f"LMAPS+{n}" for n in surrogates])
        print_differences(diffs)
        results["qualities"][quality] = {
            "metrics": {k: {m: v.tolist() for m, v in r.items()} for k, r in rows.items()},
            "differences": diffs, "notes": extra}
    print(f"\ntotal {time.perf_counter() - t0:.0f} s on {args.threads} thread(s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
