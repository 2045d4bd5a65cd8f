"""Result files of a run, written so that an interrupted run can be resumed and never leaves a corrupt file.

One folder per (task, algorithm, experiment), InverseBench's ``{problem.exp_dir}/{algorithm.name}/{exp_name}/``:

- ``result_{id}.pt``   InverseBench's per-sample layout ``{'observation', 'recon', 'target'}`` (plus ``'meta'``, a
  dict of plain values: sample id, seed, seconds); loads with ``torch.load(weights_only=True)``.
- ``result_{id}.json`` the sample's record: ``{'id', 'status': 'ok'|'failed', 'metrics': {...}, 'result_sha256',
  'config_hash', 'seed', 'seconds', ...}`` (``'reason'`` instead of metrics when it failed). ``result_sha256`` is
  the SHA-256 of the ``.pt`` file it describes: the two files are checked against each other on read
  (:func:`verified`), so a ``.pt`` of one run never counts with the ``.json`` of another.
- ``metrics.json`` / ``metrics.csv`` per-sample metrics and mean ± std over the folder (rebuilt from the records).

Every record is validated on read (:func:`record_problems`: a JSON object, the file's id, a known status, finite
numbers, well-formed hashes); a bad one is named in a warning and treated as absent, so its sample is run again.
These warnings are attributed to this module, not to the caller: a run reads its folder's records several times
(at the start, per sample, at the end), and Python's default filter then shows each message once.

Every file is written to a hidden temporary name in the same folder and then renamed (``os.replace`` is atomic on
POSIX), so Ctrl-C or a killed worker leaves either the old file or the new one, never half of one. A result whose
reconstruction holds NaN/inf is refused (:class:`NonFiniteResultError`), and JSON is written with
``allow_nan=False``: a NaN is never written as a result.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..evaluation.metrics_file import (METRICS_CSV, METRICS_JSON, flat_summary, missing_ids, summarize,
                                          write_metrics_file)
from ..io import (NonFiniteResultError, atomic_write, atomic_write_json, atomic_write_text,
                  check_path_component, dumps_json, file_sha256, is_finite_number, path_component_problem,
                  read_json_file)

RESULT_KEYS = ("observation", "recon", "target")
_RESULT_RE = re.compile(r"^result_(\d+)\.(pt|json)$")


def result_file_id(name: str, suffix: str | None = None) -> int | None:
    """The sample id of a ``result_{id}.pt`` / ``result_{id}.json`` file name (with ``suffix``, only that kind),
    else None."""
    match = _RESULT_RE.match(name)
    if match is None or (suffix is not None and match.group(2) != suffix):
        return None
    return int(match.group(1))
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
STATUSES = ("ok", "failed")


class ConfigMismatchError(RuntimeError):
    """A results folder holds samples made with a different configuration."""


# ------------------------------------------------------------------------------------------------ paths
def result_path(exp_dir: str | os.PathLike, sample_id: int) -> Path:
    """``{exp_dir}/result_{id}.pt`` (InverseBench's name)."""
    return Path(exp_dir) / f"result_{int(sample_id)}.pt"


def record_path(exp_dir: str | os.PathLike, sample_id: int) -> Path:
    """``{exp_dir}/result_{id}.json``, the sample's metrics record."""
    return Path(exp_dir) / f"result_{int(sample_id)}.json"


# ---------------------------------------------------------------------------------------- result files
def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def save_result(exp_dir: str | os.PathLike, sample_id: int, observation: torch.Tensor, recon: torch.Tensor,
                target: torch.Tensor, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``result_{id}.pt`` atomically; refuse a non-finite ``recon``/``target`` (nothing is written)."""
    for name, tensor in (("recon", recon), ("target", target), ("observation", observation)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"save_result: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not _all_finite(tensor):
            raise NonFiniteResultError(f"sample {sample_id}: {name} holds NaN or inf values; the result is not "
                                       f"written (a rerun will try this sample again)")
    payload = {"observation": observation.detach().cpu(), "recon": recon.detach().cpu(),
               "target": target.detach().cpu()}
    if meta:
        payload["meta"] = json.loads(dumps_json(dict(meta)))  # plain data only: loads with weights_only=True
    return atomic_write(result_path(exp_dir, sample_id), lambda handle: torch.save(payload, handle))


def load_result(path: str | os.PathLike) -> dict:
    """Load a ``result_{id}.pt`` with ``weights_only=True`` and check its keys."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not all(k in data for k in RESULT_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a result file: expected keys {RESULT_KEYS}, found {found}")
    return data


def is_finished(exp_dir: str | os.PathLike, sample_id: int) -> bool:
    """True when ``result_{id}.pt`` exists, loads, and its reconstruction is finite."""
    path = result_path(exp_dir, sample_id)
    if not path.is_file():
        return False
    try:
        data = load_result(path)
    except Exception as exc:  # noqa: BLE001 - a damaged file counts as unfinished and is redone
        warnings.warn(f"{path} cannot be read ({type(exc).__name__}: {exc}); the sample will be run again",
                      RuntimeWarning)
        return False
    return _all_finite(data["recon"])


def result_ids(exp_dir: str | os.PathLike, suffix: str = "pt") -> list[int]:
    """Sample ids that have a ``result_{id}.<suffix>`` file in ``exp_dir`` (sorted)."""
    folder = Path(exp_dir)
    if not folder.is_dir():
        return []
    ids = [i for p in folder.iterdir() if (i := result_file_id(p.name, suffix)) is not None]
    return sorted(ids)


# ------------------------------------------------------------------------------------------ sample records
def check_finite_metrics(metrics: Mapping[str, float], sample_id: int) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if not is_finite_number(value):
            raise NonFiniteResultError(f"sample {sample_id}: metric {key!r} is {value!r:.40}, not a finite number; "
                                       f"not written")
        out[key] = float(value)
    return out


_is_number = is_finite_number


def _is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _numbers_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"{name} must be an object of finite numbers, got {type(value).__name__}"
    bad = [f"{k}={v!r}" for k, v in value.items() if not _is_number(v)]
    return f"{name} must hold finite numbers only, got {', '.join(bad)[:120]}" if bad else None


#: optional keys of a record and their checks (problem text when the check fails)
_OPTIONAL = {
    "config_hash": (lambda v: isinstance(v, str) and bool(_HEX64.match(v)), "a 64-digit hex SHA-256"),
    "seed": (_is_count, "a non-negative integer"),
    "seconds": (lambda v: v is None or (_is_number(v) and v >= 0), "a finite number >= 0 or null"),
    "num_samples": (lambda v: _is_count(v, 1), "an integer >= 1"),
    "task": (lambda v: isinstance(v, str), "a string"),
    "algorithm": (lambda v: isinstance(v, str), "a string"),
    "prior": (lambda v: isinstance(v, str), "a string"),
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "unavailable": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                    "an object of strings"),
}


