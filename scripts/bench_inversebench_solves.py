"""Exact local-MAP solves on InverseBench's linear inverse scattering: Gram eigenbasis vs matrix-free CG.

For each grid (Nx = Ny = N) and receiver count NR (numTrans = 20, as InverseBench's inv-scatter config):

* construction time of our operator (InverseBench's own set-up of the Green's functions);
* the Gram factorisation (``LinearInverseScatter.gram_factorisation``, into an empty temporary cache): time,
  method, rank, cache file size and the time a fresh operator takes to read it back;
  for grids above ``--factorise-max-pixels`` it is estimated from the measured sizes (cubic fit);
* time per exact solve of ``((1 − r)I + r·k2·AᵀA) x = (1 − r)·x̂0 + r·k2·Aᵀ(y − forward(0))`` at several σ,
  with k2 of the Table-4 LIS rows and r = σ²/(σ² + k1² + 1e-6) for each ``--k1`` (Table 4: k1 = 0):
  in the eigenbasis (2 ``to_basis``, 1 ``from_basis``, 1 adjoint) and by CG with the analytic adjoint
  (from x̂0 to a relative residual ``--cg-tol``, at most ``--cg-max-iter`` iterations);
* the crossover: how many solves pay for the factorisation (factorise time / (CG − eigenbasis time));
* forward, adjoint and gradient time per sample at batch sizes ``--batches``: ours (one matmul) vs the
  upstream per-element loop (forward) and the upstream autograd gradient.

Needs INVERSEBENCH_ROOT. Prints markdown tables; ``--json`` also writes the numbers.

    INVERSEBENCH_ROOT=/path/to/InverseBench python scripts/bench_inversebench_solves.py --sizes 64 --nr 360,180,60
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from lmaps_plugin import inversebench as ib
from lmaps_plugin.local_map import conjugate_gradient, exact_closed_form
from lmaps_plugin.schedules import prior_weight

K2 = {360: 5000.0, 180: 10000.0, 60: 30000.0}
"""k2 of the Table-4 LIS rows (configs/algorithm/lmaps_lis_nr*.yaml; k1 = 0)."""

UNNORM = dict(sigma_noise=1e-4, unnorm_shift=1.0, unnorm_scale=0.5, svd=False, device="cpu")


def best_time(fn: Callable[[], object], reps: int) -> float:
    """Minimum wall time of ``reps`` calls (the machine is shared: the minimum is the least disturbed)."""
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def build(n: int, nr: int, gram_max_pixels: int, cache_dir):
    start = time.perf_counter()
    op = ib.InverseScatter(Nx=n, Ny=n, numTrans=20, numRec=nr, gram_cache=str(cache_dir),
                           gram_max_pixels=gram_max_pixels, **UNNORM)
    return op, time.perf_counter() - start


def factorise(n: int, nr: int, gram_max_pixels: int, cache_dir) -> tuple[dict, object]:
    """Factorise into an empty cache directory, then time a fresh operator reading it back."""
    op, _ = build(n, nr, gram_max_pixels, cache_dir)
    start = time.perf_counter()
    tensors = op.gram_factorisation()
    stats = {"factorise_s": time.perf_counter() - start, "rank": int(tensors["eigenvalues"].numel())}
    again, _ = build(n, nr, gram_max_pixels, cache_dir)
    start = time.perf_counter()
    again.gram_factorisation()
    stats.update(cache_load_s=time.perf_counter() - start, cache_source=again.gram_source,
                 cache_mb=sum(f.stat().st_size for f in Path(cache_dir).glob("*.pt")) / 2 ** 20)
    return stats, again


def smooth_image(n: int, seed: int) -> torch.Tensor:
    """A smooth test contrast in the prior's [-1, 1] range (low-pass random field)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, max(2, n // 8), max(2, n // 8), generator=g)
    image = torch.nn.functional.interpolate(coarse, size=(n, n), mode="bicubic", align_corners=False)
    return (2 * image - 1).clamp(-1, 1)


def exact_in_basis(op, basis, x0_hat, y, r, k2):
    """LMAPS's eigenbasis solve (:func:`lmaps_plugin.local_map.exact_closed_form`), Aᵀ(y − c) and its
    coefficients computed here too."""
    hty = op.adjoint(y - op.forward(torch.zeros_like(x0_hat[:1])))
    return exact_closed_form(x0_hat, basis.to_basis(hty), basis, r, k2)


