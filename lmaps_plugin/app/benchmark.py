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

``run`` checks everything before launching: seeds and ids (non-negative integers), sizes, and every task ×
algorithm configuration against the app's schema (:mod:`lmaps_plugin.app.schema`, with the extra overrides).

``aggregate`` reads every ``result_{id}.json`` record under the folder (``{task}/{algorithm.name}/{prior}-seed{s}/``),
validates it (and its ``.pt``'s SHA-256), and writes ``table.md``, ``table.csv`` and ``leaderboard.json`` (schema:
``lmaps_plugin/app/leaderboard.schema.json``). Methods of a task are ranked only over the samples every one of them
finished; counts, failures and the samples left out of the comparison are shown. Requested samples without a
finished result are listed by (seed, id) with the reason.

``validate`` checks a leaderboard file against the schema and its summaries against its per-sample rows (n, mean,
std, duplicates) and the ensemble keys against each entry's ``num_samples``, one readable line per problem.

Ensembles: with ``num_samples=M`` >= 2 (an extra override of ``run``) every record carries the ensemble keys
(:data:`lmaps_plugin.app.metrics.ENSEMBLE_DEFINITIONS`); leaderboard entries hold them per sample and as mean ± std
like every metric, with ``num_samples`` = M, and ``table.md`` gains "ensemble PSNR (M)" and "coverage 90% (M)".

Subcommands are entries of :data:`SUBCOMMANDS` (name, help, arguments, handler): adding one is one entry.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import subprocess
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from . import leaderboard
from . import results as R
from . import schema
from ..data.base import parse_id_list
from .metrics import ENSEMBLE_DEFINITIONS, HIGHER_IS_BETTER

MANIFEST = "benchmark.json"
TABLE_MD = "table.md"
TABLE_CSV = "table.csv"
LEADERBOARD = "leaderboard.json"
LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm")
#: metric columns of the tables, in the paper's order, then ours
TABLE_METRICS = (("psnr", "PSNR ↑", 2), ("ssim", "SSIM ↑", 4), ("lpips", "LPIPS ↓", 4),
                 ("misfit_rms", "misfit", 4), ("meas_psnr", "meas. PSNR", 2))
#: ensemble columns (entries with num_samples = M >= 2), shown when any entry of a table has M >= 2
ENSEMBLE_COLUMNS = (("ensemble_psnr", "ensemble PSNR (M) ↑", 2), ("coverage_90", "coverage 90% (M)", 3))
#: ensemble keys of the CSV table (mean and std columns, empty for M = 1): all but M itself
ENSEMBLE_CSV_METRICS = tuple(k for k in ENSEMBLE_DEFINITIONS if k != "ensemble_size")


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
    if launcher == "submitit_local":  # starts every job at once: it has no array_parallelism
        return ["hydra/launcher=submitit_local"]
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

    def job_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // max(1, self.jobs if self.launcher == "joblib" else 1))

    def common_overrides(self) -> list[str]:
        """Overrides every job shares (no sweep lists, no launcher)."""
        out = [f"exp_dir={self.exp_dir}", f"threads={self.job_threads()}"]
        if self.prior:
            out.append(f"prior={self.prior}")
        if not self.figures:
            out.append("figure.enabled=false")
        return out

    def overrides(self) -> list[str]:
        """Hydra overrides of the ``lmaps -m`` call."""
        for name in ("tasks", "algorithms", "seeds", "ids"):
            if not getattr(self, name):
                raise ValueError(f"the sweep needs at least one of {name}")
        out = [f"problem={','.join(self.tasks)}", f"algorithm={','.join(self.algorithms)}",
               f"seed={','.join(str(s) for s in self.seeds)}",
               f"ids={','.join(shard_ranges(self.ids, self.shard_size))}"]
        out += self.common_overrides()
        return out + launcher_overrides(self.launcher, self.jobs) + list(self.extra)

    def command(self) -> list[str]:
        return [sys.executable, "-c", "from lmaps_plugin.app.cli import main; main()", "-m", *self.overrides()]


