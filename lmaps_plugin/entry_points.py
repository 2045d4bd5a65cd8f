"""Registries on Python entry points: one lookup for operators and surrogates alike.

Any installed distribution can add to a group (``[project.entry-points."<group>"] name =
"pkg.mod:obj"``); entry points are read on every call and loaded only on request.
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points


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
