"""Sections (a') smaller levers, (b) InverseBench's peers, (c) batching, (d) the exact linear solver and
(f) ``torch.compile``: each measures, prints its table and files its numbers under ``bench.results``."""
from __future__ import annotations

import statistics

import torch

from lmaps_plugin.algorithm import LMAPS
from lmaps_plugin.evaluation.metrics import psnr
from lmaps_plugin.local_map import cg_local_map, gd_local_map
from lmaps_plugin.operators.base import Operator
from lmaps_plugin.sampler import denoise
from lmaps_plugin.schedules import prior_weight

from .problems import (CHANNELS, PEER_TASKS, RESOLUTION, Bench, accepted, algorithm_kwargs, lmaps, make_operator,
                       observe, peer, peer_config, peer_steps, peers_available, psnr_prior, run_peer, table4_row,
                       test_images, with_steps)
from .table import print_table
from .timing import Cost, interleaved, measure, median_of, median_ratio


# ---------------------------------------------------------------------------------- (a') smaller levers
class AutogradGradient:
    """Operator proxy whose ``gradient`` goes through autograd (InverseBench's default) instead of the adjoint."""

    def __init__(self, op):
        self._op = op

    def __getattr__(self, name):
        return getattr(self._op, name)

    def gradient(self, pred, observation, return_loss=False):
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


# ------------------------------------------------------------------------------------------ (b) peers
def section_peers(bench: Bench) -> None:
    """(b1): per-step costs of LMAPS, DAPS and DPS measured, full runs extrapolated; then (b2)."""
    if not peers_available():
        print("\n(b) peers: skipped (INVERSEBENCH_ROOT is not set or not a checkout)")
        return
    plan, clock = bench.plan, bench.clock
    configs = {name: peer_config(name) for name in ("daps", "dps")}
    shipped = {name: peer_steps(name, cfg) for name, cfg in configs.items()}
    probe = {"lmaps": plan.lmaps_probe_steps, "daps": plan.daps_probe_steps, "dps": plan.dps_probe_steps}
    daps_inner = (configs["daps"]["diffusion_scheduler_config"]["num_steps"],
                  configs["daps"]["lgvd_config"]["num_steps"])
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
                         ("daps", f"DAPS shipped ({shipped['daps']} x ({daps_inner[0]} ODE + {daps_inner[1]} "
                                  "Langevin))"),
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
                 "Peers at InverseBench's shipped settings for their other keys (guidance 10, lr 1e-4, tau 0.01, "
                 "...)."])


# --------------------------------------------------------------------------------------- (c) batching
def ensemble_kwargs(steps: int) -> dict:
    """The algorithm config ``lmaps_ensemble``: lmaps_auto's method plus its ensemble_spread."""
    return accepted(algorithm_kwargs("lmaps_ensemble", steps))


def _batching_variants(bench: Bench, op, task: str, variant: str, y1, y8) -> dict:
    """The runs of one solver variant: one observation, 8 samples of it, 8 observations, the network alone."""
    n = bench.plan.batch_steps
    if variant == "lmaps_ensemble":      # one sample: the same run without the spread (it needs M >= 2)
        solver = LMAPS(bench.net, op, verbose=False, **{**ensemble_kwargs(n), "num_steps": n})
        single = LMAPS(bench.net, op, verbose=False, **{**ensemble_kwargs(n), "num_steps": n, "ensemble_spread": 1.0})
    else:
        solver = single = lmaps(bench.net, op, n, task, gd_closed_form=variant == "closed form")
    variants = {"one": lambda: single.inference(y1), "samples8": lambda: solver.inference(y1, num_samples=8)}
    if variant != "lmaps_ensemble":
        variants["obs8"] = lambda: solver.inference(y8)
    if variant == "closed form":
        variants.update(net1=bench.net_calls(n), net8=bench.net_calls(n, batch=8))
    return variants


def section_batching(bench: Bench) -> None:
    """(c): per-sample cost at batch 8 over the cost at batch 1."""
    plan, clock, n = bench.plan, bench.clock, bench.plan.batch_steps
    task = "gaussian_deblur"
    op = make_operator(task)
    images = test_images(8)
    y1, y8 = observe(op, images[:1]), observe(op, images)
    rows, record = [], {}
    for variant in ("closed form", "iterated", "lmaps_ensemble"):
        samples = interleaved(_batching_variants(bench, op, task, variant, y1, y8), plan.repeats)
        tag = variant if variant == "lmaps_ensemble" else f"Table-4 row, {variant}"
        for key, label in (("obs8", "8 observations"), ("samples8", "1 observation x num_samples 8")):
            if key not in samples:
                continue
            ratio = median_ratio(samples[key], samples["one"], clock, num_scale=8)
            rows.append([f"LMAPS ({tag}), {label}", median_of(samples["one"], clock, n) * 1e3,
                         median_of(samples[key], clock, 8 * n) * 1e3, ratio])
            record[f"{variant}/{key}"] = ratio
        if variant == "closed form":
            ratio = median_ratio(samples["net8"], samples["net1"], clock, num_scale=8)
            rows.append(["network alone, batch 8 (the floor)", median_of(samples["net1"], clock, n) * 1e3,
                         median_of(samples["net8"], clock, 8 * n) * 1e3, ratio])
            record["net8"] = ratio
    bench.results["c_batching"] = record
    print_table(f"(c) batching: per-sample cost at batch 8 / cost at batch 1 ({task}, N={n}, {clock})",
                ["run", "ms/step at batch 1", "ms/step/sample at 8", "per-sample ratio"], rows,
                ["targets: <= 0.5, <= 0.55 at num_samples = 8 (ensembles); one thread",
                 "(torch.set_num_threads(1)), so batching buys only what the network's own per-call overhead and",
                 "better BLAS blocking give. The Table-4 rows run K=100 gradient steps."])


# --------------------------------------------------------------------------------- (d) exact solver
def _local_map_solvers(x_hat, y, op, r: float, row: dict) -> dict:
    """The local-MAP solvers compared in (d), each a call returning its answer."""
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
    return solvers


def section_exact_solver(bench: Bench) -> None:
    """(d): cost of one local-MAP solve and its distance to the exact answer, per solver."""
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
        solvers = _local_map_solvers(x_hat, y, op, r, row)
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


# ------------------------------------------------------------------------------------------ (f) compile
def section_compile(bench: Bench) -> None:
    """(f): ``torch.compile`` of the network: the first run's cost, the per-step gain, the break-even."""
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
