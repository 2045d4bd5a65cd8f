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

from ..app import results as R
from ..app.build import experiment_dir, run_config_hash
from ..io import atomic_write_json, atomic_write_text
from .aggregate import TABLE_METRICS, best_mean, by_task, cell, collect, compared_samples, csv_table, submission
from .arguments import UsageError, parse_ids, positive_int, seed_list
from ..app.compose import compose_app
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

    @property
    def tune_dir(self) -> Path:
        return Path(self.exp_dir) / "tune"

    @property
    def config_dir(self) -> Path:
        return self.tune_dir / "configs"

    @property
    def test_dir(self) -> Path:
        return Path(self.exp_dir) / "test"


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
               overrides: list[str]) -> dict:
    """Names of the tuned configs and the task (as ``benchmark.json`` records them), from the composed configs;
    ``runs`` holds each tuned config's identity and the config hash its test records must carry, ``folders``
    its results folder per test seed."""
    names: dict = {"algorithms": {}, "tasks": {}, "runs": [], "folders": {}}
    base = [f"problem={task}", *([f"prior={prior}"] if prior else []), *overrides, f"exp_dir={spec.test_dir}"]
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


def run_tests(spec: CompareRequest, tuned: dict[tuple[str, str], TuneResult], template: TuneRequest) -> tuple[int, list[dict]]:
    """Stage 2: per task, one Hydra multirun of the lmaps app over the tuned configs and the test ids (test
    folders of earlier tunings moved aside first, :func:`replace_stale_tests`). Returns the exit status and the
    tuned configs' identities and config hashes (``runs`` of :func:`test_names`)."""
    status = 0
    runs: list[dict] = []
    for task in spec.tasks:
        options = [tuned[(task, a)].option for a in spec.algorithms]
        request = SweepRequest(tasks=[task], algorithms=options, seeds=list(spec.seeds),
                               ids=list(spec.test_ids), exp_dir=str(spec.test_dir),
                               shard_size=spec.shard_size, jobs=spec.jobs, launcher=spec.launcher,
                               prior=template.prior, threads=template.threads, figures=False,
                               extra=[*template.overrides, *template.launcher_overrides])
        command = request.command()
        command = [*command[:3], f"--config-dir={spec.config_dir.resolve()}", *command[3:]]
        spec.test_dir.mkdir(parents=True, exist_ok=True)
        names = test_names(spec, task, options, template.prior, template.overrides)
        replace_stale_tests(names)
        runs += names["runs"]
        write_manifest(request, {k: v for k, v in names.items() if k != "folders"})
        print("lmaps-bench compare: " + " ".join(command[3:]), flush=True)
        code = subprocess.call(command, env={**os.environ, "TQDM_DISABLE": "1"})  # no progress bar per image
        if code != 0:
            print(f"lmaps-bench compare: the test runs of {task} exited with status {code}", file=sys.stderr)
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


class StaleResultsError(RuntimeError):
    """Test records of a tuned config's (task, algorithm, prior) carry another config hash than the tuned config."""


def current_entries(spec: CompareRequest, runs: list[dict], manifest: dict | None) -> list:
    """The test entries of this comparison: one per tuned config (``runs``), holding only the requested (seed,
    id) samples; every record must carry the tuned config's hash (:class:`StaleResultsError` otherwise)."""
    request = {**(manifest or {}), "seeds": list(spec.seeds), "ids": list(spec.test_ids)}
    expected = {(r["task"], r["algorithm"], r["prior"]): r["config_hash"] for r in runs}
    wanted = {(s, i) for s in spec.seeds for i in spec.test_ids}
    entries = []
    for e in collect(spec.test_dir, request):
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
    md = atomic_write_text(out / "table.md", title + compare_markdown(entries, tuning, metric))
    table = atomic_write_text(out / "table.csv", compare_csv(entries, tuning))
    board = atomic_write_json(out / "leaderboard.json", submission(entries, manifest))
    info = atomic_write_json(out / TUNING_JSON, tuning)
    return CompareOutput(md, table, board, info)


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
    """All three stages (each resumes where a previous run stopped). The output's ``status`` is the test runs'
    exit status (the tables then show what finished)."""
    check_disjoint(template.val_ids, spec.test_ids, template.val_split)
    check_test_runs(spec, template)
    for task in spec.tasks:
        for algorithm in spec.algorithms:
            check_runnable(TuneRequest(**{**template.__dict__, "task": task, "algorithm": algorithm}))
    Path(spec.exp_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(spec.exp_dir) / REQUEST_JSON,
                        {"compare": {**spec.__dict__}, "tune": {k: v for k, v in template.__dict__.items()
                                                                    if k in ("prior", "trials", "val_ids", "val_split",
                                                                             "metric", "seed", "pruner",
                                                                             "prune_after", "overrides")},
                         "command": sys.argv})
    start = time.perf_counter()
    tuned = tune_all(spec, template)
    tuned_s = time.perf_counter() - start
    status, runs = run_tests(spec, tuned, template)
    if status != 0:
        print("lmaps-bench compare: some test runs failed; the tables show what finished", file=sys.stderr)
    output = write_tables(spec, tuned, template.metric, runs)
    output.status = status
    print(f"lmaps-bench compare: tuning {tuned_s:.0f} s, tests {time.perf_counter() - start - tuned_s:.0f} s")
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
        request = CompareRequest(tasks=tasks, algorithms=algorithms, test_ids=test_ids, seeds=list(args.seeds),
                                 exp_dir=args.exp_dir, jobs=args.jobs, launcher=args.test_launcher,
                                 shard_size=args.shard_size)
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