def compose_names(request: SweepRequest) -> dict[str, dict[str, str]]:
    """``{'algorithms': {config name: algorithm.name}, 'tasks': {config: problem.name}, 'dataset': ..., 'prior':
    ...}`` read from the composed configs (nothing is built). Every task × algorithm job configuration (first seed,
    first shard, with the extra overrides) is checked against the app's schema first: :class:`schema.ConfigError`
    names every problem, before anything is launched."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from . import cli  # noqa: F401 - registers the config's resolver

    from .cli import experiment_dir, run_config_hash

    extra = [o for o in request.extra if not o.lstrip("+~").startswith("hydra")]
    first = [f"seed={request.seeds[0]}", f"ids={shard_ranges(request.ids, request.shard_size)[0]}"]
    names: dict[str, Any] = {"algorithms": {}, "tasks": {}, "runs": []}
    problems: list[str] = []
    with initialize_config_module(config_module="lmaps_plugin.configs", version_base="1.3"):
        for task in request.tasks:
            for algorithm in request.algorithms:
                where = f"--tasks {task} --algorithms {algorithm}"
                try:
                    cfg = compose("config", overrides=[f"problem={task}", f"algorithm={algorithm}", *first,
                                                       *request.common_overrides(), *extra])
                    options = schema.validate(cfg)
                    config_hash = run_config_hash(cfg)
                except schema.ConfigError as exc:
                    problems += [f"{where}: {p}" for p in exc.problems if f"{where}: {p}" not in problems]
                    continue
                except (HydraException, OmegaConfBaseException, ValueError) as exc:
                    problems.append(f"{where}: {str(exc).splitlines()[0]}")
                    continue
                problems += [f"{where}: {p}" for p in runnable_problems(cfg, request.ids, "--ids",
                                                                        local=request.launcher != "submitit_slurm")]
                if not options.overwrite:
                    problems += [f"{where}: {p}" for p in _other_configuration(cfg, request.seeds, config_hash,
                                                                                experiment_dir)]
                names["algorithms"][algorithm] = str(cfg.algorithm.name)
                names["tasks"][task] = str(cfg.problem.name)
                names["dataset"] = str(cfg.problem.data.name)
                names["prior"] = str(cfg.prior.name)
                names["runs"].append({"task": str(cfg.problem.name), "algorithm": str(cfg.algorithm.name),
                                      "prior": str(cfg.prior.name), "config_hash": config_hash})
    if problems:
        raise schema.ConfigError(problems)
    return names


def split_size(cfg) -> int | None:
    """How many images the problem's dataset split holds, where it is finite and known without building it (the
    packaged faces); None otherwise (procedural sets have no end; other datasets are not opened here)."""
    from omegaconf import OmegaConf

    data = OmegaConf.select(cfg, "problem.data")
    if data is None or OmegaConf.select(cfg, "problem.data._target_") != "lmaps_plugin.data.builtin_dataset":
        return None
    if str(OmegaConf.select(cfg, "problem.data.name", default="")) != "faces":
        return None
    from ..data.packaged import FACES

    return len(FACES.get(str(OmegaConf.select(cfg, "problem.data.split", default="test") or "test"), ())) or None


def runnable_problems(cfg, ids: Sequence[int], flag: str, local: bool = True) -> list[str]:
    """What makes a valid configuration fail on every sample of this sweep, one line each (empty when nothing):
    ids past the end of the dataset's split, and (``local``: the jobs run on this machine) a CUDA device where
    CUDA is not available."""
    from omegaconf import OmegaConf

    out = []
    size = split_size(cfg)
    if size is not None:
        past = sorted(i for i in ids if i >= size)
        if past:
            shown = ", ".join(map(str, past[:5])) + (", ..." if len(past) > 5 else "")
            split = OmegaConf.select(cfg, "problem.data.split", default="test") or "test"
            out.append(f"{flag}: id(s) {shown} are not allowed: the {cfg.problem.data.name} {split} split has "
                       f"{size} images (ids 0-{size - 1})")
    device = str(OmegaConf.select(cfg, "device", default="cpu"))
    if local and device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            out.append(f"device={device} is not allowed here: CUDA is not available on this machine (use device=cpu "
                       f"or device=auto)")
        elif index >= torch.cuda.device_count():
            out.append(f"device={device} is not allowed here: this machine has {torch.cuda.device_count()} CUDA "
                       f"device(s)")
    return out


def _other_configuration(cfg, seeds: Sequence[int], config_hash: str, experiment_dir) -> list[str]:
    """The results folders of this job configuration (one per seed) that hold finished samples of another
    configuration: the jobs would be refused (or, resumed, mix them), so the sweep is refused before launching."""
    from omegaconf import open_dict

    out = []
    for seed in seeds:
        with open_dict(cfg):
            cfg.seed = int(seed)
        folder = experiment_dir(cfg)
        if not folder.is_dir():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = R.read_records(folder)
        try:
            R.check_config(records, config_hash, folder, seed=int(seed))
        except R.ConfigMismatchError as exc:
            out.append(str(exc))
    return out


def write_manifest(request: SweepRequest, names: dict) -> Path:
    """Write (merging with an existing one: union of tasks, algorithms, seeds and ids) ``benchmark.json``.

    ``requested`` holds the config hash each (task, algorithm, prior) was last asked for, ``commands`` the command
    that last asked for each config hash: a leaderboard entry names the command of its own results."""
    command = request.command()[3:]
    runs = list(names.get("runs", []))
    manifest = {"tasks": list(request.tasks), "algorithms": list(request.algorithms), "seeds": list(request.seeds),
                "ids": list(request.ids), "prior": names.get("prior"), "dataset": names.get("dataset"),
                "task_names": names["tasks"], "algorithm_names": names["algorithms"], "command": command,
                "requested": runs, "commands": {run["config_hash"]: command for run in runs}}
    old = read_manifest(request.exp_dir)
    if old is not None:
        for key in ("tasks", "algorithms"):  # keep the requested order (tables follow it)
            manifest[key] = list(dict.fromkeys([*old.get(key, []), *manifest[key]]))
        for key in ("seeds", "ids"):
            manifest[key] = sorted(set(old.get(key, [])) | set(manifest[key]))
        for key in ("task_names", "algorithm_names", "commands"):
            manifest[key] = {**old.get(key, {}), **manifest[key]}
        newer = {_run_key(run) for run in runs}
        manifest["requested"] = [run for run in old.get("requested", []) if _run_key(run) not in newer] + runs
    return R.atomic_write_json(Path(request.exp_dir) / MANIFEST, manifest)


def _run_key(run: dict) -> tuple:
    return run["task"], run["algorithm"], run["prior"]


def run_sweep(request: SweepRequest, dry_run: bool = False) -> int:
    """Check every job's configuration, then launch the Hydra multirun (blocking); return its exit status."""
    command = request.command()
    names = compose_names(request)  # raises schema.ConfigError before anything is launched
    read_manifest(request.exp_dir)  # a broken benchmark.json is refused before launching too (ManifestError)
    print("lmaps-bench: " + " ".join(_quote(a) for a in command[3:]), flush=True)
    if dry_run:
        return 0
    Path(request.exp_dir).mkdir(parents=True, exist_ok=True)
    write_manifest(request, names)
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