def record_problems(record: Any, sample_id: int) -> list[str]:
    """Why ``record`` is not a valid record of sample ``sample_id`` (empty when it is).

    Required: ``id`` (= ``sample_id``), ``status`` (``'ok'`` or ``'failed'``); an ok record also ``metrics`` (metric
    name -> finite number) and ``result_sha256`` (of its ``.pt``), a failed one ``reason`` (a string). Optional keys
    are checked when present (:data:`_OPTIONAL`, and ``solver``: finite numbers); other keys are allowed.
    """
    if not isinstance(record, dict):
        return [f"expected a JSON object, got {type(record).__name__}"]
    problems = []
    rid = record.get("id")
    if not _is_count(rid) or rid != int(sample_id):
        problems.append(f"id is {rid!r}, expected {int(sample_id)} (the file's id)")
    status = record.get("status")
    if status not in STATUSES:
        problems.append(f"status is {status!r}, expected one of {STATUSES}")
    elif status == "ok":
        problem = _numbers_problem("metrics", record.get("metrics"))
        if problem:
            problems.append(problem)
        sha = record.get("result_sha256")
        if not (isinstance(sha, str) and _HEX64.match(sha)):
            problems.append(f"result_sha256 is {sha!r}, expected the 64-digit hex SHA-256 of the .pt file")
    elif not isinstance(record.get("reason"), str):
        problems.append(f"a failed record needs a reason (a string), got {record.get('reason')!r}")
    for key, (ok, allowed) in _OPTIONAL.items():
        if key in record and not ok(record[key]):
            problems.append(f"{key} is {record[key]!r:.80}, expected {allowed}")
    if "solver" in record:
        problem = _numbers_problem("solver", record["solver"])
        if problem:
            problems.append(problem)
    return problems


