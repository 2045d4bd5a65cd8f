"""``lmaps-bench``: sweep tasks × algorithms × seeds with Hydra multirun, sharded by sample-id ranges, then
aggregate everything into the paper's table layout (markdown + CSV) and a leaderboard submission file.

    lmaps-bench run --tasks inpaint_random,sr4 --algorithms lmaps_cpu,ib_daps,ib_dps --seeds 0,1 \\
                    --num-images 8 --shard-size 4 --jobs 2 --exp-dir results/bench
    lmaps-bench aggregate --exp-dir results/bench
    lmaps-bench validate results/bench/leaderboard.json

``run`` launches ``lmaps -m problem=<tasks> algorithm=<algorithms> seed=<seeds> ids=<shards> ...`` (one Hydra job
per task × algorithm × seed × id range) on Hydra's joblib launcher (``--launcher joblib``, ``--jobs`` workers) or
on SLURM through the submitit launcher (``--launcher submitit_slurm`` plus ``hydra.launcher.partition=...
hydra.launcher.timeout_min=...`` etc. as extra overrides). It writes ``benchmark.json`` (the request) into the
results folder and, unless ``--no-aggregate``, aggregates at the end. Running the same command again resumes:
every job skips the samples whose ``result_{id}.pt`` is already there.

``aggregate`` reads every ``result_{id}.json`` record under the folder (``{task}/{algorithm.name}/{prior}-seed{s}/``) and
writes ``table.md``, ``table.csv`` and ``leaderboard.json`` (schema: ``lmaps_plugin/leaderboard.schema.json``).
Requested samples without a finished result are listed by (seed, id) with the reason.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import os
import platform
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from . import leaderboard
from . import results as R
from ..data.base import parse_id_list
from .metrics import HIGHER_IS_BETTER

MANIFEST = "benchmark.json"
TABLE_MD = "table.md"
TABLE_CSV = "table.csv"
LEADERBOARD = "leaderboard.json"
LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm")
#: metric columns of the tables, in the paper's order, then ours
TABLE_METRICS = (("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 4), ("lpips", "LPIPS ↓", 4),
                 ("misfit_rms", "misfit", 4), ("meas_psnr", "meas. PSNR", 2))


# ---------------------------------------------------------------------------------------------- the sweep
def shard_ranges(ids: Sequence[int], shard_size: int) -> list[str]:
    """Split sorted sample ids into consecutive ranges of at most ``shard_size`` ids, as ``'lo-hi'`` strings."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = sorted(set(int(i) for i in ids))
    shards, current = [], []
    for i in ids:
        if current and (i != current[-1] + 1 or len(current) == shard_size):
            shards.append(current)
            current = []
        current.append(i)
    if current:
        shards.append(current)
    return [f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0]) for s in shards]


