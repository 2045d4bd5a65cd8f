"""Files: written so that a killed process never leaves half of one, read so that a hostile one is one line of
problem, named so that they stay in their folder; and an on-disk cache of computed tensors.

* :func:`atomic_write` (and its text and JSON forms) writes to a hidden temporary file in the target's folder and
  renames it over the target (``os.replace`` is atomic on POSIX): a reader sees the old file or the new one.
* :func:`path_component_problem` is the one check of a configured name that becomes a folder of a results path;
  :func:`is_finite_number` and :func:`read_json_file` read numbers and JSON files that others may have written.
* :func:`load_or_compute` keeps the tensors of an expensive computation in a cache directory, keyed by a JSON
  description of what they depend on (:func:`cache_key_digest` names the file), written atomically under a file
  lock so that concurrent processes compute them once.
"""
from __future__ import annotations

import hashlib
import io
import math
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


# ------------------------------------------------------------------------------------- names in paths
#: what a name that becomes one folder of a results path may be, in words
PATH_COMPONENT_ALLOWED = "a non-empty folder name without '/', '\\' or NUL characters (not '.' or '..')"


def path_component_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be one folder name of a results path (None when it can): ``key=value is not allowed:
    ...``. A name that is empty, ``.`` or ``..``, or holds ``/``, ``\\`` or NUL would put results outside their
    folder or into another run's. The one check for every configured name that becomes a path component
    (``exp_name``, ``problem.name``, ``algorithm.name``, ``prior.name``; ``lmaps-bench tune``'s names too)."""
    ok = (isinstance(value, str) and value.strip() != "" and value not in (".", "..")
          and not any(c in value for c in "/\\\0"))
    return None if ok else f"{key}={value!r:.80} is not allowed: {PATH_COMPONENT_ALLOWED}"


def check_path_component(key: str, value: Any) -> str:
    """``value`` when :func:`path_component_problem` allows it; ``ValueError`` (its one-line problem) otherwise."""
    problem = path_component_problem(key, value)
    if problem:
        raise ValueError(problem)
    return value


# ------------------------------------------------------------------------------------------ JSON files
def is_finite_number(value: Any) -> bool:
    """True for an ``int`` or ``float`` (never a ``bool``) whose value is a finite float: NaN, inf and integers
    too large for a float (``10**400``) are not; strings, containers and everything else are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def read_json_file(path: str | os.PathLike, missing_ok: bool = False) -> tuple[Any, str | None]:
    """``(document, None)`` for a readable JSON file, else ``(None, problem)`` with a one-line ``problem``: cannot
    be read (an ``OSError``), not UTF-8, not JSON, nested too deeply (NaN and Infinity parse, as Python's
    ``json`` reads them: the caller's checks refuse them where numbers must be finite). With
    ``missing_ok``, a file that does not exist gives ``(None, None)``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        return None, (None if missing_ok else f"cannot be read ({exc.strerror or exc})")
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start}: {exc.reason})"
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "not JSON this reader accepts (nested too deeply)"
    except ValueError as exc:  # JSONDecodeError, an integer with too many digits
        return None, f"not JSON ({' '.join(str(exc).split())[:200]})"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()



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


def _cache_path(directory: Path, stem: str, key: Mapping[str, Any]) -> Path:
    """Where :func:`load_or_compute` keeps ``key``'s tensors."""
    return directory / f"{stem}-{cache_key_digest(key)}.pt"


def cache_file(directory: Path | None, stem: str, key: Mapping[str, Any]) -> Path | None:
    """Where :func:`load_or_compute` keeps ``key``'s tensors, if that file exists (its content is checked on
    reading), else None."""
    if directory is None:
        return None
    path = _cache_path(directory, stem, key)
    return path if path.is_file() else None


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
    path = _cache_path(directory, stem, key)
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


__all__ = ["cache_file", "NonFiniteResultError", "atomic_write", "atomic_write_text", "atomic_write_json", "dumps_json",
           "PATH_COMPONENT_ALLOWED", "path_component_problem", "check_path_component", "is_finite_number",
           "read_json_file", "file_sha256", "default_cache_dir", "resolve_cache_dir", "cache_key_digest",
           "load_or_compute"]
