"""The registries of operators and surrogates, on Python entry points: any installed distribution adds to a group
(``[project.entry-points."lmaps_plugin.operators"] name = "pkg.mod:Class"``, likewise
``"lmaps_plugin.surrogates"``) without touching this package.

Entry points are read on every call and loaded only on request, so importing this module never imports an
operator module.
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

__all__ = ["GROUP", "registered", "load_registered", "available_operators", "get_operator", "build_operator"]

#: Entry-point group that registers operators.
GROUP = "lmaps_plugin.operators"


def registered(group: str) -> dict[str, EntryPoint]:
    """``{name: EntryPoint}`` of a group, sorted by name, not loaded; the first one found wins a name."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def load_registered(group: str, name: str, kind: str):
    """Load ``name`` from ``group``; ``KeyError`` naming the valid names (``kind`` words the message)."""
    entries = registered(group)
    if name not in entries:
        valid = ", ".join(entries) or "none (is lmaps-plugin installed? pip install -e .)"
        raise KeyError(f"unknown {kind} {name!r}; registered {kind}s (entry-point group {group!r}): {valid}")
    return entries[name].load()


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
