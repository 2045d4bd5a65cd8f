#!/usr/bin/env python
"""Speed of LMAPS, side by side, as ratios measured within one run (issue 6).

Sections (``--sections``, default all):

a. overhead: LMAPS time / (N × one network call), each image task, K = 100 (Table-4 rows), with the
   closed-form inner solver on and off (the lever's gain);
b. peers: InverseBench's DAPS and DPS (their shipped ``configs/algorithm/{daps,dps}.yaml``) vs LMAPS on the
   same prior, operator and images. The shipped settings are too slow for CPU on a UNet, so per-step costs
   are *measured* at a few steps and *extrapolated* to the shipped step counts (printed separately); runs
   that actually finish (small N; in the full run also the shipped settings on the cheap exact prior) give
   PSNR side by side;
c. batching: per-sample cost at 8 observations (and at num_samples = 8) vs 1;
d. exact linear solver (``inner_solver='cg'``) vs K = 20 / 100 gradient steps: cost per local-MAP solve and
   distance to the exact answer (CG to 1e-10 in float64), gradient descent iterated and in closed form;
e. memory: peak resident memory (``ru_maxrss``) of LMAPS vs DPS (and DAPS) at batch 8, each in its own
   subprocess;
f. (``--compile`` only) ``torch.compile`` of the network: compile time and per-call gain.

Clocks: every timing records wall time and process CPU time. The default table shows CPU-time ratios
(single-threaded, CPU time is what wall time would be on an idle core, and it is far less disturbed by
other processes on a shared machine); ``--clock wall`` shows wall-time ratios instead. Every ratio is the
median over ``--repeats`` interleaved rounds (variants rotate their order each round) of the ratio within
a round.

Priors: the timing prior is the shipped ``faces64`` UNet when its weights are in
``lmaps_plugin/priors/weights/``, else a random-weight UNet of the same architecture
(``build_edm_unet(default_unet_config(1, 64))``: the cost is the same, the samples are not images). PSNR
needs a prior that knows faces: the shipped UNet if present, else the exact Gaussian-mixture prior fitted
on the faces train split (``priors.factories.fitted_gmm``).

Usage::

    export INVERSEBENCH_ROOT=/path/to/InverseBench     # for sections b and e (peers); skipped without it
    python scripts/bench_speed.py --quick               # ~1 min of CPU (1-2 min wall on a busy 2-core box)
    python scripts/bench_speed.py                       # ~7 min of CPU (10-15 min wall on a busy 2-core box)
    python scripts/bench_speed.py --compile --sections a   # adds (f): compiling takes a minute or more
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")   # the peers draw progress bars unconditionally

import torch  # noqa: E402

from lmaps_plugin.local_map import cg_local_map, gd_local_map  # noqa: E402
from lmaps_plugin.app.metrics import psnr  # noqa: E402
from lmaps_plugin.operators import build_operator  # noqa: E402
from lmaps_plugin.schedules import prior_weight  # noqa: E402
from lmaps_plugin.solver import LMAPS, denoise  # noqa: E402

TASKS = ("gaussian_deblur", "motion_deblur", "sr4", "inpaint_box", "inpaint_random")
PEER_TASKS = ("gaussian_deblur", "inpaint_random")
RESOLUTION, CHANNELS, SIGMA_NOISE = 64, 1, 0.05
SHIPPED_PEER_STEPS = {"dps": 1000, "daps": 200}      # checked against the configs when they are read


# ------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Plan:
    """How much to measure: ``--quick`` or the full run."""
    repeats: int
    overhead_steps: int          # (a) N of the timed LMAPS runs
    lmaps_probe_steps: int       # (b) steps timed per method to get a per-step cost
    daps_probe_steps: int
    dps_probe_steps: int
    psnr_images: int             # (b) images of the actually-run comparison
    daps_small: int              # (b) annealing steps of the small DAPS run
    dps_small: int               # (b) steps of the small DPS run
    run_shipped_peers: bool      # (b) run DAPS/DPS at their shipped step counts on the PSNR prior
    batch_steps: int             # (c)
    solves: int                  # (d) local-MAP solves per timing
    solve_sigmas: tuple          # (d) noise levels of the local-MAP problems
    rss_steps: int               # (e)
    rss_batches: tuple           # (e)


QUICK = Plan(repeats=3, overhead_steps=5, lmaps_probe_steps=4, daps_probe_steps=1, dps_probe_steps=5,
             psnr_images=1, daps_small=10, dps_small=50, run_shipped_peers=False, batch_steps=3, solves=3,
             solve_sigmas=(1.0,), rss_steps=2, rss_batches=(8,))
FULL = Plan(repeats=5, overhead_steps=20, lmaps_probe_steps=10, daps_probe_steps=3, dps_probe_steps=20,
            psnr_images=2, daps_small=20, dps_small=200, run_shipped_peers=True, batch_steps=8, solves=5,
            solve_sigmas=(10.0, 1.0, 0.3), rss_steps=3, rss_batches=(1, 8))


# -------------------------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Cost:
    """One timing: wall and process-CPU seconds."""
    wall: float
    cpu: float

    def get(self, clock: str) -> float:
        return self.wall if clock == "wall" else self.cpu


def measure(fn: Callable[[], object]) -> tuple[object, Cost]:
    """Run ``fn`` once; its result and cost."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, Cost(time.perf_counter() - wall, time.process_time() - cpu)


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[Cost]]:
    """``repeats`` rounds; each round runs every variant once, the order rotated by one per round.

    Every variant first runs once untimed (first-call costs: allocator, autograd engine, caches)."""
    names = list(variants)
    for name in names:
        variants[name]()
    samples: dict[str, list[Cost]] = {name: [] for name in names}
    for rnd in range(repeats):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(measure(variants[name])[1])
    return samples


