"""Search spaces of ``lmaps-bench tune``: one YAML file per algorithm in ``configs/tune/<algorithm>.yaml``.

A space file names Hydra overrides of the ``lmaps`` app (the keys InverseBench's ``configs/sweep/*/*.yaml`` use,
``algorithm.method.<argument>``) with their ranges::

    params:
      algorithm.method.inner_solver: {choices: [gd, cg], only_linear: [cg]}
      algorithm.method.lr: {low: 1.0e-3, high: 0.5, log: true, when: {algorithm.method.inner_solver: gd}}
      algorithm.method.inner_steps: {type: int, low: 1, high: 100, log: true, when: {algorithm.method.inner_solver: gd}}

- ``low``/``high`` (``type: float``, the default, or ``int``) with ``log: true`` for a log-uniform range, or
  ``choices`` for a categorical one; ``only_linear`` lists choices offered only where the task's operator is
  linear (``is_linear``), e.g. the exact CG solver.
- ``when`` samples the parameter only where other parameters took those values (conditional spaces).

Peers of InverseBench add ``inversebench_sweep: <name>``: where a checkout is found (``INVERSEBENCH_ROOT``), the
knobs are the parameters that its ``configs/sweep/*/<name>.yaml`` files sweep, read at run time. A task with its own
sweep folder there (``blackhole``, ``inv-scatter``, ...) takes that file's ranges verbatim; other tasks (the image
tasks, which InverseBench does not sweep) take the file's ``params`` ranges for those knobs, and the envelope of
the upstream ranges for a knob the file does not cover. ``exclude`` names upstream knobs left out on purpose (with
the reason). Without a checkout, or without sweep files for the algorithm, the file's own ``params`` are the space.

The algorithm config named ``lmaps_cpu`` uses ``lmaps_cpu.yaml`` if there is one, else ``lmaps.yaml`` (the name with
its last ``_part`` removed, repeatedly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from ... import configs
from ...io import is_finite_number

#: folder of the shipped space files: ``tune/`` of the package ``lmaps_plugin.configs`` (the repository's
#: ``configs/tune``)
SPACE_DIR = Path(configs.__file__).resolve().parent / "tune"
PARAM_KEYS = {"type", "low", "high", "log", "choices", "only_linear", "when", "source"}


class SpaceError(ValueError):
    """A search-space file is malformed (the message names the file, the key and what is allowed)."""


@dataclass(frozen=True)
class Param:
    """One searched Hydra override key."""
    key: str
    kind: str                                  # 'float' | 'int' | 'categorical'
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    when: Mapping[str, Any] = field(default_factory=dict)
    source: str = "ours"
    only_linear: tuple = ()                    # choices offered only where the operator is linear

    @property
    def name(self) -> str:
        """The Optuna parameter name: the override key itself."""
        return self.key

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        if not is_finite_number(value):
            return False
        if self.kind == "int" and float(value) != int(value):
            return False
        return self.low <= float(value) <= self.high

    def describe(self) -> dict:
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
        elif self.kind == "int":
            out.update(low=int(self.low), high=int(self.high), log=self.log)
        else:
            out.update(low=self.low, high=self.high, log=self.log)
        if self.when:
            out["when"] = dict(self.when)
        out["source"] = self.source
        return out


@dataclass(frozen=True)
class SearchSpace:
    """The resolved space of one (algorithm, task): ordered params (conditions refer to earlier params)."""
    algorithm: str
    file: str
    params: tuple[Param, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {p.key: p.describe() for p in self.params}


# ------------------------------------------------------------------------------------------------- files
def space_file(algorithm: str, directory: str | Path | None = None) -> Path:
    """``<dir>/<algorithm>.yaml``, else the file of the name with its last ``_part`` dropped, repeatedly."""
    folder = Path(directory) if directory is not None else SPACE_DIR
    name = algorithm
    while True:
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
        if "_" not in name:
            break
        name = name.rsplit("_", 1)[0]
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
    raise SpaceError(f"no search space for algorithm {algorithm!r}: expected {folder / (algorithm + '.yaml')} "
                     f"(spaces in {folder}: {known}); write one or pass --space FILE")


def parse_param(key: str, spec: Any, where: str, source: str = "ours") -> Param:
    """A :class:`Param` from one ``params`` entry of a space file."""
    part = special_key_part(key)
    if part is not None:
        raise SpaceError(f"{where}: params.{key}: {part} is a Hydra instantiation key (it names code to run), "
                         f"never a searched value")
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where}: params.{key} must be a mapping like {{low: 0.01, high: 1, log: true}} or "
                         f"{{choices: [a, b]}}, got {spec!r}")
    unknown = set(spec) - PARAM_KEYS
    if unknown:
        raise SpaceError(f"{where}: params.{key} has unknown key(s) {sorted(unknown)}; allowed: {sorted(PARAM_KEYS)}")
    when = dict(spec.get("when") or {})
    src = str(spec.get("source", source))
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, (list, tuple)) or not choices:
            raise SpaceError(f"{where}: params.{key}.choices must be a non-empty list, got {choices!r}")
        only = tuple(spec.get("only_linear") or ())
        if not set(only) <= set(choices):
            raise SpaceError(f"{where}: params.{key}.only_linear {list(only)} must be among its choices {choices}")
        return Param(key, "categorical", choices=tuple(choices), when=when, source=src, only_linear=only)
    kind = str(spec.get("type", "float"))
    if kind not in ("float", "int"):
        raise SpaceError(f"{where}: params.{key}.type must be float or int (or give choices), got {kind!r}")
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise SpaceError(f"{where}: params.{key} needs numeric low and high, got {dict(spec)!r}") from None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: params.{key}.log must be true or false, got {log!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
        raise SpaceError(f"{where}: params.{key} needs finite low < high (and low > 0 with log: true), "
                         f"got low={low}, high={high}, log={log}")
    if kind == "int":
        low, high = float(math.ceil(low)), float(math.floor(high))
    return Param(key, kind, low, high, log, when=when, source=src)


def load_spec(path: str | Path) -> dict:
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpaceError(f"cannot read search space {path}: {exc}") from None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("params", {}), Mapping):
        raise SpaceError(f"{path}: a search space is a mapping with a 'params' mapping")
    unknown = set(spec) - {"params", "inversebench_sweep", "exclude", "notes"}
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: params, inversebench_sweep, "
                         f"exclude, notes")
    return dict(spec)


# ------------------------------------------------------------------------------------- InverseBench sweeps
def wandb_param(key: str, spec: Mapping, where: str) -> Param | None:
    """A wandb sweep parameter (InverseBench's ``configs/sweep`` format) as a :class:`Param`; ``None`` for a
    fixed ``value``."""
    if "value" in spec:
        return None
    if "values" in spec:
        return Param(key, "categorical", choices=tuple(spec["values"]), source=where)
    distribution = str(spec.get("distribution", ""))
    low, high = float(spec["min"]), float(spec["max"])
    if distribution in ("log_uniform_values", "q_log_uniform_values"):
        kind, log = ("int" if distribution.startswith("q_") else "float"), True
    elif distribution in ("int_uniform", "q_uniform"):
        kind, log = "int", False
    elif distribution in ("uniform", ""):
        ints = distribution == "" and all(isinstance(spec[k], int) for k in ("min", "max"))
        kind, log = ("int" if ints else "float"), False
    else:
        raise SpaceError(f"{where}: unsupported wandb distribution {distribution!r} for {key}")
    return Param(key, kind, low, high, log, source=where)


def read_sweeps(root: str | Path, sweep: str) -> dict[str, dict[str, Param]]:
    """``{problem folder: {key: Param}}`` of every ``<root>/configs/sweep/<problem>/<sweep>.yaml``."""
    out: dict[str, dict[str, Param]] = {}
    for path in sorted(Path(root, "configs", "sweep").glob(f"*/{sweep}.yaml")):
        where = f"inversebench:configs/sweep/{path.parent.name}/{path.name}"
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        params = {}
        for key, item in (spec.get("parameters") or {}).items():
            param = wandb_param(str(key), item or {}, where)
            if param is not None:
                params[param.key] = param
        out[path.parent.name] = params
    return out


def envelope(params: list[Param]) -> Param:
    """The smallest range holding every upstream range of one knob (log when any of them is)."""
    first = params[0]
    sources = "+".join(sorted({p.source.split("/")[-2] if "/" in p.source else p.source for p in params}))
    source = f"inversebench sweeps ({sources}): envelope"
    if any(p.kind == "categorical" for p in params):
        choices = tuple(dict.fromkeys(c for p in params for c in p.choices))
        return Param(first.key, "categorical", choices=choices, source=source)
    kind = "int" if all(p.kind == "int" for p in params) else "float"
    return Param(first.key, kind, min(p.low for p in params), max(p.high for p in params),
                 any(p.log for p in params), source=source)


# ------------------------------------------------------------------------------------------------ resolve
def resolve_space(algorithm: str, task_names: tuple[str, ...] = (), path: str | Path | None = None,
                  inversebench_root: str | Path | None = None) -> SearchSpace:
    """The space for ``algorithm`` on a task (``task_names``: its config and problem names, for matching
    InverseBench's per-problem sweep folders). ``inversebench_root``: a checkout, or ``None`` for none."""
    path = Path(path) if path is not None else space_file(algorithm)
    spec = load_spec(path)
    where = str(path.name)
    ours = {str(k): parse_param(str(k), v, where, source=f"ours ({path.name})")
            for k, v in (spec.get("params") or {}).items()}
    sweep = spec.get("inversebench_sweep")
    notes = [str(n) for n in (spec.get("notes") or [])]
    params = dict(ours)
    if sweep and inversebench_root is not None:
        upstream = read_sweeps(inversebench_root, str(sweep))
        exclude = dict(spec.get("exclude") or {})
        if upstream:
            params, note = _merge_upstream(ours, upstream, exclude, task_names, where)
            notes.append(note)
        else:
            notes.append(f"no configs/sweep/*/{sweep}.yaml in the InverseBench checkout: the space is ours")
    elif sweep:
        notes.append("no InverseBench checkout (INVERSEBENCH_ROOT): the space is ours, not the checkout's knobs")
    if not params:
        raise SpaceError(f"{path}: the search space of {algorithm!r} is empty")
    ordered = _order_by_conditions(list(params.values()), where)
    return SearchSpace(algorithm, str(path), tuple(ordered), tuple(notes))


def _merge_upstream(ours: dict[str, Param], upstream: dict[str, dict[str, Param]], exclude: Mapping[str, str],
                    task_names: tuple[str, ...], where: str) -> tuple[dict[str, Param], str]:
    names = {n.removesuffix("-fixed") for n in task_names} | set(task_names)
    own = next((folder for folder in upstream if folder in names), None)
    if own is not None:
        return ({k: p for k, p in upstream[own].items() if k not in exclude},
                f"task has its own InverseBench sweep configs/sweep/{own}: its ranges are used verbatim")
    knobs: dict[str, list[Param]] = {}
    for folder_params in upstream.values():
        for key, param in folder_params.items():
            knobs.setdefault(key, []).append(param)
    params = {}
    for key, found in knobs.items():
        if key in exclude:
            continue
        folders = ",".join(sorted({q.source.split("/")[-2] for q in found}))
        swept = f"InverseBench configs/sweep/{{{folders}}}/{found[0].source.split('/')[-1]}"
        params[key] = (replace(ours[key], source=f"{ours[key].source}; knob swept by {swept}") if key in ours
                       else envelope(found))
    dropped = sorted(set(ours) - set(knobs))
    note = (f"knobs: the parameters InverseBench's configs/sweep/*/ files sweep ({', '.join(sorted(knobs))}); "
            f"ranges: {where} for the image tasks")
    if exclude:
        note += "; excluded: " + "; ".join(f"{k} ({r})" for k, r in exclude.items())
    if dropped:
        note += f"; not swept upstream, left out: {', '.join(dropped)}"
    return params, note


def _order_by_conditions(params: list[Param], where: str) -> list[Param]:
    """Parameters whose ``when`` names others come after them (an error for unknown or cyclic conditions)."""
    keys = {p.key for p in params}
    for p in params:
        for k in p.when:
            if k not in keys:
                raise SpaceError(f"{where}: params.{p.key}.when names {k!r}, which is not a parameter of the space")
    done: list[Param] = []
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(k in {d.key for d in done} for k in p.when)]
        if not ready:
            raise SpaceError(f"{where}: cyclic 'when' conditions among {[p.key for p in pending]}")
        done += ready
        pending = [p for p in pending if p not in ready]
    return done


def restrict_to_operator(space: SearchSpace, linear: bool) -> SearchSpace:
    """Drop the ``only_linear`` choices of a space where the task's operator is not linear."""
    if linear:
        return space
    params = []
    for p in space.params:
        if p.only_linear:
            kept = tuple(c for c in p.choices if c not in p.only_linear)
            p = Param(p.key, p.kind, choices=kept, when=p.when,
                      source=f"{p.source}; non-linear operator: {', '.join(map(str, p.only_linear))} left out")
        params.append(p)
    return SearchSpace(space.algorithm, space.file, tuple(params), space.notes)


# ------------------------------------------------------------------------------------------------ sampling
def active(param: Param, values: Mapping[str, Any]) -> bool:
    """True when every ``when`` condition holds for the values drawn so far."""
    return all(values.get(k) == v for k, v in param.when.items())


def suggest(trial, space: SearchSpace) -> dict[str, Any]:
    """Draw the trial's values (``{override key: value}``) with Optuna's define-by-run API."""
    values: dict[str, Any] = {}
    for p in space.params:
        if not active(p, values):
            continue
        if p.kind == "categorical":
            values[p.key] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values


def baseline_values(space: SearchSpace, select) -> dict[str, Any]:
    """The base config's values of the space's knobs (``select(key)`` reads one), where they lie in range: the
    study's first trial, so a tuned config is never worse on the validation images than the one it started from."""
    values: dict[str, Any] = {}
    for p in space.params:
        if not active(p, values):
            continue
        value = select(p.key)
        value = _as_kind(p, value)
        if value is not None and p.contains(value):
            values[p.key] = value
    return values


# ------------------------------------------------------------------------------------- checking stored trials
#: Hydra keys that make ``instantiate`` import, call or reshape code: never a searched key
HYDRA_SPECIAL_KEYS = frozenset({"_target_", "_args_", "_partial_", "_recursive_", "_convert_"})


def special_key_part(key: str) -> str | None:
    """The first part of a dotted override key that Hydra's ``instantiate`` treats as code (``_target_``, ...),
    or None."""
    for part in str(key).split("."):
        if part in HYDRA_SPECIAL_KEYS or (part.startswith("_") and part.endswith("_") and len(part) > 1):
            return part
    return None


def distribution(param: Param):
    """The Optuna distribution that :func:`suggest` draws ``param`` from."""
    # optuna (optional: lmaps-plugin[tune])
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if param.kind == "categorical":
        return CategoricalDistribution(list(param.choices))
    if param.kind == "int":
        return IntDistribution(int(param.low), int(param.high), log=param.log)
    return FloatDistribution(param.low, param.high, log=param.log)


def trial_problems(params: Mapping[str, Any], distributions: Mapping[str, Any], space: SearchSpace) -> list[str]:
    """Why a stored trial's parameters are not a draw of ``space`` (empty when they are): its parameter names must
    be exactly the space's keys active at its values, each with the space's distribution and a value inside it.
    A study's storage can be written by others (a shared database, a journal file, a ``study.db`` handed over):
    only what passes this check may ever reach a config."""
    problems = []
    expected: dict[str, Param] = {}
    for p in space.params:
        if active(p, params):
            expected[p.key] = p
    for key in params:
        if key not in expected:
            part = special_key_part(key)
            why = f" (Hydra's {part} runs code)" if part else ""
            problems.append(f"{key!r} is not a parameter of the search space{why}")
    for key, p in expected.items():
        if key not in params:
            problems.append(f"{key!r} is missing")
            continue
        if key in distributions and distributions[key] != distribution(p):
            problems.append(f"{key!r} was drawn from {distributions[key]}, the space has {distribution(p)}")
        elif key not in distributions:
            problems.append(f"{key!r} has no distribution")
        if not p.contains(params[key]):
            problems.append(f"{key!r} = {params[key]!r} is outside the space ({p.describe()})")
    return problems


def include_base_values(space: SearchSpace, select) -> SearchSpace:
    """The space widened so that every knob's base-config value (``select(key)`` reads one) lies inside it, each
    widening named in the space's notes: the base config is then trial 0 exactly as given, and a tuned config is
    never worse on the validation images than the one it started from. A base value no range can hold (a
    non-positive value of a log range, a non-number for a numeric knob) is refused."""
    params, notes = [], list(space.notes)
    for p in space.params:
        value = select(p.key)
        if value is None or p.contains(_as_kind(p, value)):
            params.append(p)
            continue
        value = _as_kind(p, value)
        if p.kind == "categorical":
            if isinstance(value, (list, dict)):
                raise SpaceError(f"{space.file}: the base config's {p.key} = {value!r} cannot be a choice of "
                                 f"{list(p.choices)}")
            widened = replace(p, choices=(*p.choices, value))
        else:
            if not replace(p, low=-math.inf, high=math.inf).contains(value) or (p.log and float(value) <= 0):
                raise SpaceError(f"{space.file}: the base config's {p.key} = {value!r} cannot lie in the range "
                                 f"{p.describe()} (pass the base value inside it, or another --space)")
            widened = replace(p, low=min(p.low, float(value)), high=max(p.high, float(value)))
        notes.append(f"{p.key}: widened to hold the base config's value {value!r} ({p.describe()} -> "
                     f"{widened.describe()})")
        params.append(widened)
    return SearchSpace(space.algorithm, space.file, tuple(params), tuple(notes))


def _as_kind(param: Param, value: Any) -> Any:
    if param.kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def format_value(value: Any) -> str:
    """A Hydra override value (floats in full precision; strings as they are)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


__all__ = ["SPACE_DIR", "SpaceError", "Param", "SearchSpace", "space_file", "resolve_space", "restrict_to_operator",
           "suggest", "baseline_values", "active", "read_sweeps", "wandb_param", "envelope", "format_value", "distribution", "trial_problems",
           "special_key_part", "HYDRA_SPECIAL_KEYS", "include_base_values"]
