"""Read one hand-written record file the way a run reads a results folder, and collect the warnings it gives."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from lmaps_plugin.app import results as R


def read_one(data: bytes | str, sample_id: int = 5):
    """``(records, warning messages)`` of a folder holding only ``result_{sample_id}.json`` with ``data``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"result_{sample_id}.json"
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            records = R.read_records(folder)
    return records, [str(w.message) for w in caught]
