"""The app's configuration schema: strict types and ranges for every top-level key, checked before any work, and a
config hash computed from the typed values. Property-based (Hypothesis) over the config space, with an oracle written
here independently of lmaps_plugin.app.schema.

Hypothesis settings (CI's fast set): FUZZ below, max_examples=150 per property (60 for the hash property, which
hashes three configs per example), deadline=None (timed by pytest as a whole, not per example), derandomize=True
(the same examples on every run, so CI is reproducible).
"""
from __future__ import annotations

import copy
import math
import re

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from lmaps_plugin.app.compose import compose_app
from lmaps_plugin.app import build
from lmaps_plugin.app import schema

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def default_container():
    """The composed default configuration (``lmaps`` with no arguments), resolved, as plain data."""
    GlobalHydra.instance().clear()
    cfg = compose_app([])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)


# ------------------------------------------------------------------------------------ independent oracle
def _int(v, lo=-math.inf, hi=math.inf):
    return type(v) is int and lo <= v <= hi


def _ids_ok(v) -> bool:
    if v is None:
        return True
    if type(v) is int:
        return v >= 0
    if isinstance(v, list):
        return bool(v) and all(type(i) is int and i >= 0 for i in v) and len(set(v)) == len(v)
    if isinstance(v, str):
        if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", v):
            return False
        ids = []
        for part in v.split(","):
            lo, _, hi = part.partition("-")
            if hi and int(hi) < int(lo):
                return False
            ids += list(range(int(lo), int(hi or lo) + 1))
        return len(set(ids)) == len(ids)
    return False


ORACLE = {
    "seed": lambda v: _int(v, 0),
    "num_images": lambda v: _int(v, 1),
    "num_samples": lambda v: _int(v, 1),
    "threads": lambda v: _int(v, 1, 4096),
    "device": lambda v: isinstance(v, str) and re.fullmatch(r"cpu|auto|cuda(:\d+)?", v) is not None,
    "exp_dir": lambda v: isinstance(v, str) and v.strip() != "",
    "exp_name": lambda v: isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v,
    "resume": lambda v: type(v) is bool,
    "overwrite": lambda v: type(v) is bool,
    "verbose": lambda v: type(v) is bool,
    "figure.enabled": lambda v: type(v) is bool,
    "figure.trajectory": lambda v: type(v) is bool,
    "figure.max_images": lambda v: _int(v, 1),
    "figure.trajectory_frames": lambda v: _int(v, 1),
    "ids": _ids_ok,
    "problem.model.sigma_noise": lambda v: type(v) in (int, float) and math.isfinite(v) and v >= 0,
    "problem.name": lambda v: isinstance(v, str) and v != "" and "/" not in v and "\\" not in v,
    "algorithm.name": lambda v: isinstance(v, str) and v != "" and "/" not in v and "\\" not in v,
    "prior.channels": lambda v: v is None or _int(v, 1),
    "prior.resolution": lambda v: v is None or _int(v, 1),
}

#: what a user can type after ``key=`` (parsed by Hydra's own override parser, as the command line is)
OVERRIDE_TEXT = st.sampled_from([
    "true", "false", "True", "no", "yes", "on", "off", "maybe", "'true'", "0", "1", "-1", "4096", "4097", "1.5", "2.0",
    "-0.0", "1e3", "nan", "inf", "-inf", "abc", "null", "''", "[]", "[0,5]", "[1,1]", "[-1]", "0-3", "3-1", "0-2,7",
    "cpu", "cuda", "cuda:1", "auto", "gpu", "res/x", ".", "..", "results", "a b",
])
PLAIN_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 5000), st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet="abc01-/. ", max_size=6), st.lists(st.integers(-2, 30), max_size=4),
    st.from_regex(r"\A\d{1,2}(-\d{1,2})?(,\d{1,2}(-\d{1,2})?){0,2}\Z"),
)


