#!/usr/bin/env python
"""λ_max(JᵀJ) of InverseBench's linear inverse-scattering operator, and η·k2·λ_max of Table 4's LIS rows.

J is the Jacobian of ``InverseScatter.forward`` (its ``unnormalize`` included) with respect to the prior's
normalised image, the Jacobian LMAPS's data term and step-size guard see; λ_max is measured by the guard's
own power iteration (``lmaps_plugin.local_map.estimate_gram_norm``) at the zero image (the operator is
linear, so the point does not matter). Needs an InverseBench checkout (``INVERSEBENCH_ROOT``).

    python scripts/lis_lambda_max.py            # ~20 s on 2 cores
"""
from __future__ import annotations

import argparse

import torch

ROWS = {360: 5000.0, 180: 10000.0, 60: 30000.0}   # Table 4: receivers -> k2 (η = 1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=int, nargs="+", default=[128, 64])
    p.add_argument("--iters", type=int, default=20, help="power iterations")
    args = p.parse_args(argv)
    import lmaps_plugin.inversebench as ib
    from lmaps_plugin.local_map import estimate_gram_norm

    torch.set_num_threads(1)
    print("| grid | receivers | λ_max(JᵀJ) | k2 (η = 1) | η·k2·λ_max |")
    print("|---|---|---|---|---|")
    for n in args.grids:
        for receivers, k2 in ROWS.items():
            if n != 128 and receivers != 360:
                continue
            op = ib.InverseScatter(Nx=n, Ny=n, numTrans=20, numRec=receivers, svd=False, sigma_noise=1e-4,
                                   unnorm_shift=1.0, unnorm_scale=0.5, device="cpu")
            lam = estimate_gram_norm(op, torch.zeros(1, 1, n, n), iters=args.iters)
            print(f"| {n}² | {receivers} | {lam:.3e} | {k2:g} | {k2 * lam:.3g} |", flush=True)


if __name__ == "__main__":
    main()
