"""What a finished study leaves: the tuned config (the best counted trial's values, with provenance),
``trials.csv``, ``summary.json`` and the plots. A study whose trials are not draws of its search space is
refused (anyone who can write to the storage can add trials), and a study where no counted trial finished every
validation image writes no config (:class:`TuningFailed`)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from ... import configs
from ...io import atomic_write, atomic_write_json, atomic_write_text
from ..aggregate import package_versions as bench_versions
from .request import (BASE_CONFIG, SUMMARY, TRIALS_CSV, TuneError, TuneRequest, space_of, storage_label,
                      trial_config, tuned_config_path, tuned_option)
from .space import SearchSpace, trial_problems
from .study import open_study, trial_counts


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
    from optuna.trial import TrialState  # optuna (optional: lmaps-plugin[tune])

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
    from optuna.trial import TrialState  # optuna (optional: lmaps-plugin[tune])

    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        return None
    pick = max if direction == "maximize" else min
    return pick(complete, key=lambda t: (t.value, -t.number) if direction == "maximize" else (t.value, t.number))


def package_versions() -> dict:
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
    atomic_write_json(study_dir / SUMMARY, {**provenance, "counts": counts, "tuned_config": None,
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
        "study": request.study_name, "storage": storage_label(request.storage),
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
    atomic_write_text(path, header + OmegaConf.to_yaml(OmegaConf.create(algorithm)))
    study_dir = Path(request.study_dir)
    write_trials_csv(study_dir / TRIALS_CSV, study)
    figures = write_plots(study, study_dir) if plots else {}
    installed = install_config(path, request) if request.install else None
    atomic_write_json(study_dir / SUMMARY, {**provenance, "counts": counts, "tuned_config": str(path),
                                              "installed": str(installed) if installed else None,
                                              "plots": {k: str(v) for k, v in figures.items()}})
    return TuneResult(study_dir, path, config_dir, tuned_option(request.prior_name, request.task, request.algorithm),
                      provenance["best_value"], params, counts, len(trials), installed, figures)


def install_config(path: Path, request: TuneRequest) -> Path:
    """Copy a tuned config into the package's ``configs/algorithm/tuned/`` (found without ``--config-dir``)."""
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
    return atomic_write_text(path, buffer.getvalue())


def write_plots(study, folder: Path) -> dict[str, Path]:
    """``history.png`` (optimisation history) and ``importance.png`` (fANOVA parameter importances)."""
    import matplotlib  # matplotlib: heavy; the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy; the Agg backend is chosen before pyplot loads
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
        atomic_write(target, lambda handle, f=figure: f.savefig(handle, format="png", dpi=110))
        plt.close(figure)
        out[name] = target
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return out
