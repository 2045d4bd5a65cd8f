"""The schema of the ``lmaps`` app's configuration, checked once at start-up, before any work.

One source of truth: the dataclasses below declare every top-level key of ``configs/config.yaml`` with its type,
default and allowed range (``tests/test_schema.py`` checks that the YAML defaults equal the dataclass defaults).
:func:`validate` reads the composed Hydra config and returns :class:`RunOptions`, the typed values, or raises
:class:`ConfigError` naming every offending key, its value and what is allowed.

The check is strict on purpose, stricter than OmegaConf's own conversions:

- booleans are only ``true`` / ``false`` (``overwrite=no`` or ``resume=maybe`` are refused, never guessed);
- integers are only integers (``num_samples=1.5``, ``num_samples=true`` and ``threads=abc`` are refused);
- numbers must be finite where a noise level or step is meant (``problem.model.sigma_noise=nan|inf|abc``).

The ``problem``, ``algorithm`` and ``prior`` groups stay open (their ``_target_`` classes take the keys); the
schema checks the keys every config of a group has (names, ``problem.model.sigma_noise``, prior sizes).

:func:`canonical` maps a resolved config to the values its hash is computed from: numbers by value, so
``algorithm.method.k2=100`` and ``k2=100.0`` are the same setting (:func:`lmaps_plugin.app.cli.run_config_hash`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..data.base import parse_id_list
from .results import is_finite_number, path_component_problem


class ConfigError(ValueError):
    """The configuration breaks the schema; ``problems`` lists one line per key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


# ---------------------------------------------------------------------------------------------- the schema
def _rule(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **checks: Any):
    """A dataclass field whose ``metadata`` carries its checks: ``min``, ``max``, ``pattern`` + ``allowed``."""
    kwargs = {"metadata": checks}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    else:
        kwargs["default"] = default
    return field(**kwargs)


@dataclass(frozen=True)
class FigureOptions:
    enabled: bool = True
    max_images: int = _rule(4, min=1)
    trajectory: bool = True
    trajectory_frames: int = _rule(6, min=1)


@dataclass(frozen=True)
class RunOptions:
    """The top-level keys of the ``lmaps`` app (``configs/config.yaml``), typed."""

    seed: int = _rule(0, min=0)
    num_images: int = _rule(4, min=1)
    ids: Any = None                      # null, an id, "0-7,12" or a list of ids (checked by parse_id_list)
    num_samples: int = _rule(1, min=1)
    device: str = _rule("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$", allowed="cpu, cuda, cuda:<index> or auto")
    threads: int = _rule(1, min=1, max=4096)
    exp_dir: str = _rule("results", pattern=r"\S", allowed="a non-empty path")
    exp_name: str = _rule("${prior.name}-seed${seed}", path_component=True)
    resume: bool = True
    overwrite: bool = False
    verbose: bool = True
    figure: FigureOptions = _rule(default_factory=FigureOptions)
    # derived, not a key: the sample ids that ids / num_images select
    sample_ids: tuple = ()


#: keys of the groups every config of the group has, and their checks (dotted path -> (kind, checks))
GROUP_RULES: dict[str, tuple[str, dict]] = {
    "problem.name": ("str", {"path_component": True}),
    "problem.exp_dir": ("str", {"pattern": r"\S", "allowed": "a non-empty path"}),
    "problem.model": ("group", {"allowed": "a group of keys with the operator's _target_ (configs/problem/*.yaml)"}),
    "problem.model.sigma_noise": ("number", {"min": 0.0, "optional": True}),
    "problem.data": ("group", {"allowed": "a group of keys with the data set's _target_ (configs/problem/*.yaml)"}),
    "algorithm.name": ("str", {"path_component": True}),
    "algorithm.method": ("group", {"allowed": "a group of keys with the algorithm's _target_ "
                                              "(configs/algorithm/*.yaml)"}),
    "prior.name": ("str", {"path_component": True}),
    "prior.channels": ("int", {"min": 1, "optional": True}),
    "prior.resolution": ("int", {"min": 1, "optional": True}),
}
GROUPS = ("problem", "algorithm", "prior")
_DERIVED = {"sample_ids"}


def top_level_keys() -> tuple[str, ...]:
    """Every top-level key the app accepts (the run options, then the groups)."""
    return tuple(f.name for f in dataclasses.fields(RunOptions) if f.name not in _DERIVED) + GROUPS


# ------------------------------------------------------------------------------------------ value checks
def _describe(kind: str, checks: Mapping[str, Any]) -> str:
    """What is allowed, in words: 'an integer >= 1', 'a boolean, true or false', ..."""
    if "allowed" in checks:
        return checks["allowed"]
    if kind == "bool":
        return "a boolean, true or false"
    if kind == "str":
        return "a string"
    noun = "an integer" if kind == "int" else "a finite number"
    bounds = [f">= {checks['min']}" if "min" in checks else "", f"<= {checks['max']}" if "max" in checks else ""]
    return " ".join([noun, " and ".join(b for b in bounds if b)]).strip()


