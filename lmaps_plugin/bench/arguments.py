"""Command-line values shared by the ``lmaps-bench`` subcommands: sample ids, seeds, positive integers, and
:class:`UsageError`, the one-line refusal of a bad value (exit code 2)."""
from __future__ import annotations

import argparse

from ..app import schema
from ..data.base import parse_id_list


class UsageError(ValueError):
    """A bad command-line value; printed as one line (exit code 2)."""


def parse_ids(text: str | None, num_images: int | None, flag: str) -> list[int]:
    """Sample ids of a command-line flag (``'0-7,12'``; ``num_images`` when ``text`` is None), at most
    :data:`schema.MAX_IDS` of them (the app's limit), checked before any list is built. Raises
    :class:`UsageError` naming the flag."""
    count = schema.range_size(text) if isinstance(text, str) else (num_images or 0)
    if count > schema.MAX_IDS:
        raise UsageError(f"{flag} {text if text is not None else num_images!r} is not allowed: it names more than "
                         f"{schema.MAX_IDS} ids")
    try:
        return parse_id_list(text, num_images)
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r}: {exc}") from None


def split_names(text: str) -> list[str]:
    """``'a, b,,c'`` -> ``['a', 'b', 'c']``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def seed_list(text: str) -> list[int]:
    """``'0,1,2'`` -> ``[0, 1, 2]``: non-negative integers, no repeats (argparse type)."""
    seeds = []
    for part in split_names(text):
        try:
            seed = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"seed {part!r} is not an integer (seeds are non-negative integers, "
                                             f"e.g. --seeds 0,1)") from None
        if seed < 0:
            raise argparse.ArgumentTypeError(f"seed {seed} is negative (seeds are non-negative integers)")
        if seed in seeds:
            raise argparse.ArgumentTypeError(f"seed {seed} is repeated")
        seeds.append(seed)
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed")
    return seeds


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (an integer >= 1 is allowed)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: an integer >= 1")
    return value