def read_manifest(exp_dir: str | os.PathLike) -> dict | None:
    """The folder's ``benchmark.json`` (None when there is none); :class:`ManifestError` names what is wrong with
    a broken one (not JSON, not an object, a key of the wrong type)."""
    path = Path(exp_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path} cannot be read as JSON ({str(exc).splitlines()[0][:200]}); fix or remove it "
                            f"(the sweep's request: lmaps-bench run writes it again)") from None
    problems = manifest_problems(manifest)
    if problems:
        raise ManifestError(f"{path} is not a valid sweep request: {'; '.join(problems[:5])}; fix or remove it "
                            f"(lmaps-bench run writes it again)")
    return manifest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def manifest_problems(manifest: Any) -> list[str]:
    """What is wrong with a ``benchmark.json`` document (empty when nothing)."""
    if not isinstance(manifest, dict):
        return [f"expected a JSON object, got {type(manifest).__name__}"]
    problems = []
    for key in ("tasks", "algorithms"):
        value = manifest.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{key!r} must be a list of names, got {value!r:.60}")
    for key in ("seeds", "ids"):
        value = manifest.get(key, [])
        if not (isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)):
            problems.append(f"{key!r} must be a list of non-negative integers, got {value!r:.60}")
        elif len(value) > schema.MAX_IDS:
            problems.append(f"{key!r} names more than {schema.MAX_IDS} values")
    for key in ("prior", "dataset"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            problems.append(f"{key!r} must be a name or null, got {manifest[key]!r:.60}")
    for key in ("task_names", "algorithm_names"):
        value = manifest.get(key, {})
        if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            problems.append(f"{key!r} must map config names to names, got {value!r:.60}")
    command = manifest.get("command", [])
    if not (isinstance(command, list) and all(isinstance(a, str) for a in command)):
        problems.append(f"'command' must be a list of arguments, got {command!r:.60}")
    commands = manifest.get("commands", {})
    if not (isinstance(commands, dict) and all(isinstance(c, list) and all(isinstance(a, str) for a in c)
                                               for c in commands.values())):
        problems.append(f"'commands' must map config hashes to argument lists, got {commands!r:.60}")
    requested = manifest.get("requested", [])
    if not (isinstance(requested, list) and all(
            isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("task", "algorithm", "prior",
                                                                            "config_hash")) for r in requested)):
        problems.append(f"'requested' must be a list of {{task, algorithm, prior, config_hash}}, got "
                        f"{requested!r:.60}")
    return problems


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
        match = R._RESULT_RE.match(path.name)
        if match is None or _hidden(path, root):
            continue
        sample_id = int(match.group(1))
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
def _cell(stats: dict | None, digits: int, bold: bool = False) -> str:
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
    for rows in _by_task(entries).values():
        for e in rows:
            peers = [r for r in rows if (r.dataset, r.prior) == (e.dataset, e.prior)]
            out[id(e)] = compared_samples(peers) if e.samples else set()
    return out


