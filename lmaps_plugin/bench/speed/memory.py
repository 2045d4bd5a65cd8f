"""Section (e): peak resident memory of LMAPS and of InverseBench's DPS and DAPS, each run in its own
subprocess (``--rss-child``), which resets the kernel's high-water mark before the run where it can."""
from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch

from lmaps_plugin.inversebench import import_upstream

from .problems import (CHANNELS, RESOLUTION, Bench, lmaps, make_operator, observe, peer, peer_config,
                       peers_available, run_peer, timing_prior, with_steps)
from .table import print_table


class BatchLossOperator:
    """Operator proxy for InverseBench's DPS at batch > 1: its ``ll_grad * 0.5 / sqrt(loss)`` assumes batch 1,
    so ``gradient(..., return_loss=True)`` returns the per-sample loss shaped ``(B, 1, 1, 1)``. Same numbers."""

    def __init__(self, op):
        self._op = op

    def __getattr__(self, name):
        return getattr(self._op, name)

    def gradient(self, pred, observation, return_loss=False):
        out = self._op.gradient(pred, observation, return_loss=return_loss)
        if not return_loss:
            return out
        grad, loss = out
        return grad, loss.reshape(-1, *([1] * (pred.ndim - 1)))


def child_peaks(methods: list[str], steps: int, batches: tuple[int, ...]) -> dict:
    """``{(method, batch): the child's JSON}``, one subprocess of this command each; failures are printed."""
    peaks = {}
    for batch in batches:
        for method in methods:
            cmd = [sys.executable, "-m", f"{__package__}.main", "--rss-child", method, "--rss-steps", str(steps),
                   "--rss-batch", str(batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"\n(e) {method} at batch {batch}: child failed:\n{done.stderr[-2000:]}")
                continue
            peaks[(method, batch)] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


def section_memory(bench: Bench, steps: int, batches: tuple[int, ...]) -> None:
    """(e): peak resident memory of LMAPS (closed form and iterated) and, with InverseBench, DPS and DAPS."""
    methods = ["lmaps", "lmaps_iter"] + (["daps", "dps"] if peers_available() else [])
    peaks = child_peaks(methods, steps, batches)
    rows = []
    for (method, batch), p in peaks.items():
        base = peaks.get(("lmaps", batch))
        growth = p["peak_mb"] - p["before_mb"]
        ratio = growth / max(base["peak_mb"] - base["before_mb"], 1e-9) if base else float("nan")
        rows.append([method, batch, p["before_mb"], p["peak_mb"], growth, ratio,
                     p["peak_mb"] / base["peak_mb"] if base else float("nan"), p["reset"]])
    bench.results["e_memory"] = {f"{m}/b{b}": p for (m, b), p in peaks.items()}
    slopes = per_sample_growth(peaks, batches)
    if slopes:
        bench.results["e_memory_per_sample_mb"] = slopes

    print_table(f"(e) peak resident memory, gaussian_deblur, {steps} steps (DAPS: 1 annealing step), "
                "one subprocess each, 1 observation x num_samples = batch",
                ["method", "batch", "RSS before MB", "peak MB", "growth MB", "growth / LMAPS", "peak / LMAPS",
                 "peak reset"], rows,
                ["RSS before: resident memory just before inference() (after importing LMAPS and the peers and",
                 "building the net, operator and observation; the same in every child).",
                 "With 'peak reset' True the kernel's high-water mark is reset there (/proc/self/clear_refs) and the",
                 "peak is VmHWM, so growth is the run's own working memory (ru_maxrss, which the reset does not",
                 "clear, only sees the import-time peak at this size; it is kept in --json). Otherwise peak = "
                 "ru_maxrss.",
                 "LMAPS calls the network under inference_mode (no graph); DPS backpropagates through it.",
                 "DPS at batch > 1 runs through BatchLossOperator (an upstream broadcasting defect:",
                 "ll_grad / sqrt(loss) assumes batch 1)."]
                + ([f"growth per extra sample (MB, from batch {min(batches)} to {max(batches)}): "
                    + ", ".join(f"{m} {v:.2g}" for m, v in slopes.items())] if slopes else []))


def per_sample_growth(peaks: dict, batches: tuple[int, ...]) -> dict[str, float]:
    """(growth at the largest batch − growth at the smallest) / (batch difference), per method."""
    if len(batches) < 2:
        return {}
    lo, hi = min(batches), max(batches)
    growth = {key: p["peak_mb"] - p["before_mb"] for key, p in peaks.items()}
    return {m: (growth[(m, hi)] - growth[(m, lo)]) / (hi - lo)
            for m, b in peaks if b == lo and (m, hi) in growth}


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_child(method: str, steps: int, batch: int) -> None:
    """Body of one (e) subprocess: import and build everything, reset the peak, run, read the peak; print JSON."""
    torch.set_num_threads(1)
    if peers_available():             # every child imports the same modules, whichever method it runs
        for module in ("algo.dps", "algo.daps"):
            import_upstream(module, "bench_speed.py's memory comparison")
    net, _ = timing_prior()
    op = make_operator("gaussian_deblur")
    gen = torch.Generator().manual_seed(0)
    y = observe(op, torch.rand(1, CHANNELS, RESOLUTION, RESOLUTION, generator=gen) * 2 - 1)
    if method in ("lmaps", "lmaps_iter"):
        solver = lmaps(net, op, steps, "gaussian_deblur", gd_closed_form=method == "lmaps")
        run = lambda: solver.inference(y, num_samples=batch)  # noqa: E731
    else:
        config = peer_config(method)
        wrapped = BatchLossOperator(op) if method == "dps" else op
        algo = peer(method, net, wrapped, with_steps(method, config, 1 if method == "daps" else steps))
        run = lambda: run_peer(algo, y, num_samples=batch)  # noqa: E731
    to_mb = 1 / 1024  # ru_maxrss and /proc are in KiB on Linux
    reset = reset_peak_rss()
    before = proc_status_kib("VmRSS") * to_mb if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb
    run()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb
    peak = proc_status_kib("VmHWM") * to_mb if reset else maxrss
    print(json.dumps({"before_mb": before, "peak_mb": peak, "ru_maxrss_mb": maxrss, "reset": reset}))


def proc_status_kib(key: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``: now; ``VmHWM``: peak since start or reset)."""
    with open("/proc/self/status") as f:
        return float(next(line.split()[1] for line in f if line.startswith(key + ":")))
