"""``lmaps-bench compare``: tune every listed method with one budget on the same validation images, then run the
tuned configs on the test images and write the paper's Table-1 layout with a column for the budget.

    lmaps-bench compare --tasks sr4,inpaint_random --algorithms lmaps_cpu,ib_dps,ib_daps --trials 12 \\
                        --val-ids 0-3 --test-ids 0-11 --exp-dir results/compare

1. ``tune`` (:mod:`lmaps_plugin.bench.tune`) for every task × algorithm: the same ``--trials``, ``--val-ids``,
   ``--metric``, pruner and seed for all; studies in ``<exp-dir>/tune/``, tuned configs in
   ``<exp-dir>/tune/configs/algorithm/tuned/<prior>/<task>/<algorithm>.yaml``.
2. One Hydra multirun of the ``lmaps`` app per task on the test ids (``--launcher``/``--jobs`` as ``lmaps-bench
   run``), ``algorithm=tuned/<prior>/<task>/<algorithm>``, into ``<exp-dir>/test/``.
3. ``table.md``, ``table.csv``, ``leaderboard.json`` (``lmaps-bench aggregate``'s collection and leaderboard
   code) and ``tuning.json`` in ``<exp-dir>``. Failures count: a sample a method did not finish is shown in its
   row (``failed``) and named in the notes; each task's means are over the samples every method finished (``n``).

Validation images come from the val split (``--val-split val``), test images from the test split: they never
overlap. With ``--val-split none`` (datasets without a val split) the val and test ids must be disjoint.
Rerunning the same command resumes every stage.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml
from omegaconf import OmegaConf

from ..app import results as R
from ..app.build import experiment_dir, run_config_hash
from ..io import atomic_write_json, atomic_write_text
from .aggregate import TABLE_METRICS, best_mean, by_task, cell, collect, compared_samples, csv_table, submission
from .arguments import UsageError, parse_ids, positive_int, seed_list
from ..app.compose import compose_app
from . import budget as B
from . import pareto as P
from .sweep import LAUNCHERS, SweepRequest, read_manifest, runnable_problems, write_manifest
from .tune.command import add_common_arguments, request_from_args
from .tune.outputs import TuneResult, TuningFailed, finalize
from .tune.request import TuneError, TuneRequest, check_runnable
from .tune.space import SpaceError
from .tune.study import budget_left, open_study, start_study
from .tune.worker import run_studies

TUNING_JSON = "tuning.json"
REQUEST_JSON = "compare.json"


@dataclass
class CompareRequest:
    tasks: list[str]
    algorithms: list[str]
    test_ids: list[int]
    seeds: list[int] = field(default_factory=lambda: [0])
    exp_dir: str = "results/compare"
    jobs: int = 2
    launcher: str = "joblib"
    shard_size: int = 4
    configs: str | None = None          # algorithm option prefix of given tuned configs (no tuning)
    match: str | None = None            # "time" or "nfe": the cost-matched stage
    pareto: bool = False
    pareto_scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    pareto_ensembles: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    match_rounds: int = 2               # measure-then-scale rounds of the matched LMAPS runs

    @property
    def tune_dir(self) -> Path:
        return Path(self.exp_dir) / "tune"

    @property
    def config_dir(self) -> Path:
        return self.tune_dir / "configs"

    @property
    def test_dir(self) -> Path:
        return Path(self.exp_dir) / "test"

    @property
    def budget_dir(self) -> Path:
        """Results of the cost-matched and Pareto runs (every variant of a tuned config)."""
        return Path(self.exp_dir) / "budget"


def check_disjoint(val_ids: Sequence[int], test_ids: Sequence[int], val_split: str) -> None:
    """Validation and test images must differ: different splits, or disjoint ids of one split."""
    if val_split == "test":
        raise TuneError("--val-split test would tune on test images; use val (or none with disjoint ids)")
    if val_split == "none":
        shared = sorted(set(val_ids) & set(test_ids))
        if shared:
            raise TuneError(f"--val-split none: val ids and test ids overlap ({shared}); tuning on test images "
                            f"is not a fair comparison")


# ------------------------------------------------------------------------------------------------ stages
def tune_all(spec: CompareRequest, template: TuneRequest, plots: bool = True) -> dict[tuple[str, str], TuneResult]:
    """Stage 1: one study per task × algorithm, all with the template's budget, val ids, metric and seed; one pool
    of workers goes through all of them (one start-up)."""
    requests = {}
    for task in spec.tasks:
        for algorithm in spec.algorithms:
            fields = {**template.__dict__, "task": task, "algorithm": algorithm, "exp_dir": str(spec.tune_dir)}
            requests[(task, algorithm)] = start_study(TuneRequest(**fields))
    run_studies(list(requests.values()), spec.tune_dir)
    unfinished = [f"{t}/{a} ({left} left)" for (t, a), r in requests.items()
                  if (left := budget_left(open_study(r), r.trials)) > 0]
    if unfinished:
        raise TuningFailed(f"tuning stopped before the budget was spent for {', '.join(unfinished)} (the output "
                           f"above says why); run the same command again to continue")
    results, failures = {}, []
    for key, request in requests.items():
        try:
            results[key] = finalize(request, spec.config_dir, plots=plots)
        except TuningFailed as exc:
            failures.append(f"{key[0]}/{key[1]}: {exc}")
    if failures:
        raise TuningFailed("; ".join(failures))
    return results


def test_names(spec: CompareRequest, task: str, options: list[str], prior: str | None,
               overrides: list[str], test_dir: Path | None = None) -> dict:
    """Names of the tuned configs and the task (as ``benchmark.json`` records them), from the composed configs;
    ``runs`` holds each tuned config's identity and the config hash its test records must carry, ``folders``
    its results folder per test seed."""
    names: dict = {"algorithms": {}, "tasks": {}, "runs": [], "folders": {}}
    base = [f"problem={task}", *([f"prior={prior}"] if prior else []), *overrides,
            f"exp_dir={test_dir or spec.test_dir}"]
    for option in options:
        cfg = compose_app([*base, f"algorithm={option}"], config_dir=spec.config_dir)
        names["algorithms"][option] = str(cfg.algorithm.name)
        names["tasks"][task] = str(cfg.problem.name)
        names["dataset"] = str(cfg.problem.data.name)
        names["prior"] = str(cfg.prior.name)
        names["runs"].append({"task": str(cfg.problem.name), "algorithm": str(cfg.algorithm.name),
                              "prior": str(cfg.prior.name), "config_hash": run_config_hash(cfg)})
        folders = []
        for seed in spec.seeds:
            cfg.seed = int(seed)
            folders.append(experiment_dir(cfg))
        names["folders"][option] = folders
    return names


def replace_stale_tests(names: dict) -> list[Path]:
    """Move every test folder of a tuned config's (task, algorithm, prior) that holds records of another config
    hash (an earlier tuning of the same method) into ``.replaced/<UTC time>-<folder>`` next to it, so the re-tuned
    config runs its test samples afresh and old results are never shown beside it. Returns the new places."""
    moved = []
    for run, option in zip(names["runs"], names["algorithms"]):
        identity = (run["task"], run["algorithm"], run["prior"])
        parents = {folder.parent for folder in names["folders"][option]}
        for folder in sorted(p for parent in parents if parent.is_dir() for p in parent.iterdir()
                             if p.is_dir() and not p.name.startswith(".")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                records = R.read_records(folder)
            stale = {r.get("config_hash") for r in records.values()
                     if (r.get("task"), r.get("algorithm"), r.get("prior")) == identity} - {run["config_hash"], None}
            if not stale:
                continue
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            target = folder.parent / ".replaced" / f"{stamp}-{folder.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(target))
            print(f"lmaps-bench compare: {folder} held test results of an earlier tuning of {run['algorithm']} "
                  f"(config hash {', '.join(sorted(h[:12] for h in stale))}, now {run['config_hash'][:12]}); "
                  f"moved to {target}", flush=True)
            moved.append(target)
    return moved


def launch(spec: CompareRequest, template: TuneRequest, task: str, options: list[str], test_dir: Path,
           extra: Sequence[str] = ()) -> tuple[int, list[dict]]:
    """One Hydra multirun of the lmaps app over ``options`` (algorithm configs on ``spec.config_dir``'s search
    path) and the test ids into ``test_dir``, with ``extra`` app overrides (e.g. ``num_samples=4``); test folders
    of earlier configs of the same names are moved aside first (:func:`replace_stale_tests`). Returns the exit
    status and the configs' identities and config hashes (``runs`` of :func:`test_names`)."""
    request = SweepRequest(tasks=[task], algorithms=list(options), seeds=list(spec.seeds),
                           ids=list(spec.test_ids), exp_dir=str(test_dir),
                           shard_size=spec.shard_size, jobs=spec.jobs, launcher=spec.launcher,
                           prior=template.prior, threads=template.threads, figures=False,
                           extra=[*template.overrides, *extra, *template.launcher_overrides])
    command = request.command()
    spec.config_dir.mkdir(parents=True, exist_ok=True)
    command = [*command[:3], f"--config-dir={spec.config_dir.resolve()}", *command[3:]]
    test_dir.mkdir(parents=True, exist_ok=True)
    names = test_names(spec, task, list(options), template.prior, [*template.overrides, *extra], test_dir)
    replace_stale_tests(names)
    write_manifest(request, {k: v for k, v in names.items() if k != "folders"})
    print("lmaps-bench compare: " + " ".join(command[3:]), flush=True)
    code = subprocess.call(command, env={**os.environ, "TQDM_DISABLE": "1"})  # no progress bar per image
    if code != 0:
        print(f"lmaps-bench compare: the runs of {task} ({', '.join(options)}) exited with status {code}",
              file=sys.stderr)
    return code, names["runs"]