def _best(summaries: list[dict], metric: str) -> float | None:
    values = [s[metric]["mean"] for s in summaries if metric in s]
    if len(values) < 2:
        return None
    return max(values) if HIGHER_IS_BETTER.get(metric, True) else min(values)


def _by_task(group: list[Entry]) -> dict[str, list[Entry]]:
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
    mean of the M samples) and the 90 % coverage, each with its M (``–`` for single-sample entries)."""
    out = []
    by_dataset: dict[tuple, list[Entry]] = defaultdict(list)
    for e in entries:
        by_dataset[(e.dataset, e.prior)].append(e)
    for (dataset, prior), group in by_dataset.items():
        out.append(f"### {dataset or '?'} (prior {prior or '?'}): mean ± std over the test images × seeds that "
                   f"every method of the task finished (n)\n")
        ensemble = [c for c in ENSEMBLE_COLUMNS if any(e.num_samples >= 2 for e in group)]
        header = ["Task", "Method", *(label for _, label, _ in (*TABLE_METRICS, *ensemble)), "n", "done", "failed",
                  "s / image"]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        notes = []
        for task, rows in _by_task(group).items():
            common = compared_samples(rows)
            summaries = [e.summary(common) if e.samples else {} for e in rows]
            best = {m: _best(summaries, m) for m, _, _ in TABLE_METRICS if m not in ("misfit_rms", "meas_psnr")}
            best["ensemble_psnr"] = _best(summaries, "ensemble_psnr")
            for k, (e, s) in enumerate(zip(rows, summaries)):
                cells = [task if k == 0 else "", e.algorithm]
                for metric, _, digits in TABLE_METRICS:
                    stats = s.get(metric)
                    if stats is None and metric in e.unavailable:
                        cells.append("n/a")
                        continue
                    is_best = stats is not None and best.get(metric) is not None and stats["mean"] == best[metric]
                    cells.append(_cell(stats, digits, is_best))
                for metric, _, digits in ensemble:
                    stats = s.get(metric) if e.num_samples >= 2 else None
                    is_best = stats is not None and best.get(metric) is not None and stats["mean"] == best[metric]
                    cells.append(f"{_cell(stats, digits, is_best)} ({e.num_samples})" if stats else "–")
                secs = e.mean_seconds()
                cells += [str(len(common)) if e.samples else "0",
                          f"{len(e.samples)}/{len(e.expected | set(e.samples)) or len(e.samples)}",
                          str(len(e.failed)), f"{secs:.1f}" if secs is not None else "–"]
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
    md = R.atomic_write_text(out / TABLE_MD, markdown_table(entries))
    table = R.atomic_write_text(out / TABLE_CSV, csv_table(entries))
    board = R.atomic_write_json(out / LEADERBOARD, submission(entries, manifest))
    return AggregateOutput(entries, md, table, board)


# --------------------------------------------------------------------------------------------------- CLI
class UsageError(ValueError):
    """A bad command-line value; printed as one line (exit code 2)."""


class ManifestError(UsageError):
    """A results folder's ``benchmark.json`` is broken (exit code 2, one line)."""


