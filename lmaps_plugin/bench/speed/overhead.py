"""Section (a): LMAPS' overhead over its N network calls, per operator, for the Table-4 row and lmaps_auto;
and the before -> after table against the targets."""
from __future__ import annotations

import tempfile
import time
import warnings
from typing import Callable

import torch

from lmaps_plugin.algorithm import LMAPS
from lmaps_plugin.sampler import denoise

from .cases import SCATTER, OverheadCase, overhead_cases, solver_has_auto
from .problems import Bench, accepted, algorithm_kwargs
from .table import print_table
from .timing import Plan, interleaved, median_of, median_ratio, ratio_quartiles

#: overhead targets (benchmarks, not timed tests): 1.3x for motion deblur and the MRI operator,
#: 1.15x where a closed form exists (masks, super-resolution, separable blur)
TARGETS = {"motion_deblur": 1.3, "mri-ours": 1.3, "mri-stock": 1.3,
           **{task: 1.15 for task in ("sr4", "gaussian_deblur", "inpaint_box", "inpaint_random")}}


def variant_kwargs(case: OverheadCase, variant: str) -> dict | None:
    """LMAPS keywords of a variant: ``'table4'`` (the row, gradient descent) or ``'auto'`` (lmaps_auto; in code
    without it, the row with ``inner_solver='cg'`` on linear operators, None elsewhere)."""
    row = algorithm_kwargs(case.row, case.steps)
    if variant == "table4":
        return row
    if solver_has_auto():
        return algorithm_kwargs("lmaps_auto", case.steps)
    return {**row, "inner_solver": "cg"} if case.linear else None


def lmaps_run(case: OverheadCase, kwargs: dict) -> Callable[[], dict]:
    """One LMAPS inference of the case (the same noise every call); returns the run's stats when the code has them."""
    solver = LMAPS(case.net, case.op, verbose=False, **accepted(kwargs))

    def run() -> dict:
        solver.inference(case.y, generator=torch.Generator().manual_seed(0), dtype=case.dtype)
        return dict(getattr(solver, "last_run_stats", {}) or {})

    return run


def network_run(case: OverheadCase, steps: int) -> Callable[[], object]:
    """The denoiser alone, called as LMAPS calls it: N times, at the run's N noise levels, inference mode."""
    solver = LMAPS(case.net, case.op, num_steps=steps, verbose=False)
    sigmas = [float(s) for s in solver.sigmas()[:steps]]
    gen = torch.Generator().manual_seed(1)
    inputs = [s * torch.randn((1, *solver.sample_shape), generator=gen, dtype=case.dtype) for s in sigmas]
    return lambda: [denoise(case.net, x, s) for x, s in zip(inputs, sigmas)]


def solve_label(case: OverheadCase, kwargs: dict, stats: dict) -> str:
    """How the local MAP was solved: from the run's stats (this code) or from the settings (older code)."""
    if stats.get("exact_solve"):
        iterations = stats.get("cg_iterations_mean", 0.0)
        if not iterations:
            return "exact: eigenbasis"
        above = stats.get("cg_steps_above_tol", 0)
        return f"exact: CG {iterations:.1f} it/step" + (f" ({above} steps at the cap)" if above else "")
    if kwargs.get("inner_solver") == "cg":
        return "exact: eigenbasis" if case.closed_form() else f"CG <= {kwargs['inner_steps']} it, tol 1e-6, cold"
    step = "eta=1/L" if kwargs.get("lr") is None else f"eta={kwargs['lr']:g}"
    grad = "" if callable(getattr(case.op, "adjoint", None)) or not case.name.startswith(("scatter", "mri")) \
        else ", autograd"
    form = "closed form" if case.closed_form() else "iterated"
    return f"GD K={kwargs['inner_steps']} {form} ({step}{grad})"


