"""``lmaps-bench aggregate``: every sample record of a results folder -> ``table.md``, ``table.csv`` and
``leaderboard.json``.

Every ``result_{id}.json`` record under the folder (``{task}/{algorithm.name}/{prior}-seed{s}/``) is validated
(and its ``.pt``'s SHA-256) and grouped into :class:`Entry` objects, one per (task, algorithm, dataset, prior).
Methods of a task are ranked only over the samples every one of them finished (:func:`compared_samples`); counts,
failures and the samples left out of the comparison are shown. Requested samples (``benchmark.json``) without a
finished result are listed by (seed, id) with the reason. The leaderboard file follows
``lmaps_plugin/bench/leaderboard.schema.json``.

Ensembles: with ``num_samples=M`` >= 2 every record carries the ensemble keys
(:data:`lmaps_plugin.evaluation.metrics.ENSEMBLE_DEFINITIONS`); leaderboard entries hold them per sample and as
mean ± std like every metric, with ``num_samples`` = M, and ``table.md`` gains "ensemble PSNR (M)" and "coverage 90% (M)".
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import platform
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ..app import results as R
from ..evaluation.metrics import ENSEMBLE_DEFINITIONS, HIGHER_IS_BETTER
from ..io import atomic_write_json, atomic_write_text
from . import leaderboard
from .sweep import read_manifest

TABLE_MD = "table.md"
TABLE_CSV = "table.csv"
LEADERBOARD = "leaderboard.json"
#: metric columns of the tables, in the paper's order, then ours
TABLE_METRICS = (("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 4), ("lpips", "LPIPS ↓", 4),
                 ("misfit_rms", "misfit", 4), ("meas_psnr", "meas. PSNR", 2))
#: ensemble columns (entries with num_samples = M >= 2), shown when any entry of a table has M >= 2
ENSEMBLE_COLUMNS = (("ensemble_psnr", "ensemble PSNR (M) ↑", 2), ("coverage_90", "coverage 90% (M)", 3))
#: counted cost columns (the run's own counters, lmaps_plugin.cost), shown when any entry of a table has them
COST_COLUMNS = (("nfe", "NFE"), ("forward_calls", "H calls"), ("vjp_calls", "∇H calls"))
#: ensemble keys of the CSV table (mean and std columns, empty for M = 1): all but M itself
ENSEMBLE_CSV_METRICS = tuple(k for k in ENSEMBLE_DEFINITIONS if k != "ensemble_size")


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

    def summary(self, keys=None) -> dict:
        """Mean ± std (and n) per metric over the entry's finished samples, or over ``keys`` of them."""
        chosen = self.samples if keys is None else {k: self.samples[k] for k in keys if k in self.samples}
        return R.summarize({k: r.get("metrics", {}) for k, r in chosen.items()})

    def missing(self) -> list[dict]:
        out = []
        for seed, sample_id in sorted((self.expected | set(self.failed)) - set(self.samples)):
            reason = self.failed.get((seed, sample_id))
            out.append({"seed": seed, "id": sample_id, "reason": f"failed: {reason}" if reason else "not run"})
        return out

    def mean_seconds(self) -> float | None:
        secs = [r["seconds"] for r in self.samples.values() if isinstance(r.get("seconds"), (int, float))]
        return sum(secs) / len(secs) if secs else None


def _hidden(path: Path, root: Path) -> bool:
    """Inside a hidden folder (``.replaced/``, ``.lmaps/``, ``.submitit/``): not a result of the sweep."""
    return any(part.startswith(".") for part in path.relative_to(root).parts[:-1])


def collect(exp_dir: str | os.PathLike, manifest: dict | None = None) -> list[Entry]:
    """Group every valid sample record under ``exp_dir`` into entries; add the requested samples from ``manifest``.

    Each record is validated (:func:`lmaps_plugin.app.results.record_problems`) and an ok one counts only when its
    ``.pt`` matches it (SHA-256); a bad one is named in a warning and counts as not run."""
    root = Path(exp_dir)
    entries: dict[tuple, Entry] = {}
    for path in sorted(root.rglob("result_*.json")):
        sample_id = R.result_file_id(path.name, "json")
        if sample_id is None or _hidden(path, root):
            continue
        record = R.read_record(path, sample_id)
        if record is None or "task" not in record or "algorithm" not in record:
            continue
        if record["status"] == "ok" and not R.verified(path.parent, sample_id, record):
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
    if record["status"] == "ok":
        entry.samples[key] = record
        entry.failed.pop(key, None)
    elif key not in entry.samples:
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
def cell(stats: dict | None, digits: int, bold: bool = False) -> str:
    """``'mean ± std'`` of a metric's summary with ``digits`` decimals (bold in markdown), ``'–'`` without one."""
    if not stats:
        return "–"
    text = f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"**{text}**" if bold else text


