"""Tuning workers: :func:`run_worker` runs trials on a shared study until its budget is spent;
:func:`run_studies` starts them (in this process for one worker, else one Hydra multirun on a launcher), and
:func:`main` is the job a Hydra launcher runs in each worker process.

A worker runs the studies of its plan in order, each until its budget is spent, so one pool of workers serves
every study of a comparison (one start-up, not one per study). A storage URL with a password reaches a worker only
through its environment (``LMAPS_STORAGE``, set by :func:`run_studies`): ``request.json`` holds it masked.

    python -c "from lmaps_plugin.bench.tune.worker import main; main()" -m +plan=PLAN.json +worker=0,1 \\
        hydra/launcher=joblib hydra.launcher.n_jobs=2
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import hydra
import torch
from omegaconf import OmegaConf

from ...io import atomic_write_json
from ..sweep import launcher_overrides
from .objective import Objective
from .request import BASE_CONFIG, REQUEST, STORAGE_ENV, TuneError, TuneRequest, storage_label
from .study import WorkerLease, budget_left, open_study, reclaim, storage_url

#: the command line that starts this module's :func:`main` (a Hydra app) in a worker process
WORKER_ENTRY = "from lmaps_plugin.bench.tune.worker import main; main()"


def run_worker(study_dir: str | os.PathLike, worker: int = 0, storage: str | None = None) -> int:
    """One worker: reclaim dead workers' trials, then run trials on the shared study until the budget is spent.
    The storage URL is ``storage``, ``$LMAPS_STORAGE`` or ``request.json``'s (see :func:`storage_url`).
    Returns the number of trials this worker ran."""
    import optuna  # optuna (optional: lmaps-plugin[tune])
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


# ------------------------------------------------------------------------------------------------ launching
def worker_command(plan: Path, workers: int, launcher: str, extra: Sequence[str] = ()) -> list[str]:
    """The Hydra multirun that starts ``workers`` workers on the launcher, each running the plan's studies."""
    launcher = "joblib" if launcher in ("auto", "inprocess") else launcher
    indices = ",".join(str(i) for i in range(workers))
    return [sys.executable, "-c", WORKER_ENTRY, "-m",
            f"+plan='{plan.resolve()}'", f"+worker={indices}", f"hydra.sweep.dir='{plan.resolve().parent / 'workers'}'",
            "hydra.job.name=tune_worker", *launcher_overrides(launcher, workers), *extra]


def worker_env(requests: Sequence[TuneRequest]) -> dict[str, str]:
    """The workers' environment: this one, with ``LMAPS_STORAGE`` set to the storage URL when it holds a password
    (workers never read a password from disk; Hydra's launchers, Slurm included, pass the environment on)."""
    env = dict(os.environ)
    secret = sorted({r.storage for r in requests if storage_label(r.storage) != r.storage})
    if len(secret) > 1:
        raise TuneError(f"studies on {len(secret)} password-protected storages cannot share one pool of workers "
                        f"({', '.join(storage_label(u) for u in secret)}); give them one --storage")
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
    atomic_write_json(plan, {"studies": [r.study_dir for r in todo]})
    command = worker_command(plan, first.workers, first.launcher, first.launcher_overrides)
    print("lmaps-bench tune: " + " ".join(command[3:]), flush=True)
    status = subprocess.call(command, env=worker_env(todo))
    if status != 0:
        print(f"lmaps-bench tune: the workers exited with status {status}", file=sys.stderr)
    return status


# ------------------------------------------------------------------------------------------ worker process
def read_plan(path: str) -> list[str]:
    """The study folders of a plan file (``{"studies": [folder, ...]}``)."""
    return [str(s) for s in json.loads(Path(path).read_text(encoding="utf-8"))["studies"]]


def worker_task(cfg) -> None:
    """One worker (``+plan=... +worker=i``): every study of the plan, in order."""
    for study_dir in read_plan(str(cfg.plan)):
        run_worker(study_dir, int(cfg.worker))


def main() -> None:
    """The Hydra app of a worker process (:data:`WORKER_ENTRY`)."""
    hydra.main(version_base="1.3", config_path=None, config_name=None)(worker_task)()
