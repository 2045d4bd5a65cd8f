"""``lmaps-bench tune``: search an algorithm's hyperparameters on a task and a prior with Optuna, on validation
images that are never test images, resumably, with one worker or many on a shared study.

    lmaps-bench tune --task sr4 --algorithm lmaps_cpu --trials 12 --val-ids 0-3
    lmaps-bench tune --task sr4 --algorithm ib_daps --trials 12 --workers 2 --launcher joblib
    lmaps-bench tune --task sr4 --algorithm lmaps_cpu --storage journal:/shared/sr4.journal \\
                     --launcher submitit_slurm --workers 16 hydra.launcher.partition=gpu device=cuda

Each trial draws values from the algorithm's search space (``configs/tune/<algorithm>.yaml``, see
:mod:`lmaps_plugin.app.tune_space`), and runs the ``lmaps`` app itself (:func:`lmaps_plugin.app.cli.run`: the
problem's operator, the prior, the algorithm config with the trial's values) on the validation images
(``problem.data.split=val``), one image at a time, into ``trials/`` of the study folder. After each image it
reports the running mean of the metric; the pruner stops a trial that is clearly worse than the others were after
as many images. A sample that fails (diverges, NaN, or the algorithm raises at these values) prunes its trial,
with the reason in ``trials.csv``: a failing configuration is never chosen.
The trial's value is the mean metric over the validation images.

Layout (``--exp-dir``, default ``results/tune``)::

    <exp-dir>/<prior>/<task>/<algorithm>/     study.db (Optuna, SQLite), request.json, base_config.yaml,
                                              trials/ (an lmaps results folder per trial), trials.csv,
                                              history.png, importance.png, summary.json
    <exp-dir>/configs/algorithm/tuned/<prior>/<task>/<algorithm>.yaml     the tuned config

Use the tuned config with ``lmaps --config-dir <exp-dir>/configs algorithm=tuned/<prior>/<task>/<algorithm>`` or
InverseBench's ``python main.py --config-dir <exp-dir>/configs algorithm=tuned/...`` (``--install`` also copies
it into the package's ``configs/algorithm/tuned/``, where ``lmaps algorithm=tuned/...`` finds it without the flag).

Resuming: run the same command again. The study (any SQLAlchemy URL, or an Optuna journal file with
``--storage journal:PATH``) continues where it stopped: finished trials are never run again; a trial whose worker
died (killed, Ctrl-C) is marked failed and retried with the same values (its finished images are reused).
A worker holds an OS file lock in ``<study folder>/.workers/`` for its life, so a dead one is recognised at once
on any host that shares the folder. The budget (``--trials``) counts finished trials (complete or pruned): every
method gets the same budget, and the tuned config is the best of the first ``--trials`` of them.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from . import results as R
from .metrics import HIGHER_IS_BETTER
from .tune_space import (SearchSpace, SpaceError, baseline_values, format_value, parse_param, resolve_space,
                         include_base_values, restrict_to_operator, special_key_part, suggest,
                         trial_problems)

REQUEST = "request.json"
BASE_CONFIG = "base_config.yaml"
STUDY_DB = "study.db"
SUMMARY = "summary.json"
TRIALS_CSV = "trials.csv"
WORKERS_DIR = ".workers"
#: derived metric for tasks without ground truth: |misfit_rms / sigma_y - 1| (the discrepancy principle)
MISFIT_GAP = "misfit_gap"
PRUNERS = ("median", "halving", "none")
LAUNCHERS = ("auto", "inprocess", "basic", "joblib", "submitit_local", "submitit_slurm")
#: a failed (killed) trial is retried at most this many times, then left failed
MAX_RETRY = 2
#: a RUNNING trial without a worker token older than this (s) is a worker that died while starting it
START_GRACE_S = 120.0


class TuneError(ValueError):
    """A user error in a tuning request (the message says which flag or key, and what is allowed)."""


# ------------------------------------------------------------------------------------------------ request
@dataclass
class TuneRequest:
    """Everything a tuning worker needs; written to ``request.json`` in the study folder."""
    task: str
    algorithm: str
    prior: str | None = None
    trials: int = 12
    val_ids: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    val_split: str = "val"
    metric: str = "psnr"
    seed: int = 0
    exp_dir: str = "results/tune"
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    launcher: str = "auto"
    pruner: str = "median"
    prune_after: int = 1
    space: str | None = None
    threads: int = 1
    baseline: bool = True
    overrides: list[str] = field(default_factory=list)
    launcher_overrides: list[str] = field(default_factory=list)
    install: bool = False
    # filled in by prepare()
    study_dir: str | None = None
    prior_name: str | None = None
    resolved_space: dict | None = None
    space_notes: list[str] = field(default_factory=list)
    sigma_noise: float | None = None
    base_hash: str | None = None
    #: the storage URL came from the environment variable ``LMAPS_STORAGE`` (no ``--storage``)
    storage_from_env: bool = False

    def __post_init__(self) -> None:
        if self.storage is None and os.environ.get(STORAGE_ENV):
            self.storage, self.storage_from_env = os.environ[STORAGE_ENV], True

    def check(self) -> None:
        if self.trials < 1:
            raise TuneError(f"--trials must be >= 1, got {self.trials}")
        if self.workers < 1:
            raise TuneError(f"--workers must be >= 1, got {self.workers}")
        if self.launcher not in LAUNCHERS:
            raise TuneError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.launcher == "inprocess" and self.workers > 1:
            raise TuneError("--launcher inprocess runs one worker; use joblib, submitit_local or submitit_slurm "
                            f"for --workers {self.workers}")
        if self.pruner not in PRUNERS:
            raise TuneError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.prune_after < 1:
            raise TuneError(f"--prune-after must be >= 1 (validation images before a trial may stop), got "
                            f"{self.prune_after}")
        if not self.val_ids or len(set(self.val_ids)) != len(self.val_ids) or min(self.val_ids) < 0:
            raise TuneError(f"--val-ids must name distinct non-negative ids, got {self.val_ids}")
        if self.metric not in metric_names():
            raise TuneError(f"--metric must be one of {', '.join(metric_names())}, got {self.metric!r}")
        if self.threads < 1:
            raise TuneError(f"--threads must be >= 1, got {self.threads}")

    @property
    def direction(self) -> str:
        return metric_direction(self.metric)

    def fingerprint(self) -> dict:
        """What must not change between runs of one study (the budget, workers and pruner may)."""
        return {"task": self.task, "algorithm": self.algorithm, "prior": self.prior_name, "metric": self.metric,
                "val_split": self.val_split, "val_ids": list(self.val_ids), "seed": self.seed,
                "space": self.resolved_space, "base_config": self.base_hash, "overrides": list(self.overrides)}

    def save(self, path: Path) -> Path:
        """Written with the storage URL's password masked: a worker gets the full URL from its environment
        (``LMAPS_STORAGE``, see :func:`storage_url`), never from this file."""
        data = dataclasses.asdict(self)
        data["storage"] = _storage_label(self.storage)
        return R.atomic_write_json(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TuneRequest":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def metric_names() -> tuple[str, ...]:
    return (*HIGHER_IS_BETTER, MISFIT_GAP)


def metric_direction(metric: str) -> str:
    if metric == MISFIT_GAP:
        return "minimize"
    return "maximize" if HIGHER_IS_BETTER.get(metric, True) else "minimize"


def metric_value(metrics: dict, metric: str, sigma_noise: float | None) -> float:
    """The trial metric of one sample's metrics (``misfit_gap`` derives from ``misfit_rms`` and σ_y)."""
    if metric == MISFIT_GAP:
        if not sigma_noise:
            raise TuneError("--metric misfit_gap needs a noisy problem (problem.model.sigma_noise > 0)")
        return abs(float(metrics["misfit_rms"]) / float(sigma_noise) - 1.0)
    if metric not in metrics:
        raise TuneError(f"metric {metric!r} is not among the sample's metrics ({', '.join(sorted(metrics))})")
    return float(metrics[metric])