def median_ratio(num: list[Cost], den: list[Cost], clock: str, num_scale: float = 1.0,
                 den_scale: float = 1.0) -> float:
    """Median over rounds of ``(num/num_scale) / (den/den_scale)``, paired within each round."""
    return statistics.median((a.get(clock) / num_scale) / (b.get(clock) / den_scale) for a, b in zip(num, den))


def median_of(samples: list[Cost], clock: str, scale: float = 1.0) -> float:
    return statistics.median(s.get(clock) for s in samples) / scale


# ---------------------------------------------------------------------------------------- the problems
def timing_prior() -> tuple[torch.nn.Module, str]:
    """The shipped faces64 UNet, else a random-weight UNet of its architecture (same cost)."""
    from lmaps_plugin.priors import build_edm_unet, builtin_prior, builtin_prior_names, default_unet_config

    if "faces64" in builtin_prior_names():
        return builtin_prior("faces64").eval().requires_grad_(False), "shipped faces64 UNet (trained)"
    torch.manual_seed(0)
    net = build_edm_unet(default_unet_config(CHANNELS, RESOLUTION)).eval().requires_grad_(False)
    params = sum(p.numel() for p in net.parameters())
    return net, (f"random-weight UNet, faces64 architecture ({params / 1e6:.2f} M params; no trained "
                 "weights shipped in lmaps_plugin/priors/weights/)")


def psnr_prior(timing_net, timing_label: str) -> tuple[torch.nn.Module, str]:
    """The trained UNet when shipped, else the exact GMM prior fitted on the faces train split."""
    if timing_label.startswith("shipped"):
        return timing_net, timing_label
    from lmaps_plugin.priors.factories import fitted_gmm

    return fitted_gmm("faces", RESOLUTION, channels=CHANNELS).requires_grad_(False), \
        "exact Gaussian-mixture prior fitted on the 80 faces train images (fitted_gmm)"


def test_images(count: int) -> torch.Tensor:
    from lmaps_plugin.data import builtin_dataset

    return builtin_dataset("faces", RESOLUTION, num_images=count, channels=CHANNELS).images


