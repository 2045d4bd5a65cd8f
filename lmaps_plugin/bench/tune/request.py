"""A tuning request (:class:`TuneRequest`, ``request.json``) and what it resolves to: the composed base config,
the search space restricted to the task's operator, the metric and its direction, a trial's config, and the
masked form of a storage URL (the only form written to a file or printed)."""
from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ...operators.capabilities import operator_capabilities
from ...app.build import run_config_hash
from ...evaluation.metrics import HIGHER_IS_BETTER
from ...inversebench.locate import find_inversebench
from ...io import atomic_write_json
from ...app.compose import compose_app
from ..sweep import runnable_problems
from .space import (SearchSpace, SpaceError, include_base_values, parse_param, resolve_space,
                    restrict_to_operator, special_key_part)

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
#: the environment variable a storage URL may come from (when ``--storage`` is not given); workers get a URL
#: with a password only through it, never from ``request.json``
STORAGE_ENV = "LMAPS_STORAGE"


class TuneError(ValueError):
    """A user error in a tuning request (the message says which flag or key, and what is allowed)."""


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
        (``LMAPS_STORAGE``, see :func:`~lmaps_plugin.bench.tune.study.storage_url`), never from this file."""
        data = dataclasses.asdict(self)
        data["storage"] = storage_label(self.storage)
        return atomic_write_json(path, data)

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
    op = instantiate(cfg.problem.model, device=torch.device("cpu"))
    try:
        evaluator = instantiate(cfg.problem.evaluator, forward_op=op) if evaluate else None
        return operator_capabilities(op).linear is True, dict(getattr(evaluator, "unavailable", {}) or {})
    finally:
        if hasattr(op, "close"):
            op.close()


def prepare(request: TuneRequest) -> tuple[TuneRequest, DictConfig]:
    """Compose the base config, resolve the search space and the study folder; check the metric and the space.
    Returns the completed request and the base config (unresolved, as composed)."""
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


def check_runnable(request: TuneRequest) -> None:
    """Refuse, before anything is written, a request whose every trial would fail: validation ids past the end
    of the split, a CUDA device without CUDA where the workers run on this machine (:class:`TuneError`, one
    line). A config that does not compose is left to :func:`prepare`, which names the problem."""
    try:
        cfg = compose_app(base_overrides(request))
    except Exception:  # noqa: BLE001 - prepare() reports composition errors
        return
    slurm = request.launcher == "submitit_slurm" or any("submitit_slurm" in o for o in request.launcher_overrides)
    problems = runnable_problems(cfg, request.val_ids, "--val-ids", local=not slurm)
    if problems:
        raise TuneError("; ".join(problems))


# masked storage URLs
#: what a masked password reads as
MASK = "***"
#: ``scheme://user:PASSWORD@host...``; the password runs to the last ``@`` before the query (SQLAlchemy stops at
#: the first, but a password typed with a raw ``@`` in it is still a password)
_URL_PASSWORD = re.compile(r"^(?P<head>[\w+.-]+://[^:/@?]*:)(?P<password>[^?]*)(?=@[^@?]*(?:\?|$))")
#: ``?password=...`` / ``&passwd=...`` query arguments some drivers take
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<password>[^&#]*)", re.IGNORECASE)


def storage_secrets(url: str | None) -> list[str]:
    """The password(s) in a storage URL, as written and percent-decoded (to scrub them from any text)."""
    if not url:
        return []
    found = [m.group("password") for m in (_URL_PASSWORD.match(url), *_QUERY_PASSWORD.finditer(url)) if m]
    return sorted({v for p in found if p and p != MASK for v in (p, unquote(p))}, key=len, reverse=True)


def storage_label(url: str | None) -> str | None:
    """The storage URL with its password masked (``postgresql://alice:***@host/db``): the only form of a storage
    URL that is written to a file or printed."""
    if not url:
        return url
    url = _URL_PASSWORD.sub(lambda m: m.group("head") + (MASK if m.group("password") else ""), url)
    return _QUERY_PASSWORD.sub(lambda m: m.group("head") + MASK, url)


def scrub(text: str, url: str | None) -> str:
    """``text`` (an error message, say) with the storage URL's password masked wherever it appears."""
    for secret in storage_secrets(url):
        text = text.replace(secret, MASK)
    return text
