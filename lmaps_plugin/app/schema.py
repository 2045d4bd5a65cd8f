"""The schema of the ``lmaps`` app's configuration, checked once at start-up, before any work.

One source of truth: the pydantic models below (strict types: ``StrictBool``, ``StrictInt``, finite numbers,
ranges) declare every top-level key of ``configs/config.yaml`` with its type, default and allowed range
(``tests/app/test_schema.py`` checks that the YAML defaults equal the models' defaults). :func:`validate` reads the
composed Hydra config and returns :class:`RunOptions`, the typed values, or raises :class:`ConfigError` naming every
offending key, its value and what is allowed (each field's :class:`Allowed` words it), one line per key.

The check is strict on purpose, stricter than OmegaConf's own conversions:

- booleans are only ``true`` / ``false`` (``overwrite=no`` or ``resume=maybe`` are refused, never guessed);
- integers are only integers (``num_samples=1.5``, ``num_samples=true`` and ``threads=abc`` are refused);
- numbers must be finite where a noise level or step is meant (``problem.model.sigma_noise=nan|inf|abc``).

The ``problem``, ``algorithm`` and ``prior`` groups stay open (their ``_target_`` classes take the keys); the
schema checks the keys every config of a group has (names, ``problem.model.sigma_noise``, prior sizes).

:func:`canonical` maps a resolved config to the values its hash is computed from: numbers by value, so
``algorithm.method.k2=100`` and ``k2=100.0`` are the same setting (:func:`lmaps_plugin.app.build.run_config_hash`).
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Mapping, Union

from omegaconf import OmegaConf
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      ValidationError)

from ..data.base import parse_id_list
from .results import is_finite_number, path_component_problem


class ConfigError(ValueError):
    """The configuration breaks the schema; ``problems`` lists one line per key."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


# ---------------------------------------------------------------------------------------------- the schema
class Allowed(str):
    """What a field allows, in the words of the error message (``a boolean, true or false``)."""


class PathComponent:
    """Marks a name that becomes one folder of a results path (checked by
    :func:`lmaps_plugin.app.results.path_component_problem`)."""


def _finite(value):
    if not is_finite_number(value):
        raise ValueError("not a finite number")
    return value


def _path_component(value):
    if path_component_problem("name", value):
        raise ValueError("not a path component")
    return value


def _integer(low: int, high: int | None = None):
    words = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    return Annotated[StrictInt, Field(ge=low, le=high), AfterValidator(_finite), Allowed(words)]


Boolean = Annotated[StrictBool, Allowed("a boolean, true or false")]
NonEmptyPath = Annotated[StrictStr, Field(pattern=r"\S"), Allowed("a non-empty path")]
Name = Annotated[StrictStr, AfterValidator(_path_component), PathComponent()]
NonNegativeNumber = Annotated[Union[StrictInt, StrictFloat], Field(ge=0), AfterValidator(_finite),
                              Allowed("a finite number >= 0.0")]