def study_folder(exp_dir: str | os.PathLike, prior: str, task: str, algorithm: str) -> Path:
    return Path(exp_dir) / prior / task / algorithm


def tuned_option(prior: str, task: str, algorithm: str) -> str:
    """The ``algorithm=`` option of a tuned config: ``tuned/<prior>/<task>/<algorithm>``."""
    return f"tuned/{prior}/{task}/{algorithm}"


def tuned_config_path(config_dir: str | os.PathLike, prior: str, task: str, algorithm: str) -> Path:
    return Path(config_dir) / "algorithm" / f"{tuned_option(prior, task, algorithm)}.yaml"


# ------------------------------------------------------------------------------------------ configuration
def compose_app(overrides: Sequence[str], config_dir: str | os.PathLike | None = None) -> DictConfig:
    """The ``lmaps`` app's config composed with ``overrides`` (and ``config_dir`` on the search path, where
    tuned configs live), as :func:`lmaps_plugin.app.cli.run` receives it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from . import cli

    extra = []
    if config_dir is not None:
        extra = [f"hydra.searchpath=[{cli.inversebench_configs_searchpath()},"
                 f"file://{Path(config_dir).resolve()}]"]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lmaps_plugin.configs", version_base="1.3"):
        return compose("config", overrides=[*extra, *overrides])


def method_kwargs(algorithm: str) -> dict:
    """The keyword arguments of ``configs/algorithm/<algorithm>.yaml``'s ``method`` (defaults chain followed,
    ``_target_`` dropped), as the ``lmaps`` app composes them: e.g. ``LMAPS(net, op, **method_kwargs('lmaps_auto'))``."""
    kwargs = OmegaConf.to_container(compose_app([f"algorithm={algorithm}"]).algorithm.method, resolve=True)
    kwargs.pop("_target_", None)
    return kwargs


def base_overrides(request: TuneRequest) -> list[str]:
    out = [f"problem={request.task}", f"algorithm={request.algorithm}", f"seed={request.seed}",
           f"threads={request.threads}", "figure.enabled=false", "verbose=false"]
    if request.prior:
        out.append(f"prior={request.prior}")
    if request.val_split != "none":
        out.append(f"++problem.data.split={request.val_split}")
    return out + list(request.overrides)


def check_space_against_target(space: SearchSpace, cfg: DictConfig) -> None:
    """Every ``algorithm.method.<arg>`` of the space must be an argument of the method's ``_target_`` (unless it
    takes ``**kwargs``)."""
    import importlib
    import inspect

    target = str(OmegaConf.select(cfg, "algorithm.method._target_") or "")
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
        parameters = inspect.signature(obj).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return  # InverseBench targets without a checkout: nothing to check here
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for p in space.params:
        parts = p.key.split(".")
        if parts[:2] == ["algorithm", "method"] and len(parts) > 2 and parts[2] not in parameters:
            raise SpaceError(f"{space.file}: {p.key} is not an argument of {target} (arguments: "
                             f"{', '.join(n for n in parameters if n not in ('net', 'forward_op', 'self'))})")


def operator_facts(cfg: DictConfig, evaluate: bool) -> tuple[bool, dict]:
    """Whether the task's operator is linear, and (with ``evaluate``) the metrics its evaluator cannot compute
    (``unavailable``): one operator, built on the CPU and closed."""
    from hydra.utils import instantiate

    import torch

    op = instantiate(cfg.problem.model, device=torch.device("cpu"))
    try:
        evaluator = instantiate(cfg.problem.evaluator, forward_op=op) if evaluate else None
        return getattr(op, "is_linear", False) is True, dict(getattr(evaluator, "unavailable", {}) or {})
    finally:
        if hasattr(op, "close"):
            op.close()


def prepare(request: TuneRequest) -> tuple[TuneRequest, DictConfig]:
    """Compose the base config, resolve the search space and the study folder; check the metric and the space.
    Returns the completed request and the base config (unresolved, as composed)."""
    from ..inversebench import find_inversebench

    request.check()
    try:
        cfg = compose_app(base_overrides(request))
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors name the bad override
        raise TuneError(f"cannot compose the lmaps config for task {request.task!r}, algorithm "
                        f"{request.algorithm!r}: {exc}") from None
    request.prior_name = str(cfg.prior.name)
    task_names = (request.task, str(cfg.problem.name))
    root = find_inversebench()
    space = resolve_space(request.algorithm, task_names, path=request.space, inversebench_root=root)
    linear, unavailable = operator_facts(cfg, evaluate=request.metric != MISFIT_GAP)
    space = restrict_to_operator(space, linear)
    space = include_base_values(space, lambda key: OmegaConf.select(cfg, key))
    check_space_against_target(space, cfg)
    request.resolved_space = space.describe()
    request.space_notes = list(space.notes)
    sigma = OmegaConf.select(cfg, "problem.model.sigma_noise")
    request.sigma_noise = float(sigma) if sigma is not None else None
    if request.metric in unavailable:
        raise TuneError(f"--metric {request.metric} is unavailable here: {unavailable[request.metric]}")
    if request.metric == MISFIT_GAP and not request.sigma_noise:
        raise TuneError("--metric misfit_gap needs a noisy problem (problem.model.sigma_noise > 0)")
    from .cli import run_config_hash

    request.base_hash = run_config_hash(cfg)  # what determines a sample's result (not threads, paths, ids)
    folder = study_folder(request.exp_dir, request.prior_name, request.task, request.algorithm)
    request.study_dir = str(folder.resolve())
    request.storage = request.storage or f"sqlite:///{folder.resolve() / STUDY_DB}"
    request.study_name = request.study_name or f"{request.prior_name}/{request.task}/{request.algorithm}"
    return request, cfg


def space_of(request: TuneRequest) -> SearchSpace:
    """The resolved space stored in a request (no file or checkout needed in a worker)."""
    params = tuple(parse_param(k, v, REQUEST, source=v.get("source", "ours")) for k, v in
                   (request.resolved_space or {}).items())
    return SearchSpace(request.algorithm, str(request.space or ""), params, tuple(request.space_notes))


def trial_config(base: DictConfig, values: dict[str, Any], exp_dir: str | os.PathLike, exp_name: str) -> DictConfig:
    """The base config with the trial's values set (keys the base config lacks are added)."""
    cfg = copy.deepcopy(base)
    special = sorted(k for k in values if special_key_part(k) is not None)
    if special:
        raise TuneError(f"trial values {special} name Hydra instantiation keys (code to run); refused")
    with open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        cfg.exp_dir = str(exp_dir)
        cfg.exp_name = exp_name
    return cfg