def cg(op, x0_hat, y, r, k2, tol, max_iter):
    """CG on the normal equations from x̂0 (float64; :func:`lmaps_plugin.local_map.conjugate_gradient`);
    returns (x, iterations, relative residual)."""
    x0_hat = x0_hat.to(torch.float64)
    offset = op.forward(torch.zeros_like(x0_hat[:1]))

    def system(v):
        return (1.0 - r) * v + (r * k2) * op.adjoint(op.forward(v) - offset)

    rhs = (1.0 - r) * x0_hat + (r * k2) * op.adjoint(y - offset)
    x, report = conjugate_gradient(system, rhs, x0_hat.clone(), tol=tol, max_iter=max_iter)
    return x, report.iterations, report.relative_residual


def solve_rows(op, basis, nr, sigmas, k1s, tol, max_iter, reps):
    k2 = K2.get(nr, 5000.0)
    truth = smooth_image(op.Nx, seed=0).double()
    y = op.forward(truth) + 1e-4 * torch.randn(1, op.numTrans, op.numRec, dtype=torch.complex128,
                                               generator=torch.Generator().manual_seed(1))
    x0_hat = (truth + 0.1 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(2),
                                        dtype=torch.float64)).float()
    rows = []
    for k1 in k1s:
        for sigma in sigmas:
            r = prior_weight(sigma, k1)
            row = {"k1": k1, "sigma": sigma, "r": r, "k2": k2}
            start = time.perf_counter()
            x_cg, iters, residual = cg(op, x0_hat, y, r, k2, tol, max_iter)
            elapsed = time.perf_counter() - start
            row.update(cg_s=elapsed, cg_iters=iters, cg_residual=residual,
                       cg_ms_per_iter=1e3 * elapsed / max(iters, 1))
            if basis is not None:
                x_eig = exact_in_basis(op, basis, x0_hat, y, r, k2)
                row["eig_s"] = best_time(lambda: exact_in_basis(op, basis, x0_hat, y, r, k2), reps)
                row["rel_diff_cg_vs_eig"] = float((x_cg - x_eig.double()).norm() / x_eig.double().norm())
            rows.append(row)
    return rows


def batch_rows(op, plain, batches, reps):
    """Per-sample times at each batch size; batch sizes interleaved within every repetition, so that load
    changes on a shared machine hit all of them alike (minimum over repetitions)."""
    y = op.forward(torch.zeros(1, 1, op.Ny, op.Nx))
    cases = {}
    for batch in batches:
        x = smooth_image(op.Nx, seed=3).repeat(batch, 1, 1, 1) + 0.01 * torch.randn(batch, 1, op.Ny, op.Nx)
        field = op.forward(x)
        cases[batch] = {
            "upstream_forward_loop_ms": lambda x=x: torch.cat([plain.forward(x[i:i + 1]) for i in range(len(x))]),
            "forward_ms": lambda x=x: op.forward(x),
            "adjoint_ms": lambda field=field: op.adjoint(field),
            "gradient_ms": lambda x=x: op.gradient(x, y),
            "upstream_autograd_gradient_ms": lambda x=x: [plain.gradient(x[i:i + 1], y) for i in range(len(x))],
        }
    best = {batch: {name: math.inf for name in fns} for batch, fns in cases.items()}
    for _ in range(reps):
        for name in next(iter(cases.values())):
            for batch, fns in cases.items():
                best[batch][name] = min(best[batch][name], best_time(fns[name], 1))
    return [{"batch": batch, **{name: 1e3 * t / batch for name, t in times.items()}} for batch, times in best.items()]