Device = Annotated[StrictStr, Field(pattern=r"^(cpu|auto|cuda(:\d+)?)$"),
                   Allowed("cpu, cuda, cuda:<index> or auto")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Open(BaseModel):
    """A config group: the keys every config of the group has are checked, the others go to its classes."""
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class FigureOptions(_Strict):
    enabled: Boolean = True
    max_images: _integer(1) = 4
    trajectory: Boolean = True
    trajectory_frames: _integer(1) = 6


class RunOptions(_Strict):
    """The top-level keys of the ``lmaps`` app (``configs/config.yaml``), typed."""

    seed: _integer(0) = 0
    num_images: _integer(1) = 4
    ids: Any = None                      # null, an id, "0-7,12" or a list of ids (checked by parse_id_list)
    num_samples: _integer(1) = 1
    device: Device = "cpu"
    threads: _integer(1, 4096) = 1
    exp_dir: NonEmptyPath = "results"
    exp_name: Name = "${prior.name}-seed${seed}"
    resume: Boolean = True
    overwrite: Boolean = False
    verbose: Boolean = True
    figure: FigureOptions = Field(default_factory=FigureOptions)
    # derived, not a key: the sample ids that ids / num_images select
    sample_ids: tuple = ()


class OperatorGroup(_Open):
    sigma_noise: NonNegativeNumber | None = None


class ProblemGroup(_Open):
    name: Name
    exp_dir: NonEmptyPath
    model: Annotated[OperatorGroup, Allowed("a group of keys with the operator's _target_ (configs/problem/*.yaml)")]
    data: Annotated[dict, Allowed("a group of keys with the data set's _target_ (configs/problem/*.yaml)")]


class AlgorithmGroup(_Open):
    name: Name
    method: Annotated[dict, Allowed("a group of keys with the algorithm's _target_ (configs/algorithm/*.yaml)")]


class PriorGroup(_Open):
    name: Name
    channels: _integer(1) | None = None
    resolution: _integer(1) | None = None


#: the config groups and the model of the keys every config of the group has
GROUPS = {"problem": ProblemGroup, "algorithm": AlgorithmGroup, "prior": PriorGroup}
_DERIVED = {"sample_ids"}


def top_level_keys() -> tuple[str, ...]:
    """Every top-level key the app accepts (the run options, then the groups)."""
    return tuple(name for name in RunOptions.model_fields if name not in _DERIVED) + tuple(GROUPS)


# ------------------------------------------------------------------------------------ the error messages
def _field(model: type[BaseModel], loc: tuple) -> tuple[str, Any, int]:
    """The dotted key of an error's location, the field's info (None where the location is not a declared field)
    and how many parts of ``loc`` name fields (a union's branch tags and list indices follow them)."""
    info, parts = None, 0
    for part in loc:
        fields = getattr(model, "model_fields", {}) if isinstance(model, type) else {}
        if not isinstance(part, str) or part not in fields:
            break
        info, parts = fields[part], parts + 1
        model = _model_of(info.annotation)
    return ".".join(str(p) for p in loc[:parts]), info, parts


def _model_of(annotation):
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _metadata(info) -> list:
    """A field's metadata, and that of the ``Annotated`` types inside an optional (``X | None``) annotation."""
    found = list(getattr(info, "metadata", ()))
    for arg in getattr(getattr(info, "annotation", None), "__args__", ()):
        found += list(getattr(arg, "__metadata__", ()))
    return found


def _allowed(info, model: type[BaseModel] | None) -> str:
    for meta in _metadata(info):
        if isinstance(meta, Allowed):
            return str(meta)
    if model is not None:
        return f"a group of keys ({', '.join(model.model_fields)})"
    return "a value of its type"


def _lookup(values: Mapping[str, Any], loc: tuple) -> Any:
    node: Any = values
    for part in loc:
        node = node[part]
    return node


def problems_of(error: ValidationError, model: type[BaseModel], values: Mapping[str, Any], prefix: str = "",
                missing: str = "is missing") -> list[str]:
    """One line per key of a pydantic error: ``key=value is not allowed: <what is>``, ``unknown key ...``,
    ``key is missing ...``."""
    out: dict[str, str] = {}
    for e in error.errors():
        key, info, parts = _field(model, e["loc"])
        dotted = prefix + key
        if e["type"] == "extra_forbidden":
            name = prefix + ".".join(str(p) for p in e["loc"])
            if parts == 0 and not prefix and model is RunOptions:
                out.setdefault(name, f"unknown top-level key {name!r} (allowed: {', '.join(top_level_keys())})")
            else:
                parent = _model_of(info.annotation) if info is not None else model
                out.setdefault(name, f"unknown key {name} (allowed: {', '.join(parent.model_fields)})")
            continue
        if e["type"] == "missing":
            out.setdefault(dotted, f"{dotted} {missing}")
            continue
        value = _lookup(values, e["loc"][:parts])
        if any(isinstance(meta, PathComponent) for meta in _metadata(info)):
            out.setdefault(dotted, path_component_problem(dotted, value))
            continue
        out.setdefault(dotted, f"{dotted}={value!r} is not allowed: "
                               f"{_allowed(info, _model_of(info.annotation) if info else None)}")
    return list(out.values())


#: the most sample ids one run may name (a typo like ids=0-9999999999 must not build a giant list)
MAX_IDS = 1_000_000


def range_size(text: str) -> int:
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
    if isinstance(ids, str) and range_size(ids) > MAX_IDS:
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
    options = dict(container)
    for group in GROUPS:
        options.pop(group, None)
    missing = [name for name in RunOptions.model_fields if name not in container and name not in _DERIVED]
    problems += [f"{name} is missing (the app's configs/config.yaml sets it)" for name in missing]
    typed = None
    try:
        typed = RunOptions.model_validate({k: v for k, v in options.items() if k not in _DERIVED})
    except ValidationError as exc:
        problems += [p for p in problems_of(exc, RunOptions, options) if not p.endswith("is missing")]
    sample_ids = _check_ids(container, problems)
    for group, model in GROUPS.items():
        value = container.get(group)
        if not isinstance(value, Mapping):
            problems.append(f"{group}={value!r} is not allowed: a config group (choose one with {group}=<name>)")
            continue
        try:
            model.model_validate(value)
        except ValidationError as exc:
            problems += problems_of(exc, model, value, prefix=f"{group}.",
                                    missing=f"is missing (every {group} config names it)")
    if problems:
        raise ConfigError(problems)
    return typed.model_copy(update={"sample_ids": sample_ids})


def _plain(config: Any) -> dict:
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


__all__ = ["ConfigError", "range_size", "MAX_IDS", "RunOptions", "FigureOptions", "GROUPS", "validate", "problems_of", "canonical",
           "top_level_keys"]