def run_tests(spec: CompareRequest, tuned: dict[tuple[str, str], TuneResult], template: TuneRequest) -> tuple[int, list[dict]]:
    """Stage 2: per task, one Hydra multirun of the lmaps app over the tuned configs and the test ids
    (:func:`launch`). Returns the exit status and the tuned configs' identities and config hashes."""
    status = 0
    runs: list[dict] = []
    for task in spec.tasks:
        code, found = launch(spec, template, task, [tuned[(task, a)].option for a in spec.algorithms],
                             spec.test_dir)
        runs += found
        status = status or code
    return status, runs


# ------------------------------------------------------------------------------------------------ tables
def budget_text(provenance: dict) -> str:
    """``'12 (3 pruned)'``: trials counted (of the budget) and how many stopped early."""
    counted, budget = provenance.get("trials_counted", 0), provenance.get("budget", 0)
    text = f"{counted}" if counted == budget else f"{counted}/{budget}"
    pruned = provenance.get("trials_pruned", 0)
    return f"{text} ({pruned} pruned)" if pruned else text


def compare_markdown(entries, tuning: dict[str, dict[str, dict]], metric: str) -> str:
    """Table 1's layout with the tuning budget: per task, one row per method; mean ± std over the test samples
    every method of the task finished (``n``, :func:`~lmaps_plugin.bench.aggregate.compared_samples`);
    ``done``/``failed`` count each method's own samples; the best mean is bold. ``tuning[task][algorithm name]``
    is a tuned config's provenance."""
    columns = TABLE_METRICS[:3]  # the paper's PSNR, SSIM, LPIPS
    header = ["Task", "Method", "trials", f"val {metric}", *(label for _, label, _ in columns), "n", "done",
              "failed", "s / image"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for task, rows in by_task(entries).items():
        common = compared_samples(rows)
        summaries = [e.summary(common) for e in rows]
        best = {name: best_mean(summaries, name) for name, _, _ in columns}
        for k, (e, s) in enumerate(zip(rows, summaries)):
            prov = tuning.get(task, {}).get(e.algorithm, {})
            val = prov.get("best_value")
            cells = [task if k == 0 else "", e.algorithm, budget_text(prov) if prov else "–",
                     f"{val:.2f}" if isinstance(val, (int, float)) else "–"]
            for name, _, digits in columns:
                stats = s.get(name)
                if stats is None and name in e.unavailable:
                    cells.append("n/a")
                else:
                    cells.append(cell(stats, digits, stats is not None and stats["mean"] == best[name]))
            secs = e.mean_seconds()
            expected = len(e.expected | set(e.samples)) or len(e.samples)
            cells += [str(len(common)) if e.samples else "0", f"{len(e.samples)}/{expected}", str(len(e.failed)),
                      f"{secs:.1f}" if secs is not None else "–"]
            out.append("| " + " | ".join(cells) + " |")
            for (seed, sample_id), reason in sorted(e.failed.items()):
                notes.append(f"failed {task} / {e.algorithm} seed {seed} id {sample_id}: {reason.splitlines()[0][:160]}")
            if prov.get("note"):
                notes.append(f"{task} / {e.algorithm}: {prov['note']}")
    unavailable = sorted({f"{m}: {r}" for e in entries for m, r in e.unavailable.items()})
    return "\n".join(out) + "\n\n" + "".join(f"- {n}\n" for n in unavailable + notes)


def compare_csv(entries, tuning: dict[str, dict[str, dict]]) -> str:
    """``lmaps-bench aggregate``'s CSV with the tuning columns appended (budget, trials, pruned, best val)."""
    rows = list(csv.reader(io.StringIO(csv_table(entries))))
    extra = ["budget", "trials_counted", "trials_pruned", "val_metric", "val_best", "tuned_params"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*rows[0], *extra])
    task_col, algo_col = rows[0].index("task"), rows[0].index("algorithm")
    for row in rows[1:]:
        prov = tuning.get(row[task_col], {}).get(row[algo_col], {})
        writer.writerow([*row, prov.get("budget", ""), prov.get("trials_counted", ""), prov.get("trials_pruned", ""),
                         prov.get("metric", ""), prov.get("best_value", ""),
                         json.dumps(prov.get("params", {}), sort_keys=True) if prov else ""])
    return out.getvalue()


