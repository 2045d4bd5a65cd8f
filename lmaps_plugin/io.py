"""Files written so that a killed process never leaves half of one, and an on-disk cache of computed tensors.

* :func:`atomic_write` (and its text and JSON forms) writes to a hidden temporary file in the target's folder and
  renames it over the target (``os.replace`` is atomic on POSIX): a reader sees the old file or the new one.
* :func:`load_or_compute` keeps the tensors of an expensive computation in a cache directory, keyed by a JSON
  description of what they depend on (:func:`cache_key_digest` names the file), written atomically under a file
  lock so that concurrent processes compute them once.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from filelock import FileLock

Tensor = torch.Tensor


class NonFiniteResultError(ValueError):
    """A reconstruction (or a metric) holds NaN or inf; it is not written."""


# ------------------------------------------------------------------------------------------ atomic writes
def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary name starts with a dot and ends in ``.tmp`` (never matched by ``result_*.pt``); it is removed if
    ``write`` raises or the process is interrupted (KeyboardInterrupt included).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def dumps_json(obj: Any) -> str:
    """JSON text with ``allow_nan=False``: raises :class:`NonFiniteResultError` rather than writing NaN/inf."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False, sort_keys=False) + "\n"
    except ValueError as exc:
        raise NonFiniteResultError(f"refusing to write a non-finite number as JSON ({exc})") from None


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj))


# ------------------------------------------------------------------------------------------- disk cache
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lmaps-plugin`` (``~/.cache/lmaps-plugin`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmaps-plugin"


def resolve_cache_dir(setting: Any, key_name: str = "gram_cache") -> Path | None:
    """A cache setting as a directory: True → :func:`default_cache_dir`, False/None → no cache, a path → it."""
    if setting is None or setting is False:
        return None
    if setting is True:
        return default_cache_dir()
    if isinstance(setting, (str, os.PathLike)) and str(setting).strip():
        return Path(setting).expanduser()
    raise ValueError(f"{key_name}={setting!r} is not allowed: use true (cache under {default_cache_dir()}), "
                     "false (no cache) or a directory path")


def cache_key_digest(key: Mapping[str, Any]) -> str:
    """A short stable digest of a JSON-serialisable key (the cache file's name)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _read_cache(path: Path, key: Mapping[str, Any], warn: bool = True) -> dict | None:
    """The payload at ``path`` if it holds ``key``; None if absent, stale or unreadable (with a warning)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed, never fatal
        if warn:
            warnings.warn(f"ignoring unreadable cache file {path} ({type(exc).__name__}: {exc}); recomputing it",
                          RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(payload, dict) or payload.get("key") != json.loads(json.dumps(key)):
        if warn:
            warnings.warn(f"ignoring cache file {path}: it holds another key; recomputing it", RuntimeWarning,
                          stacklevel=3)
        return None
    return payload


def load_or_compute(directory: Path | None, stem: str, key: Mapping[str, Any],
                    compute: Callable[[], dict[str, Tensor]]) -> tuple[dict[str, Tensor], str]:
    """``compute()``'s tensors, read from ``directory/<stem>-<digest(key)>.pt`` when that file holds ``key``.

    A miss computes and writes the file atomically (temporary file + ``os.replace``), under a file
    lock so that concurrent processes compute it once; a hit needs only read access. Without a
    directory (or when it cannot be written, with a warning) the result is computed and not stored.
    Returns the tensors (CPU) and where they came from: ``'disk'``, ``'computed'`` or
    ``'computed (not cached)'``.
    """
    if directory is None:
        return compute(), "computed (not cached)"
    path = directory / f"{stem}-{cache_key_digest(key)}.pt"
    payload = _read_cache(path, key, warn=False)  # a hit needs no lock (read-only caches work)
    if payload is not None:
        return payload["tensors"], "disk"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock")
        lock.acquire()
    except OSError as exc:
        warnings.warn(f"cannot use the cache directory {directory} ({exc}); computing without a cache",
                      RuntimeWarning, stacklevel=2)
        return compute(), "computed (not cached)"
    try:
        payload = _read_cache(path, key)  # another process may have written it while we waited
        if payload is not None:
            return payload["tensors"], "disk"
        tensors = {name: t.detach().cpu().contiguous() for name, t in compute().items()}
        try:
            atomic_write(path, lambda handle: torch.save({"key": dict(key), "tensors": tensors}, handle))
        except OSError as exc:
            warnings.warn(f"cannot write the cache file {path} ({exc}); continuing without it",
                          RuntimeWarning, stacklevel=2)
            return tensors, "computed (not cached)"
        return tensors, "computed"
    finally:
        lock.release()


__all__ = ["NonFiniteResultError", "atomic_write", "atomic_write_text", "atomic_write_json", "dumps_json",
           "default_cache_dir", "resolve_cache_dir", "cache_key_digest", "load_or_compute"]