def parse_ids(text: str | None, num_images: int | None, flag: str) -> list[int]:
    """Sample ids of a command-line flag (``'0-7,12'``; ``num_images`` when ``text`` is None), at most
    :data:`schema.MAX_IDS` of them (the app's limit), checked before any list is built. Raises
    :class:`UsageError` naming the flag."""
    count = schema._range_size(text) if isinstance(text, str) else (num_images or 0)
    if count > schema.MAX_IDS:
        raise UsageError(f"{flag} {text if text is not None else num_images!r} is not allowed: it names more than "
                         f"{schema.MAX_IDS} ids")
    try:
        return parse_id_list(text, num_images)
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r}: {exc}") from None


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def seed_list(text: str) -> list[int]:
    """``'0,1,2'`` -> ``[0, 1, 2]``: non-negative integers, no repeats (argparse type)."""
    seeds = []
    for part in _split(text):
        try:
            seed = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"seed {part!r} is not an integer (seeds are non-negative integers, "
                                             f"e.g. --seeds 0,1)") from None
        if seed < 0:
            raise argparse.ArgumentTypeError(f"seed {seed} is negative (seeds are non-negative integers)")
        if seed in seeds:
            raise argparse.ArgumentTypeError(f"seed {seed} is repeated")
        seeds.append(seed)
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed")
    return seeds


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (an integer >= 1 is allowed)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: an integer >= 1")
    return value


def request_from_args(args: argparse.Namespace) -> SweepRequest:
    """The sweep of ``lmaps-bench run`` (ids checked: non-negative, no repeats)."""
    ids = parse_ids(args.ids, None if args.ids is not None else args.num_images,
                    "--ids" if args.ids is not None else "--num-images")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise UsageError(f"--ids {args.ids!r}: ids must not repeat (repeated: {repeated})")
    tasks, algorithms = _split(args.tasks), _split(args.algorithms)
    for flag, names in (("--tasks", tasks), ("--algorithms", algorithms)):
        if not names:
            raise UsageError(f"{flag} names nothing")
    return SweepRequest(tasks=tasks, algorithms=algorithms, seeds=list(args.seeds), ids=ids, exp_dir=args.exp_dir,
                        shard_size=args.shard_size, jobs=args.jobs, launcher=args.launcher, prior=args.prior,
                        threads=args.threads, figures=args.figures, extra=list(args.overrides))


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


#: the subcommands, in --help order; another module adds one by appending a :class:`Subcommand`
SUBCOMMANDS: list[Subcommand] = [
    Subcommand("run", "check, launch the sweep (Hydra multirun), then aggregate", _run_arguments, _run_command),
    Subcommand("aggregate", "write table.md, table.csv and leaderboard.json", _aggregate_arguments,
               _aggregate_command),
    Subcommand("validate", "check a leaderboard file: schema, and summaries against per-sample rows",
               _validate_arguments, _validate_command),
]

from . import compare as _compare, tune as _tune  # noqa: E402 - tuning subcommands (Optuna loads when they run)

SUBCOMMANDS += [Subcommand(*_tune.SUBCOMMAND), Subcommand(*_compare.SUBCOMMAND)]


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