def launcher_overrides(launcher: str, jobs: int) -> list[str]:
    """Hydra overrides that select and size the launcher."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if launcher == "basic":
        return []
    if launcher == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return [f"hydra/launcher={launcher}", f"hydra.launcher.array_parallelism={jobs}"]


@dataclass
class SweepRequest:
    tasks: list[str]
    algorithms: list[str]
    seeds: list[int]
    ids: list[int]
    exp_dir: str
    shard_size: int = 4
    jobs: int = 2
    launcher: str = "joblib"
    prior: str | None = None
    threads: int | None = None
    figures: bool = False
    extra: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        """Hydra overrides of the ``lmaps -m`` call."""
        for name in ("tasks", "algorithms", "seeds", "ids"):
            if not getattr(self, name):
                raise ValueError(f"the sweep needs at least one of {name}")
        threads = self.threads or max(1, (os.cpu_count() or 1) // max(1, self.jobs if self.launcher == "joblib" else 1))
        out = [f"problem={','.join(self.tasks)}", f"algorithm={','.join(self.algorithms)}",
               f"seed={','.join(str(s) for s in self.seeds)}",
               f"ids={','.join(shard_ranges(self.ids, self.shard_size))}",
               f"exp_dir={self.exp_dir}", f"threads={threads}"]
        if self.prior:
            out.append(f"prior={self.prior}")
        if not self.figures:
            out.append("figure.enabled=false")
        return out + launcher_overrides(self.launcher, self.jobs) + list(self.extra)

    def command(self) -> list[str]:
        return [sys.executable, "-c", "from lmaps_plugin.app.cli import main; main()", "-m", *self.overrides()]


def compose_names(request: SweepRequest) -> dict[str, dict[str, str]]:
    """``{'algorithms': {config name: algorithm.name}, 'tasks': {config: problem.name}, 'dataset': ..., 'prior':
    ...}`` read from the composed configs (nothing is built)."""
    from hydra import compose, initialize_config_module

    from . import cli  # noqa: F401 - registers the config's resolver

    extra = [o for o in request.extra if not o.startswith("hydra")]
    base = [f"prior={request.prior}"] if request.prior else []
    names: dict[str, Any] = {"algorithms": {}, "tasks": {}}
    with initialize_config_module(config_module="lmaps_plugin.configs", version_base="1.3"):
        for algorithm in request.algorithms:
            cfg = compose("config", overrides=[*base, f"algorithm={algorithm}", *extra])
            names["algorithms"][algorithm] = str(cfg.algorithm.name)
        for task in request.tasks:
            cfg = compose("config", overrides=[*base, f"problem={task}", *extra])
            names["tasks"][task] = str(cfg.problem.name)
            names["dataset"] = str(cfg.problem.data.name)
            names["prior"] = str(cfg.prior.name)
    return names


def write_manifest(request: SweepRequest, names: dict) -> Path:
    """Write (merging with an existing one: union of tasks, algorithms, seeds and ids) ``benchmark.json``."""
    path = Path(request.exp_dir) / MANIFEST
    manifest = {"tasks": list(request.tasks), "algorithms": list(request.algorithms), "seeds": list(request.seeds),
                "ids": list(request.ids), "prior": names.get("prior"), "dataset": names.get("dataset"),
                "task_names": names["tasks"], "algorithm_names": names["algorithms"],
                "command": request.command()[3:]}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in ("tasks", "algorithms"):  # keep the requested order (tables follow it)
            manifest[key] = list(dict.fromkeys([*old.get(key, []), *manifest[key]]))
        for key in ("seeds", "ids"):
            manifest[key] = sorted(set(old.get(key, [])) | set(manifest[key]))
        for key in ("task_names", "algorithm_names"):
            manifest[key] = {**old.get(key, {}), **manifest[key]}
    return R.atomic_write_json(path, manifest)


def run_sweep(request: SweepRequest, dry_run: bool = False) -> int:
    """Launch the Hydra multirun (blocking); return its exit status."""
    command = request.command()
    print("lmaps-bench: " + " ".join(_quote(a) for a in command[3:]), flush=True)
    if dry_run:
        return 0
    Path(request.exp_dir).mkdir(parents=True, exist_ok=True)
    write_manifest(request, compose_names(request))
    return subprocess.call(command)


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " $*,[]") else arg


# ------------------------------------------------------------------------------------------- aggregation
@dataclass
class Entry:
    """All samples of one (task, algorithm, dataset, prior) over the requested seeds and ids."""
    task: str
    algorithm: str
    dataset: str
    prior: str
    config_hash: str | None = None
    num_samples: int = 1
    samples: dict = field(default_factory=dict)       # (seed, id) -> record
    failed: dict = field(default_factory=dict)        # (seed, id) -> reason
    unavailable: dict = field(default_factory=dict)
    expected: set = field(default_factory=set)        # (seed, id)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for s, _ in self.samples} | {s for s, _ in self.expected})

    def summary(self) -> dict:
        return R.summarize({k: r.get("metrics", {}) for k, r in self.samples.items()})

    def missing(self) -> list[dict]:
        out = []
        for seed, sample_id in sorted(self.expected - set(self.samples)):
            reason = self.failed.get((seed, sample_id))
            out.append({"seed": seed, "id": sample_id, "reason": f"failed: {reason}" if reason else "not run"})
        return out

    def mean_seconds(self) -> float | None:
        secs = [r["seconds"] for r in self.samples.values() if isinstance(r.get("seconds"), (int, float))]
        return sum(secs) / len(secs) if secs else None


def read_manifest(exp_dir: str | os.PathLike) -> dict | None:
    path = Path(exp_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def collect(exp_dir: str | os.PathLike, manifest: dict | None = None) -> list[Entry]:
    """Group every sample record under ``exp_dir`` into entries; add the requested samples from ``manifest``."""
    entries: dict[tuple, Entry] = {}
    for path in sorted(Path(exp_dir).rglob("result_*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            print(f"lmaps-bench: skipping unreadable record {path}", file=sys.stderr)
            continue
        if "task" not in record or "algorithm" not in record:
            continue
        key = (record["task"], record["algorithm"], record.get("dataset", ""), record.get("prior", ""))
        entry = entries.setdefault(key, Entry(*key))
        _add_record(entry, record, path)
    if manifest:
        _add_expected(entries, manifest)
    tasks, algorithms = _requested_order(manifest)
    return sorted(entries.values(), key=lambda e: (e.dataset, tasks.get(e.task, len(tasks)), e.task,
                                                    algorithms.get(e.algorithm, len(algorithms)), e.algorithm))


def _requested_order(manifest: dict | None) -> tuple[dict[str, int], dict[str, int]]:
    """Rank of each task and algorithm name in the order the sweep asked for them (tables keep that order)."""
    if not manifest:
        return {}, {}
    task_names = manifest.get("task_names") or {}
    algo_names = manifest.get("algorithm_names") or {}
    tasks = [task_names.get(t, t) for t in manifest.get("tasks", [])]
    algorithms = [algo_names.get(a, a) for a in manifest.get("algorithms", [])]
    return ({t: i for i, t in enumerate(dict.fromkeys(tasks))},
            {a: i for i, a in enumerate(dict.fromkeys(algorithms))})


def _add_record(entry: Entry, record: dict, path: Path) -> None:
    h = record.get("config_hash")
    if entry.config_hash is not None and h is not None and h != entry.config_hash:
        raise R.ConfigMismatchError(
            f"{entry.task}/{entry.algorithm}: samples with different configurations (config hash "
            f"{entry.config_hash[:12]} and {h[:12]}, e.g. {path}); results of different settings must not share a "
            f"table entry: rerun one of them with another algorithm name or exp_dir")
    entry.config_hash = entry.config_hash or h
    entry.num_samples = int(record.get("num_samples", 1))
    key = (int(record.get("seed", 0)), int(record["id"]))
    entry.unavailable.update(record.get("unavailable", {}) or {})
    if record.get("status", "ok") == "ok" and Path(path).with_suffix(".pt").is_file():
        entry.samples[key] = record
        entry.failed.pop(key, None)
    elif record.get("status") == "failed":
        entry.failed[key] = record.get("reason", "failed")


def _add_expected(entries: dict[tuple, Entry], manifest: dict) -> None:
    wanted = {(s, i) for s in manifest.get("seeds", []) for i in manifest.get("ids", [])}
    task_names = manifest.get("task_names") or {t: t for t in manifest.get("tasks", [])}
    algo_names = manifest.get("algorithm_names") or {a: a for a in manifest.get("algorithms", [])}
    for task in manifest.get("tasks", []):
        for algorithm in manifest.get("algorithms", []):
            t, a = task_names.get(task, task), algo_names.get(algorithm, algorithm)
            found = [e for e in entries.values() if e.task == t and e.algorithm == a]
            if not found:
                key = (t, a, manifest.get("dataset") or "", manifest.get("prior") or "")
                found = [entries.setdefault(key, Entry(*key))]
            for entry in found:
                entry.expected |= wanted


# ------------------------------------------------------------------------------------------------ tables
def _cell(stats: dict | None, digits: int, bold: bool = False) -> str:
    if not stats:
        return "–"
    text = f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"**{text}**" if bold else text


def _best(entries: list[Entry], metric: str) -> float | None:
    values = [e.summary()[metric]["mean"] for e in entries if metric in e.summary()]
    if len(values) < 2:
        return None
    return max(values) if HIGHER_IS_BETTER.get(metric, True) else min(values)


def markdown_table(entries: list[Entry]) -> str:
    """The paper's layout (Table 1): one block of rows per task, one row per method, mean ± std per metric;
    the best mean of each task is bold. One table per dataset/prior; notes list unavailable metrics and every
    missing sample."""
    out = []
    by_dataset: dict[tuple, list[Entry]] = defaultdict(list)
    for e in entries:
        by_dataset[(e.dataset, e.prior)].append(e)
    for (dataset, prior), group in by_dataset.items():
        n_total = sum(len(e.samples) for e in group)
        out.append(f"### {dataset or '?'} (prior {prior or '?'}): mean ± std over test images × seeds "
                   f"({n_total} samples)\n")
        header = ["Task", "Method", *(label for _, label, _ in TABLE_METRICS), "n", "s / image"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        by_task: dict[str, list[Entry]] = defaultdict(list)
        for e in group:
            by_task[e.task].append(e)
        for task, rows in by_task.items():
            best = {m: _best(rows, m) for m, _, _ in TABLE_METRICS if m not in ("misfit_rms", "meas_psnr")}
            for k, e in enumerate(rows):
                s = e.summary()
                cells = [task if k == 0 else "", e.algorithm]
                for metric, _, digits in TABLE_METRICS:
                    stats = s.get(metric)
                    if stats is None and metric in e.unavailable:
                        cells.append("n/a")
                        continue
                    is_best = stats is not None and best.get(metric) is not None and stats["mean"] == best[metric]
                    cells.append(_cell(stats, digits, is_best))
                secs = e.mean_seconds()
                cells += [f"{len(e.samples)}/{len(e.expected) or len(e.samples)}",
                          f"{secs:.1f}" if secs is not None else "–"]
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
        notes = sorted({f"{m}: {r}" for e in group for m, r in e.unavailable.items()})
        for e in group:
            if e.missing():
                notes.append(f"missing {e.task} / {e.algorithm}: {_describe_missing(e.missing())}")
        out += [f"- {n}" for n in notes]
        out.append("")
    if not entries:
        out.append("(no results found)")
    return "\n".join(out).rstrip() + "\n"


def _describe_missing(missing: list[dict]) -> str:
    """``'seed 0 ids 1, 3 (not run); seed 0 id 2 (failed: ...)'``: samples grouped by seed and reason."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for m in missing:
        groups[(m["seed"], m["reason"])].append(m["id"])
    parts = []
    for (seed, reason), ids in groups.items():
        label = "id" if len(ids) == 1 else "ids"
        parts.append(f"seed {seed} {label} {', '.join(map(str, ids))} ({reason})")
    return "; ".join(parts)