# -------------------------------------------------------------------------------------------------- study
#: the environment variable a storage URL may come from (when ``--storage`` is not given); workers get a URL
#: with a password only through it, never from ``request.json``
STORAGE_ENV = "LMAPS_STORAGE"
#: RDB storages: a running trial records a heartbeat this often (s); one silent for HEARTBEAT_GRACE_S is dead
HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 300
#: the OS file lock in the study folder under which a command creates the storage and the study
STUDY_LOCK = ".study.lock"
STORAGE_ALLOWED = ("allowed: an SQLAlchemy URL of a reachable database (sqlite:///PATH.db, "
                   "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB) or journal:PATH (an Optuna journal file)")
#: SQLAlchemy schemes -> what to install for their driver
DRIVERS = {"postgresql": "pip install 'psycopg[binary]' (or lmaps-plugin[bench])",
           "mysql": "pip install pymysql, and write the URL mysql+pymysql://..."}


def storage_url(request: TuneRequest, given: str | None = None) -> str:
    """The full storage URL of a study loaded from ``request.json`` (which holds it with its password masked):
    ``given`` or ``$LMAPS_STORAGE`` where its masked form is the recorded one, else the recorded URL itself when
    nothing was masked in it."""
    for url in (given, os.environ.get(STORAGE_ENV)):
        if url and _storage_label(url) == request.storage:
            return url
    if MASK in str(request.storage):
        raise TuneError(f"the study's storage {request.storage} has a password, which is never written to "
                        f"{REQUEST}: set {STORAGE_ENV} to the full URL in the worker's environment")
    return request.storage


def _driver_url(url: str) -> str:
    """``postgresql://`` with psycopg 3 and no psycopg2: SQLAlchemy before 2.1 needs ``postgresql+psycopg://``."""
    from importlib.util import find_spec

    scheme, sep, rest = url.partition("://")
    if sep and scheme == "postgresql" and find_spec("psycopg2") is None and find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    return url


@contextlib.contextmanager
def study_lock(study_dir: str | os.PathLike | None):
    """An OS file lock in the study folder: two commands starting one new study at once create its tables and
    the study one after the other (concurrent creation of an RDB storage's tables fails)."""
    import filelock

    if study_dir is None:
        yield
        return
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(Path(study_dir) / STUDY_LOCK)):
        yield