def tuning_table(tuned: dict[tuple[str, str], TuneResult]) -> dict[str, dict[str, dict]]:
    """``{task: {tuned algorithm name: provenance}}`` read back from the tuned config files."""
    out: dict[str, dict[str, dict]] = {}
    for (task, _), result in tuned.items():
        doc = yaml.safe_load(result.tuned_config.read_text(encoding="utf-8"))
        out.setdefault(task, {})[str(doc["name"])] = dict(doc.get("tuned", {}))
    return out


@dataclass
class CompareOutput:
    table_md: Path
    table_csv: Path
    leaderboard: Path
    tuning: Path
    status: int = 0       # exit status of the test runs (0: every test job finished)
    budget: "BudgetOutput | None" = None   # the --match / --pareto outputs


class StaleResultsError(RuntimeError):
    """Test records of a tuned config's (task, algorithm, prior) carry another config hash than the tuned config."""


def current_entries(spec: CompareRequest, runs: list[dict], manifest: dict | None,
                    test_dir: Path | None = None) -> list:
    """The test entries of this comparison: one per tuned config (``runs``), holding only the requested (seed,
    id) samples; every record must carry the tuned config's hash (:class:`StaleResultsError` otherwise)."""
    request = {**(manifest or {}), "seeds": list(spec.seeds), "ids": list(spec.test_ids)}
    expected = {(r["task"], r["algorithm"], r["prior"]): r["config_hash"] for r in runs}
    wanted = {(s, i) for s in spec.seeds for i in spec.test_ids}
    entries = []
    for e in collect(test_dir or spec.test_dir, request):
        want = expected.get((e.task, e.algorithm, e.prior))
        if want is None:
            continue   # another method or prior in the same folder: not part of this comparison
        if e.config_hash is not None and e.config_hash != want:
            raise StaleResultsError(f"test results of {e.task} / {e.algorithm} carry config hash "
                                    f"{e.config_hash[:12]}, the tuned config's is {want[:12]}: they are not this "
                                    f"config's results (no table written; run the same command again)")
        e.samples = {k: v for k, v in e.samples.items() if k in wanted}
        e.failed = {k: v for k, v in e.failed.items() if k in wanted}
        e.expected = e.expected & wanted
        e.config_hash = want
        entries.append(e)
    return entries