def compared_samples(rows: list[Entry]) -> set:
    """The (seed, id) samples every method of a task finished (methods with no finished sample cannot be ranked
    and are left out of the intersection)."""
    ranked = [e for e in rows if e.samples]
    return set.intersection(*(set(e.samples) for e in ranked)) if ranked else set()


def compared_by_entry(entries: list[Entry]) -> dict[int, set]:
    """``{id(entry): its compared samples}``: :func:`compared_samples` of the entry's task (same dataset and
    prior); empty for an entry with no finished sample."""
    out = {}
    for rows in by_task(entries).values():
        for e in rows:
            peers = [r for r in rows if (r.dataset, r.prior) == (e.dataset, e.prior)]
            out[id(e)] = compared_samples(peers) if e.samples else set()
    return out


def best_mean(summaries: list[dict], metric: str) -> float | None:
    """The best mean of ``metric`` over the summaries of a task's methods (None with fewer than two)."""
    values = [s[metric]["mean"] for s in summaries if metric in s]
    if len(values) < 2:
        return None
    return max(values) if HIGHER_IS_BETTER.get(metric, True) else min(values)


def by_task(group: list[Entry]) -> dict[str, list[Entry]]:
    """The entries grouped by task, in their order."""
    by_task: dict[str, list[Entry]] = defaultdict(list)
    for e in group:
        by_task[e.task].append(e)
    return by_task


def _samples_text(keys) -> str:
    keys = sorted(keys)
    text = ", ".join(f"{s}:{i}" for s, i in keys[:12])
    return text + (f", … ({len(keys)} in all)" if len(keys) > 12 else "")