def _set(container: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(container)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return out


def _check_one(container: dict, key: str, value) -> None:
    """Accepted exactly when the oracle says so; refused with one line naming the key, the value and the rule."""
    config = _set(container, key, value)
    if ORACLE[key](value):
        options = schema.validate(config)
        if "." not in key and key != "ids":
            typed = getattr(options, key)
            assert typed == value and type(typed) is type(value)
        elif key.startswith("figure."):
            typed = getattr(options.figure, key.split(".")[1])
            assert typed == value and type(typed) is type(value)
    else:
        with pytest.raises(schema.ConfigError) as info:
            schema.validate(config)
        assert len(info.value.problems) == 1, info.value.problems
        assert info.value.problems[0].startswith(f"{key}={value!r} is not allowed: ")


@FUZZ
@given(key=st.sampled_from(sorted(ORACLE)), value=PLAIN_VALUES)
def test_every_key_accepts_exactly_its_type_and_range(default_container, key, value):
    _check_one(default_container, key, value)


@FUZZ
@given(key=st.sampled_from(sorted(ORACLE)), text=OVERRIDE_TEXT)
def test_every_key_typed_on_the_command_line(default_container, key, text):
    """The value as Hydra's override parser reads ``key=<text>`` (``overwrite=no`` is the string 'no')."""
    value = OverridesParser.create().parse_override(f"{key}={text}").value()
    _check_one(default_container, key, value)


@settings(FUZZ, max_examples=60)
@given(value=st.one_of(st.integers(-10 ** 6, 10 ** 6), st.floats(-1e6, 1e6, allow_nan=False)),
       other=st.integers(-10 ** 6, 10 ** 6))
def test_config_hash_counts_numbers_by_value(default_container, value, other):
    """k2=100 and k2=100.0 are one setting (before: refused as 'a different configuration'); other values differ."""
    def hash_with(k2):
        return build.run_config_hash(OmegaConf.create(_set(default_container, "algorithm.method.k2", k2)))

    h = hash_with(value)
    if float(value).is_integer():
        assert hash_with(float(value)) == h and hash_with(int(value)) == h
    if float(other) != float(value):
        assert hash_with(other) != h


# ------------------------------------------------------------------------------------------ unit checks
def test_yaml_defaults_are_the_schema_defaults(default_container):
    """configs/config.yaml and the schema's models declare the same defaults (one schema, two views)."""
    raw = OmegaConf.to_container(compose_app([]), resolve=False)
    GlobalHydra.instance().clear()
    for name, info in schema.RunOptions.model_fields.items():
        if name == "sample_ids":
            continue
        default = info.get_default(call_default_factory=True)
        if name == "figure":
            default = default.model_dump()
        assert raw[name] == default, name
    assert set(raw) == set(schema.top_level_keys())


def test_every_problem_is_listed_at_once(default_container):
    config = _set(_set(_set(default_container, "overwrite", "no"), "resume", "maybe"), "threads", "abc")
    config = _set(_set(config, "num_samples", 1.5), "problem.model.sigma_noise", float("nan"))
    config["extra_key"] = 1
    with pytest.raises(schema.ConfigError) as info:
        schema.validate(config)
    text = str(info.value)
    for line in ("overwrite='no' is not allowed: a boolean, true or false",
                 "resume='maybe' is not allowed: a boolean, true or false",
                 "threads='abc' is not allowed: an integer >= 1 and <= 4096",
                 "num_samples=1.5 is not allowed: an integer >= 1",
                 "problem.model.sigma_noise=nan is not allowed: a finite number >= 0",
                 "unknown top-level key 'extra_key'"):
        assert line in text
    assert len(info.value.problems) == 6


def test_valid_default_gives_typed_options(default_container):
    options = schema.validate(default_container)
    assert options.sample_ids == (0, 1, 2, 3) and options.num_samples == 1 and options.overwrite is False
    assert schema.validate(_set(default_container, "ids", "2-4,9")).sample_ids == (2, 3, 4, 9)


def test_canonical_numbers():
    assert schema.canonical({"a": [100.0, -0.0, 0.5, True, None, "1"]}) == {"a": [100, 0, 0.5, True, None, "1"]}
    assert type(schema.canonical(2.0)) is int and schema.canonical(True) is True


def test_a_huge_id_range_is_refused_without_building_it(default_container):
    with pytest.raises(schema.ConfigError, match=r"ids='0-99999999999' is not allowed: it names more than"):
        schema.validate(_set(default_container, "ids", "0-99999999999"))
