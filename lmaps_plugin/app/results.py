"""Result files of a run, written so that an interrupted run can be resumed and never leaves a corrupt file.

One folder per (task, algorithm, experiment), InverseBench's ``{problem.exp_dir}/{algorithm.name}/{exp_name}/``:

- ``result_{id}.pt``   InverseBench's per-sample layout ``{'observation', 'recon', 'target'}`` (plus ``'meta'``, a
  dict of plain values: sample id, seed, seconds); loads with ``torch.load(weights_only=True)``.
- ``result_{id}.json`` the sample's record: ``{'id', 'status': 'ok'|'failed', 'metrics': {...}, 'config_hash',
  'seed', 'seconds', ...}`` (``'reason'`` instead of metrics when it failed).
- ``metrics.json`` / ``metrics.csv`` per-sample metrics and mean ± std over the folder (rebuilt from the records).

Every file is written to a hidden temporary name in the same folder and then renamed (``os.replace`` is atomic on
POSIX), so Ctrl-C or a killed worker leaves either the old file or the new one, never half of one. A result whose
reconstruction holds NaN/inf is refused (:class:`NonFiniteResultError`), and JSON is written with
``allow_nan=False``: a NaN is never written as a result.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

RESULT_KEYS = ("observation", "recon", "target")
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
_RESULT_RE = re.compile(r"^result_(\d+)\.(pt|json)$")


class NonFiniteResultError(ValueError):
    """A reconstruction (or a metric) holds NaN or inf; it is not written."""


class ConfigMismatchError(RuntimeError):
    """A results folder holds samples made with a different configuration."""


# ------------------------------------------------------------------------------------------------ paths
def result_path(exp_dir: str | os.PathLike, sample_id: int) -> Path:
    """``{exp_dir}/result_{id}.pt`` (InverseBench's name)."""
    return Path(exp_dir) / f"result_{int(sample_id)}.pt"


def record_path(exp_dir: str | os.PathLike, sample_id: int) -> Path:
    """``{exp_dir}/result_{id}.json``, the sample's metrics record."""
    return Path(exp_dir) / f"result_{int(sample_id)}.json"


# ------------------------------------------------------------------------------------------ atomic writes
def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary name starts with a dot and ends in ``.tmp`` (never matched by ``result_*.pt``); it is removed if
    ``write`` raises or the process is interrupted (KeyboardInterrupt included).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def dumps_json(obj: Any) -> str:
    """JSON text with ``allow_nan=False``: raises :class:`NonFiniteResultError` rather than writing NaN/inf."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False, sort_keys=False) + "\n"
    except ValueError as exc:
        raise NonFiniteResultError(f"refusing to write a non-finite number as JSON ({exc})") from None


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj))


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
                      RuntimeWarning, stacklevel=2)
        return False
    return _all_finite(data["recon"])


def result_ids(exp_dir: str | os.PathLike, suffix: str = "pt") -> list[int]:
    """Sample ids that have a ``result_{id}.<suffix>`` file in ``exp_dir`` (sorted)."""
    folder = Path(exp_dir)
    if not folder.is_dir():
        return []
    ids = [int(m.group(1)) for p in folder.iterdir() if (m := _RESULT_RE.match(p.name)) and m.group(2) == suffix]
    return sorted(ids)


# ------------------------------------------------------------------------------------------ sample records
def check_finite_metrics(metrics: Mapping[str, float], sample_id: int) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        value = float(value)
        if not math.isfinite(value):
            raise NonFiniteResultError(f"sample {sample_id}: metric {key!r} is {value}; not written")
        out[key] = value
    return out


def write_record(exp_dir: str | os.PathLike, sample_id: int, record: Mapping[str, Any]) -> Path:
    """Write a sample's ``result_{id}.json`` atomically (metrics must be finite)."""
    record = dict(record)
    record["id"] = int(sample_id)
    if record.get("status", "ok") == "ok":
        record["status"] = "ok"
        record["metrics"] = check_finite_metrics(record.get("metrics", {}), sample_id)
    return atomic_write_json(record_path(exp_dir, sample_id), record)


def read_records(exp_dir: str | os.PathLike) -> dict[int, dict]:
    """All readable ``result_{id}.json`` records of a folder, by id (unreadable ones are skipped with a warning)."""
    records = {}
    for sample_id in result_ids(exp_dir, "json"):
        path = record_path(exp_dir, sample_id)
        try:
            records[sample_id] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping unreadable record {path} ({exc})", RuntimeWarning, stacklevel=2)
    return records


def ok_metrics(records: Mapping[int, Mapping]) -> dict[int, dict[str, float]]:
    """``{id: metrics}`` of the records whose status is ok."""
    return {i: dict(r.get("metrics", {})) for i, r in records.items() if r.get("status", "ok") == "ok"}


def check_config(records: Mapping[int, Mapping], config_hash: str, exp_dir: str | os.PathLike) -> None:
    """Raise :class:`ConfigMismatchError` if any finished sample was made with another configuration (failed
    samples hold no result and are simply retried)."""
    done = [r for r in records.values() if r.get("status", "ok") == "ok"]
    other = sorted({r.get("config_hash") for r in done} - {config_hash, None})
    if other:
        count = sum(r.get("config_hash") in other for r in done)
        raise ConfigMismatchError(
            f"results folder {exp_dir} holds {count} sample(s) made with a different configuration (config hash "
            f"{', '.join(h[:12] for h in other)} != {config_hash[:12]} of this run). Resuming would mix them: "
            f"choose another exp_name=..., or pass overwrite=true to replace them.")


# ---------------------------------------------------------------------------------------------- summaries
def summarize(samples: Mapping[int, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {'mean', 'std', 'n'}}`` over samples (population std, as InverseBench's ``np.std``)."""
    names: list[str] = []
    for metrics in samples.values():
        names.extend(k for k in metrics if k not in names)
    out = {}
    for name in names:
        values = [float(m[name]) for m in samples.values() if name in m and math.isfinite(float(m[name]))]
        if not values:
            continue
        t = torch.tensor(values, dtype=torch.float64)
        out[name] = {"mean": t.mean().item(), "std": t.std(unbiased=False).item(), "n": len(values)}
    return out


def flat_summary(summary: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """InverseBench's ``Evaluator.compute()`` layout: ``{m: mean, m + '_std': std}``."""
    out = {}
    for name, stats in summary.items():
        out[name] = stats["mean"]
        out[f"{name}_std"] = stats["std"]
    return out


def missing_ids(expected: Iterable[int], present: Iterable[int]) -> list[int]:
    return sorted(set(int(i) for i in expected) - set(int(i) for i in present))


def write_metrics(exp_dir: str | os.PathLike, records: Mapping[int, Mapping], expected_ids: Iterable[int] = (),
                  unavailable: Mapping[str, str] | None = None, info: Mapping[str, Any] | None = None
                  ) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` for a folder from its sample records.

    ``metrics.json``: ``{'complete', 'info', 'ids', 'per_sample': {metric: [values in id order]}, 'samples':
    {id: metrics}, 'summary': {m: mean, m_std: std} (InverseBench layout), 'stats': {m: {mean, std, n}},
    'unavailable': {m: reason}, 'missing': [ids], 'failed': {id: reason}}``. ``missing`` lists the expected ids
    with no finished result (failed ones included); ``complete`` is true when none is missing.
    ``metrics.csv``: one row per sample id, then ``mean`` and ``std`` rows; unavailable metrics are a column
    holding their reason.
    """
    samples = dict(sorted(ok_metrics(records).items()))
    failed = {str(i): r.get("reason", "failed") for i, r in sorted(records.items()) if r.get("status") == "failed"}
    stats = summarize(samples)
    names = list(stats)
    missing = missing_ids(expected_ids, samples)
    unavailable = dict(unavailable or {})
    payload = {
        "complete": not missing,
        "info": dict(info or {}),
        "ids": list(samples),
        "per_sample": {name: [samples[i].get(name) for i in samples] for name in names},
        "samples": {str(i): m for i, m in samples.items()},
        "summary": flat_summary(stats),
        "stats": stats,
        "unavailable": unavailable,
        "missing": missing,
        "failed": failed,
    }
    folder = Path(exp_dir)
    json_path = atomic_write_json(folder / METRICS_JSON, payload)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", *names, *unavailable])
    for i, metrics in samples.items():
        writer.writerow([i, *(_fmt(metrics.get(n)) for n in names), *unavailable.values()])
    writer.writerow(["mean", *(_fmt(stats[n]["mean"]) for n in names), *unavailable.values()])
    writer.writerow(["std", *(_fmt(stats[n]["std"]) for n in names), *unavailable.values()])
    for i in missing:
        writer.writerow([i, *("missing" for _ in names), *("missing" for _ in unavailable)])
    csv_path = atomic_write_text(folder / METRICS_CSV, buffer.getvalue())
    return json_path, csv_path


def _fmt(value) -> str:
    return "" if value is None else f"{float(value):.6g}"


# -------------------------------------------------------------------------------------------- config hash
def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a configuration's canonical JSON (sorted keys); the caller leaves out run-specific keys."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = ["RESULT_KEYS", "NonFiniteResultError", "ConfigMismatchError", "result_path", "record_path",
           "atomic_write", "atomic_write_text", "atomic_write_json", "dumps_json", "save_result", "load_result",
           "is_finished", "result_ids", "write_record", "read_records", "ok_metrics", "check_config", "summarize",
           "flat_summary", "missing_ids", "write_metrics", "config_hash", "METRICS_JSON", "METRICS_CSV"]