def _storage_error(url: str, source: str, exc: BaseException) -> TuneError:
    """One line naming the storage (masked) and what is allowed, for an error opening it."""
    reason = _scrub(" ".join(str(exc).split("\n")[0].split()) or type(exc).__name__, url)
    label = f"{source} {_storage_label(url)}"
    if isinstance(exc, ImportError):
        scheme = url.partition("://")[0].split("+")[0]
        hint = DRIVERS.get(scheme, "install the database driver SQLAlchemy names for this URL")
        return TuneError(f"{label}: no database driver for {scheme!r} is installed ({reason}); {hint}")
    if url.startswith("journal:") or "://" not in url:
        return TuneError(f"{label}: not a readable Optuna journal file ({type(exc).__name__}: {reason}); "
                         f"give a new file or one Optuna wrote ({STORAGE_ALLOWED})")
    return TuneError(f"{label}: cannot open it as an Optuna storage ({reason}); {STORAGE_ALLOWED}")


def make_storage(url: str, source: str = "--storage"):
    """An Optuna storage: ``journal:PATH`` (or a path ending in .journal/.log) is a journal file, anything with
    ``://`` an SQLAlchemy URL (SQLite waits up to 60 s for a lock held by another worker; RDB storages record
    heartbeats, see :func:`reclaim`). Anything that cannot be opened is a :class:`TuneError` naming the URL
    (password masked) and what is allowed; ``source`` says where the URL came from."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:") or (("://" not in url) and url.endswith((".journal", ".log"))):
        path = Path(url.removeprefix("journal:")).expanduser()
        if path.is_dir():
            raise TuneError(f"{source} {url}: a folder, not a journal file ({STORAGE_ALLOWED})")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except Exception as exc:  # noqa: BLE001 - garbage, binary or unreadable files: one line, not a traceback
            raise _storage_error(url, source, exc) from None
    if "://" not in url:
        raise TuneError(f"{source} {_storage_label(url)!r} is neither an SQLAlchemy URL (sqlite:///path.db, "
                        f"postgresql://user@host/db, ...) nor journal:PATH")
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(_driver_url(url), engine_kwargs=kwargs,
                                                  heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                                  grace_period=HEARTBEAT_GRACE_S)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy, driver and Optuna errors: one line, not a traceback
            # two commands creating the tables of one database at once (study folders on different hosts): the
            # loser finds them made on a second try
            if attempt < 2 and ("already exists" in str(exc) or "alembic_version" in str(exc)):
                time.sleep(0.5 + attempt)
                continue
            raise _storage_error(url, source, exc) from None
    raise AssertionError("unreachable")  # pragma: no cover


def make_pruner(request: TuneRequest):
    import optuna

    if request.pruner == "none":
        return optuna.pruners.NopPruner()
    if request.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=request.prune_after, reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=request.prune_after)


def make_sampler(request: TuneRequest, worker: int, trials_so_far: int):
    """TPE, seeded by (seed, study, worker, trials already in the study): workers, and reruns, never replay one
    stream of draws (which would repeat finished trials' values), and studies draw independently."""
    import optuna

    seed = int(R.config_hash({"seed": request.seed, "study": request.study_name, "worker": worker,
                              "n": trials_so_far})[:8], 16)
    startup = min(10, max(3, request.trials // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True, group=True,
                                          constant_liar=True)


def open_study(request: TuneRequest, worker: int = 0, create: bool = False):
    """Load (or create) the request's study; refuse one made by a different request. Creating it also reclaims
    the trials of dead workers (:func:`reclaim`), so the trials still to run are counted right."""
    import optuna

    source = STORAGE_ENV if request.storage_from_env else "--storage"
    with study_lock(request.study_dir):
        storage = make_storage(request.storage, source)
        common = dict(study_name=request.study_name, storage=storage, pruner=make_pruner(request))
        try:
            if create:
                study = optuna.create_study(direction=request.direction, load_if_exists=True,
                                            sampler=make_sampler(request, worker, 0), **common)
            else:
                study = optuna.load_study(sampler=make_sampler(request, worker, 0), **common)
            study.sampler = make_sampler(request, worker, len(study.get_trials(deepcopy=False)))
            fingerprint = json.loads(json.dumps(request.fingerprint()))
            stored = study.user_attrs.get("request")
            if stored is None:
                study.set_user_attr("request", fingerprint)
        except KeyError:
            raise TuneError(f"no study {request.study_name!r} in {source} {_storage_label(request.storage)}; "
                            f"start it with lmaps-bench tune") from None
        except (ImportError, RuntimeError, OSError, ValueError) as exc:
            raise _storage_error(request.storage, source, exc) from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors (their text may hold the URL): one line
            if type(exc).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3")):
                raise _storage_error(request.storage, source, exc) from None
            raise
    if stored is not None and stored != fingerprint:
        differ = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        raise TuneError(f"study {request.study_name!r} in {_storage_label(request.storage)} was made by a different "
                        f"request ({', '.join(differ)} differ); use another --exp-dir, --storage or --study-name")
    if study.direction.name.lower() != request.direction:
        raise TuneError(f"study {request.study_name!r} maximises/minimises differently than --metric "
                        f"{request.metric} needs")
    if create and request.study_dir:
        reclaim(study, request.study_dir)
    return study


def trial_counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    return counts


def budget_left(study, budget: int) -> int:
    """Trials still to start: the budget minus finished (complete + pruned) and running trials."""
    c = trial_counts(study)
    return budget - c["complete"] - c["pruned"] - c["running"]


# ----------------------------------------------------------------------------------------- worker leases
class WorkerLease:
    """An OS file lock held by a worker for its life (``<study>/.workers/<token>.lock``); the OS drops it when
    the process dies, however it dies, so :func:`lease_alive` tells live workers from dead ones."""

    def __init__(self, study_dir: str | os.PathLike):
        self.folder = Path(study_dir) / WORKERS_DIR
        self.token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = self.folder / f"{self.token}.lock"
        self._lock = None

    def __enter__(self) -> "WorkerLease":
        import filelock

        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = filelock.FileLock(str(self.path))
        self._lock.acquire(timeout=0)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            with contextlib.suppress(OSError):
                self.path.unlink()


#: a worker's lock file older than this (s) and free is a dead worker's leftover (younger ones may be a worker
#: between creating its lock file and locking it)
LEASE_SWEEP_AGE_S = 60.0


def lease_alive(study_dir: str | os.PathLike, token: str) -> bool:
    """Whether the worker ``token`` holds its lease; a free lease's lock file is removed."""
    import filelock

    path = Path(study_dir) / WORKERS_DIR / f"{token}.lock"
    if not path.exists():
        return False
    lock = filelock.FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def reclaim(study, study_dir: str | os.PathLike, max_retry: int = MAX_RETRY) -> list[int]:
    """Mark the running trials of dead workers failed, and queue a retry (same values) of every failed trial not
    retried yet (at most ``max_retry`` times per trial). A worker is dead when its lease (lock file) is free or
    gone, or, on an RDB storage, when its trial's heartbeat is older than HEARTBEAT_GRACE_S (Optuna's
    ``fail_stale_trials``: workers on hosts that do not share the study folder). The lock files dead workers
    left behind are removed. Serialised across workers by a lock in the study folder. Returns the numbers of the
    trials queued again."""
    import filelock
    import optuna
    from optuna.trial import TrialState

    folder = Path(study_dir) / WORKERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    queued = []
    with filelock.FileLock(str(folder / "reclaim.lock")), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        now = time.time()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            token = t.user_attrs.get("worker")
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if (token is None and now - started < START_GRACE_S) or (token is not None and
                                                                   lease_alive(study_dir, token)):
                continue
            with contextlib.suppress(ValueError, RuntimeError):
                study.tell(t.number, state=TrialState.FAIL)
        optuna.storages.fail_stale_trials(study)   # RDB storages (heartbeats); a no-op on journal files
        for path in folder.glob("*.lock"):        # a dead worker's lock without a running trial (killed between trials)
            with contextlib.suppress(OSError):
                if path.name != "reclaim.lock" and now - path.stat().st_mtime > LEASE_SWEEP_AGE_S:
                    lease_alive(study_dir, path.stem)
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        for t in trials:
            if t.state == TrialState.FAIL and t.number not in retried:
                before = len(study.get_trials(deepcopy=False))
                retry(study, t)
                if len(study.get_trials(deepcopy=False)) > before:
                    queued.append(t.number)
    return queued


# --------------------------------------------------------------------------------------------- objective
class Objective:
    """One trial: the lmaps app on the validation images, one image at a time, reporting the running mean."""

    def __init__(self, request: TuneRequest, base: DictConfig, lease: WorkerLease, worker: int = 0):
        self.request, self.base, self.lease, self.worker = request, base, lease, worker
        self.space = space_of(request)
        self.trials_dir = Path(request.study_dir) / "trials"

    def __call__(self, trial) -> float:
        import optuna

        from . import cli

        trial.set_user_attr("worker", self.lease.token)
        values = suggest(trial, self.space)
        name = "p" + R.config_hash({k: format_value(v) for k, v in sorted(values.items())})[:12]
        cfg = trial_config(self.base, values, self.trials_dir, name)
        folder = cli.experiment_dir(cfg)
        trial.set_user_attr("results", os.path.relpath(folder, self.request.study_dir))
        start = time.perf_counter()
        scores: list[float] = []
        messages: list[str] = []
        for step, sample_id in enumerate(self.request.val_ids, start=1):
            outcome = self._run_image(cfg, sample_id, messages)
            if outcome.status == "failed":
                trial.set_user_attr("failure", f"val id {sample_id}: {outcome.reason}")
                self._finish(trial, scores, messages, start)
                self._say(trial, f"pruned: val id {sample_id} failed ({outcome.reason})", values)
                raise optuna.TrialPruned(f"val id {sample_id} failed: {outcome.reason}")
            scores.append(metric_value(outcome.metrics, self.request.metric, self.request.sigma_noise))
            running = sum(scores) / len(scores)
            trial.report(running, step)
            if step < len(self.request.val_ids) and trial.should_prune():
                self._finish(trial, scores, messages, start)
                self._say(trial, f"pruned after {step} image(s): running mean {running:.4g}", values)
                raise optuna.TrialPruned(f"running mean {running:.4g} after {step} image(s)")
        self._finish(trial, scores, messages, start)
        value = sum(scores) / len(scores)
        self._say(trial, f"{self.request.metric} {value:.4g}", values)
        return value

    def _run_image(self, cfg: DictConfig, sample_id: int, messages: list[str]):
        from . import cli

        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.ids = [int(sample_id)]
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):   # the report table and the peers' progress bars
            warnings.simplefilter("always")
            try:
                outcome = cli.run(cfg).outcomes[0]
            except Exception as exc:  # noqa: BLE001 - a crash of the algorithm at these values fails the sample
                outcome = SimpleNamespace(status="failed", metrics={},
                                          reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        for w in caught:
            text = str(w.message).splitlines()[0][:200]
            if text not in messages and len(messages) < 5:
                messages.append(text)
        return outcome

    @staticmethod
    def _finish(trial, scores: list[float], messages: list[str], start: float) -> None:
        trial.set_user_attr("images_done", len(scores))
        trial.set_user_attr("per_image", [round(s, 6) for s in scores])
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        if messages:
            trial.set_user_attr("warnings", messages)

    def _say(self, trial, what: str, values: dict) -> None:
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in values.items())
        print(f"[tune {self.request.task}/{self.request.algorithm} w{self.worker}] trial {trial.number}: {what} "
              f"({shown})", flush=True)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_worker(study_dir: str | os.PathLike, worker: int = 0, storage: str | None = None) -> int:
    """One worker: reclaim dead workers' trials, then run trials on the shared study until the budget is spent.
    The storage URL is ``storage``, ``$LMAPS_STORAGE`` or ``request.json``'s (see :func:`storage_url`).
    Returns the number of trials this worker ran."""
    import optuna
    import torch

    study_dir = Path(study_dir)
    request = TuneRequest.load(study_dir / REQUEST)
    request.storage = storage_url(request, storage)
    base = OmegaConf.load(study_dir / BASE_CONFIG)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(request.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")   # InverseBench's algorithms draw a progress bar per image
    study = open_study(request, worker)
    ran = 0
    with WorkerLease(study_dir) as lease:
        reclaim(study, study_dir)
        if budget_left(study, request.trials) <= 0:
            return 0
        objective = Objective(request, base, lease, worker)

        def stop_at_budget(study, trial) -> None:
            nonlocal ran
            ran += 1
            reclaim(study, study_dir)
            if budget_left(study, request.trials) <= 0:
                study.stop()

        study.optimize(objective, callbacks=[stop_at_budget], gc_after_trial=False)
    return ran


# --------------------------------------------------------------------------------------- launching workers
def worker_command(plan: Path, workers: int, launcher: str, extra: Sequence[str] = ()) -> list[str]:
    """The Hydra multirun that starts ``workers`` workers on the launcher, each running the plan's studies."""
    from .benchmark import launcher_overrides

    launcher = "joblib" if launcher in ("auto", "inprocess") else launcher
    indices = ",".join(str(i) for i in range(workers))
    return [sys.executable, "-c", "from lmaps_plugin.app.tune_worker import main; main()", "-m",
            f"+plan='{plan.resolve()}'", f"+worker={indices}", f"hydra.sweep.dir='{plan.resolve().parent / 'workers'}'",
            "hydra.job.name=tune_worker", *launcher_overrides(launcher, workers), *extra]


def worker_env(requests: Sequence[TuneRequest]) -> dict[str, str]:
    """The workers' environment: this one, with ``LMAPS_STORAGE`` set to the storage URL when it holds a password
    (workers never read a password from disk; Hydra's launchers, Slurm included, pass the environment on)."""
    env = dict(os.environ)
    secret = sorted({r.storage for r in requests if _storage_label(r.storage) != r.storage})
    if len(secret) > 1:
        raise TuneError(f"studies on {len(secret)} password-protected storages cannot share one pool of workers "
                        f"({', '.join(_storage_label(u) for u in secret)}); give them one --storage")
    if secret:
        env[STORAGE_ENV] = secret[0]
    return env


def run_studies(requests: Sequence[TuneRequest], folder: str | os.PathLike) -> int:
    """Run the workers of prepared studies until every budget is spent: in this process for one worker, else one
    Hydra multirun whose workers go through the studies in order (``folder`` holds the plan and the workers' Hydra
    folders). Settings (workers, launcher, launcher overrides) are the first request's. The trials of dead workers
    are reclaimed first (failed, and queued again with their values), so a study whose last trial's worker was
    killed runs that trial again. Returns the exit status."""
    todo = []
    for request in requests:
        study = open_study(request)
        reclaim(study, request.study_dir)
        if budget_left(study, request.trials) > 0:
            todo.append(request)
    if not todo:
        return 0
    first = todo[0]
    if first.workers == 1 and first.launcher in ("auto", "inprocess"):
        for request in todo:
            run_worker(request.study_dir, 0, storage=request.storage)
        return 0
    plan = Path(folder) / "plan.json"
    R.atomic_write_json(plan, {"studies": [r.study_dir for r in todo]})
    command = worker_command(plan, first.workers, first.launcher, first.launcher_overrides)
    print("lmaps-bench tune: " + " ".join(command[3:]), flush=True)
    status = subprocess.call(command, env=worker_env(todo))
    if status != 0:
        print(f"lmaps-bench tune: the workers exited with status {status}", file=sys.stderr)
    return status


# ------------------------------------------------------------------------------------------------ outputs
@dataclass
class TuneResult:
    study_dir: Path
    tuned_config: Path
    config_dir: Path
    option: str
    best_value: float | None
    best_params: dict
    counts: dict
    finished: int
    installed: Path | None = None
    plots: dict = field(default_factory=dict)
    seconds: float | None = None


def counted_trials(study, budget: int, space: SearchSpace | None = None) -> list:
    """The finished (complete or pruned) trials that count: the first ``budget`` of them by number. With ``space``,
    each must be a draw of it (:func:`check_stored_trials`)."""
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    counted = sorted(finished, key=lambda t: t.number)[:budget]
    if space is not None:
        check_stored_trials(counted, space, study.study_name)
    return counted


def check_stored_trials(trials: Sequence, space: SearchSpace, study_name: str = "") -> None:
    """Refuse a study whose trials are not draws of the resolved search space (names, distributions, values).
    Anyone who can write to the storage can add trials; their parameters become the tuned config, and a key such
    as ``algorithm.method.extra._target_`` would make the runner import and call code."""
    for t in trials:
        problems = trial_problems(t.params, t.distributions, space)
        if problems:
            raise TuneError(f"study {study_name!r}: trial {t.number} is not a draw of the search space "
                            f"({'; '.join(problems)}); its values are never written to a config. The study's "
                            f"storage holds trials from elsewhere: start a new study (another --exp-dir, "
                            f"--storage or --study-name)")


def best_trial(trials: list, direction: str):
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    pick = max if direction == "maximize" else min
    return pick(complete, key=lambda t: (t.value, -t.number) if direction == "maximize" else (t.value, t.number))


def package_versions() -> dict:
    from importlib import metadata

    from .benchmark import package_versions as bench_versions

    out = bench_versions()
    try:
        out["optuna"] = metadata.version("optuna")
    except metadata.PackageNotFoundError:  # pragma: no cover - optuna runs this code
        out["optuna"] = None
    return out


def tuned_algorithm(base: DictConfig, params: dict, provenance: dict) -> dict:
    """The tuned algorithm config: the base config's resolved ``algorithm`` node with the best values, renamed
    ``<name>-tuned``, plus the ``tuned`` provenance block (ignored by both runners)."""
    cfg = trial_config(base, params, base.exp_dir, "tuned")
    algorithm = OmegaConf.to_container(cfg.algorithm, resolve=True)
    algorithm.pop("tuned_for", None)
    algorithm.pop("tuned", None)
    algorithm["name"] = f"{algorithm.get('name', 'algorithm')}-tuned"
    algorithm["tuned"] = provenance
    return algorithm


#: what a masked password reads as
MASK = "***"
#: ``scheme://user:PASSWORD@host...``; the password runs to the last ``@`` before the query (SQLAlchemy stops at
#: the first, but a password typed with a raw ``@`` in it is still a password)
_URL_PASSWORD = re.compile(r"^(?P<head>[\w+.-]+://[^:/@?]*:)(?P<password>[^?]*)(?=@[^@?]*(?:\?|$))")
#: ``?password=...`` / ``&passwd=...`` query arguments some drivers take
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<password>[^&#]*)", re.IGNORECASE)


def _storage_secrets(url: str | None) -> list[str]:
    """The password(s) in a storage URL, as written and percent-decoded (to scrub them from any text)."""
    from urllib.parse import unquote

    if not url:
        return []
    found = [m.group("password") for m in (_URL_PASSWORD.match(url), *_QUERY_PASSWORD.finditer(url)) if m]
    return sorted({v for p in found if p and p != MASK for v in (p, unquote(p))}, key=len, reverse=True)


def _storage_label(url: str | None) -> str | None:
    """The storage URL with its password masked (``postgresql://alice:***@host/db``): the only form of a storage
    URL that is written to a file or printed."""
    if not url:
        return url
    url = _URL_PASSWORD.sub(lambda m: m.group("head") + (MASK if m.group("password") else ""), url)
    return _QUERY_PASSWORD.sub(lambda m: m.group("head") + MASK, url)


def _scrub(text: str, url: str | None) -> str:
    """``text`` (an error message, say) with the storage URL's password masked wherever it appears."""
    for secret in _storage_secrets(url):
        text = text.replace(secret, MASK)
    return text


class TuningFailed(RuntimeError):
    """A study ended without a result to use (no counted trial finished every validation image): the run failed
    (exit status 1); the message says why in one line."""


def _refuse_untuned(request: TuneRequest, study, trials: list, provenance: dict, counts: dict) -> None:
    """No counted trial completed: write ``trials.csv`` and ``summary.json`` (no tuned config) and raise
    :class:`TuningFailed` with the first failure's reason."""
    study_dir = Path(request.study_dir)
    write_trials_csv(study_dir / TRIALS_CSV, study)
    reason = next((f"trial {t.number}: {t.user_attrs['failure']}" for t in trials if t.user_attrs.get("failure")),
                  None)
    R.atomic_write_json(study_dir / SUMMARY, {**provenance, "counts": counts, "tuned_config": None,
                                              "note": f"no trial finished every validation image ({reason})"})
    raise TuningFailed(f"no trial of {request.algorithm} on {request.task} finished every validation image "
                       f"({len(trials)} of {request.trials} counted trials pruned or failed"
                       f"{f'; first failure: {reason}' if reason else ''}); no tuned config written "
                       f"(see {study_dir / TRIALS_CSV})")


def finalize(request: TuneRequest, config_dir: str | os.PathLike | None = None, plots: bool = True) -> TuneResult:
    """Write the tuned config (with provenance), ``trials.csv``, ``summary.json`` and the plots.
    :class:`TuningFailed` when no counted trial finished every validation image (nothing is tuned then: no
    config is written)."""
    study = open_study(request)
    base = OmegaConf.load(Path(request.study_dir) / BASE_CONFIG)
    trials = counted_trials(study, request.trials, space_of(request))
    best = best_trial(trials, request.direction)
    counts = trial_counts(study)
    params = dict(best.params) if best is not None else {}
    provenance = {
        "study": request.study_name, "storage": _storage_label(request.storage),
        "base_algorithm": request.algorithm, "task": request.task, "prior": request.prior_name,
        "metric": request.metric, "direction": request.direction,
        "best_value": None if best is None else float(best.value),
        "best_trial": None if best is None else int(best.number),
        "budget": int(request.trials), "trials_counted": len(trials),
        "trials_complete": sum(t.state.name == "COMPLETE" for t in trials),
        "trials_pruned": sum(t.state.name == "PRUNED" for t in trials),
        "trials_failed_and_retried": counts["fail"],
        "val_split": request.val_split, "val_ids": list(request.val_ids), "seed": int(request.seed),
        "pruner": request.pruner, "params": {k: v for k, v in params.items()},
        "search_space": request.resolved_space, "space_notes": list(request.space_notes),
        "overrides": list(request.overrides), "package_versions": package_versions(),
    }
    if best is None:
        _refuse_untuned(request, study, trials, provenance, counts)
    algorithm = tuned_algorithm(base, params, json.loads(json.dumps(provenance)))
    config_dir = Path(config_dir) if config_dir is not None else Path(request.exp_dir) / "configs"
    path = tuned_config_path(config_dir, request.prior_name, request.task, request.algorithm)
    header = (f"# Tuned by lmaps-bench tune: {request.algorithm} on {request.task}, prior {request.prior_name}, "
              f"{len(trials)}/{request.trials} trials, best {request.metric} "
              f"{'-' if best is None else f'{best.value:.4f}'} on val ids {request.val_ids}.\n"
              f"# Use: lmaps --config-dir {config_dir} algorithm={tuned_option(request.prior_name, request.task, request.algorithm)} "
              f"problem={request.task}\n")
    R.atomic_write_text(path, header + OmegaConf.to_yaml(OmegaConf.create(algorithm)))
    study_dir = Path(request.study_dir)
    write_trials_csv(study_dir / TRIALS_CSV, study)
    figures = write_plots(study, study_dir) if plots else {}
    installed = install_config(path, request) if request.install else None
    R.atomic_write_json(study_dir / SUMMARY, {**provenance, "counts": counts, "tuned_config": str(path),
                                              "installed": str(installed) if installed else None,
                                              "plots": {k: str(v) for k, v in figures.items()}})
    return TuneResult(study_dir, path, config_dir, tuned_option(request.prior_name, request.task, request.algorithm),
                      provenance["best_value"], params, counts, len(trials), installed, figures)


def install_config(path: Path, request: TuneRequest) -> Path:
    """Copy a tuned config into the package's ``configs/algorithm/tuned/`` (found without ``--config-dir``)."""
    from .. import configs

    target = tuned_config_path(Path(configs.__file__).resolve().parent, request.prior_name, request.task,
                               request.algorithm)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target


def write_trials_csv(path: Path, study) -> Path:
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", "value", "images_done", "seconds", "failure", "retry_of", "results",
                     *keys])
    for t in trials:
        writer.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}",
                         t.user_attrs.get("images_done", ""), t.user_attrs.get("seconds", ""),
                         t.user_attrs.get("failure", ""), t.system_attrs.get("failed_trial", ""),
                         t.user_attrs.get("results", ""), *(t.params.get(k, "") for k in keys)])
    return R.atomic_write_text(path, buffer.getvalue())


