"""One tuning trial (:class:`Objective`): the ``lmaps`` app on the validation images, one image at a time,
reporting the running mean of the metric so the pruner can stop a trial that is clearly worse; a failing sample
prunes its trial with the reason."""
from __future__ import annotations

import contextlib
import copy
import io
import os
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, open_dict

from ...app import build as app_build
from ...app import run as app_run
from ...app import results as R
from .request import TuneRequest, metric_value, space_of, trial_config
from .space import format_value, suggest
from .study import WorkerLease


class Objective:
    """One trial: the lmaps app on the validation images, one image at a time, reporting the running mean."""

    def __init__(self, request: TuneRequest, base: DictConfig, lease: WorkerLease, worker: int = 0):
        self.request, self.base, self.lease, self.worker = request, base, lease, worker
        self.space = space_of(request)
        self.trials_dir = Path(request.study_dir) / "trials"

    def __call__(self, trial) -> float:
        import optuna  # optuna (optional: lmaps-plugin[tune])

        trial.set_user_attr("worker", self.lease.token)
        values = suggest(trial, self.space)
        name = "p" + R.config_hash({k: format_value(v) for k, v in sorted(values.items())})[:12]
        cfg = trial_config(self.base, values, self.trials_dir, name)
        folder = app_build.experiment_dir(cfg)
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
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.ids = [int(sample_id)]
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):   # the report table and the peers' progress bars
            warnings.simplefilter("always")
            try:
                outcome = app_run.run(cfg).outcomes[0]
            except Exception as exc:  # noqa: BLE001 - a crash of the algorithm at these values fails the sample
                outcome = SimpleNamespace(status="failed", metrics={},
                                          reason=f"{type(exc).__name__}: {one_line(str(exc))[:300]}")
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
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in values.items())
        print(f"[tune {self.request.task}/{self.request.algorithm} w{self.worker}] trial {trial.number}: {what} "
              f"({shown})", flush=True)


def one_line(text: str) -> str:
    """A message on one line: a ConfigError lists its problems on the lines after its first."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def short_value(value: Any) -> str:
    """A value as shown in progress lines and summaries (floats with 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
