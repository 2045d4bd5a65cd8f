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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_json, atomic_write_text
from . import budget as B
from .aggregate import submission
from .arguments import UsageError, parse_ids, positive_int, seed_list
from .compare_runs import (CompareRequest, StaleResultsError, check_disjoint, check_test_runs, current_entries,
                           given_configs, launch)
from .compare_tables import compare_csv, compare_markdown, tuning_table
from .matched import BudgetOutput, budget_stages, check_match
from .sweep import LAUNCHERS, read_manifest
from .tune.command import add_common_arguments, request_from_args
from .tune.outputs import TuneResult, TuningFailed, finalize
from .tune.request import TuneError, TuneRequest, check_runnable
from .tune.space import SpaceError
from .tune.study import budget_left, open_study, start_study
from .tune.worker import run_studies

TUNING_JSON = "tuning.json"
REQUEST_JSON = "compare.json"


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


@dataclass
class CompareOutput:
    table_md: Path
    table_csv: Path
    leaderboard: Path
    tuning: Path
    status: int = 0       # exit status of the test runs (0: every test job finished)
    budget: "BudgetOutput | None" = None   # the --match / --pareto outputs


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

__all__ = ["CompareOutput", "tune_all", "run_tests", "write_tables", "compare", "add_arguments", "main",
           "SUBCOMMAND"]