def write_plots(study, folder: Path) -> dict[str, Path]:
    """``history.png`` (optimisation history) and ``importance.png`` (fANOVA parameter importances)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out = {}
    plots = {"history": ovm.plot_optimization_history, "importance": ovm.plot_param_importances}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                print(f"lmaps-bench tune: no {name} plot ({exc})", file=sys.stderr)
                continue
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        if hasattr(ax, "set_title"):
            ax.set_title(f"{ax.get_title()}: {study.study_name}", fontsize=10)
        figure.set_size_inches(7, 4.5)
        figure.tight_layout()
        target = folder / f"{name}.png"
        R.atomic_write(target, lambda handle, f=figure: f.savefig(handle, format="png", dpi=110))
        plt.close(figure)
        out[name] = target
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return out


# ------------------------------------------------------------------------------------------------- driver
def start_study(request: TuneRequest) -> TuneRequest:
    """Prepare a study: compose and check, create the study (with the base config's values queued as its first
    trial), then write ``request.json`` and ``base_config.yaml``. Returns the completed request."""
    import optuna

    request, base = prepare(request)
    study_dir = Path(request.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    previous = study_dir / REQUEST
    if previous.is_file():
        old = TuneRequest.load(previous).fingerprint()
        differ = sorted(k for k, v in request.fingerprint().items() if old.get(k) != v)
        if differ:
            raise TuneError(f"{study_dir} holds a study of a different request ({', '.join(differ)} differ); "
                            f"use another --exp-dir")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(request, create=True)     # a storage that cannot be opened is refused before any write
    with study_lock(request.study_dir):          # two commands starting one study queue one baseline
        if request.baseline and not study.get_trials(deepcopy=False):
            values = baseline_values(space_of(request), lambda key: OmegaConf.select(base, key))
            study.enqueue_trial(values, user_attrs={"baseline": True})
    request.save(previous)
    R.atomic_write_text(study_dir / BASE_CONFIG, OmegaConf.to_yaml(base))
    print(f"lmaps-bench tune: {request.algorithm} on {request.task} (prior {request.prior_name}), "
          f"{request.metric} over val ids {request.val_ids}; budget {request.trials} trials, "
          f"{max(budget_left(study, request.trials), 0)} to run; study {request.study_name!r} in "
          f"{_storage_label(request.storage)}", flush=True)
    return request


def check_runnable(request: TuneRequest) -> None:
    """Refuse, before anything is written, a request whose every trial would fail: validation ids past the end
    of the split, a CUDA device without CUDA where the workers run on this machine (:class:`TuneError`, one
    line). A config that does not compose is left to :func:`prepare`, which names the problem."""
    from .benchmark import runnable_problems

    try:
        cfg = compose_app(base_overrides(request))
    except Exception:  # noqa: BLE001 - prepare() reports composition errors
        return
    slurm = request.launcher == "submitit_slurm" or any("submitit_slurm" in o for o in request.launcher_overrides)
    problems = runnable_problems(cfg, request.val_ids, "--val-ids", local=not slurm)
    if problems:
        raise TuneError("; ".join(problems))


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


# --------------------------------------------------------------------------------------------------- CLI
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
    from .benchmark import UsageError, parse_ids

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
    lines += [f"  {k} = {_short(v)}" for k, v in result.best_params.items()]
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
        print(f"lmaps-bench tune: only {result.finished} of {request.trials} trials finished (the output above says "
              f"why); run the same command again to continue", file=sys.stderr)
        return 1
    return 0


#: (name, help, add_arguments, run) of ``lmaps-bench tune``
SUBCOMMAND = ("tune", "tune an algorithm's hyperparameters on validation images (Optuna; resumable)", add_arguments,
              main)

__all__ = ["SUBCOMMAND", "TuneRequest", "TuneResult", "TuneError", "TuningFailed", "check_runnable", "tune", "prepare", "finalize", "run_worker", "open_study",
           "reclaim", "budget_left", "counted_trials", "best_trial", "compose_app", "tuned_option",
           "tuned_config_path", "metric_value", "metric_direction", "WorkerLease", "lease_alive", "make_storage",
           "start_study", "run_studies", "worker_command", "add_arguments", "add_common_arguments", "request_from_args", "main"]
