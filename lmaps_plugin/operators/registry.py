"""The operator registry: operators are found through the entry-point group
``lmaps_plugin.operators``, so any installed distribution can add one without touching
this package (declare ``[project.entry-points."lmaps_plugin.operators"] name = "pkg.mod:Class"``).

Entry points are read on every call and loaded only on request, so importing this module
never imports an operator module.
"""
from __future__ import annotations

from importlib.metadata import EntryPoint

from ..entry_points import load_registered, registered

__all__ = ["GROUP", "available_operators", "get_operator", "build_operator"]

#: Entry-point group that registers operators.
GROUP = "lmaps_plugin.operators"


def available_operators() -> dict[str, EntryPoint]:
    """``{name: EntryPoint}`` of every registered operator, sorted by name (not loaded).

    When two distributions register the same name, the first one found wins.
    """
    return registered(GROUP)


def get_operator(name: str) -> type:
    """The operator class registered as ``name``.

    Raises ``KeyError`` naming the valid names when ``name`` is not registered.
    """
    return load_registered(GROUP, name, "operator")


def build_operator(name: str, **kwargs):
    """Instantiate the operator registered as ``name`` with ``kwargs``."""
    return get_operator(name)(**kwargs)