def check_value(key: str, value: Any, kind: str, checks: Mapping[str, Any]) -> str | None:
    """The problem with ``value`` for ``key`` (None when it is allowed). A ``path_component`` check is
    :func:`lmaps_plugin.app.results.path_component_problem`, the one check of names that become folders."""
    if checks.get("path_component"):
        return path_component_problem(key, value)
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = is_finite_number(value)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "group":
        ok = isinstance(value, Mapping)
    else:  # pragma: no cover - a schema typo
        raise ValueError(f"unknown kind {kind!r} for {key}")
    if ok and kind == "int" and not is_finite_number(value):
        ok = False  # an integer no float can hold
    if ok and kind in ("int", "number"):
        ok = value >= checks.get("min", -math.inf) and value <= checks.get("max", math.inf)
    if ok and kind == "str" and "pattern" in checks:
        ok = re.search(checks["pattern"], value) is not None
    if ok:
        return None
    return f"{key}={value!r} is not allowed: {_describe(kind, checks)}"


def _kind(annotation: str) -> str:
    """The check of a dataclass field from its annotation (a string: this module uses postponed annotations)."""
    return {"bool": "bool", "int": "int", "str": "str", "float": "number"}.get(str(annotation), "any")


def _check_dataclass(cls, values: Mapping[str, Any], prefix: str, problems: list[str]) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in _DERIVED:
            continue
        key = f"{prefix}{f.name}"
        if f.name not in values:
            problems.append(f"{key} is missing (the app's configs/config.yaml sets it)")
            continue
        value = values[f.name]
        if f.name == "figure":
            names = [g.name for g in dataclasses.fields(FigureOptions)]
            if not isinstance(value, Mapping):
                problems.append(f"{key}={value!r} is not allowed: a group of keys ({', '.join(names)})")
                continue
            problems += [f"unknown key {key}.{name} (allowed: {', '.join(names)})"
                         for name in sorted(set(value) - set(names))]
            out[f.name] = FigureOptions(**_check_dataclass(FigureOptions, value, f"{key}.", problems))
            continue
        kind = _kind(f.type)
        if kind != "any":
            problem = check_value(key, value, kind, f.metadata)
            if problem:
                problems.append(problem)
                continue
        out[f.name] = value
    return out


def _select(container: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = container
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


#: the most sample ids one run may name (a typo like ids=0-9999999999 must not build a giant list)
MAX_IDS = 1_000_000


def _range_size(text: str) -> int:
    """How many ids a range string such as '0-7,12' names (0 for parts that are not ranges of integers)."""
    total = 0
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            total += max(0, int(hi) - int(lo) + 1) if sep else 1
        except ValueError:
            continue
    return total


def _check_ids(values: Mapping[str, Any], problems: list[str]) -> tuple:
    ids, num_images = values.get("ids"), values.get("num_images")
    if isinstance(ids, bool) or (ids is not None and not isinstance(ids, (int, str, list, tuple))):
        problems.append(f"ids={ids!r} is not allowed: null, an id, a range string like '0-7,12' or a list of ids")
        return ()
    if isinstance(ids, (list, tuple)) and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        problems.append(f"ids={ids!r} is not allowed: a list of non-negative integers")
        return ()
    if ids is None and not (isinstance(num_images, int) and not isinstance(num_images, bool) and num_images >= 1):
        return ()  # num_images' own problem is already listed
    if isinstance(ids, str) and _range_size(ids) > MAX_IDS:
        problems.append(f"ids={ids!r} is not allowed: it names more than {MAX_IDS} ids")
        return ()
    try:
        parsed = parse_id_list(ids, num_images)
    except ValueError as exc:
        problems.append(f"ids={ids!r} is not allowed: {exc}")
        return ()
    duplicates = sorted({i for i in parsed if parsed.count(i) > 1})
    if duplicates:
        problems.append(f"ids={ids!r} is not allowed: ids must not repeat (repeated: {duplicates})")
        return ()
    return tuple(parsed)


def validate(config: Mapping[str, Any]) -> RunOptions:
    """Check a resolved config (a plain dict, or an OmegaConf config) against the schema.

    Returns the typed top-level values; raises :class:`ConfigError` listing every problem.
    """
    container = _plain(config)
    problems: list[str] = []
    allowed = top_level_keys()
    problems += [f"unknown top-level key {key!r} (allowed: {', '.join(allowed)})"
                 for key in sorted(set(container) - set(allowed))]
    values = _check_dataclass(RunOptions, container, "", problems)
    sample_ids = _check_ids(container, problems)
    for group in GROUPS:
        if not isinstance(container.get(group), Mapping):
            problems.append(f"{group}={container.get(group)!r} is not allowed: a config group "
                            f"(choose one with {group}=<name>)")
    for key, (kind, checks) in GROUP_RULES.items():
        found, value = _select(container, key)
        if not found:
            if not checks.get("optional"):
                problems.append(f"{key} is missing (every {key.split('.')[0]} config names it)")
            continue
        if value is None and checks.get("optional"):
            continue
        problem = check_value(key, value, kind, checks)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(problems)
    return RunOptions(**values, sample_ids=sample_ids)


def _plain(config: Any) -> dict:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config)


# --------------------------------------------------------------------------------------------- the hash
def canonical(value: Any) -> Any:
    """``value`` with numbers by value: integral floats become ints (100.0 -> 100, -0.0 -> 0); booleans, strings,
    None and non-integral floats stay; dicts and lists are canonicalized recursively. Used for the config hash."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


__all__ = ["ConfigError", "RunOptions", "FigureOptions", "GROUP_RULES", "validate", "check_value", "canonical",
           "top_level_keys"]
