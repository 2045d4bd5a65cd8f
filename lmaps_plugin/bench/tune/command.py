"""``lmaps-bench tune``: its options (and the ones ``compare`` shares), the request they make, and :func:`tune`,
which checks, starts the study, runs the workers until the budget is spent and writes the outputs."""
from __future__ import annotations

import argparse
import os
import sys
import time

from ..arguments import UsageError, parse_ids
from .objective import short_value
from .outputs import TuneResult, TuningFailed, finalize
from .request import LAUNCHERS, PRUNERS, TuneError, TuneRequest, check_runnable, metric_names
from .space import SpaceError
from .study import start_study
from .worker import run_studies


def tune(request: TuneRequest, config_dir: str | os.PathLike | None = None, plots: bool = True) -> TuneResult:
    """Check that trials can run here, start the study, run the workers until the budget is spent, then write
    the outputs (:class:`TuningFailed` when no trial finished)."""
    start = time.perf_counter()
    check_runnable(request)
    request = start_study(request)
    run_studies([request], request.study_dir)
    result = finalize(request, config_dir, plots=plots)
    result.seconds = time.perf_counter() - start
    return result


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``tune`` and ``compare``."""
    p.add_argument("--prior", default=None, help="prior config (default: the app's, faces64)")
    p.add_argument("--trials", type=int, default=12, help="trial budget per method (finished trials)")
    p.add_argument("--val-ids", default="0-3", help="validation ids (of the val split), e.g. '0-3'")
    p.add_argument("--val-split", default="val", help="data split of the validation ids ('none': the problem's own "
                   "data, for datasets without a val split; then val and test ids must differ)")
    p.add_argument("--metric", default="psnr", help=f"one of {', '.join(metric_names())} (misfit_gap = |misfit_rms"
                   "/sigma_y - 1|, for tasks without ground truth)")
    p.add_argument("--seed", type=int, default=0, help="run seed of every trial (same noise for all) and of TPE")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL or journal:PATH (default: SQLite in the study "
                   "folder)")
    p.add_argument("--workers", type=int, default=1, help="workers per study (each runs study.optimize)")
    p.add_argument("--launcher", default="auto", choices=LAUNCHERS, help="auto: in-process for one worker, "
                   "joblib for more")
    p.add_argument("--pruner", default="median", choices=PRUNERS)
    p.add_argument("--prune-after", type=int, default=1, help="validation images before a trial may be pruned")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--no-baseline", action="store_true", help="do not queue the base config as the first trial")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every trial (e.g. algorithm.method.num_steps=50,"
                   " device=cuda); hydra.launcher.* ones go to the launcher")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lmaps-bench tune``."""
    p.add_argument("--task", required=True, help="problem config, e.g. sr4")
    p.add_argument("--algorithm", required=True, help="algorithm config, e.g. lmaps_cpu or ib_daps")
    p.add_argument("--exp-dir", default="results/tune")
    p.add_argument("--study-name", default=None)
    p.add_argument("--space", default=None, help="search-space file (default configs/tune/<algorithm>.yaml)")
    p.add_argument("--install", action="store_true", help="also copy the tuned config into the package's "
                   "configs/algorithm/tuned/")
    p.add_argument("--no-plots", action="store_true")
    add_common_arguments(p)


def request_from_args(args: argparse.Namespace, task: str, algorithm: str, exp_dir: str) -> TuneRequest:
    try:
        val_ids = parse_ids(args.val_ids, None, "--val-ids")
    except UsageError as exc:
        raise TuneError(str(exc)) from None
    app = [o for o in args.overrides if not o.startswith("hydra.")]
    launch = [o for o in args.overrides if o.startswith("hydra.")]
    return TuneRequest(task=task, algorithm=algorithm, prior=args.prior, trials=args.trials, val_ids=val_ids,
                       val_split=args.val_split, metric=args.metric, seed=args.seed, exp_dir=exp_dir,
                       storage=args.storage, study_name=getattr(args, "study_name", None), workers=args.workers,
                       launcher=args.launcher, pruner=args.pruner, prune_after=args.prune_after,
                       space=getattr(args, "space", None), threads=args.threads, baseline=not args.no_baseline,
                       overrides=app, launcher_overrides=launch, install=getattr(args, "install", False))


def describe(result: TuneResult) -> str:
    lines = [f"best value: {result.best_value} "
             f"({result.finished} trials counted; {result.counts.get('complete', 0)} complete, "
             f"{result.counts.get('pruned', 0)} pruned, {result.counts.get('fail', 0)} failed and retried)"]
    lines += [f"  {k} = {short_value(v)}" for k, v in result.best_params.items()]
    lines.append(f"tuned config: {result.tuned_config}")
    lines.append(f"use it:       lmaps --config-dir {result.config_dir} algorithm={result.option}")
    if result.installed:
        lines.append(f"installed:    {result.installed} (lmaps algorithm={result.option})")
    for name, path in result.plots.items():
        lines.append(f"{name + ':':13} {path}")
    lines.append(f"study:        {result.study_dir}")
    if result.seconds is not None:
        lines.append(f"wall time:    {result.seconds:.1f} s")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``lmaps-bench tune``: 0 the budget was spent and a tuned config written; 1 a run failed (no trial
    finished, or the budget is not spent yet); 2 the request was refused before any trial."""
    try:
        request = request_from_args(args, args.task, args.algorithm, args.exp_dir)
        result = tune(request, plots=not args.no_plots)
    except (TuneError, SpaceError) as exc:
        print(f"lmaps-bench tune: error: {exc}", file=sys.stderr)
        return 2
    except TuningFailed as exc:
        print(f"lmaps-bench tune: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lmaps-bench tune: interrupted; run the same command again to continue (the interrupted trial is "
              "retried)", file=sys.stderr)
        return 130
    print(describe(result))
    if result.finished < request.trials:
        print(unfinished_message(result, request.trials), file=sys.stderr)
        return 1
    return 0


def unfinished_message(result: TuneResult, budget: int) -> str:
    """Why the budget is not spent: trials other live workers of the study are still running (they write the
    tuned config when they finish), or trials that did not finish (run the command again)."""
    running = int(result.counts.get("running", 0))
    if running:
        return (f"lmaps-bench tune: {result.finished} of {budget} trials finished and {running} still running in "
                f"another worker of this study; the worker that finishes the budget writes the tuned config (this "
                f"one, with {result.finished} trials, is replaced then)")
    return (f"lmaps-bench tune: only {result.finished} of {budget} trials finished (the output above says why); run "
            f"the same command again to continue")


#: (name, help, add_arguments, run) of ``lmaps-bench tune``
SUBCOMMAND = ("tune", "tune an algorithm's hyperparameters on validation images (Optuna; resumable)", add_arguments,
              main)
