"""Counted cost of a run: network calls, operator applications and operator gradients, and the seconds spent in
the network against everything else, measured by wrapping the network and the operator while the run goes on
(never computed from a config).

    with count_cost(net, forward_op) as cost:
        recon = algo.inference(observation)
    cost.as_dict()   # {'nfe', 'forward_calls', 'vjp_calls', 'network_seconds', 'solver_seconds'}

* ``nfe``: calls of the network (``net(x, sigma)``, i.e. its ``forward``).
* ``forward_calls``: the operator's ``forward`` / ``__call__`` / ``loss`` as the algorithm calls them.
* ``vjp_calls``: the operator's ``gradient``, ``adjoint`` and ``gram`` (an operator gradient or transpose product).
  A call made inside another counted call (``gradient`` running ``forward`` and ``adjoint``) counts once, as the
  outer one; a gradient taken by autograd through ``forward`` (DPS) counts as a forward call.
* ``network_seconds``: wall time inside the network (CUDA work is synchronised at each call's ends);
  ``solver_seconds``: the rest of the run's wall time.

The wrappers are instance attributes set on the very objects the algorithm holds (its class, and so every
``isinstance`` and capability check, is unchanged) and removed when the block ends.
"""
from __future__ import annotations

import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

#: operator methods that apply H, and that apply a gradient or transpose of it
FORWARD_METHODS = ("forward", "__call__", "loss")
VJP_METHODS = ("gradient", "adjoint", "gram")
COST_KEYS = ("nfe", "forward_calls", "vjp_calls", "network_seconds", "solver_seconds")


@dataclass
class Cost:
    """What one run spent (see the module docstring)."""
    nfe: int = 0
    forward_calls: int = 0
    vjp_calls: int = 0
    network_seconds: float = 0.0
    wall_seconds: float = 0.0
    _depth: int = field(default=0, repr=False)

    @property
    def solver_seconds(self) -> float:
        return max(self.wall_seconds - self.network_seconds, 0.0)

    def as_dict(self) -> dict[str, float]:
        return {"nfe": self.nfe, "forward_calls": self.forward_calls, "vjp_calls": self.vjp_calls,
                "network_seconds": round(self.network_seconds, 6), "solver_seconds": round(self.solver_seconds, 6)}


def _synchronise(device) -> None:
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _device_of(net) -> torch.device | None:
    parameters = getattr(net, "parameters", None)
    if callable(parameters):
        for p in parameters():
            return p.device
    return None


def counted_network(function: Callable, cost: Cost, device=None) -> Callable:
    """``function`` (a network, or its ``forward``) counting its calls and their wall time into ``cost``."""
    def network(*args, **kwargs):
        _synchronise(device)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _synchronise(device)
            cost.network_seconds += time.perf_counter() - start
            cost.nfe += 1
    return network


def _counted_operator(function: Callable, cost: Cost, counter: str) -> Callable:
    def operator(*args, **kwargs):
        outermost = cost._depth == 0
        cost._depth += 1
        try:
            return function(*args, **kwargs)
        finally:
            cost._depth -= 1
            if outermost:
                setattr(cost, counter, getattr(cost, counter) + 1)
    return operator


def _wrap(obj, name: str, wrapper: Callable[[Callable], Callable], undo: list) -> None:
    """Set ``obj.name`` to ``wrapper(obj.name)`` as an instance attribute; ``undo`` restores it."""
    original = getattr(obj, name, None)
    if not callable(original):
        return
    own = name in getattr(obj, "__dict__", {})
    try:
        object.__setattr__(obj, name, wrapper(original))
    except (AttributeError, TypeError):  # a read-only attribute: that method is not counted
        return
    undo.append((obj, name, own, original))


@contextmanager
def count_cost(net, forward_op) -> Iterator[Cost]:
    """Count the network's and the operator's calls and time the network while the block runs (see the module
    docstring); the objects are restored when it ends, however it ends."""
    cost, undo = Cost(), []
    device = _device_of(net)
    if net is not None:
        _wrap(net, "forward", lambda f: counted_network(f, cost, device), undo)
    for name in FORWARD_METHODS if forward_op is not None else ():
        if name != "__call__":
            _wrap(forward_op, name, lambda f: _counted_operator(f, cost, "forward_calls"), undo)
    for name in VJP_METHODS if forward_op is not None else ():
        _wrap(forward_op, name, lambda f: _counted_operator(f, cost, "vjp_calls"), undo)
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.wall_seconds = time.perf_counter() - start
        for obj, name, own, original in reversed(undo):
            if own:
                object.__setattr__(obj, name, original)
            else:
                object.__delattr__(obj, name)


#: the cost of the last run of an algorithm that publishes it (LMAPS does), for an evaluator that cannot see the
#: algorithm (ours in InverseBench's main.py), with a weak reference to the observation it reconstructed
_LAST_RUN: tuple[weakref.ref, dict[str, float]] | None = None


def publish(cost: dict[str, float], observation) -> None:
    """Record the cost of a run from ``observation`` for :func:`take_last_run`."""
    global _LAST_RUN
    try:
        _LAST_RUN = (weakref.ref(observation), dict(cost))
    except TypeError:  # an object without weak references: nothing to match an evaluation against
        _LAST_RUN = None


def take_last_run(observation) -> dict[str, float] | None:
    """The cost :func:`publish` recorded for this very ``observation`` object (main.py hands the evaluator the
    tensor it gave the algorithm), once; None for another observation (an evaluation of saved results, another
    algorithm's run) or when it was taken already."""
    global _LAST_RUN
    if _LAST_RUN is None or observation is None or _LAST_RUN[0]() is not observation:
        return None
    cost, _LAST_RUN = _LAST_RUN[1], None
    return cost


__all__ = ["Cost", "count_cost", "counted_network", "publish", "take_last_run", "COST_KEYS", "FORWARD_METHODS",
           "VJP_METHODS"]