def write_tables(spec: CompareRequest, tuned: dict[tuple[str, str], TuneResult], metric: str,
                 runs: list[dict]) -> CompareOutput:
    """Stage 3: table.md, table.csv, leaderboard.json and tuning.json in ``spec.exp_dir``, built only from test
    records whose config hash is their tuned config's (``runs``, :func:`current_entries`)."""
    manifest = read_manifest(spec.test_dir)
    entries = current_entries(spec, runs, manifest)
    if manifest is not None:
        manifest = {**manifest, "seeds": list(spec.seeds), "ids": list(spec.test_ids)}
    tuning = tuning_table(tuned)
    out = Path(spec.exp_dir)
    budget = next(iter(next(iter(tuning.values())).values())).get("budget") if tuning else None
    title = (f"# Tuned comparison: every method tuned with the same budget ({budget} trials) on the same validation "
             f"images, then run on the test images\n\n")
    if spec.configs is not None:
        title = (f"# Comparison of the given tuned configs ({spec.configs}/<task>/<algorithm>; trials and val score "
                 f"from their provenance) on the test images\n\n")
    md = atomic_write_text(out / "table.md", title + compare_markdown(entries, tuning, metric))
    table = atomic_write_text(out / "table.csv", compare_csv(entries, tuning))
    board = atomic_write_json(out / "leaderboard.json", submission(entries, manifest))
    info = atomic_write_json(out / TUNING_JSON, tuning)
    return CompareOutput(md, table, board, info)


