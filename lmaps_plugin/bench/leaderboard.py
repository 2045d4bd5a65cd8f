"""The leaderboard submission file: its JSON Schema (``leaderboard.schema.json``, Draft 2020-12, shipped with the
package), checked with ``jsonschema``; a number must also be finite (NaN and infinity parse as JSON numbers in
Python, and an integer may be too large for a float).

A document can match the schema and still lie: :func:`consistency_problems` checks every entry's summaries against
its per-sample rows (n, mean, population std), duplicated rows and entries, samples both finished and missing,
every row's config hash against its entry's and every entry's against the one the request asked for,
and the ensemble keys (``ensemble_size`` of every row equal to the entry's ``num_samples``; none with one sample).
:func:`file_problems` is both, for a file, as readable lines (what ``lmaps-bench validate`` prints).
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from typing import Any, Iterator

import jsonschema

from ..evaluation.metrics import ENSEMBLE_DEFINITIONS
from ..io import is_finite_number, read_json_file

SCHEMA_FILE = "leaderboard.schema.json"
SCHEMA_VERSION = "1.0"
KIND = "lmaps-leaderboard-submission"
#: the ensemble keys a per-sample row carries when the entry's num_samples >= 2
ENSEMBLE_METRICS = tuple(ENSEMBLE_DEFINITIONS)


class SchemaValidationError(ValueError):
    """A document does not match the schema; ``errors`` lists every problem as ``'<path>: <message>'``."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__(f"{len(errors)} schema violation(s):\n  " + "\n  ".join(errors[:20]))


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The leaderboard JSON Schema shipped in the package."""
    return json.loads(resources.files("lmaps_plugin.bench").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def _finite_number(checker, instance) -> bool:
    return is_finite_number(instance)


#: Draft 2020-12, with ``number`` meaning a finite number
FiniteValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _finite_number))


def iter_errors(instance: Any, schema: dict | None = None) -> Iterator[str]:
    """Yield ``'<path>: <message>'`` for every way ``instance`` violates ``schema`` (default: the leaderboard's),
    in document order."""
    schema = load_schema() if schema is None else schema
    FiniteValidator.check_schema(schema)
    errors = sorted(FiniteValidator(schema).iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        yield f"{error.json_path}: {error.message}"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _summary_problems(where: str, summary: dict, rows: list[dict]) -> Iterator[str]:
    """``summary`` ({metric: {mean, std, n}}) against the metrics of ``rows`` (population std)."""
    names = sorted({m for r in rows for m in r.get("metrics", {})})
    for name in sorted(set(summary) | set(names)):
        values = [float(r["metrics"][name]) for r in rows if name in r.get("metrics", {})]
        stats = summary.get(name)
        if stats is None:
            yield f"{where}.summary: metric {name!r} has {len(values)} per-sample value(s) but no summary"
            continue
        if stats["n"] != len(values):
            yield f"{where}.summary.{name}.n is {stats['n']}, but {len(values)} per-sample row(s) have {name!r}"
            continue
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        if not _close(stats["mean"], mean):
            yield f"{where}.summary.{name}.mean is {stats['mean']!r}, but its {len(values)} per-sample values have " \
                  f"mean {mean!r}"
        if not _close(stats["std"], std):
            yield f"{where}.summary.{name}.std is {stats['std']!r}, but its {len(values)} per-sample values have " \
                  f"(population) std {std!r}"


def _ensemble_problems(where: str, entry: dict) -> Iterator[str]:
    """Rows whose ensemble keys contradict the entry's ``num_samples`` (M): ``ensemble_size`` must be M, and an
    entry with M = 1 has no ensemble keys. Rows of M >= 2 without them (records older than the keys) are allowed."""
    m = entry["num_samples"]
    for row in entry["per_sample"]:
        metrics = row.get("metrics", {})
        keys = sorted(k for k in metrics if k in ENSEMBLE_METRICS)
        label = f"{where}.per_sample seed {row['seed']} id {row['id']}"
        if keys and m < 2:
            yield f"{label}: ensemble metrics {keys} but the entry's num_samples is {m} (they need num_samples >= 2)"
        elif keys and metrics.get("ensemble_size") != m:
            yield f"{label}: ensemble_size is {metrics.get('ensemble_size')!r}, but the entry's num_samples is {m}"


def _hash_problems(where: str, entry: dict, requested: dict) -> Iterator[str]:
    """Results credited to the wrong configuration: a per-sample row whose config hash is not the entry's, and an
    entry whose config hash is not the one the sweep's request (``benchmark.requested``) asked for (the results
    of an earlier command, kept in the folder while the new command's jobs were refused)."""
    own = entry["config_hash"]
    for row in entry["per_sample"]:
        if "config_hash" in row and row["config_hash"] != own:
            yield (f"{where}.per_sample seed {row['seed']} id {row['id']}: config hash {row['config_hash'][:12]} is "
                   f"not the entry's ({str(own)[:12]})")
    wanted = requested.get((entry["task"], entry["algorithm"], entry["prior"]))
    if wanted is not None and own is not None and wanted != own:
        yield (f"{where}: holds results of config hash {own[:12]}, but the request (benchmark.command) asked for "
               f"{wanted[:12]}: these are an earlier command's results")


def consistency_problems(document: dict) -> list[str]:
    """What a schema-valid document gets wrong about itself (empty when nothing): per entry, duplicated (seed, id)
    rows, samples listed both as finished and missing, seeds outside the entry's seeds, and ``summary`` (and
    ``compared.summary``) against the per-sample rows, the ensemble keys against ``num_samples``
    (:func:`_ensemble_problems`), config hashes against the rows and the request (:func:`_hash_problems`);
    duplicated (task, algorithm, dataset, prior) entries."""
    problems = []
    seen_entries = {}
    requested = {(r["task"], r["algorithm"], r["prior"]): r["config_hash"]
                 for r in (document.get("benchmark") or {}).get("requested", [])}
    for index, entry in enumerate(document.get("entries", [])):
        where = f"$.entries[{index}] ({entry['task']} / {entry['algorithm']})"
        key = (entry["task"], entry["algorithm"], entry["dataset"], entry["prior"])
        if key in seen_entries:
            problems.append(f"{where}: duplicates $.entries[{seen_entries[key]}] (same task, algorithm, dataset, "
                            f"prior)")
        seen_entries.setdefault(key, index)
        rows = entry["per_sample"]
        keys = [(r["seed"], r["id"]) for r in rows]
        for seed, sample_id in sorted({k for k in keys if keys.count(k) > 1}):
            problems.append(f"{where}.per_sample: seed {seed} id {sample_id} appears {keys.count((seed, sample_id))} "
                            f"times")
        both = sorted(set(keys) & {(m["seed"], m["id"]) for m in entry["missing"]})
        problems += [f"{where}: seed {s} id {i} is both in per_sample and in missing" for s, i in both]
        outside = sorted({s for s, _ in keys} - set(entry["seeds"]))
        if outside:
            problems.append(f"{where}.per_sample: seed(s) {outside} are not in the entry's seeds {entry['seeds']}")
        problems += list(_summary_problems(where, entry["summary"], rows))
        problems += list(_ensemble_problems(where, entry))
        problems += list(_hash_problems(where, entry, requested))
        compared = entry.get("compared")
        if compared is not None:
            chosen = {(c["seed"], c["id"]) for c in compared["samples"]}
            unknown = sorted(chosen - set(keys))
            if unknown:
                problems.append(f"{where}.compared: samples {unknown} are not in per_sample")
            problems += list(_summary_problems(f"{where}.compared", compared["summary"],
                                               [r for r in rows if (r["seed"], r["id"]) in chosen]))
    return problems


def file_problems(path) -> list[str]:
    """Every problem of a leaderboard file, one readable line each (empty when it is valid): unreadable file, not
    UTF-8 or not JSON (:func:`~lmaps_plugin.io.read_json_file`), schema violations, then
    :func:`consistency_problems`."""
    document, problem = read_json_file(path)
    if problem is not None:
        return [problem]
    try:
        errors = list(iter_errors(document))
    except RecursionError:
        return ["nested too deeply for the schema check"]
    if errors:
        return errors
    return consistency_problems(document)


def validate(document: Any, schema: dict | None = None) -> None:
    """Raise :class:`SchemaValidationError` listing every violation (default schema: the leaderboard's)."""
    errors = list(iter_errors(document, schema))
    if errors:
        raise SchemaValidationError(errors)


__all__ = ["SCHEMA_FILE", "SCHEMA_VERSION", "KIND", "ENSEMBLE_METRICS", "SchemaValidationError", "load_schema",
           "iter_errors", "validate", "consistency_problems", "file_problems", "FiniteValidator"]