def csv_table(entries: list[Entry]) -> str:
    """One row per entry: identity, counts, ``<metric>_mean`` / ``<metric>_std`` columns, missing (seed:id) list."""
    metrics = [m for m, _, _ in TABLE_METRICS]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "algorithm", "dataset", "prior", "config_hash", "n", "expected",
                     *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), "seconds_per_image", "missing"])
    for e in entries:
        s = e.summary()
        row = [e.task, e.algorithm, e.dataset, e.prior, e.config_hash or "", len(e.samples), len(e.expected)]
        for m in metrics:
            if m in s:
                row += [f"{s[m]['mean']:.6g}", f"{s[m]['std']:.6g}"]
            else:
                row += ["unavailable" if m in e.unavailable else "", ""]
        secs = e.mean_seconds()
        row += [f"{secs:.3g}" if secs is not None else "", " ".join(f"{m['seed']}:{m['id']}" for m in e.missing())]
        writer.writerow(row)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- leaderboard
def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the numbers (and the InverseBench checkout's commit, if any)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("lmaps-plugin", "torch", "numpy", "torchmetrics", "hydra-core", "omegaconf"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["inversebench"] = _inversebench_commit()
    return out


def _inversebench_commit() -> str | None:
    root = os.environ.get("INVERSEBENCH_ROOT")
    if not root:
        return None
    try:
        done = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def submission(entries: list[Entry], manifest: dict | None) -> dict:
    """The leaderboard document (validated against ``leaderboard.schema.json``)."""
    bench = None
    if manifest:
        bench = {k: manifest[k] for k in ("tasks", "algorithms", "seeds", "ids") if k in manifest}
        bench["prior"] = manifest.get("prior")
        if "command" in manifest:
            bench["command"] = list(manifest["command"])
    doc = {
        "schema_version": leaderboard.SCHEMA_VERSION,
        "kind": leaderboard.KIND,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_versions": package_versions(),
        "benchmark": bench,
        "entries": [_entry_json(e) for e in entries],
    }
    leaderboard.validate(doc)
    return doc


def _entry_json(e: Entry) -> dict:
    per_sample = []
    for (seed, sample_id), record in sorted(e.samples.items()):
        item = {"seed": seed, "id": sample_id, "metrics": dict(record.get("metrics", {}))}
        if isinstance(record.get("seconds"), (int, float)):
            item["seconds"] = float(record["seconds"])
        per_sample.append(item)
    return {"task": e.task, "algorithm": e.algorithm, "dataset": e.dataset, "prior": e.prior,
            "config_hash": e.config_hash, "seeds": e.seeds or [0], "num_samples": e.num_samples,
            "summary": e.summary(), "per_sample": per_sample, "missing": e.missing(),
            "unavailable": dict(e.unavailable)}


@dataclass
class AggregateOutput:
    entries: list[Entry]
    table_md: Path
    table_csv: Path
    leaderboard: Path


def aggregate(exp_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> AggregateOutput:
    """Collect the records under ``exp_dir`` and write ``table.md``, ``table.csv``, ``leaderboard.json``."""
    if not Path(exp_dir).is_dir():
        raise FileNotFoundError(f"results folder {exp_dir} does not exist")
    manifest = read_manifest(exp_dir)
    entries = collect(exp_dir, manifest)
    out = Path(out_dir or exp_dir)
    md = R.atomic_write_text(out / TABLE_MD, markdown_table(entries))
    table = R.atomic_write_text(out / TABLE_CSV, csv_table(entries))
    board = R.atomic_write_json(out / LEADERBOARD, submission(entries, manifest))
    return AggregateOutput(entries, md, table, board)


# --------------------------------------------------------------------------------------------------- CLI
def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lmaps-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="launch the sweep (Hydra multirun), then aggregate")
    run.add_argument("--tasks", default="inpaint_random", help="comma-separated problem configs")
    run.add_argument("--algorithms", default="lmaps_cpu", help="comma-separated algorithm configs "
                     "(lmaps_cpu, lmaps_<task>, ib_dps, ib_daps, ib_diffpir, ib_reddiff, ib_pigdm, ...)")
    run.add_argument("--seeds", default="0", help="comma-separated seeds")
    run.add_argument("--num-images", type=int, default=4, help="test ids 0..N-1 (ignored with --ids)")
    run.add_argument("--ids", default=None, help="explicit test ids, e.g. '0-7,12'")
    run.add_argument("--shard-size", type=int, default=4, help="ids per job")
    run.add_argument("--jobs", type=int, default=2, help="parallel workers (joblib n_jobs / SLURM array parallelism)")
    run.add_argument("--launcher", default="joblib", choices=LAUNCHERS)
    run.add_argument("--exp-dir", default="results/bench", help="results folder of the sweep")
    run.add_argument("--prior", default=None, help="prior config (default: the app's, faces64)")
    run.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / jobs)")
    run.add_argument("--figures", action="store_true", help="also write figure.png per folder")
    run.add_argument("--no-aggregate", action="store_true")
    run.add_argument("--dry-run", action="store_true", help="print the Hydra command only")
    run.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. hydra.launcher.partition=gpu")
    agg = sub.add_parser("aggregate", help="write table.md, table.csv and leaderboard.json")
    agg.add_argument("--exp-dir", default="results/bench")
    agg.add_argument("--out", default=None, help="output folder (default: --exp-dir)")
    val = sub.add_parser("validate", help="check a leaderboard file against the schema")
    val.add_argument("file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``lmaps-bench``."""
    args = parse_args(argv)
    if args.command == "validate":
        leaderboard.validate(json.loads(Path(args.file).read_text(encoding="utf-8")))
        print(f"{args.file}: valid ({leaderboard.KIND} {leaderboard.SCHEMA_VERSION})")
        return 0
    if args.command == "run":
        ids = parse_id_list(args.ids, args.num_images)
        request = SweepRequest(tasks=_split(args.tasks), algorithms=_split(args.algorithms),
                               seeds=[int(s) for s in _split(args.seeds)], ids=ids, exp_dir=args.exp_dir,
                               shard_size=args.shard_size, jobs=args.jobs, launcher=args.launcher, prior=args.prior,
                               threads=args.threads, figures=args.figures, extra=list(args.overrides))
        status = run_sweep(request, dry_run=args.dry_run)
        if status != 0:
            print(f"lmaps-bench: the sweep exited with status {status}; aggregating what finished", file=sys.stderr)
        if args.dry_run or args.no_aggregate:
            return status
    out = aggregate(args.exp_dir, getattr(args, "out", None))
    print(out.table_md.read_text(encoding="utf-8"))
    print(f"table:       {out.table_md}\ncsv:         {out.table_csv}\nleaderboard: {out.leaderboard}")
    return 0 if args.command == "aggregate" else status


if __name__ == "__main__":
    sys.exit(main())
