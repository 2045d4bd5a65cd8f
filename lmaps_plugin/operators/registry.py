"""The operator registry: operators are found through the entry-point group
``lmaps_plugin.operators``, so any installed distribution can add one without touching
this package (declare ``[project.entry-points."lmaps_plugin.operators"] name = "pkg.mod:Class"``).

Entry points are read on every call and loaded only on request, so importing this module
never imports an operator module.
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

__all__ = ["GROUP", "available_operators", "get_operator", "build_operator"]

#: Entry-point group that registers operators.
GROUP = "lmaps_plugin.operators"


def available_operators() -> dict[str, EntryPoint]:
    """``{name: EntryPoint}`` of every registered operator, sorted by name (not loaded).

    When two distributions register the same name, the first one found wins.
    """
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def get_operator(name: str) -> type:
    """The operator class registered as ``name``.

    Raises ``KeyError`` naming the valid names when ``name`` is not registered.
    """
    registered = available_operators()
    if name not in registered:
        valid = ", ".join(registered) or "none (is lmaps-plugin installed? pip install -e .)"
        raise KeyError(f"unknown operator {name!r}; registered operators (entry-point group "
                       f"{GROUP!r}): {valid}")
    return registered[name].load()


def build_operator(name: str, **kwargs):
    """Instantiate the operator registered as ``name`` with ``kwargs``."""
    return get_operator(name)(**kwargs)