# ------------------------------------------------------------------------------------- given tuned configs
def packaged_config_dir() -> Path:
    from .. import configs
    return Path(list(configs.__path__)[0])


def given_configs(spec: CompareRequest) -> dict[tuple[str, str], TuneResult]:
    """``--configs PREFIX``: the tuned configs ``<PREFIX>/<task>/<algorithm>.yaml`` (in this comparison's config
    folder or the package's ``configs/algorithm/``) stand in for the tuning stage. Raises :class:`TuneError`
    naming every missing file."""
    out, missing = {}, []
    for task in spec.tasks:
        for algorithm in spec.algorithms:
            option = f"{spec.configs}/{task}/{algorithm}"
            found = [d / "algorithm" / f"{option}.yaml" for d in (spec.config_dir, packaged_config_dir())]
            path = next((f for f in found if f.is_file()), None)
            if path is None:
                missing.append(f"{option}.yaml")
                continue
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            prov = doc.get("tuned") or {}
            out[(task, algorithm)] = TuneResult(study_dir=path.parent, tuned_config=path, config_dir=spec.config_dir,
                                                option=option, best_value=prov.get("best_value"),
                                                best_params=dict(prov.get("params") or {}), counts={},
                                                finished=int(prov.get("trials_counted") or 0))
    if missing:
        raise TuneError(f"--configs {spec.configs}: no config {', '.join(missing)} (looked in "
                        f"{spec.config_dir / 'algorithm'} and {packaged_config_dir() / 'algorithm'})")
    return out


# --------------------------------------------------------------------------------- budgets: matched, Pareto
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


def check_test_runs(spec: CompareRequest, template: TuneRequest) -> None:
    """Refuse, before any tuning, test runs that would fail on every sample: test ids past the end of the test
    split, a CUDA device without CUDA where the test jobs run on this machine (:class:`TuneError`)."""
    problems: list[str] = []
    for task in spec.tasks:
        base = [f"problem={task}", f"algorithm={spec.algorithms[0]}", *([f"prior={template.prior}"] if template.prior
                                                                          else []), *template.overrides]
        try:
            cfg = compose_app(base)
        except Exception:  # noqa: BLE001 - the tuning stage names composition errors
            continue
        problems += [p for p in runnable_problems(cfg, spec.test_ids, "--test-ids",
                                                  local=spec.launcher != "submitit_slurm") if p not in problems]
    if problems:
        raise TuneError("; ".join(problems))


