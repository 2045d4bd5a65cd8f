"""The metrics file of a results folder, ``metrics.json`` and ``metrics.csv``: one schema and one writer for the
``lmaps`` app and for our evaluators in InverseBench's stock ``main.py`` (docs/metrics_file.md describes it).

``metrics.json``::

    {"schema": "lmaps-metrics/1",
     "complete": true,                      every requested sample finished (main.py: its evaluator's compute ran)
     "metric_backend": "...",               the implementation that computed the metrics
     "info": {...},                         what the writer adds (solver name, units, ...)
     "requested": [ids], "ids": [ids],      the samples asked for, the samples with metrics (in order)
     "per_sample": {metric: [value per id]},  null where a sample lacks the metric or it is not finite
     "samples": {id: {metric: value}},
     "summary": {m: mean, m_std: std},      InverseBench's Evaluator.compute() layout
     "stats": {m: {"mean", "std", "n"}},    population std over the finite values
     "unavailable": {m: reason}, "missing": [ids], "failed": {id: reason}, "solver": {...}}

``metrics.csv``: one row per sample id, then ``mean`` and ``std`` rows and a row per missing id; an unavailable
metric is a column holding its reason.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..io import atomic_write_json, atomic_write_text, is_finite_number

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
SCHEMA = "lmaps-metrics/1"


def as_number(value: Any) -> float | None:
    """A metric value (float, int, numpy scalar, 0-d tensor) as a plain float; None when it is not finite."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().item()
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def value_stats(values) -> dict[str, float] | None:
    """``{'mean', 'std', 'n'}`` of the finite numbers among ``values`` (population std, as InverseBench's
    ``np.std``; compensated sums); None when there is none."""
    finite = [float(v) for v in values if is_finite_number(v)]
    if not finite:
        return None
    mean = math.fsum(finite) / len(finite)
    return {"mean": mean, "std": math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite)),
            "n": len(finite)}


def summarize(samples: Mapping[Any, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {'mean', 'std', 'n'}}`` over the samples' finite values (:func:`value_stats`)."""
    names = list(dict.fromkeys(k for metrics in samples.values() for k in metrics))
    out = {}
    for name in names:
        entry = value_stats(m[name] for m in samples.values() if name in m)
        if entry is not None:
            out[name] = entry
    return out


def flat_summary(stats: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """InverseBench's ``Evaluator.compute()`` layout: ``{m: mean, m + '_std': std}``."""
    out = {}
    for name, entry in stats.items():
        out[name] = entry["mean"]
        out[f"{name}_std"] = entry["std"]
    return out


def missing_ids(expected: Iterable[int], present: Iterable[Any]) -> list[int]:
    return sorted(set(int(i) for i in expected) - set(int(i) for i in present))


def write_metrics_file(folder: str | Path, samples: Mapping[Any, Mapping[str, Any]], *, complete: bool | None = None,
                       requested: Iterable[int] = (), summary: Mapping[str, Any] | None = None,
                       metric_backend: str | None = None, unavailable: Mapping[str, str] | None = None,
                       failed: Mapping[Any, str] | None = None, solver: Mapping[str, float] | None = None,
                       info: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` in ``folder`` (atomically) for ``samples`` ({id: {metric:
    value}}, in the order to list them). ``summary`` is the flat summary to report (default: the mean and std of
    ``samples``; an evaluator whose ``compute()`` summarises differently, such as the black hole's, passes its
    own). ``complete`` defaults to "no requested id is missing"."""
    samples = {str(i): {k: as_number(v) for k, v in m.items()} for i, m in samples.items()}
    stats = summarize({i: {k: v for k, v in m.items() if v is not None} for i, m in samples.items()})
    names = list(dict.fromkeys(k for m in samples.values() for k in m))
    requested = sorted(set(int(i) for i in requested))
    missing = missing_ids(requested, samples)
    unavailable = dict(unavailable or {})
    flat = flat_summary(stats) if summary is None else {k: as_number(v) for k, v in summary.items()}
    payload = {
        "schema": SCHEMA,
        "complete": (not missing) if complete is None else bool(complete),
        "metric_backend": metric_backend,
        "info": dict(info or {}),
        "requested": requested,
        "ids": [int(i) if i.isdigit() else i for i in samples],
        "per_sample": {name: [m.get(name) for m in samples.values()] for name in names},
        "samples": samples,
        "summary": flat,
        "stats": stats,
        "unavailable": unavailable,
        "missing": missing,
        "failed": {str(i): str(reason) for i, reason in (failed or {}).items()},
        "solver": dict(solver or {}),
    }
    folder = Path(folder)
    json_path = atomic_write_json(folder / METRICS_JSON, payload)
    csv_path = atomic_write_text(folder / METRICS_CSV, _csv_text(samples, names, stats, unavailable, missing))
    return json_path, csv_path


def _csv_text(samples: Mapping[str, Mapping[str, float | None]], names: list[str], stats: Mapping, unavailable:
              Mapping[str, str], missing: list[int]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    reasons = list(unavailable.values())
    writer.writerow(["id", *names, *unavailable])
    for i, metrics in samples.items():
        writer.writerow([i, *(_fmt(metrics.get(n)) for n in names), *reasons])
    writer.writerow(["mean", *(_fmt(stats[n]["mean"]) if n in stats else "" for n in names), *reasons])
    writer.writerow(["std", *(_fmt(stats[n]["std"]) if n in stats else "" for n in names), *reasons])
    for i in missing:
        writer.writerow([i, *("missing" for _ in names), *("missing" for _ in unavailable)])
    return buffer.getvalue()


def _fmt(value) -> str:
    return "" if value is None else f"{float(value):.6g}"


__all__ = ["METRICS_JSON", "METRICS_CSV", "SCHEMA", "as_number", "value_stats", "summarize", "flat_summary", "missing_ids",
           "write_metrics_file"]
