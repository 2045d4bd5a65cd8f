"""Checkpoints whose unpickling runs code (it creates a marker file): what a hostile checkpoint would do."""
from __future__ import annotations

import pathlib
import pickle

import torch


class RunsCode:
    """Unpickling this object creates ``marker``: a stand-in for a checkpoint that runs ``os.system``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def evil_checkpoints(tmp_path):
    """``(marker, torch zip checkpoint, bare pickle)``, both holding a :class:`RunsCode` under ``'ema'``."""
    marker = tmp_path / "code-ran"
    zipped = tmp_path / "evil.pt"
    torch.save({"ema": RunsCode(marker)}, zipped)
    bare = tmp_path / "evil.pkl"
    bare.write_bytes(pickle.dumps({"ema": RunsCode(marker)}))
    return marker, zipped, bare