def compare(spec: CompareRequest, template: TuneRequest) -> CompareOutput:
    """All stages (each resumes where a previous run stopped): tune (or take ``--configs``), test, tables, then
    the budget stages of ``--match`` and ``--pareto``. The output's ``status`` is the runs' exit status (the
    tables then show what finished)."""
    if spec.configs is None:
        check_disjoint(template.val_ids, spec.test_ids, template.val_split)
    check_test_runs(spec, template)
    if spec.configs is None:
        for task in spec.tasks:
            for algorithm in spec.algorithms:
                check_runnable(TuneRequest(**{**template.__dict__, "task": task, "algorithm": algorithm}))
    given = given_configs(spec) if spec.configs is not None else None
    check_match(spec, template)
    Path(spec.exp_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(spec.exp_dir) / REQUEST_JSON,
                        {"compare": {**spec.__dict__}, "tune": {k: v for k, v in template.__dict__.items()
                                                                    if k in ("prior", "trials", "val_ids", "val_split",
                                                                             "metric", "seed", "pruner",
                                                                             "prune_after", "overrides")},
                         "command": sys.argv})
    start = time.perf_counter()
    tuned = given if given is not None else tune_all(spec, template)
    tuned_s = time.perf_counter() - start
    status, runs = run_tests(spec, tuned, template)
    if status != 0:
        print("lmaps-bench compare: some test runs failed; the tables show what finished", file=sys.stderr)
    output = write_tables(spec, tuned, template.metric, runs)
    tests_s = time.perf_counter() - start - tuned_s
    if spec.match or spec.pareto:
        try:
            output.budget = budget_stages(spec, template, tuned, runs)
        except B.BudgetError as exc:
            raise TuningFailed(f"budget stage: {exc}") from None
        status = status or output.budget.status
    output.status = status
    print(f"lmaps-bench compare: tuning {tuned_s:.0f} s, tests {tests_s:.0f} s"
          + (f", budget runs {time.perf_counter() - start - tuned_s - tests_s:.0f} s" if output.budget else ""))
    return output


# --------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", required=True, help="comma-separated problem configs")
    p.add_argument("--algorithms", required=True, help="comma-separated algorithm configs (lmaps_cpu, ib_dps, ...)")
    p.add_argument("--test-ids", default="0-11", help="test ids (of the test split), e.g. '0-11'")
    p.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated non-negative seeds of the test runs")
    p.add_argument("--exp-dir", default="results/compare")
    p.add_argument("--jobs", type=positive_int, default=2,
                   help="parallel test jobs (joblib n_jobs / SLURM array parallelism)")
    p.add_argument("--test-launcher", default="joblib", choices=LAUNCHERS, help="launcher of the test runs")
    p.add_argument("--shard-size", type=positive_int, default=4, help="test ids per job")
    p.add_argument("--configs", default=None, metavar="PREFIX",
                   help="take the tuned configs PREFIX/<task>/<algorithm> (e.g. published/faces64: the shipped ones) "
                        "instead of tuning")
    p.add_argument("--match", default=None, choices=B.MATCH_KINDS,
                   help="after the test runs, give every method the same cost per image: budget B = max over the "
                        "tuned peers (methods other than LMAPS) of their measured mean seconds per image (time) or "
                        "counted network evaluations per image, nfe x num_samples (nfe), on the test runs; peers "
                        "keep their tuned steps; each LMAPS method spends B on (a) floor(N*B/c) steps and (b) the "
                        "mean of floor(B/c) samples (c: its tuned run's measured cost per image), both reported "
                        "(matched.md, matched.csv)")
    p.add_argument("--match-rounds", type=positive_int, default=2,
                   help="measure-then-scale rounds of the matched LMAPS runs: after the first, a run whose measured "
                        "cost is more than 10%% off the budget is scaled again from its own measurement (1: no "
                        "second round)")
    p.add_argument("--pareto", action="store_true",
                   help="also run every method at --pareto-scales x its tuned steps and LMAPS as ensembles of "
                        "--pareto-ensembles samples; write pareto.csv and pareto_<task>.png (PSNR against seconds "
                        "and network evaluations per image)")
    p.add_argument("--pareto-scales", default="0.5,1,2", help="step-count factors of the Pareto runs")
    p.add_argument("--pareto-ensembles", default="1,2,4,8", help="LMAPS ensemble sizes of the Pareto runs")
    add_common_arguments(p)