def table4_row(task: str) -> dict:
    """``inner_steps, lr, k1, k2`` of ``configs/algorithm/lmaps_<task>.yaml`` (Table 4 of the paper)."""
    from omegaconf import OmegaConf

    method = OmegaConf.load(str(resources.files("lmaps_plugin.configs") / "algorithm" / f"lmaps_{task}.yaml")).method
    return {key: method[key] for key in ("inner_steps", "lr", "k1", "k2")}


def make_operator(task: str):
    return build_operator(task, resolution=RESOLUTION, channels=CHANNELS, sigma_noise=SIGMA_NOISE)


def observe(op, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    clean = op.forward(images)
    gen = torch.Generator().manual_seed(seed)
    return clean + op.sigma_noise * torch.randn(clean.shape, generator=gen, dtype=clean.dtype)


def lmaps(net, op, num_steps: int, task: str, **overrides) -> LMAPS:
    row = {**table4_row(task), **overrides}
    return LMAPS(net, op, num_steps=num_steps, verbose=False, **row)


def has_basis(op, like) -> bool:
    basis = getattr(op, "gram_eigenbasis", None)
    return callable(basis) and basis(like) is not None


# ------------------------------------------------------------------------------------------- the peers
def peer_config(name: str) -> dict:
    """InverseBench's shipped ``configs/algorithm/<name>.yaml`` method kwargs (without ``_target_``)."""
    from omegaconf import OmegaConf

    from lmaps_plugin.inversebench import require_inversebench

    root = require_inversebench(f"bench_speed.py's {name.upper()} comparison")
    method = OmegaConf.to_container(OmegaConf.load(str(root / "configs" / "algorithm" / f"{name}.yaml")).method)
    method.pop("_target_", None)
    return method


def peer_steps(name: str, config: dict) -> int:
    key = "annealing_scheduler_config" if name == "daps" else "diffusion_scheduler_config"
    return int(config[key]["num_steps"])


def with_steps(name: str, config: dict, steps: int) -> dict:
    key = "annealing_scheduler_config" if name == "daps" else "diffusion_scheduler_config"
    return {**config, key: {**config[key], "num_steps": int(steps)}}


def peer(name: str, net, op, config: dict):
    from lmaps_plugin.inversebench.peers import inversebench_algorithm

    return inversebench_algorithm(name, net=net, forward_op=op, **config)


def run_peer(algo, y: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    kwargs = {"verbose": False} if type(algo).__name__ == "DAPS" else {}
    return algo.inference(y, num_samples=num_samples, **kwargs).detach()


def peers_available() -> bool:
    from lmaps_plugin.inversebench import InverseBenchNotFound, find_inversebench

    try:
        return find_inversebench() is not None
    except InverseBenchNotFound:
        return False


# -------------------------------------------------------------------------------------------- printing
def print_table(title: str, header: list[str], rows: list[list], notes: list[str] = ()) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join("-" * w for w in widths)
    print(line)
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print(line)
    for note in notes:
        print(f"  {note}")


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


# ------------------------------------------------------------------------------------------ sections
@dataclass
class Bench:
    plan: Plan
    clock: str
    net: torch.nn.Module
    net_label: str
    results: dict = field(default_factory=dict)

    def net_calls(self, steps: int, batch: int = 1) -> Callable[[], object]:
        """``steps`` network calls as LMAPS makes them (inference mode, one σ each)."""
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(batch, CHANNELS, RESOLUTION, RESOLUTION, generator=gen)
        sigmas = torch.logspace(2, -1, steps).tolist()
        return lambda: [denoise(self.net, x, s) for s in sigmas]


def warm_up(bench: Bench) -> None:
    """First calls allocate and pick kernels; eigenbases are built once per operator."""
    bench.net_calls(2)()
    bench.net_calls(1, batch=8)()
    x = torch.zeros(1, CHANNELS, RESOLUTION, RESOLUTION, requires_grad=True)
    bench.net(x, torch.tensor(1.0)).sum().backward()
    for task in TASKS:
        op = make_operator(task)
        y = observe(op, torch.zeros(1, CHANNELS, RESOLUTION, RESOLUTION))
        gd_local_map(torch.zeros_like(x.detach()), y, op, 0.5, 1.0, 0.01, 1)


def section_overhead(bench: Bench) -> None:
    plan, clock, n = bench.plan, bench.clock, bench.plan.overhead_steps
    image = test_images(1)
    rows, record = [], {}
    for task in TASKS:
        op = make_operator(task)
        y = observe(op, image)
        fast = lmaps(bench.net, op, n, task, gd_closed_form=True)
        slow = lmaps(bench.net, op, n, task, gd_closed_form=False)
        samples = interleaved({"net": bench.net_calls(n), "closed": lambda: fast.inference(y),
                               "iter": lambda: slow.inference(y)}, plan.repeats)
        net_ms = median_of(samples["net"], clock, n) * 1e3
        closed = median_ratio(samples["closed"], samples["net"], clock)
        iterative = median_ratio(samples["iter"], samples["net"], clock)
        gain = median_ratio(samples["iter"], samples["closed"], clock)
        inner = [(median_of(samples[v], clock, n) - median_of(samples["net"], clock, n)) * 1e3
                 for v in ("closed", "iter")]
        basis = "yes" if has_basis(op, y.new_zeros(1, CHANNELS, RESOLUTION, RESOLUTION)) else "no"
        rows.append([task, table4_row(task)["inner_steps"], basis, net_ms, closed, iterative, gain, *inner,
                     median_ratio(samples["closed"], samples["net"], "wall")])
        record[task] = dict(closed=closed, iterative=iterative, gain=gain, net_ms=net_ms)
    bench.results["a_overhead"] = record
    print_table(f"(a) overhead = LMAPS time / (N x one network call), N={n}, batch 1, {clock} clock",
                ["task", "K", "eig basis", "net ms/call", "closed form", "iterated", "gain", "inner ms/step (cf)",
                 "inner ms/step (it)", "closed (wall)"], rows,
                ["closed form: K gradient steps summed in the Gram eigenbasis (gd_closed_form=True, the default);",
                 "iterated: the same K steps one by one (gd_closed_form=False); gain = iterated / closed form.",
                 "Tasks without an eigenbasis (non-separable motion kernel) run the iterations either way.",
                 "The step guard's power iteration (20 Gram products, once per run) is included."])
    section_levers(bench)


class AutogradGradient:
    """Operator proxy whose ``gradient`` goes through autograd (InverseBench's default) instead of the adjoint."""

    def __init__(self, op):
        self._op = op

    def __getattr__(self, name):
        return getattr(self._op, name)

    def gradient(self, pred, observation, return_loss=False):
        from lmaps_plugin.operators.base import Operator

        return Operator.gradient(self._op, pred, observation, return_loss=return_loss)


def section_levers(bench: Bench) -> None:
    """The smaller levers, each as slow-way / fast-way on the same work."""
    plan, clock = bench.plan, bench.clock
    task = "gaussian_deblur"
    op = make_operator(task)
    image = test_images(1)
    y = observe(op, image)
    x_hat = image + 0.1 * torch.randn(image.shape, generator=torch.Generator().manual_seed(2))
    row = table4_row(task)
    x = torch.randn(1, CHANNELS, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor(1.0)

    def plain_call():                  # autograd recording through the network's parameters
        with torch.enable_grad():
            return bench.net(x, sigma)

    def gd(operator):
        return lambda: gd_local_map(x_hat, y, operator, 0.9, row["k2"], row["lr"], 100, closed_form=False)

    bench.net.requires_grad_(True)
    try:
        samples = interleaved({"plain": plain_call, "inference": lambda: denoise(bench.net, x, 1.0),
                               "autograd": gd(AutogradGradient(op)), "adjoint": gd(op)}, plan.repeats)
    finally:
        bench.net.requires_grad_(False)
    rows = [["network call: plain forward (recording a graph) / inference_mode",
             median_ratio(samples["plain"], samples["inference"], clock)],
            [f"{task}, K=100 iterated GD: autograd gradient / adjoint gradient",
             median_ratio(samples["autograd"], samples["adjoint"], clock)]]
    bench.results["a_levers"] = {"inference_mode": rows[0][1], "adjoint_gradient": rows[1][1]}
    print_table(f"(a') smaller levers: cost of the slow way / the fast way ({clock})", ["lever", "ratio"], rows,
                ["the closed form's gain is the 'gain' column of (a); batching is (c)."])


def section_peers(bench: Bench) -> None:
    if not peers_available():
        print("\n(b) peers: skipped (INVERSEBENCH_ROOT is not set or not a checkout)")
        return
    plan, clock = bench.plan, bench.clock
    configs = {name: peer_config(name) for name in ("daps", "dps")}
    shipped = {name: peer_steps(name, cfg) for name, cfg in configs.items()}
    probe = {"lmaps": plan.lmaps_probe_steps, "daps": plan.daps_probe_steps, "dps": plan.dps_probe_steps}
    measured_rows, record = [], {}
    psnr_net, psnr_label = psnr_prior(bench.net, bench.net_label)
    for task in PEER_TASKS:
        op = make_operator(task)
        y = observe(op, test_images(1))
        runs = {"lmaps": lambda: lmaps(bench.net, op, probe["lmaps"], task).inference(y)}
        for name in ("daps", "dps"):
            algo = peer(name, bench.net, op, with_steps(name, configs[name], probe[name]))
            runs[name] = (lambda a: lambda: run_peer(a, y))(algo)
        runs["net"] = bench.net_calls(1)
        samples = interleaved(runs, plan.repeats)
        per_step = {m: median_of(samples[m], clock, probe[m]) for m in ("lmaps", "daps", "dps")}
        net_s = median_of(samples["net"], clock)
        totals = {"lmaps": 200, "daps": shipped["daps"], "dps": shipped["dps"]}
        lmaps_total = [Cost(c.wall * 200 / probe["lmaps"], c.cpu * 200 / probe["lmaps"]) for c in samples["lmaps"]]
        for m, label in (("lmaps", "LMAPS Table 4 (N=200, K=100)"),
                         ("daps", f"DAPS shipped ({shipped['daps']} x ({configs['daps']['diffusion_scheduler_config']['num_steps']}"
                                  f" ODE + {configs['daps']['lgvd_config']['num_steps']} Langevin))"),
                         ("dps", f"DPS shipped ({shipped['dps']} steps, guidance {configs['dps']['guidance_scale']})")):
            total = [Cost(c.wall * totals[m] / probe[m], c.cpu * totals[m] / probe[m]) for c in samples[m]]
            ratio = median_ratio(total, lmaps_total, clock)
            measured_rows.append([task, label, probe[m], per_step[m] * 1e3, per_step[m] / net_s,
                                  per_step[m] * totals[m], ratio])
            record[f"{task}/{m}"] = dict(per_step_s=per_step[m], extrapolated_s=per_step[m] * totals[m],
                                         ratio_to_lmaps=ratio)
        for n in (20, 10):
            measured_rows.append([task, f"LMAPS fast row (N={n}, K=100)", "-", per_step["lmaps"] * 1e3,
                                  per_step["lmaps"] / net_s, per_step["lmaps"] * n, n / 200])
        bench.results.setdefault("b_per_step", {})[task] = dict(per_step, net=net_s)
    bench.results["b_extrapolated"] = record
    print_table(f"(b1) per-step cost on the timing prior, measured; full runs extrapolated ({clock} clock)",
                ["task", "method (settings)", "steps timed", "ms/step", "net calls/step", "extrap. s/image",
                 "x LMAPS-200"], measured_rows,
                [f"timing prior: {bench.net_label}",
                 "extrap. s/image = measured ms/step x the settings' step count (not run at that length).",
                 "x LMAPS-200: that extrapolated time / LMAPS Table-4's (median of per-round ratios)."])
    section_peer_runs(bench, psnr_net, psnr_label, configs, shipped)


def section_peer_runs(bench: Bench, psnr_net, psnr_label: str, configs: dict, shipped: dict) -> None:
    """Runs that actually finish, with PSNR; the UNet cost of each from the measured per-step costs."""
    plan, clock = bench.plan, bench.clock
    images = test_images(plan.psnr_images)
    methods = [("LMAPS N=200, K=100 (Table 4)", "lmaps", 200), ("LMAPS N=20, K=100", "lmaps", 20),
               ("LMAPS N=10, K=100", "lmaps", 10), (f"DAPS {plan.daps_small} annealing", "daps", plan.daps_small),
               (f"DPS {plan.dps_small} steps", "dps", plan.dps_small)]
    if plan.run_shipped_peers:
        methods += [(f"DAPS shipped ({shipped['daps']})", "daps", shipped["daps"]),
                    (f"DPS shipped ({shipped['dps']})", "dps", shipped["dps"])]
    rows, record = [], {}
    for task in PEER_TASKS:
        op = make_operator(task)
        per_step = bench.results["b_per_step"][task]
        lmaps_200 = per_step["lmaps"] * 200
        for label, kind, steps in methods:
            scores, costs = [], []
            for i in range(images.shape[0]):
                target = images[i:i + 1]
                y = observe(op, target, seed=100 + i)
                torch.manual_seed(1000 + i)
                if kind == "lmaps":
                    out, cost = measure(lambda: lmaps(psnr_net, op, steps, task).inference(y))
                else:
                    algo = peer(kind, psnr_net, op, with_steps(kind, configs[kind], steps))
                    out, cost = measure(lambda: run_peer(algo, y))
                scores.append(float(psnr(out, target).mean()))
                costs.append(cost)
            finite = [s for s in scores if s == s]
            mean_psnr = statistics.fmean(finite) if finite else float("nan")
            unet_s = per_step[kind] * steps
            rows.append([task, label, mean_psnr, min(scores), median_of(costs, clock), unet_s, unet_s / lmaps_200])
            record[f"{task}/{label}"] = dict(psnr=mean_psnr, psnr_all=scores, run_s=median_of(costs, clock),
                                             unet_s_est=unet_s)
    bench.results["b_runs"] = record
    print_table(f"(b2) actually run on {images.shape[0]} test face(s) (PSNR, dB, one sample each)",
                ["task", "method", "PSNR mean", "PSNR min", f"run s/image ({clock})", "UNet s/image (est.)",
                 "x LMAPS-200 (est.)"], rows,
                [f"PSNR prior (the runs): {psnr_label}",
                 "UNet s/image (est.): that method's measured per-step cost on the timing prior (b1) x its steps.",
                 "Peers at InverseBench's shipped settings for their other keys (guidance 10, lr 1e-4, tau 0.01, ...)."])


def section_batching(bench: Bench) -> None:
    plan, clock, n = bench.plan, bench.clock, bench.plan.batch_steps
    task = "gaussian_deblur"
    op = make_operator(task)
    images = test_images(8)
    y1, y8 = observe(op, images[:1]), observe(op, images)
    rows, record = [], {}
    for closed_form in (True, False):
        solver = lmaps(bench.net, op, n, task, gd_closed_form=closed_form)
        variants = {"one": lambda: solver.inference(y1), "obs8": lambda: solver.inference(y8),
                    "samples8": lambda: solver.inference(y1, num_samples=8)}
        if closed_form:
            variants.update(net1=bench.net_calls(n), net8=bench.net_calls(n, batch=8))
        samples = interleaved(variants, plan.repeats)
        tag = "closed form" if closed_form else "iterated"
        for key, label in (("obs8", "8 observations"), ("samples8", "1 observation x num_samples 8")):
            ratio = median_ratio(samples[key], samples["one"], clock, num_scale=8)
            rows.append([f"LMAPS ({tag}), {label}", median_of(samples["one"], clock, n) * 1e3,
                         median_of(samples[key], clock, 8 * n) * 1e3, ratio])
            record[f"{tag}/{key}"] = ratio
        if closed_form:
            ratio = median_ratio(samples["net8"], samples["net1"], clock, num_scale=8)
            rows.append(["network alone, batch 8 (the floor)", median_of(samples["net1"], clock, n) * 1e3,
                         median_of(samples["net8"], clock, 8 * n) * 1e3, ratio])
            record["net8"] = ratio
    bench.results["c_batching"] = record
    print_table(f"(c) batching: per-sample cost at batch 8 / cost at batch 1 ({task}, N={n}, K=100, {clock})",
                ["run", "ms/step at batch 1", "ms/step/sample at 8", "per-sample ratio"], rows,
                ["target <= 0.5; one thread (torch.set_num_threads(1)), so batching buys only what the network's",
                 "own per-call overhead and better BLAS blocking give."])


def section_exact_solver(bench: Bench) -> None:
    plan, clock = bench.plan, bench.clock
    task = "gaussian_deblur"
    op = make_operator(task)
    row = table4_row(task)
    image = test_images(1)
    gen = torch.Generator().manual_seed(3)
    x_hat = image + 0.1 * torch.randn(image.shape, generator=gen)
    y = observe(op, image)
    one_net = bench.net_calls(1)
    rows, record = [], {}
    for sigma in plan.solve_sigmas:
        r = prior_weight(sigma, row["k1"])
        exact, _, _ = cg_local_map(x_hat.double(), y.double(), op, r, row["k2"], max_iter=5000, tol=1e-10)
        solvers = {
            "cg iterated (tol 1e-6, <=100 it.)": lambda: cg_local_map(
                x_hat, y, op, r, row["k2"], max_iter=100, tol=1e-6, closed_form=False)[0],
            "cg iterated (tol 1e-10, <=5000 it.)": lambda: cg_local_map(
                x_hat, y, op, r, row["k2"], max_iter=5000, tol=1e-10, closed_form=False)[0],
            "cg closed form (eigenbasis, exact)": lambda: cg_local_map(x_hat, y, op, r, row["k2"])[0],
        }
        for k in (20, 100):
            for closed_form in (False, True):
                name = f"gd K={k} ({'closed form' if closed_form else 'iterated'})"
                solvers[name] = (lambda k, cf: lambda: gd_local_map(x_hat, y, op, r, row["k2"], row["lr"], k,
                                                                    closed_form=cf)[0])(k, closed_form)
        loops = {name: (lambda f: lambda: [f() for _ in range(plan.solves)])(f) for name, f in solvers.items()}
        loops["net"] = one_net
        samples = interleaved(loops, plan.repeats)
        for name, solve in solvers.items():
            out = solve().double()
            distance = float((out - exact).norm() / exact.norm())
            ms = median_of(samples[name], clock, plan.solves) * 1e3
            calls = median_ratio(samples[name], samples["net"], clock, num_scale=plan.solves)
            rows.append([f"{sigma:g}", f"{r:.4f}", name, ms, calls, distance])
            record[f"sigma={sigma}/{name}"] = dict(ms=ms, net_calls=calls, distance=distance)
    bench.results["d_exact_solver"] = record
    print_table(f"(d) one local-MAP solve, {task} 64x64 (Table-4 row: lr={row['lr']}, k2={row['k2']}, "
                f"k1={row['k1']}), float32, {clock}",
                ["sigma", "r", "solver", "ms/solve", "in net calls", "rel. distance to exact"], rows,
                ["exact = CG on the normal equations to 1e-10 relative residual in float64.",
                 "LMAPS inner_solver='cg': the closed-form row by default, the first row with gd_closed_form=False",
                 "(cg_tol=1e-6, max_iter=inner_steps=100). inner_solver='gd' (the paper): the gd rows."])


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


def section_memory(bench: Bench, steps: int, batches: tuple[int, ...]) -> None:
    methods = ["lmaps", "lmaps_iter"] + (["daps", "dps"] if peers_available() else [])
    peaks = {}
    for batch in batches:
        for method in methods:
            cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", method, "--rss-steps", str(steps),
                   "--rss-batch", str(batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"\n(e) {method} at batch {batch}: child failed:\n{done.stderr[-2000:]}")
                continue
            peaks[(method, batch)] = json.loads(done.stdout.strip().splitlines()[-1])
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
                 "clear, only sees the import-time peak at this size; it is kept in --json). Otherwise peak = ru_maxrss.",
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
        from lmaps_plugin.inversebench import import_upstream

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


def section_compile(bench: Bench) -> None:
    plan, clock, n = bench.plan, bench.clock, bench.plan.overhead_steps
    task = "gaussian_deblur"
    op = make_operator(task)
    y = observe(op, test_images(1))
    compiled = lmaps(bench.net, op, n, task, compile_net=True)
    _, compile_cost = measure(lambda: compiled.inference(y))          # compiles on first use
    eager = lmaps(bench.net, op, n, task)
    samples = interleaved({"eager": lambda: eager.inference(y), "compiled": lambda: compiled.inference(y)},
                          plan.repeats)
    ratio = median_ratio(samples["compiled"], samples["eager"], clock)
    saved = median_of(samples["eager"], clock, n) - median_of(samples["compiled"], clock, n)
    breakeven = compile_cost.wall / saved if saved > 0 else float("inf")
    bench.results["f_compile"] = dict(ratio=ratio, compile_wall_s=compile_cost.wall, compile_cpu_s=compile_cost.cpu,
                                      saved_ms_per_step=saved * 1e3, breakeven_steps=breakeven)
    print_table(f"(f) torch.compile of the network (LMAPS compile_net=True), {task}, N={n}, {clock}",
                ["first run wall s", "first run cpu s", "compiled / eager", "saved ms/step", "break-even steps"],
                [[compile_cost.wall, compile_cost.cpu, ratio, saved * 1e3, breakeven]],
                ["first run: compiling plus N steps; inductor compiles in worker processes (not in this process's CPU",
                 "time) and caches kernels under /tmp/torchinductor_$USER, so a first-ever compile is several times",
                 "slower than a cached one. Break-even: first-run wall time / saved time per step. A new batch size",
                 "recompiles."])


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1-2 minute run (fewer steps and repeats)")
    parser.add_argument("--sections", default="abcde",
                        help="letters of the sections to run (default 'abcde'; 'f' = torch.compile, as --compile)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3 quick, 5 full)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="clock of the ratios shown")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the network (f)")
    parser.add_argument("--no-shipped-peers", action="store_true",
                        help="full run: do not run DAPS/DPS at their shipped step counts in (b2) (saves ~4 min)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rss-steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--rss-batch", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not set(args.sections) <= set("abcdef"):
        parser.error(f"--sections must be letters from 'abcdef', got {args.sections!r}")
    if args.compile and "f" not in args.sections:
        args.sections += "f"
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def machine_line(threads: int) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__}, {threads} thread(s); "
            f"load average {tuple(round(v, 2) for v in load)}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.rss_steps, args.rss_batch)
        return 0
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    if args.repeats is not None:
        plan = Plan(**{**plan.__dict__, "repeats": args.repeats})
    if args.no_shipped_peers:
        plan = Plan(**{**plan.__dict__, "run_shipped_peers": False})
    net, label = timing_prior()
    bench = Bench(plan=plan, clock=args.clock, net=net, net_label=label)
    print(machine_line(args.threads))
    print(f"timing prior: {label}; images: faces test split, {RESOLUTION}x{RESOLUTION}x{CHANNELS}; "
          f"noise sigma {SIGMA_NOISE}; {plan.repeats} interleaved rounds, medians; "
          f"{'quick' if args.quick else 'full'} plan")
    started = time.perf_counter()
    warm_up(bench)
    sections = {"a": section_overhead, "b": section_peers, "c": section_batching, "d": section_exact_solver,
                "e": lambda b: section_memory(b, plan.rss_steps, plan.rss_batches), "f": section_compile}
    for key in "abcdef":
        if key in args.sections:
            sections[key](bench)
            sys.stdout.flush()
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_line(args.threads), "prior": label, "plan": plan.__dict__,
                       "clock": args.clock, "results": bench.results}, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
