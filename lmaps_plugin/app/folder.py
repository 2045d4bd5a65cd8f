"""A results folder shared safely by concurrent runs: OS file locks (``filelock``) per folder, per run and per
sample, kept in the folder's hidden ``.lmaps/`` directory.

- ``.lmaps/folder.lock`` is held for the short steps that read or change the folder as a whole: a run's start
  (checks, moving old results aside, registering) and end (``metrics.json``).
- ``.lmaps/run-<token>.lock`` is held by a run for its whole life; ``run-<token>.json`` says what it is (config hash,
  seed, pid, host, start time, ids). The OS drops the lock when the process dies, however it dies (SIGKILL
  included), so a run whose lock can be taken is dead and its entry is removed. No PID is ever trusted.
- ``.lmaps/sample-<id>.lock`` is held while a run works on that sample, so one sample is never computed by two
  runs at once and its ``.pt`` and ``.json`` are written by one run.
- ``.lmaps/folder.json`` holds the folder's configuration (hash, seed) and every id any run of it requested, so
  ``metrics.json`` can say which requested samples are still missing, whichever shard writes it.

Rules (:func:`lmaps_plugin.app.run.run` applies them): a run with another configuration or seed than a live run in
the folder is refused (:class:`FolderBusyError`); a run with the same configuration takes only the samples no other
run is working on, then waits for those to finish (and redoes them itself if their run died). Temporary files
(``.<name>.<random>.tmp``) older than every live run are removed: they are left over by a killed writer.

Locks are only as good as the file system's: local disks and most cluster file systems honour them; some NFS set-ups
do not.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from filelock import FileLock, Timeout

from . import results as R

STATE_DIR = ".lmaps"
REPLACED_DIR = ".replaced"
FOLDER_STATE = "folder.json"
#: temporary files are removed when older than every live run by this margin (file-system timestamp granularity)
TEMP_MARGIN_S = 2.0


class FolderBusyError(RuntimeError):
    """Another live run with a different configuration (or seed) works in the results folder."""


@dataclass(frozen=True)
class LiveRun:
    token: str
    config_hash: str
    seed: int | None
    pid: int | None
    host: str
    started: float

    def describe(self) -> str:
        when = _dt.datetime.fromtimestamp(self.started).isoformat(timespec="seconds")
        return f"pid {self.pid} on {self.host}, started {when}, config hash {self.config_hash[:12]}, seed {self.seed}"


def is_temporary(path: Path) -> bool:
    """A temporary file of an atomic write (``.<name>.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file()


class RunFolder:
    """One run's handle on its results folder (see the module docstring)."""

    def __init__(self, exp_dir: str | os.PathLike, config_hash: str, seed: int, mutex_timeout: float = 600.0):
        self.exp_dir = Path(exp_dir)
        self.state = self.exp_dir / STATE_DIR
        self.config_hash = config_hash
        self.seed = int(seed)
        self.mutex_timeout = float(mutex_timeout)
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.started: float | None = None
        self._run_lock: FileLock | None = None

    # ---------------------------------------------------------------------------------------- the folder lock
    @contextmanager
    def mutex(self) -> Iterator[None]:
        """Hold ``.lmaps/folder.lock`` (waits up to ``mutex_timeout`` seconds for another run's short step)."""
        self.state.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.state / "folder.lock"))
        try:
            lock.acquire(timeout=self.mutex_timeout)
        except Timeout:
            raise FolderBusyError(f"results folder {self.exp_dir} stayed locked for {self.mutex_timeout:.0f} s "
                                  f"({self.state / 'folder.lock'}); is a run stuck?") from None
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------------------------------- live runs
    def live_runs(self) -> list[LiveRun]:
        """The other runs alive in this folder (call under :meth:`mutex`); entries of dead runs are removed."""
        runs = []
        for info in sorted(self.state.glob("run-*.json")):
            token = info.name[len("run-"):-len(".json")]
            if token == self.token:
                continue
            lock_path = self.state / f"run-{token}.lock"
            probe = FileLock(str(lock_path))
            try:
                probe.acquire(timeout=0)
            except Timeout:
                runs.append(_read_live_run(info, token))
                continue
            probe.release()
            for path in (info, lock_path):  # the run died: its lock was free
                path.unlink(missing_ok=True)
        return runs

    def refuse_other_settings(self, live: Iterable[LiveRun]) -> None:
        """Raise :class:`FolderBusyError` when a live run has another configuration or seed."""
        other = [r for r in live if (r.config_hash, r.seed) != (self.config_hash, self.seed)]
        if other:
            raise FolderBusyError(
                f"results folder {self.exp_dir} is in use by a run with a different configuration or seed "
                f"({'; '.join(r.describe() for r in other)}); this run has config hash {self.config_hash[:12]}, "
                f"seed {self.seed}. Wait for it to finish, or choose another exp_name=...")

    def register(self, ids: Iterable[int]) -> None:
        """Take this run's lock and describe it (call under :meth:`mutex`)."""
        self.started = time.time()
        self._run_lock = FileLock(str(self.state / f"run-{self.token}.lock"))
        self._run_lock.acquire(timeout=0)
        R.atomic_write_json(self.state / f"run-{self.token}.json",
                            {"config_hash": self.config_hash, "seed": self.seed, "pid": os.getpid(),
                             "host": socket.gethostname(), "started": self.started, "ids": sorted(set(ids))})

    def unregister(self) -> None:
        """Remove this run's entry and drop its lock."""
        (self.state / f"run-{self.token}.json").unlink(missing_ok=True)
        if self._run_lock is not None:
            self._run_lock.release()
            (self.state / f"run-{self.token}.lock").unlink(missing_ok=True)
            self._run_lock = None

    # --------------------------------------------------------------------------------------- folder state
    def read_state(self) -> dict:
        path = self.state / FOLDER_STATE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def requested_ids(self, ids: Iterable[int], reset: bool = False) -> list[int]:
        """Add ``ids`` to the ids requested in this folder by runs of this configuration and seed (start afresh when
        ``reset`` or when the folder last held another setting); returns all of them (call under :meth:`mutex`)."""
        state = self.read_state()
        same = (state.get("config_hash"), state.get("seed")) == (self.config_hash, self.seed)
        old = state.get("requested") if same and not reset and isinstance(state.get("requested"), list) else []
        requested = sorted({int(i) for i in old if isinstance(i, int)} | {int(i) for i in ids})
        R.atomic_write_json(self.state / FOLDER_STATE, {"config_hash": self.config_hash, "seed": self.seed,
                                                        "requested": requested})
        return requested

    # ------------------------------------------------------------------------------------------ leftovers
    def remove_stale_temp_files(self, live: Iterable[LiveRun]) -> list[Path]:
        """Remove the temporary files older than every live run (call under :meth:`mutex`): a writer that was
        killed left them; a live run's own temporary files are newer than its start."""
        oldest = min([r.started for r in live] + [time.time()]) - TEMP_MARGIN_S
        removed = []
        for folder in (self.exp_dir, self.state):
            for path in folder.iterdir() if folder.is_dir() else ():
                try:
                    if is_temporary(path) and path.stat().st_mtime < oldest:
                        path.unlink()
                        removed.append(path)
                except FileNotFoundError:
                    continue
        return removed

    def move_aside(self, names: Iterable[str], label: str) -> Path | None:
        """Move the named files of the folder into ``.replaced/<UTC time>-<label>/``; returns that folder (None
        when there was nothing to move)."""
        present = [self.exp_dir / n for n in sorted(set(names)) if (self.exp_dir / n).exists()]
        if not present:
            return None
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.exp_dir / REPLACED_DIR / f"{stamp}-{label}"
        target.mkdir(parents=True, exist_ok=False)
        for path in present:
            shutil.move(str(path), str(target / path.name))
        return target

    # -------------------------------------------------------------------------------------------- samples
    def sample_lock(self, sample_id: int) -> FileLock:
        """The lock of one sample (acquire with ``timeout=0`` to take it only if no other run works on it)."""
        self.state.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.state / f"sample-{int(sample_id)}.lock"))


def _read_live_run(info: Path, token: str) -> LiveRun:
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    return LiveRun(token=token, config_hash=str(data.get("config_hash", "?")), seed=data.get("seed"),
                   pid=data.get("pid"), host=str(data.get("host", "?")),
                   started=float(data.get("started", 0.0) or 0.0))


__all__ = ["RunFolder", "LiveRun", "FolderBusyError", "STATE_DIR", "REPLACED_DIR", "is_temporary"]
