"""Cost-matched comparison rules: what a method's test runs cost per image (from the runs' own counters), the
budget every method gets, and how LMAPS spends it. Pure functions on numbers and record dicts.

The rule (``lmaps-bench compare --match time|nfe``):

* a run's **cost per image** is the mean over its test records of ``seconds`` (``time``) or of the network
  evaluations ``nfe × num_samples`` (``nfe``: the counted network calls, each of which evaluates a batch of
  ``num_samples`` images) — :func:`measured_cost`;
* the **budget** of a task is the maximum cost per image over the tuned peers (every method that is not LMAPS) —
  :func:`budget`; the peers keep their tuned step counts, they define it;
* LMAPS spends it (a) on more steps: ``N' = floor(N · B / c)``, with ``c / N`` the tuned run's measured cost per
  step — :func:`scaled_steps`; or (b) on an ensemble of ``M = floor(B / c)`` samples, scored by the PSNR of their
  mean — :func:`ensemble_size`. Both round down (never above the budget as measured), and never below 1;
* a scaled run whose own measured cost lands more than :data:`TOLERANCE` off B (wall time on a shared machine
  drifts between runs) is scaled again by the same rule from its own measurement (``N'' = floor(N'·B/c')``,
  ``M'' = floor(M'·B/c')``) — :func:`off_budget`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

#: the cost a budget matches: measured seconds per image, or counted network evaluations per image
MATCH_KINDS = ("time", "nfe")
#: where an algorithm config's step count lives, in order of preference (the first present is the one scaled):
#: LMAPS and RED-diff ``num_steps``; ΠGDM ``scheduler_config``; DAPS its annealing levels; DPS and DiffPIR
#: ``diffusion_scheduler_config``
STEP_KEYS = ("num_steps", "scheduler_config.num_steps", "annealing_scheduler_config.num_steps",
             "diffusion_scheduler_config.num_steps")
#: slack for floating-point products such as 100 · 2.1 / 0.4 = 524.999… that mean 525
_EPS = 1e-9


class BudgetError(ValueError):
    """A budget cannot be set or spent (no peer, no measured cost)."""


@dataclass(frozen=True)
class Cost:
    """Mean cost per image of one run over its test records."""
    seconds: float
    nfe: float          # network evaluations per image: counted calls × num_samples
    n: int              # records it is the mean over

    def of(self, match: str) -> float:
        if match not in MATCH_KINDS:
            raise BudgetError(f"unknown match {match!r}: one of {', '.join(MATCH_KINDS)}")
        return self.seconds if match == "time" else self.nfe


def measured_cost(records: Iterable[Mapping]) -> Cost:
    """Mean ``seconds`` and mean ``metrics.nfe × num_samples`` over ok records that hold them (each mean over the
    records that hold its value). Raises :class:`BudgetError` when none holds either."""
    seconds, nfe = [], []
    for r in records:
        if isinstance(r.get("seconds"), (int, float)) and math.isfinite(r["seconds"]):
            seconds.append(float(r["seconds"]))
        calls = (r.get("metrics") or {}).get("nfe")
        if isinstance(calls, (int, float)) and math.isfinite(calls):
            nfe.append(float(calls) * int(r.get("num_samples", 1)))
    if not seconds and not nfe:
        raise BudgetError("no record holds a measured cost (seconds or counted nfe)")
    mean = (lambda xs: sum(xs) / len(xs) if xs else math.nan)
    return Cost(mean(seconds), mean(nfe), max(len(seconds), len(nfe)))


def budget(peers: Mapping[str, Cost], match: str) -> tuple[float, str]:
    """``(B, name)``: the largest cost per image among the peers and the peer that sets it."""
    values = {name: c.of(match) for name, c in peers.items() if math.isfinite(c.of(match))}
    if not values:
        raise BudgetError(f"no peer with a measured {match} cost: --match needs at least one peer (a method "
                          f"other than LMAPS) with finished test runs")
    name = max(values, key=lambda k: (values[k], k))
    return values[name], name


def _positive(value: float, what: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise BudgetError(f"{what} must be a positive finite number, got {value!r}")


def scaled_steps(steps: int, cost: float, budget_value: float) -> int:
    """``floor(steps · budget / cost)``, at least 1: the step count whose cost, at the measured ``cost / steps``
    per step, is the largest one within the budget."""
    _positive(steps, "steps")
    _positive(cost, "cost")
    _positive(budget_value, "budget")
    return max(1, math.floor(steps * budget_value / cost + _EPS))


def ensemble_size(cost: float, budget_value: float, samples: int = 1) -> int:
    """``floor(samples · budget / cost)``, at least 1: the most samples within the budget when ``samples`` of them
    measured ``cost`` (``cost / samples`` each)."""
    _positive(cost, "cost")
    _positive(budget_value, "budget")
    _positive(samples, "samples")
    return max(1, math.floor(samples * budget_value / cost + _EPS))


#: a matched run whose measured cost is off the budget by more than this fraction is rescaled from its own
#: measurement (``--match-rounds``)
TOLERANCE = 0.1


def off_budget(achieved: float, budget_value: float, tolerance: float = TOLERANCE) -> bool:
    """Whether ``achieved`` is more than ``tolerance`` (a fraction) away from the budget."""
    return abs(ratio(achieved, budget_value) - 1.0) > tolerance


def ratio(achieved: float, budget_value: float) -> float:
    """Achieved cost over the budget (1.0 = matched)."""
    _positive(budget_value, "budget")
    return achieved / budget_value


def step_key(method: Mapping) -> str:
    """The dotted key (under ``algorithm.method``) of a method config's step count (:data:`STEP_KEYS`)."""
    for key in STEP_KEYS:
        node = method
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, int) and not isinstance(node, bool):
            return key
    raise BudgetError(f"the method config has none of the step keys {', '.join(STEP_KEYS)}")


def get_key(method: Mapping, key: str):
    node = method
    for part in key.split("."):
        node = node[part]
    return node


def scaled_step_counts(steps: int, scales: Sequence[float]) -> list[int]:
    """``round(steps · s)`` (at least 1) per scale, repeats dropped, in the scales' order."""
    _positive(steps, "steps")
    out: list[int] = []
    for s in scales:
        _positive(s, "scale")
        n = max(1, round(steps * s))
        if n not in out:
            out.append(n)
    return out


def parse_scales(text: str) -> list[float]:
    """``'0.5,1,2'`` -> ``[0.5, 1.0, 2.0]`` (positive, no repeats)."""
    out: list[float] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            value = float(part)
        except ValueError:
            raise BudgetError(f"{part!r} is not a number") from None
        _positive(value, "a scale")
        if value in out:
            raise BudgetError(f"scale {part} is repeated")
        out.append(value)
    if not out:
        raise BudgetError(f"{text!r} names no scale")
    return out


__all__ = ["MATCH_KINDS", "STEP_KEYS", "BudgetError", "Cost", "measured_cost", "budget", "scaled_steps",
           "ensemble_size", "ratio", "TOLERANCE", "off_budget", "step_key", "get_key", "scaled_step_counts", "parse_scales"]
