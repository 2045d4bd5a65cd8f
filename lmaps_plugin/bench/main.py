"""``lmaps-bench``: sweep tasks × algorithms × seeds with Hydra multirun, sharded by sample-id ranges, then
aggregate everything into the paper's table layout (markdown + CSV) and a leaderboard submission file.

    lmaps-bench run --tasks inpaint_random,sr4 --algorithms lmaps_cpu,ib_daps,ib_dps --seeds 0,1 \\
                    --num-images 8 --shard-size 4 --jobs 2 --exp-dir results/bench
    lmaps-bench aggregate --exp-dir results/bench
    lmaps-bench validate results/bench/leaderboard.json

``run`` (:mod:`.sweep`) checks every job's configuration, writes ``benchmark.json`` (the request) into the results
folder, launches one Hydra multirun of the ``lmaps`` app and, unless ``--no-aggregate``, aggregates at the end.
Running the same command again resumes.

``aggregate`` (:mod:`.aggregate`) reads every sample record under the folder and writes ``table.md``,
``table.csv`` and ``leaderboard.json`` (schema: ``lmaps_plugin/bench/leaderboard.schema.json``).

``validate`` (:mod:`.leaderboard`) checks a leaderboard file against the schema and its summaries against its
per-sample rows (n, mean, std, duplicates) and the ensemble keys against each entry's ``num_samples``, one
readable line per problem.

``tune`` (:mod:`.tune`) searches an algorithm's hyperparameters with Optuna; ``compare`` (:mod:`.compare`) tunes
every method with one budget and compares the tuned configs on test images.

Subcommands are entries of :data:`SUBCOMMANDS` (name, help, arguments, handler): adding one is one entry.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..app import results as R
from ..app import schema
from . import compare, export, leaderboard
from .aggregate import AggregateOutput, aggregate, collect
from .arguments import UsageError, positive_int, seed_list
from .sweep import LAUNCHERS, request_from_args, run_sweep
from .tune import command as tune_command


def _run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--tasks", default="inpaint_random", help="comma-separated problem configs")
    run.add_argument("--algorithms", default="lmaps_cpu", help="comma-separated algorithm configs "
                     "(lmaps_cpu, lmaps_<task>, ib_dps, ib_daps, ib_diffpir, ib_reddiff, ib_pigdm, ...)")
    run.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated non-negative seeds")
    run.add_argument("--num-images", type=positive_int, default=4, help="test ids 0..N-1 (ignored with --ids)")
    run.add_argument("--ids", default=None, help="explicit test ids, e.g. '0-7,12'")
    run.add_argument("--shard-size", type=positive_int, default=4, help="ids per job")
    run.add_argument("--jobs", type=positive_int, default=2,
                     help="parallel workers (joblib n_jobs / SLURM array parallelism; submitit_local starts every "
                          "job at once)")
    run.add_argument("--launcher", default="joblib", choices=LAUNCHERS)
    run.add_argument("--exp-dir", default="results/bench", help="results folder of the sweep")
    run.add_argument("--prior", default=None, help="prior config (default: the app's, faces64)")
    run.add_argument("--threads", type=positive_int, default=None, help="torch threads per job (default: cores / jobs)")
    run.add_argument("--figures", action="store_true", help="also write figure.png per folder")
    run.add_argument("--no-aggregate", action="store_true")
    run.add_argument("--dry-run", action="store_true", help="check and print the Hydra command only")
    run.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. hydra.launcher.partition=gpu")


def _print_aggregate(out: AggregateOutput) -> None:
    print(out.table_md.read_text(encoding="utf-8"))
    print(f"table:       {out.table_md}\ncsv:         {out.table_csv}\nleaderboard: {out.leaderboard}")


def _finished_anything(exp_dir: str | os.PathLike) -> bool:
    return any(e.samples for e in collect(exp_dir))


def _run_command(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    status = run_sweep(request, dry_run=args.dry_run)
    if args.dry_run or args.no_aggregate:
        return status
    if status != 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            finished = Path(request.exp_dir).is_dir() and _finished_anything(request.exp_dir)
        if not finished:
            print(f"lmaps-bench: the sweep exited with status {status} and no sample finished; no leaderboard "
                  f"written (the sweep's output above says why)", file=sys.stderr)
            return status
        print(f"lmaps-bench: the sweep exited with status {status}; aggregating what finished", file=sys.stderr)
    _print_aggregate(aggregate(request.exp_dir))
    return status


def _aggregate_arguments(agg: argparse.ArgumentParser) -> None:
    agg.add_argument("--exp-dir", default="results/bench")
    agg.add_argument("--out", default=None, help="output folder (default: --exp-dir)")


def _aggregate_command(args: argparse.Namespace) -> int:
    _print_aggregate(aggregate(args.exp_dir, args.out))
    return 0


def _validate_arguments(val: argparse.ArgumentParser) -> None:
    val.add_argument("file")


def _validate_command(args: argparse.Namespace) -> int:
    problems = leaderboard.file_problems(args.file)
    if problems:
        for problem in problems:
            print(f"{args.file}: {problem}")
        print(f"{args.file}: INVALID ({len(problems)} problem(s))")
        return 1
    print(f"{args.file}: valid ({leaderboard.KIND} {leaderboard.SCHEMA_VERSION}; summaries match the per-sample rows)")
    return 0


@dataclass(frozen=True)
class Subcommand:
    """One ``lmaps-bench <name>``: ``add_arguments(parser)`` declares its options, ``run(args)`` returns the exit
    status. Raise :class:`UsageError`, :class:`schema.ConfigError`, ... for user errors (one message, exit 2)."""
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: the subcommands, in --help order (tune and compare load Optuna when they run); another module adds one by
#: appending a :class:`Subcommand`
SUBCOMMANDS: list[Subcommand] = [
    Subcommand("run", "check, launch the sweep (Hydra multirun), then aggregate", _run_arguments, _run_command),
    Subcommand("aggregate", "write table.md, table.csv and leaderboard.json", _aggregate_arguments,
               _aggregate_command),
    Subcommand("validate", "check a leaderboard file: schema, and summaries against per-sample rows",
               _validate_arguments, _validate_command),
    Subcommand(*tune_command.SUBCOMMAND),
    Subcommand(*compare.SUBCOMMAND),
    Subcommand(*export.SUBCOMMAND),
]


def build_parser(subcommands: Sequence[Subcommand] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmaps-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS if subcommands is None else subcommands:
        parser = sub.add_parser(command.name, help=command.help)
        command.add_arguments(parser)
        parser.set_defaults(handler=command.run)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


#: errors that are the user's to fix: one line on stderr, exit code 2, no traceback
USER_ERRORS = (UsageError, schema.ConfigError, R.ConfigMismatchError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``lmaps-bench``; returns the exit status (0 all done; 1 a run failed: failed samples, an
    invalid file, a folder that cannot be written; 2 a usage or configuration error, refused before any work)."""
    args = parse_args(argv)
    try:
        return args.handler(args)
    except USER_ERRORS as exc:
        print(f"lmaps-bench {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be written, a full disk: the run failed, one line
        print(f"lmaps-bench {args.command}: {exc.strerror or exc}"
              f"{f': {exc.filename}' if getattr(exc, 'filename', None) else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
