"""``lmaps-bench run``: one Hydra multirun of the ``lmaps`` app over tasks × algorithms × seeds × sample-id
shards, checked before launching, and the sweep's request ``benchmark.json`` in the results folder.

``run`` launches ``lmaps -m problem=<tasks> algorithm=<algorithms> seed=<seeds> ids=<shards> ...`` (one Hydra job
per task × algorithm × seed × id range) on Hydra's joblib launcher (``--launcher joblib``, ``--jobs`` workers) or
on SLURM through the submitit launcher (``--launcher submitit_slurm`` plus ``hydra.launcher.partition=...
hydra.launcher.timeout_min=...`` etc. as extra overrides). Running the same command again resumes: every job
skips the samples whose ``result_{id}.pt`` is already there.

Everything is checked before launching: seeds and ids (non-negative integers), sizes, and every task × algorithm
configuration against the app's schema (:mod:`lmaps_plugin.app.schema`, with the extra overrides), ids past the
end of the dataset's split, a CUDA device where there is none, and results folders of another configuration.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ..app import results as R
from ..app import schema
from ..app.build import experiment_dir, run_config_hash
from ..app.compose import compose_app
from ..data.packaged import FACES
from ..io import atomic_write_json
from .arguments import UsageError, parse_ids, split_names

MANIFEST = "benchmark.json"
LAUNCHERS = ("basic", "joblib", "submitit_local", "submitit_slurm")


class ManifestError(UsageError):
    """A results folder's ``benchmark.json`` is broken (exit code 2, one line)."""


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
        return [sys.executable, "-c", "from lmaps_plugin.app.main import main; main()", "-m", *self.overrides()]


def compose_names(request: SweepRequest) -> dict[str, dict[str, str]]:
    """``{'algorithms': {config name: algorithm.name}, 'tasks': {config: problem.name}, 'dataset': ..., 'prior':
    ...}`` read from the composed configs (nothing is built). Every task × algorithm job configuration (first seed,
    first shard, with the extra overrides) is checked against the app's schema first: :class:`schema.ConfigError`
    names every problem, before anything is launched."""
    extra = [o for o in request.extra if not o.lstrip("+~").startswith("hydra")]
    first = [f"seed={request.seeds[0]}", f"ids={shard_ranges(request.ids, request.shard_size)[0]}"]
    names: dict[str, Any] = {"algorithms": {}, "tasks": {}, "runs": []}
    problems: list[str] = []
    for task in request.tasks:
        for algorithm in request.algorithms:
            where = f"--tasks {task} --algorithms {algorithm}"
            try:
                cfg = compose_app([f"problem={task}", f"algorithm={algorithm}", *first, *request.common_overrides(),
                                   *extra])
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
    data = OmegaConf.select(cfg, "problem.data")
    if data is None or OmegaConf.select(cfg, "problem.data._target_") != "lmaps_plugin.data.builtin_dataset":
        return None
    if str(OmegaConf.select(cfg, "problem.data.name", default="")) != "faces":
        return None
    return len(FACES.get(str(OmegaConf.select(cfg, "problem.data.split", default="test") or "test"), ())) or None


def runnable_problems(cfg, ids: Sequence[int], flag: str, local: bool = True) -> list[str]:
    """What makes a valid configuration fail on every sample of this sweep, one line each (empty when nothing):
    ids past the end of the dataset's split, and (``local``: the jobs run on this machine) a CUDA device where
    CUDA is not available."""
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
    return atomic_write_json(Path(request.exp_dir) / MANIFEST, manifest)


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


def request_from_args(args: argparse.Namespace) -> SweepRequest:
    """The sweep of ``lmaps-bench run`` (ids checked: non-negative, no repeats)."""
    ids = parse_ids(args.ids, None if args.ids is not None else args.num_images,
                    "--ids" if args.ids is not None else "--num-images")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise UsageError(f"--ids {args.ids!r}: ids must not repeat (repeated: {repeated})")
    tasks, algorithms = split_names(args.tasks), split_names(args.algorithms)
    for flag, names in (("--tasks", tasks), ("--algorithms", algorithms)):
        if not names:
            raise UsageError(f"{flag} names nothing")
    return SweepRequest(tasks=tasks, algorithms=algorithms, seeds=list(args.seeds), ids=ids, exp_dir=args.exp_dir,
                        shard_size=args.shard_size, jobs=args.jobs, launcher=args.launcher, prior=args.prior,
                        threads=args.threads, figures=args.figures, extra=list(args.overrides))