def main(args: argparse.Namespace) -> int:
    """``lmaps-bench compare``: 0 every stage finished; 1 a tuning or test run failed (the tables show what
    finished); 2 the request was refused before any work."""
    try:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
        if not tasks or not algorithms:
            raise TuneError("--tasks and --algorithms must each name at least one config")
        try:
            test_ids = parse_ids(args.test_ids, None, "--test-ids")
        except UsageError as exc:
            raise TuneError(str(exc)) from None
        if len(set(test_ids)) != len(test_ids):
            raise TuneError(f"--test-ids {args.test_ids!r}: ids must not repeat")
        try:
            scales = B.parse_scales(args.pareto_scales)
            ensembles = [int(x) for x in B.parse_scales(args.pareto_ensembles)]
        except B.BudgetError as exc:
            raise TuneError(f"--pareto-scales/--pareto-ensembles: {exc}") from None
        if any(float(x) != int(x) for x in B.parse_scales(args.pareto_ensembles)):
            raise TuneError(f"--pareto-ensembles {args.pareto_ensembles!r}: ensemble sizes are integers >= 1")
        request = CompareRequest(tasks=tasks, algorithms=algorithms, test_ids=test_ids, seeds=list(args.seeds),
                                 exp_dir=args.exp_dir, jobs=args.jobs, launcher=args.test_launcher,
                                 shard_size=args.shard_size, configs=args.configs, match=args.match,
                                 pareto=args.pareto, pareto_scales=scales, pareto_ensembles=ensembles,
                                 match_rounds=args.match_rounds)
        template = request_from_args(args, tasks[0], algorithms[0], str(request.tune_dir))
        out = compare(request, template)
    except (TuneError, SpaceError) as exc:
        print(f"lmaps-bench compare: error: {exc}", file=sys.stderr)
        return 2
    except (TuningFailed, StaleResultsError) as exc:
        print(f"lmaps-bench compare: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lmaps-bench compare: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print(out.table_md.read_text(encoding="utf-8"))
    print(f"table: {out.table_md}\ncsv: {out.table_csv}\nleaderboard: {out.leaderboard}\ntuning: {out.tuning}")
    if out.budget is not None:
        if out.budget.matched_md is not None:
            print(out.budget.matched_md.read_text(encoding="utf-8"))
            print(f"matched: {out.budget.matched_md}\nmatched csv: {out.budget.matched_csv}")
        if out.budget.pareto_csv is not None:
            print(f"pareto: {out.budget.pareto_csv}" + "".join(f"\nfigure: {f}" for f in out.budget.figures))
    if out.status != 0:
        print(f"lmaps-bench compare: failed: some test runs exited with status {out.status} (the table shows what "
              f"finished); run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


#: (name, help, add_arguments, run) of ``lmaps-bench compare``
SUBCOMMAND = ("compare", "tune every method with one budget on val images, then compare them on test images",
              add_arguments, main)

__all__ = ["CompareRequest", "CompareOutput", "StaleResultsError", "compare", "compare_markdown", "compare_csv",
           "check_disjoint", "check_test_runs", "current_entries", "replace_stale_tests",
           "budget_text", "add_arguments", "main", "SUBCOMMAND"]