def markdown_table(entries: list[Entry]) -> str:
    """The paper's layout (Table 1): one block of rows per task, one row per method, mean ± std per metric.

    Methods of a task are compared only over the samples every one of them finished (:func:`compared_samples`):
    the means are over those samples (``n``), and the best mean of each task is bold. ``done`` counts each method's
    finished samples against the requested ones and ``failed`` its failures; notes name the samples left out of
    the comparison, unavailable metrics and every missing sample. One table per dataset/prior. When an entry of a
    table has ``num_samples`` = M >= 2, :data:`ENSEMBLE_COLUMNS` follow the metrics: the ensemble PSNR (of the
    mean of the M samples) and the 90 % coverage, each with its M (``–`` for single-sample entries). The counted
    cost per image (:data:`COST_COLUMNS`: network calls, operator applications and gradients, from each run's own
    counters) follows the seconds when the records hold it."""
    out = []
    by_dataset: dict[tuple, list[Entry]] = defaultdict(list)
    for e in entries:
        by_dataset[(e.dataset, e.prior)].append(e)
    for (dataset, prior), group in by_dataset.items():
        out.append(f"### {dataset or '?'} (prior {prior or '?'}): mean ± std over the test images × seeds that "
                   f"every method of the task finished (n)\n")
        ensemble = [c for c in ENSEMBLE_COLUMNS if any(e.num_samples >= 2 for e in group)]
        costs = [c for c in COST_COLUMNS if any(c[0] in r.get("metrics", {}) for e in group for r in
                                                  e.samples.values())]
        header = ["Task", "Method", *(label for _, label, _ in (*TABLE_METRICS, *ensemble)), "n", "done", "failed",
                  "s / image", *(label for _, label in costs)]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        notes = []
        for task, rows in by_task(group).items():
            common = compared_samples(rows)
            summaries = [e.summary(common) if e.samples else {} for e in rows]
            best = {m: best_mean(summaries, m) for m, _, _ in TABLE_METRICS if m not in ("misfit_rms", "meas_psnr")}
            best["ensemble_psnr"] = best_mean(summaries, "ensemble_psnr")
            for k, (e, s) in enumerate(zip(rows, summaries)):
                cells = [task if k == 0 else "", e.algorithm]
                for metric, _, digits in TABLE_METRICS:
                    stats = s.get(metric)
                    if stats is None and metric in e.unavailable:
                        cells.append("n/a")
                        continue
                    is_best = stats is not None and best.get(metric) is not None and stats["mean"] == best[metric]
                    cells.append(cell(stats, digits, is_best))
                for metric, _, digits in ensemble:
                    stats = s.get(metric) if e.num_samples >= 2 else None
                    is_best = stats is not None and best.get(metric) is not None and stats["mean"] == best[metric]
                    cells.append(f"{cell(stats, digits, is_best)} ({e.num_samples})" if stats else "–")
                secs = e.mean_seconds()
                cells += [str(len(common)) if e.samples else "0",
                          f"{len(e.samples)}/{len(e.expected | set(e.samples)) or len(e.samples)}",
                          str(len(e.failed)), f"{secs:.1f}" if secs is not None else "–"]
                cells += [f"{s[m]['mean']:.0f}" if m in s else "–" for m, _ in costs]
                out.append("| " + " | ".join(cells) + " |")
                left_out = set(e.samples) - common
                if left_out:
                    notes.append(f"not compared {task} / {e.algorithm}: {len(left_out)} finished sample(s) another "
                                 f"method did not finish (seed:id {_samples_text(left_out)})")
                if not e.samples:
                    notes.append(f"not ranked {task} / {e.algorithm}: no finished sample")
        out.append("")
        notes = sorted({f"{m}: {r}" for e in group for m, r in e.unavailable.items()}) + notes
        if ensemble:
            notes.insert(0, "ensemble PSNR (M): PSNR of the mean of the M samples per image; coverage 90% (M): "
                            "fraction of pixels inside the ensemble's 90% predictive interval (0.90 when calibrated); "
                            "std_mean, z2_mean and the rest per sample in leaderboard.json")
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
    """One row per entry, as :func:`markdown_table`: identity, counts (``n``: compared samples, ``finished``,
    ``expected``, ``failed``), ``num_samples`` (M), ``<metric>_mean`` / ``<metric>_std`` over the compared samples
    (with the ensemble keys of :data:`ENSEMBLE_CSV_METRICS`, empty for M = 1), the missing (seed:id) list."""
    metrics = [m for m, _, _ in TABLE_METRICS] + list(ENSEMBLE_CSV_METRICS)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "algorithm", "dataset", "prior", "config_hash", "num_samples", "n", "finished",
                     "expected", "failed",
                     *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), "seconds_per_image", "missing"])
    common_of = compared_by_entry(entries)
    for e in entries:
        common = common_of[id(e)]
        s = e.summary(common)
        row = [e.task, e.algorithm, e.dataset, e.prior, e.config_hash or "", e.num_samples, len(common),
               len(e.samples), len(e.expected), len(e.failed)]
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
        if manifest.get("requested"):
            bench["requested"] = [dict(run) for run in manifest["requested"]]
    commands = (manifest or {}).get("commands", {})
    compared = compared_by_entry(entries)
    doc = {
        "schema_version": leaderboard.SCHEMA_VERSION,
        "kind": leaderboard.KIND,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "package_versions": package_versions(),
        "benchmark": bench,
        "entries": [_entry_json(e, compared[id(e)], commands.get(e.config_hash)) for e in entries],
    }
    leaderboard.validate(doc)
    return doc


def _entry_json(e: Entry, compared: set, command: list[str] | None = None) -> dict:
    """One leaderboard entry; each per-sample row keeps its record's config hash, and ``command`` is the command
    that asked for the entry's config hash (None when the folder's request does not name it)."""
    per_sample = []
    for (seed, sample_id), record in sorted(e.samples.items()):
        item = {"seed": seed, "id": sample_id, "metrics": dict(record.get("metrics", {}))}
        if isinstance(record.get("seconds"), (int, float)):
            item["seconds"] = float(record["seconds"])
        if isinstance(record.get("config_hash"), str):
            item["config_hash"] = record["config_hash"]
        per_sample.append(item)
    return {"task": e.task, "algorithm": e.algorithm, "dataset": e.dataset, "prior": e.prior,
            "config_hash": e.config_hash, "command": list(command) if command is not None else None,
            "seeds": e.seeds or [0], "num_samples": e.num_samples,
            "summary": e.summary(), "per_sample": per_sample, "missing": e.missing(),
            "unavailable": dict(e.unavailable),
            "compared": {"samples": [{"seed": s, "id": i} for s, i in sorted(compared)],
                         "summary": e.summary(compared)}}


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
    md = atomic_write_text(out / TABLE_MD, markdown_table(entries))
    table = atomic_write_text(out / TABLE_CSV, csv_table(entries))
    board = atomic_write_json(out / LEADERBOARD, submission(entries, manifest))
    return AggregateOutput(entries, md, table, board)