def _timed_rounds(case: OverheadCase, variants: dict, plan: Plan) -> tuple[dict, dict]:
    """Interleaved rounds of the network alone and each variant; the samples and each variant's last stats."""
    runs = {"net": network_run(case, case.steps)}
    warm = {"net": network_run(case, 1)}
    for name, kwargs in variants.items():
        if kwargs is not None:
            runs[name] = lmaps_run(case, kwargs)
            warm[name] = lmaps_run(case, {**kwargs, "num_steps": min(2, case.steps)})
    stats: dict[str, dict] = {}

    def keep(name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def call():
            out = fn()
            if isinstance(out, dict):
                stats[name] = out
            return out
        return call

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = interleaved({name: keep(name, fn) for name, fn in runs.items()}, plan.repeats, warm_ups=warm,
                              budget_s=plan.case_budget_s, max_rounds=plan.max_rounds)
    return samples, stats


def measure_case(case: OverheadCase, plan: Plan) -> dict:
    """Interleaved rounds of the network alone and each variant; paired ratios, medians."""
    variants = {v: variant_kwargs(case, v) for v in ("table4", "auto")}
    samples, stats = _timed_rounds(case, variants, plan)
    net_wall = median_of(samples["net"], "wall")
    record = {"steps": case.steps, "net_ms_per_call": net_wall / case.steps * 1e3, "note": case.note,
              "rounds": len(samples["net"]), "variants": {}}
    for name, kwargs in variants.items():
        if kwargs is None:
            record["variants"][name] = None
            continue
        lmaps_wall = median_of(samples[name], "wall")
        record["variants"][name] = {
            "ratio_wall": median_ratio(samples[name], samples["net"], "wall"),
            "ratio_cpu": median_ratio(samples[name], samples["net"], "cpu"),
            "ratio_wall_quartiles": ratio_quartiles(samples[name], samples["net"], "wall"),
            "lmaps_s": lmaps_wall, "inner_ms_per_step": (lmaps_wall - net_wall) / case.steps * 1e3,
            "solve": solve_label(case, kwargs, stats.get(name, {})), "stats": stats.get(name, {}),
            "config": "lmaps_auto" if solver_has_auto() and name == "auto" else
            case.row + (" + inner_solver=cg" if name == "auto" else "")}
    return record


def section_overhead(bench: Bench) -> None:
    """(a): every case of ``bench.cases`` measured, printed as one table; results under ``a_overhead``."""
    names = bench.cases
    with tempfile.TemporaryDirectory(prefix="lmaps-bench-gram-") as scratch:
        cases = overhead_cases(bench, names, bench.gram_cache or scratch)
        record = {}
        for case in cases:
            started = time.perf_counter()
            record[case.name] = measure_case(case, bench.plan)
            print(f"  (a) {case.name}: " + ", ".join(
                f"{v['config']} {v['ratio_wall']:.2f}" for v in record[case.name]["variants"].values() if v)
                + f" (N={case.steps}, {record[case.name]['rounds']} rounds, {time.perf_counter() - started:.0f} s)",
                flush=True)
        if "mri-stock" in record and "mri-ours" in names and "mri-ours" not in record:
            record["mri-ours"] = {**record["mri-stock"], "note": "no adapter in this code: the stock class (mri-stock)"}
    bench.results["a_overhead"] = record
    bench.results["a_code"] = "this round (lmaps_auto)" if solver_has_auto() else "before lmaps_auto"
    print_overhead(record, bench.results.get("a_gram_factorisation"))


def print_overhead(record: dict, factorisation: dict | None) -> None:
    rows = []
    for name, case in record.items():
        for variant, v in case["variants"].items():
            if v is None:
                rows.append([name, variant, "n/a (non-linear: no exact solve in this code)", case["steps"],
                             case["rounds"], case["net_ms_per_call"], "-", "-", "-", "-", "-"])
                continue
            q1, q3 = v["ratio_wall_quartiles"]
            rows.append([name, v["config"], v["solve"], case["steps"], case["rounds"], case["net_ms_per_call"],
                         v["lmaps_s"], v["inner_ms_per_step"], v["ratio_wall"], f"{q1:.3g}-{q3:.3g}", v["ratio_cpu"]])
    print_table("(a) overhead = LMAPS wall time / wall time of its N network calls alone (1.0 = the inner solve is "
                "free), batch 1, medians of paired rounds",
                ["operator", "config", "local MAP solve", "N", "rounds", "net ms/call", "LMAPS s", "inner ms/step",
                 "overhead (wall)", "wall q1-q3", "overhead (cpu)"], rows,
                ["network alone: the same prior at the same batch, called N times at the run's noise levels",
                 "(inference mode); MRI: the faces64 UNet on the real and imaginary channels (batch 2 per call).",
                 "inner ms/step = (LMAPS - network alone) / N: the per-step cost of the solve, its set-up included."]
                + [f"{name}: {case['note']}" for name, case in record.items() if case["note"]])
    if factorisation:
        f = factorisation
        print(f"\n(a) scattering Gram factorisation ({f['pixels']} pixels, NR = {SCATTER['numRec']}): "
              f"{f['source']} in {f['factorise_wall_s']:.1f} s wall / {f['factorise_cpu_s']:.1f} s cpu (rank "
              f"{f['rank']}); a fresh operator reads the {f['cache_mb']:.0f} MB cache back in {f['load_s']:.2f} s "
              f"({f['load_source']}); construction {f['construct_s']:.1f} s")


def target_verdict(name: str, variants: dict) -> str:
    """Whether the target for ``name`` is met, by lmaps_auto (the exact solve) and by the Table-4 row."""
    target = TARGETS.get(name)
    if target is None:
        return "-"
    parts = [f"{label} {'met' if v['ratio_wall'] <= target else 'not met'} ({v['ratio_wall']:.2f})"
             for label, v in (("lmaps_auto", variants.get("auto")), ("Table-4 row", variants.get("table4"))) if v]
    return "; ".join(parts)


def before_after_rows(before: dict, after: dict) -> list[list[str]]:
    """One row per operator: the Table-4 row and lmaps_auto (before: the row with inner_solver='cg'),
    before -> after."""
    def cell(case: dict | None, variant: str, missing: str) -> str:
        if case is None:
            return "not run"
        v = case["variants"].get(variant)
        return f"{v['ratio_wall']:.2f} ({v['solve']}, N={case['steps']})" if v else missing

    rows = []
    for name, now in after.items():
        then = before.get(name)
        target = TARGETS.get(name)
        rows.append([name, cell(then, "table4", "n/a"), cell(now, "table4", "n/a"),
                     cell(then, "auto", "n/a (non-linear: no exact solve)"), cell(now, "auto", "n/a"),
                     "-" if target is None else f"<= {target:g}", target_verdict(name, now["variants"])])
    return rows


def print_before_after(before: dict, after: dict) -> None:
    header = ["operator", "Table-4 row: before", "Table-4 row: after", "auto: before (row + inner_solver=cg)",
              "auto: after (lmaps_auto)", "target", "met?"]
    print("\n(a) before -> after: overhead over N network calls (wall; the local MAP solve and N in brackets)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in before_after_rows(before, after):
        print("| " + " | ".join(row) + " |")