def write_record(exp_dir: str | os.PathLike, sample_id: int, record: Mapping[str, Any]) -> Path:
    """Write a sample's ``result_{id}.json`` atomically; the record must pass :func:`record_problems` (metrics must
    be finite: :class:`NonFiniteResultError`; anything else: ``ValueError``)."""
    record = dict(record)
    record["id"] = int(sample_id)
    record.setdefault("status", "ok")
    if record["status"] == "ok":
        record["metrics"] = check_finite_metrics(record.get("metrics", {}), sample_id)
    problems = record_problems(record, sample_id)
    if problems:
        raise ValueError(f"refusing to write an invalid record for sample {sample_id}: {'; '.join(problems)}")
    return atomic_write_json(record_path(exp_dir, sample_id), record)


def read_record(path: str | os.PathLike, sample_id: int) -> dict | None:
    """The valid record at ``path``, or None (a warning names the file and what is wrong with it)."""
    path = Path(path)
    record, problem = read_json_file(path, missing_ok=True)
    if problem:
        warnings.warn(f"{path} cannot be read ({problem}); sample {sample_id} will be run again", RuntimeWarning)
        return None
    if record is None and not path.exists():
        return None
    problems = record_problems(record, sample_id)
    if problems:
        warnings.warn(f"{path} is not a valid sample record ({'; '.join(problems)}); sample {sample_id} will be "
                      f"run again", RuntimeWarning)
        return None
    return record


def read_records(exp_dir: str | os.PathLike) -> dict[int, dict]:
    """All valid ``result_{id}.json`` records of a folder, by id (invalid ones are named in a warning and left
    out, so their samples count as not done)."""
    records = {}
    for sample_id in result_ids(exp_dir, "json"):
        record = read_record(record_path(exp_dir, sample_id), sample_id)
        if record is not None:
            records[sample_id] = record
    return records


def verified(exp_dir: str | os.PathLike, sample_id: int, record: Mapping[str, Any]) -> bool:
    """True when an ok ``record`` describes the ``result_{id}.pt`` next to it (same SHA-256); a warning names a
    mismatch (e.g. the ``.pt`` of one run with the ``.json`` of another, or a ``.pt`` replaced since)."""
    path = result_path(exp_dir, sample_id)
    if not path.is_file():
        warnings.warn(f"{record_path(exp_dir, sample_id)} says ok but {path.name} is missing; sample {sample_id} "
                      f"will be run again", RuntimeWarning)
        return False
    if file_sha256(path) != record.get("result_sha256"):
        warnings.warn(f"{path} does not match {record_path(exp_dir, sample_id).name} (SHA-256 differs: they were "
                      f"not written together); sample {sample_id} will be run again", RuntimeWarning)
        return False
    return True


def ok_metrics(records: Mapping[int, Mapping]) -> dict[int, dict[str, float]]:
    """``{id: metrics}`` of the records whose status is ok."""
    return {i: dict(r.get("metrics", {})) for i, r in records.items() if r.get("status", "ok") == "ok"}