def cubic_estimate(measured: dict[int, float], pixels: int) -> float | None:
    """Factorisation time at ``pixels`` from the largest measured grid, scaled as pixels³ (dense eigh/SVD)."""
    if not measured:
        return None
    largest = max(measured)
    return measured[largest] * (pixels / largest) ** 3


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64", help="grid sizes N (Nx = Ny = N), comma-separated")
    parser.add_argument("--nr", default="360,180,60", help="receiver counts, comma-separated")
    parser.add_argument("--sigmas", default="10,1,0.1", help="noise levels of the solves")
    parser.add_argument("--k1", default="0,0.007", help="k1 values (r = σ²/(σ² + k1² + 1e-6)); 0.007 ≈ "
                        "sqrt(σ_y²·k2) for σ_y = 1e-4, k2 = 5000 (the Bayes rule of docs/calibration.md)")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--cg-tol", type=float, default=1e-6)
    parser.add_argument("--cg-max-iter", type=int, default=1000)
    parser.add_argument("--factorise-max-pixels", type=int, default=64 * 64,
                        help="factorise grids up to this many pixels; estimate larger ones (cubic scaling)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch-only", action="store_true", help="only the batch timings (no factorisation, no solves)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    receivers = [int(s) for s in args.nr.split(",")]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    k1s = [float(s) for s in args.k1.split(",")]
    batches = [int(s) for s in args.batches.split(",")]
    upstream = ib.import_upstream("inverse_problems.inverse_scatter", "bench").InverseScatter
    results = {"threads": torch.get_num_threads(), "runs": []}
    measured: dict[tuple[int, str], dict[int, float]] = {}
    for n in sizes:
        for nr in receivers:
            cache_dir = tempfile.mkdtemp(prefix="lmaps-gram-bench-")
            op, built = build(n, nr, args.factorise_max_pixels, cache_dir)
            run = {"N": n, "NR": nr, "construct_s": built}
            basis = None
            method = "svd" if 2 * (2 * op.numTrans * nr) < n * n else "gram"  # as method='auto' chooses
            if args.batch_only:
                run["solves"] = []
            elif n * n <= args.factorise_max_pixels:
                stats, op = factorise(n, nr, args.factorise_max_pixels, cache_dir)
                run.update(stats, method=method)
                measured.setdefault((nr, method), {})[n * n] = run["factorise_s"]
                basis = op.gram_eigenbasis(torch.zeros(1, 1, n, n))
            else:
                run.update(method=method, factorise_s_estimate=cubic_estimate(measured.get((nr, method), {}), n * n))
            if not args.batch_only:
                run["solves"] = solve_rows(op, basis, nr, sigmas, k1s, args.cg_tol, args.cg_max_iter, args.reps)
            cost = run.get("factorise_s", run.get("factorise_s_estimate"))
            for row in run["solves"]:
                saved = row["cg_s"] - row.get("eig_s", 0.0)
                row["crossover_solves"] = None if cost is None or saved <= 0 else cost / saved
            if nr == receivers[0] or args.batch_only:
                run["batch"] = batch_rows(op, upstream(Nx=n, Ny=n, numTrans=20, numRec=nr, **UNNORM), batches,
                                          args.reps)
            results["runs"].append(run)
            shutil.rmtree(cache_dir, ignore_errors=True)
            report(run)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


def report(run: dict) -> None:
    if "factorise_s" in run:
        factorise = (f"{run['factorise_s']:.1f} s ({run['method']}, rank {run['rank']}; cache file "
                     f"{run['cache_mb']:.0f} MB, read back in {run['cache_load_s']:.2f} s)")
    elif run["solves"]:
        factorise = f"not run; estimate {run.get('factorise_s_estimate') or float('nan'):.0f} s ({run['method']})"
    else:
        factorise = "not run"
    print(f"\n### N = {run['N']}, NR = {run['NR']}: construct {run['construct_s']:.1f} s, factorise {factorise}\n")
    if run["solves"]:
        print("| k1 | σ | 1 − r | CG iters | CG residual | CG ms/iter | CG s/solve | eigenbasis s/solve "
              "| ‖x_cg − x_eig‖/‖x_eig‖ | crossover (solves) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for row in run["solves"]:
        eig = f"{row['eig_s']:.4f}" if "eig_s" in row else "-"
        diff = f"{row['rel_diff_cg_vs_eig']:.1e}" if "rel_diff_cg_vs_eig" in row else "-"
        cross = f"{row['crossover_solves']:.0f}" if row.get("crossover_solves") else "-"
        print(f"| {row['k1']:g} | {row['sigma']:g} | {1 - row['r']:.1e} | {row['cg_iters']} | "
              f"{row['cg_residual']:.1e} | {row['cg_ms_per_iter']:.1f} | {row['cg_s']:.2f} | {eig} | {diff} | {cross} |")
    if "batch" in run:
        print("\n| B | upstream forward loop ms/sample | forward ms/sample | adjoint ms/sample | gradient ms/sample "
              "| upstream autograd gradient ms/sample |")
        print("|---|---|---|---|---|---|")
        for row in run["batch"]:
            print(f"| {row['batch']} | {row['upstream_forward_loop_ms']:.1f} | {row['forward_ms']:.1f} | "
                  f"{row['adjoint_ms']:.1f} | {row['gradient_ms']:.1f} | {row['upstream_autograd_gradient_ms']:.1f} |")


if __name__ == "__main__":
    main()
