"""The job of a tuning worker started by a Hydra launcher (``lmaps-bench tune --workers N``, ``compare``).

Kept light on purpose: the launcher's own process imports only this module and Hydra; each worker imports
:mod:`lmaps_plugin.app.tune` (torch, Optuna) when it starts. A worker runs the studies of its plan in order, each
until its budget is spent, so one pool of workers serves every study of a comparison (one start-up, not one per
study). A storage URL with a password reaches a worker only through its environment (``LMAPS_STORAGE``, set by
:func:`lmaps_plugin.app.tune.run_studies`): ``request.json`` holds it masked.

    python -c "from lmaps_plugin.app.tune_worker import main; main()" -m +plan=PLAN.json +worker=0,1 \\
        hydra/launcher=joblib hydra.launcher.n_jobs=2
"""
from __future__ import annotations

import json
from pathlib import Path


def read_plan(path: str) -> list[str]:
    """The study folders of a plan file (``{"studies": [folder, ...]}``)."""
    return [str(s) for s in json.loads(Path(path).read_text(encoding="utf-8"))["studies"]]


def worker_task(cfg) -> None:
    """One worker (``+plan=... +worker=i``): every study of the plan, in order."""
    from .tune import run_worker

    for study_dir in read_plan(str(cfg.plan)):
        run_worker(study_dir, int(cfg.worker))


def main() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path=None, config_name=None)(worker_task)()