def same_setting(record: Mapping, config_hash: str, seed: int | None = None) -> bool:
    """The record was made with this configuration (and this seed, when given)."""
    return record.get("config_hash") == config_hash and (seed is None or record.get("seed", seed) == seed)


def check_config(records: Mapping[int, Mapping], config_hash: str, exp_dir: str | os.PathLike,
                 seed: int | None = None) -> None:
    """Raise :class:`ConfigMismatchError` if any finished sample was made with another configuration (or another
    seed, when ``seed`` is given); failed samples hold no result and are simply retried."""
    done = [r for r in records.values() if r.get("status", "ok") == "ok"]
    other = sorted({r.get("config_hash") for r in done} - {config_hash, None})
    if other:
        count = sum(r.get("config_hash") in other for r in done)
        raise ConfigMismatchError(
            f"results folder {exp_dir} holds {count} sample(s) made with a different configuration (config hash "
            f"{', '.join(h[:12] for h in other)} != {config_hash[:12]} of this run). Resuming would mix them: "
            f"choose another exp_name=..., or pass overwrite=true to move them aside.")
    seeds = sorted({r.get("seed") for r in done if r.get("seed") is not None} - {seed}) if seed is not None else []
    if seeds:
        raise ConfigMismatchError(
            f"results folder {exp_dir} holds samples made with seed {', '.join(map(str, seeds))}, this run has seed "
            f"{seed}: choose another exp_name=..., or pass overwrite=true to move them aside.")


def solver_summary(records: Mapping[int, Mapping]) -> dict[str, float]:
    """Solver run statistics over the ok records that carry them (``record['solver']``, from the algorithm's
    ``last_run_stats``): the maximum of every ``*_residual_max`` key and the mean of every ``*_mean`` key."""
    stats = [r["solver"] for r in records.values() if r.get("status") == "ok" and isinstance(r.get("solver"), dict)]
    out: dict[str, float] = {}
    for key in sorted({k for s in stats for k in s}):
        values = [float(s[key]) for s in stats if key in s]
        if key.endswith("_residual_max"):
            out[key] = max(values)
        elif key.endswith("_mean"):
            out[key] = math.fsum(values) / len(values)
    return out


def write_metrics(exp_dir: str | os.PathLike, records: Mapping[int, Mapping], expected_ids: Iterable[int] = (),
                  unavailable: Mapping[str, str] | None = None, info: Mapping[str, Any] | None = None,
                  metric_backend: str | None = None) -> tuple[Path, Path]:
    """Write the folder's metrics file (:func:`lmaps_plugin.evaluation.metrics_file.write_metrics_file`) from its
    sample records: the ok records' metrics in id order, the failed ones' reasons, ``requested`` = the expected
    ids (every id any run of this configuration asked for in the folder; ``complete`` when none is missing), and
    the solver's run statistics (:func:`solver_summary`)."""
    samples = dict(sorted(ok_metrics(records).items()))
    failed = {i: r.get("reason", "failed") for i, r in sorted(records.items()) if r.get("status") == "failed"}
    return write_metrics_file(exp_dir, samples, requested=expected_ids, metric_backend=metric_backend,
                              unavailable=unavailable, failed=failed, solver=solver_summary(records), info=info)


# -------------------------------------------------------------------------------------------- config hash
def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a configuration's canonical JSON (sorted keys); the caller leaves out run-specific keys."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = ["RESULT_KEYS", "STATUSES", "result_file_id", "NonFiniteResultError", "ConfigMismatchError", "path_component_problem",
           "check_path_component", "is_finite_number", "read_json_file", "result_path", "record_path",
           "atomic_write", "atomic_write_text", "atomic_write_json", "dumps_json", "save_result", "load_result",
           "file_sha256", "is_finished", "result_ids", "record_problems", "write_record", "read_record",
           "read_records", "verified", "ok_metrics", "same_setting", "check_config", "summarize", "flat_summary",
           "missing_ids", "solver_summary", "write_metrics", "config_hash", "METRICS_JSON", "METRICS_CSV"]
