"""One sample of a run: reconstruct, evaluate and record it (``result_{id}.pt`` and ``result_{id}.json``), or
re-evaluate a saved result; a failure becomes a failed record with its reason."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..ensemble import ENSEMBLE_KEYS
from ..algorithm import LMAPS
from ..cost import COST_KEYS, count_cost
from ..local_map import LMAPSDivergenceError
from . import results as R
from .figures import TrajectoryRecorder
from .build import sample_seed

@dataclass
class SampleOutcome:
    sample_id: int
    status: str                      # 'ok', 'skipped' (finished before), 'failed'
    metrics: dict = field(default_factory=dict)
    seconds: float | None = None
    reason: str | None = None
    solver: dict | None = None       # the algorithm's last_run_stats (LMAPS: CG residual, iterations, ...)


def _to_batch(data: dict, device: torch.device) -> dict:
    """One data item as a batch of one, collated as InverseBench's ``main.py`` DataLoader does (its datasets give
    numpy arrays, ours tensors), tensors on ``device``."""
    batch = torch.utils.data.default_collate([data])
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _inference(algo, observation, num_samples: int, recorder: TrajectoryRecorder | None):
    if recorder is not None and isinstance(algo, LMAPS):
        return algo.inference(observation, num_samples=num_samples, callback=recorder)
    return algo.inference(observation, num_samples=num_samples)


def solver_stats(algo) -> dict | None:
    """The algorithm's ``last_run_stats`` (a dict of numbers set by each ``inference`` call, e.g. LMAPS' CG
    residuals), as finite JSON numbers; None when the algorithm has none. Non-finite or non-numeric entries are
    left out with a warning naming them."""
    stats = getattr(algo, "last_run_stats", None)
    if not isinstance(stats, dict):
        return None
    out, dropped = {}, []
    for key, value in stats.items():
        if key in COST_KEYS:  # the record's metrics hold the run's counted cost, for every algorithm alike
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = value if isinstance(value, int) else float(value)
        else:
            dropped.append(f"{key}={value!r:.40}")
    if dropped:
        warnings.warn(f"solver statistics left out of the record (not finite numbers): {', '.join(dropped)}",
                      RuntimeWarning, stacklevel=2)
    return out


def split_metrics(metrics: dict) -> tuple[dict, dict]:
    """``(finite, non_finite)`` numeric metrics (floats); non-numeric entries are ignored."""
    finite, bad = {}, {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        (finite if math.isfinite(float(value)) else bad)[str(key)] = float(value)
    return finite, bad


def ensemble_keys(evaluator, result: dict) -> dict:
    """A saved result's ensemble keys: with M >= 2 ``recon`` samples, its evaluator's ``evaluate_ensemble``
    (:meth:`lmaps_plugin.evaluation.metrics.ImageEvaluator.evaluate_ensemble`); empty for M = 1 or an evaluator without one
    (see :func:`ensemble_unavailable`)."""
    ensemble = getattr(evaluator, "evaluate_ensemble", None)
    if callable(ensemble) and result["recon"].shape[0] >= 2:
        return dict(ensemble(result["recon"], result["target"]))
    return {}


def evaluate_result(evaluator, result: dict) -> dict:
    """A saved result's metrics: the evaluator's (means over the ``recon`` samples) and its :func:`ensemble_keys`."""
    metrics = dict(evaluator(pred=result["recon"], target=result["target"], observation=result["observation"]))
    return {**metrics, **ensemble_keys(evaluator, result)}


def ensemble_unavailable(evaluator, num_samples: int) -> dict:
    """``{key: 'unavailable: <reason>'}`` for the ensemble keys when ``num_samples >= 2`` but the task's evaluator
    cannot give them (no ``evaluate_ensemble``); empty otherwise."""
    if num_samples < 2 or callable(getattr(evaluator, "evaluate_ensemble", None)):
        return {}
    reason = (f"unavailable: the task's evaluator {type(evaluator).__name__} has no evaluate_ensemble (the ensemble "
              f"keys come from lmaps_plugin.evaluation.metrics.ImageEvaluator)")
    return {key: reason for key in ENSEMBLE_KEYS}


def needs_ensemble_keys(record: dict, evaluator) -> bool:
    """An ok record of an M >= 2 run written before the ensemble keys existed (they are added on resume)."""
    return (record.get("status") == "ok" and int(record.get("num_samples", 1)) >= 2
            and "ensemble_size" not in record.get("metrics", {})
            and callable(getattr(evaluator, "evaluate_ensemble", None)))


def run_sample(algo, forward_op, evaluator, data: dict, sample_id: int, cfg: DictConfig, exp_dir: Path,
               device: torch.device, base: dict, recorder: TrajectoryRecorder | None = None) -> SampleOutcome:
    """Measure, reconstruct, save (atomically, never NaN) and evaluate one sample; ``base`` is the common part of
    the sample records (:func:`record_base`)."""
    batch = _to_batch(data, device)
    torch.manual_seed(sample_seed(cfg.seed, sample_id, "observation"))
    observation = forward_op(batch)
    target = batch["target"]
    if isinstance(observation, torch.Tensor) and not bool(torch.isfinite(observation).all()):
        return _record_failure(exp_dir, sample_id, base, "non-finite observation: the forward operator gave NaN "
                               "or inf (check problem.model and the data); not run", 0.0)
    torch.manual_seed(sample_seed(cfg.seed, sample_id, "algorithm"))
    start = time.perf_counter()
    try:
        with count_cost(getattr(algo, "net", None), forward_op) as cost:
            recon = _inference(algo, observation, int(cfg.num_samples), recorder).detach()
    except LMAPSDivergenceError as exc:
        return _record_failure(exp_dir, sample_id, base, f"diverged: {exc}", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    stats = solver_stats(algo)
    result = {"observation": observation.detach().cpu(), "recon": forward_op.unnormalize(recon).cpu(),
              "target": forward_op.unnormalize(target).cpu()}
    try:
        path = R.save_result(exp_dir, sample_id, **result, meta={
            "id": int(sample_id), "seed": int(cfg.seed), "seconds": seconds, "config_hash": base["config_hash"]})
    except R.NonFiniteResultError:
        return _record_failure(exp_dir, sample_id, base, "non-finite reconstruction (NaN or inf); not written",
                               seconds)
    metrics = {**evaluate_result(evaluator, result), **cost.as_dict()}
    extra = {"solver": stats} if stats is not None else {}
    return _record_result(exp_dir, sample_id, base, metrics, seconds, R.file_sha256(path), extra, "ok")


def _record_result(exp_dir: Path, sample_id: int, base: dict, metrics: dict, seconds, sha: str, extra: dict,
                   status: str) -> SampleOutcome:
    """Write the record of a saved result: ok, or failed when a metric is not finite (the ``.pt`` is kept)."""
    finite, bad = split_metrics(metrics)
    if bad:
        reason = (f"non-finite metric(s) {', '.join(f'{k}={v}' for k, v in bad.items())} (the reconstruction is "
                  f"kept in {R.result_path(exp_dir, sample_id).name})")
        return _record_failure(exp_dir, sample_id, base, reason, seconds)
    R.write_record(exp_dir, sample_id, {**base, "status": "ok", "metrics": finite, "seconds": seconds,
                                        "result_sha256": sha, **extra})
    return SampleOutcome(sample_id, status, finite, seconds, solver=extra.get("solver"))


def _record_failure(exp_dir: Path, sample_id: int, base: dict, reason: str, seconds: float) -> SampleOutcome:
    warnings.warn(f"sample {sample_id} failed: {reason}", RuntimeWarning, stacklevel=3)
    R.write_record(exp_dir, sample_id, {**base, "status": "failed", "reason": reason, "seconds": seconds})
    return SampleOutcome(sample_id, "failed", seconds=seconds, reason=reason)


def result_meta(exp_dir: Path, sample_id: int) -> dict | None:
    """The ``meta`` of a readable, finite ``result_{id}.pt`` (None when there is none)."""
    if not R.is_finished(exp_dir, sample_id):
        return None
    meta = R.load_result(R.result_path(exp_dir, sample_id)).get("meta")
    return meta if isinstance(meta, dict) else {}


def reevaluate(evaluator, exp_dir: Path, sample_id: int, base: dict) -> SampleOutcome:
    """Metrics of a finished ``result_{id}.pt`` of this setting that has no valid record (e.g. killed between the
    two writes)."""
    path = R.result_path(exp_dir, sample_id)
    result = R.load_result(path)
    metrics = evaluate_result(evaluator, result)
    seconds = (result.get("meta") or {}).get("seconds")
    return _record_result(exp_dir, sample_id, base, metrics, seconds, R.file_sha256(path), {}, "skipped")


def add_ensemble_keys(evaluator, exp_dir: Path, sample_id: int, record: dict, base: dict) -> SampleOutcome:
    """Rewrite a finished M >= 2 record of this setting written before the ensemble keys existed: the same
    metrics, seconds and solver statistics plus the ensemble keys of its (verified) ``.pt``."""
    ensemble = ensemble_keys(evaluator, R.load_result(R.result_path(exp_dir, sample_id)))
    extra = {"solver": record["solver"]} if isinstance(record.get("solver"), dict) else {}
    return _record_result(exp_dir, sample_id, base, {**record["metrics"], **ensemble}, record.get("seconds"),
                          record["result_sha256"], extra, "skipped")


