"""The budget stages of ``lmaps-bench compare``: ``--match`` (every method at the most expensive tuned peer's cost
per image; LMAPS spends it as more steps N and as an ensemble mean of M samples, measured and scaled again when off
the budget) and ``--pareto`` (every method at several budgets). The rules are :mod:`lmaps_plugin.bench.budget`'s,
the frontier and figures :mod:`lmaps_plugin.bench.pareto`'s; the variants run through
:func:`lmaps_plugin.bench.compare_runs.launch` into ``<exp-dir>/budget/``.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import OmegaConf

from ..app.compose import compose_app
from ..io import atomic_write_text
from . import budget as B
from . import pareto as P
from .aggregate import cell, compared_samples
from .compare_runs import CompareRequest, current_entries, launch
from .sweep import read_manifest
from .tune.outputs import TuneResult
from .tune.request import TuneError, TuneRequest

LMAPS_TARGET = "lmaps_plugin.LMAPS"


MATCHED_MD, MATCHED_CSV, PARETO_CSV = "matched.md", "matched.csv", "pareto.csv"


def existing(folder: Path) -> Path | None:
    """``folder`` when it exists (a search path Hydra can read), else None."""
    return folder if folder.is_dir() else None


@dataclass
class Method:
    """A tuned config of a task as the budget stages see it."""
    algorithm: str           # the --algorithms entry
    option: str              # its tuned config option
    name: str                # its algorithm name (records, tables)
    lmaps: bool
    steps_key: str
    steps: int
    prior: str


def describe_methods(spec: CompareRequest, template: TuneRequest, task: str, options: dict[str, str]) -> list[Method]:
    """The composed configs of ``{algorithm: option}``: names, whether LMAPS (``method._target_``), step key and
    count (:func:`budget.step_key`)."""
    base = [f"problem={task}", *([f"prior={template.prior}"] if template.prior else []), *template.overrides]
    out = []
    for algorithm, option in options.items():
        cfg = compose_app([*base, f"algorithm={option}"], config_dir=existing(spec.config_dir))
        method = OmegaConf.to_container(cfg.algorithm.method, resolve=True)
        try:
            key = B.step_key(method)
        except B.BudgetError as exc:
            raise TuneError(f"{option}: {exc}") from None
        out.append(Method(algorithm, option, str(cfg.algorithm.name), method.get("_target_") == LMAPS_TARGET, key,
                          int(B.get_key(method, key)), str(cfg.prior.name)))
    return out


def check_match(spec: CompareRequest, template: TuneRequest) -> None:
    """``--match`` needs at least one LMAPS method (it spends the budget) and one peer (they set it), before any
    work (:class:`TuneError`)."""
    if spec.match is None:
        return
    if spec.match not in B.MATCH_KINDS:
        raise TuneError(f"--match {spec.match!r}: one of {', '.join(B.MATCH_KINDS)}")
    task = spec.tasks[0]
    options = {a: (f"{spec.configs}/{task}/{a}" if spec.configs else a) for a in spec.algorithms}
    methods = describe_methods(spec, template, task, options)
    if not any(m.lmaps for m in methods):
        raise TuneError(f"--match {spec.match}: no LMAPS method in --algorithms ({', '.join(spec.algorithms)}); "
                        f"the budget is LMAPS's to spend")
    if all(m.lmaps for m in methods):
        raise TuneError(f"--match {spec.match}: no peer in --algorithms ({', '.join(spec.algorithms)}); the budget "
                        f"is the most expensive tuned peer's cost per image, so name at least one (e.g. ib_dps)")


def write_variant(spec: CompareRequest, template: TuneRequest, task: str, method: Method, steps: int,
                  suffix: str) -> str:
    """A copy of ``method``'s tuned config named ``<name>-<suffix>`` with ``steps`` steps, written under this
    comparison's config folder; returns its algorithm option. Its ``budget:`` block names the config it copies
    and the steps, the same whichever stage writes it (``--match`` and ``--pareto`` share a variant of one name)."""
    base = [f"problem={task}", *([f"prior={template.prior}"] if template.prior else []), *template.overrides]
    cfg = compose_app([*base, f"algorithm={method.option}"], config_dir=existing(spec.config_dir))
    algo = OmegaConf.to_container(cfg.algorithm, resolve=True)
    node = algo["method"]
    *parents, last = method.steps_key.split(".")
    for part in parents:
        node = node[part]
    node[last] = int(steps)
    algo["name"] = f"{method.name}-{suffix}"
    algo["budget"] = {"from": method.option, "steps_key": method.steps_key, "tuned_steps": method.steps,
                      "steps": int(steps)}
    option = f"budget/{method.prior}/{task}/{method.algorithm}-{suffix}"
    path = spec.config_dir / "algorithm" / f"{option}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, f"# {method.name} at {steps} steps (lmaps-bench compare's budget stage)\n"
                      + yaml.safe_dump(algo, sort_keys=False))
    return option


@dataclass
class Variant:
    """One run of a method at one budget."""
    method: Method
    option: str
    steps: int
    samples: int = 1
    role: str = "tuned"      # tuned | peer | more steps | ensemble mean | scaled
    suffix: str = ""         # of the variant's name (write_variant); "" for the tuned config itself

    @property
    def name(self) -> str:
        return f"{self.method.name}-{self.suffix}" if self.suffix else self.method.name


def run_variants(spec: CompareRequest, template: TuneRequest, task: str, variants: list[Variant]) -> tuple[int, list[dict]]:
    """The variants that are not the tuned configs themselves, one multirun per ensemble size, into
    ``spec.budget_dir``."""
    status, runs = 0, []
    by_size: dict[int, list[str]] = {}
    for v in variants:
        if v.suffix:
            by_size.setdefault(v.samples, [])
            if v.option not in by_size[v.samples]:
                by_size[v.samples].append(v.option)
    for size, options in sorted(by_size.items()):
        code, found = launch(spec, template, task, options, spec.budget_dir, [f"num_samples={size}"])
        status, runs = status or code, runs + found
    return status, runs


def variant_entries(spec: CompareRequest, test_runs: list[dict], budget_runs: list[dict]) -> dict[tuple, object]:
    """``{(task, algorithm name, num_samples): Entry}`` of the tuned test runs and the budget runs."""
    out = {}
    for folder, runs in ((spec.test_dir, test_runs), (spec.budget_dir, budget_runs)):
        if runs:
            for e in current_entries(spec, runs, read_manifest(folder), folder):
                out[(e.task, e.algorithm, e.num_samples)] = e
    return out


def variant_stats(entry, samples: set, variant: Variant) -> dict:
    """Mean ± std PSNR/SSIM (of the ensemble mean for M >= 2) and the measured cost over ``samples``."""
    s = entry.summary(samples)
    psnr, ssim = ("ensemble_psnr", "ensemble_ssim") if variant.samples >= 2 else ("psnr", "ssim")
    records = [entry.samples[k] for k in samples if k in entry.samples]
    cost = B.measured_cost(records) if records else B.Cost(math.nan, math.nan, 0)
    return {"psnr": s.get(psnr), "ssim": s.get(ssim), "single_psnr": s.get("psnr"), "cost": cost,
            "n": len(records)}


def matched_variants(spec: CompareRequest, template: TuneRequest, task: str, methods: list[Method],
                     entries: dict) -> tuple[list[Variant], float, str]:
    """The matched runs of a task: each peer's tuned run; each LMAPS method's tuned run, (a) ``N'`` steps and (b)
    an ensemble of ``M`` (:mod:`.budget`); the budget and the peer that sets it."""
    costs = {}
    for m in methods:
        entry = entries.get((task, m.name, 1))
        if entry is None or not entry.samples:
            raise B.BudgetError(f"{task} / {m.name}: no finished test run to measure")
        costs[m.name] = B.measured_cost(entry.samples.values())
    value, setter = B.budget({m.name: costs[m.name] for m in methods if not m.lmaps}, spec.match)
    out = [Variant(m, m.option, m.steps, 1, "peer") for m in methods if not m.lmaps]
    for m in (m for m in methods if m.lmaps):
        c = costs[m.name].of(spec.match)
        steps = B.scaled_steps(m.steps, c, value)
        size = B.ensemble_size(c, value)
        out.append(Variant(m, m.option, m.steps, 1, "tuned"))
        out.append(Variant(m, write_variant(spec, template, task, m, steps, f"N{steps}"), steps, 1,
                           "more steps", f"N{steps}"))
        out.append(Variant(m, write_variant(spec, template, task, m, m.steps, f"M{size}"), m.steps, size,
                           "ensemble mean", f"M{size}"))
    return out, value, setter


def rescale_matched(spec: CompareRequest, template: TuneRequest, task: str, plan: tuple[list[Variant], float, str],
                    entries: dict, notes: list[str]) -> tuple[list[Variant], float, str]:
    """The matched plan with every LMAPS variant whose measured cost is off the budget
    (:func:`budget.off_budget`) scaled again from its own measurement; each change is named in ``notes``."""
    variants, value, setter = plan
    out = []
    for v in variants:
        entry = _entry_of(entries, task, v)
        if v.role not in ("more steps", "ensemble mean") or entry is None or not entry.samples:
            out.append(v)
            continue
        achieved = B.measured_cost(entry.samples.values()).of(spec.match)
        if not B.off_budget(achieved, value):
            out.append(v)
            continue
        m = v.method
        if v.role == "more steps":
            steps = B.scaled_steps(v.steps, achieved, value)
            new = Variant(m, write_variant(spec, template, task, m, steps, f"N{steps}"), steps, 1, v.role,
                          f"N{steps}")
        else:
            size = B.ensemble_size(achieved, value, v.samples)
            new = Variant(m, write_variant(spec, template, task, m, m.steps, f"M{size}"), m.steps, size, v.role,
                          f"M{size}")
        if new.name != v.name:
            notes.append(f"{task} / {v.name} measured {achieved:.3g} (cost / B {B.ratio(achieved, value):.2f}): "
                         f"scaled again from its own measurement to {new.name}")
        out.append(new)
    return out, value, setter


def pareto_variants(spec: CompareRequest, template: TuneRequest, task: str, methods: list[Method]) -> list[Variant]:
    """Every method at ``spec.pareto_scales`` × its tuned steps; LMAPS methods also as ensembles of
    ``spec.pareto_ensembles`` samples at the tuned steps."""
    out = []
    for m in methods:
        for steps in B.scaled_step_counts(m.steps, spec.pareto_scales):
            suffix = "" if steps == m.steps else f"N{steps}"
            option = m.option if not suffix else write_variant(spec, template, task, m, steps, suffix)
            out.append(Variant(m, option, steps, 1, "scaled", suffix))
        if m.lmaps:
            for size in spec.pareto_ensembles:
                if size >= 2:
                    option = write_variant(spec, template, task, m, m.steps, f"M{size}")
                    out.append(Variant(m, option, m.steps, size, "ensemble mean", f"M{size}"))
    return out


def _entry_of(entries: dict, task: str, v: Variant):
    return entries.get((task, v.name, v.samples))


def matched_tables(spec: CompareRequest, plan: dict[str, tuple[list[Variant], float, str]],
                   entries: dict, rescaled: Sequence[str] = ()) -> tuple[str, str]:
    """``matched.md`` and ``matched.csv``: per task one row per matched run, means over the test images every
    row finished."""
    unit = "s" if spec.match == "time" else "network evaluations"
    rule = ("budget B = max over the tuned peers of their measured mean seconds per image on the test runs"
            if spec.match == "time" else
            "budget B = max over the tuned peers of their counted network evaluations per image (nfe × num_samples) "
            "on the test runs")
    md = [f"# Cost-matched comparison (--match {spec.match}): {rule}; peers keep their tuned steps; LMAPS spends B "
          f"on (a) N' = floor(N·B/c) steps or (b) the mean of M = floor(B/c) samples, c its tuned run's measured "
          f"cost per image"
          + (f"; a run more than {B.TOLERANCE:.0%} off B is scaled again from its own measured cost (up to "
             f"{spec.match_rounds - 1} time(s))" if spec.match_rounds > 1 else "") + "\n",
          "| Task | Method | spends B as | steps | M | PSNR ↑ | SSIM ↑ | n | NFE / image | s / image | cost / B |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["task", "algorithm", "role", "steps", "num_samples", "psnr_mean", "psnr_std", "ssim_mean",
                     "ssim_std", "single_sample_psnr_mean", "n", "nfe_per_image", "seconds_per_image", "match",
                     "budget", "budget_set_by", "budget_ratio"])
    notes = []
    for task, (variants, value, setter) in plan.items():
        found = [(v, _entry_of(entries, task, v)) for v in variants]
        common = compared_samples([e for _, e in found if e is not None])
        for k, (v, e) in enumerate(found):
            if e is None or not e.samples:
                notes.append(f"{task} / {v.name}: no finished run")
                continue
            st = variant_stats(e, common, v)
            achieved = st["cost"].of(spec.match)
            r = B.ratio(achieved, value) if math.isfinite(achieved) else math.nan
            md.append("| " + " | ".join([
                task if k == 0 else "", v.name, v.role, str(v.steps), str(v.samples), cell(st["psnr"], 2),
                cell(st["ssim"], 4), str(st["n"]), f"{st['cost'].nfe:.0f}", f"{st['cost'].seconds:.2f}",
                f"{r:.2f}"]) + " |")
            writer.writerow([task, v.name, v.role, v.steps, v.samples,
                             *(f"{st[k2][f]:.6g}" if st[k2] else "" for k2 in ("psnr", "ssim") for f in ("mean", "std")),
                             f"{st['single_psnr']['mean']:.6g}" if st["single_psnr"] else "", st["n"],
                             f"{st['cost'].nfe:.6g}", f"{st['cost'].seconds:.6g}", spec.match, f"{value:.6g}", setter,
                             f"{r:.4g}"])
        md.append(f"|  | *budget B = {value:.3g} {unit} per image, set by {setter}* |  |  |  |  |  |  |  |  |  |")
    md.append("")
    md.append("- PSNR/SSIM: of the single sample (M = 1) or of the mean of the M samples (ensemble mean); "
              "NFE / image: counted network calls × M (each call evaluates M images); s / image: measured wall "
              "time of the whole run per image; cost / B: the run's measured cost over the budget")
    md += [f"- {n}" for n in [*rescaled, *notes]]
    return "\n".join(md) + "\n", buf.getvalue()


def pareto_points(spec: CompareRequest, task: str, variants: list[Variant], entries: dict) -> list[P.Point]:
    """One point per finished variant of a task: mean cost and PSNR/SSIM (of the ensemble mean for M >= 2) over
    the test images every variant of the task finished."""
    found = [(v, _entry_of(entries, task, v)) for v in variants]
    common = compared_samples([e for _, e in found if e is not None])
    out = []
    for v, e in found:
        if e is None or not e.samples:
            continue
        st = variant_stats(e, common, v)
        if st["psnr"] is None:
            continue
        out.append(P.Point(v.method.name, "ensemble" if v.samples >= 2 else "single", v.steps, v.samples,
                           st["cost"].seconds, st["cost"].nfe, st["psnr"]["mean"], st["psnr"]["std"],
                           st["ssim"]["mean"] if st["ssim"] else math.nan, st["n"]))
    return out


def points_csv(points: dict[str, list[P.Point]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["task", "method", "kind", "steps", "num_samples", "seconds_per_image", "nfe_per_image",
                     "psnr_mean", "psnr_std", "ssim_mean", "n", "on_frontier_seconds", "on_frontier_nfe"])
    for task, pts in points.items():
        front_s = set(P.pareto_front([(p.seconds, p.psnr) for p in pts]))
        front_n = set(P.pareto_front([(p.nfe, p.psnr) for p in pts]))
        for i, p in enumerate(pts):
            writer.writerow([task, p.method, p.kind, p.steps, p.samples, f"{p.seconds:.6g}", f"{p.nfe:.6g}",
                             f"{p.psnr:.6g}", f"{p.psnr_std:.6g}", f"{p.ssim:.6g}", p.n, int(i in front_s),
                             int(i in front_n)])
    return buf.getvalue()


@dataclass
class BudgetOutput:
    matched_md: Path | None = None
    matched_csv: Path | None = None
    pareto_csv: Path | None = None
    figures: list[Path] = field(default_factory=list)
    status: int = 0


def budget_stages(spec: CompareRequest, template: TuneRequest, tuned: dict[tuple[str, str], TuneResult],
                  test_runs: list[dict]) -> BudgetOutput:
    """Stage 4 (``--match``) and 5 (``--pareto``): plan the variants from the tuned test runs' measured cost, run
    them into ``<exp-dir>/budget/`` and write ``matched.md``/``matched.csv``, ``pareto.csv`` and
    ``pareto_<task>.png`` in ``<exp-dir>``."""
    out, status, budget_runs = BudgetOutput(), 0, []
    entries = variant_entries(spec, test_runs, [])
    matched, pareto = {}, {}
    for task in spec.tasks:
        methods = describe_methods(spec, template, task, {a: tuned[(task, a)].option for a in spec.algorithms})
        variants = []
        if spec.match:
            matched[task] = matched_variants(spec, template, task, methods, entries)
            variants += matched[task][0]
        if spec.pareto:
            pareto[task] = pareto_variants(spec, template, task, methods)
            variants += pareto[task]
        code, found = run_variants(spec, template, task, variants)
        status, budget_runs = status or code, budget_runs + found
    entries = variant_entries(spec, test_runs, budget_runs)
    notes: list[str] = []
    for _ in range(spec.match_rounds - 1):
        changed = False
        for task in matched:
            before = [v.name for v in matched[task][0]]
            matched[task] = rescale_matched(spec, template, task, matched[task], entries, notes)
            if [v.name for v in matched[task][0]] != before:
                changed = True
                code, found = run_variants(spec, template, task, matched[task][0])
                status, budget_runs = status or code, budget_runs + found
        if not changed:
            break
        entries = variant_entries(spec, test_runs, budget_runs)
    root = Path(spec.exp_dir)
    if matched:
        md, table = matched_tables(spec, matched, entries, notes)
        out.matched_md = atomic_write_text(root / MATCHED_MD, md)
        out.matched_csv = atomic_write_text(root / MATCHED_CSV, table)
    if pareto:
        points = {task: pareto_points(spec, task, variants, entries) for task, variants in pareto.items()}
        out.pareto_csv = atomic_write_text(root / PARETO_CSV, points_csv(points))
        for task, pts in points.items():
            if pts:
                out.figures.append(P.plot_task(task, pts, root / f"pareto_{task}.png",
                                               f"{task}: PSNR against cost over {len(spec.test_ids) * len(spec.seeds)} "
                                               f"test image(s); labels: steps, or M (ensemble size)"))
    out.status = status
    return out


__all__ = ["LMAPS_TARGET", "Method", "Variant", "BudgetOutput", "describe_methods", "check_match", "write_variant",
           "matched_variants", "rescale_matched", "pareto_variants", "matched_tables", "pareto_points", "points_csv",
           "budget_stages"]
