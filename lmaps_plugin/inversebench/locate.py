"""Find an InverseBench checkout and import its modules.

InverseBench (https://github.com/devzhk/InverseBench) is not a pip package: its modules
(``inverse_problems``, ``algo``, ``training``, ``eval``, ...) are top-level names importable
only from its root.  Nothing here imports them at module import time; the functions below
do, when a task asks for them:

* :func:`find_inversebench` / :func:`require_inversebench` locate a checkout, from the
  ``INVERSEBENCH_ROOT`` environment variable or because its root is already on
  ``sys.path`` (as when InverseBench's own ``main.py`` runs).
* :func:`import_upstream` imports one of its modules, with stand-ins for piq/torchvision
  when those are not importable (:mod:`lmaps_plugin.inversebench.stand_ins`).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .stand_ins import optional_dependency_stand_ins

PINNED_COMMIT = "b113d67b62ce8db811dc033c8fa12dfdfdfa93f0"
"""The devzhk/InverseBench commit our adapters and ``patches/`` were written and tested against."""

REPOSITORY_URL = "https://github.com/devzhk/InverseBench"
ENV_VAR = "INVERSEBENCH_ROOT"

_MARKER_FILES = ("inverse_problems/base.py", "algo/base.py")
"""Files whose presence identifies a directory as an InverseBench checkout root."""


class InverseBenchNotFound(ImportError):
    """A task needs an InverseBench checkout and none could be found."""


def is_inversebench_root(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like the root of an InverseBench checkout."""
    root = Path(path)
    return all((root / marker).is_file() for marker in _MARKER_FILES)


def _root_from_importable_packages() -> Path | None:
    """The checkout root if ``inverse_problems`` and ``algo`` import from the same InverseBench root."""
    roots = set()
    for package in ("inverse_problems", "algo"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        roots.update(Path(location).parent for location in spec.submodule_search_locations)
    if len(roots) != 1:
        return None
    root = roots.pop()
    return root if is_inversebench_root(root) else None


def find_inversebench() -> Path | None:
    """Locate an InverseBench checkout, or return None.

    ``INVERSEBENCH_ROOT`` wins when set; it must then point at a checkout, otherwise
    :class:`InverseBenchNotFound` is raised (a wrong path is a user error, not "absent").
    Without it, a checkout whose root is already importable (on ``sys.path``) is used.
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        root = Path(configured).expanduser().resolve()
        if not is_inversebench_root(root):
            raise InverseBenchNotFound(
                f"{ENV_VAR}={configured!r} is not an InverseBench checkout: expected "
                f"{' and '.join(_MARKER_FILES)} under it. Point it at the root of a clone of "
                f"{REPOSITORY_URL}.")
        return root
    return _root_from_importable_packages()


def not_found_message(task: str) -> str:
    """The explanation :func:`require_inversebench` gives when no checkout is found."""
    return (
        f"{task} needs an InverseBench checkout, and none was found: {ENV_VAR} is not set and "
        f"the InverseBench packages 'inverse_problems'/'algo' are not importable.\n"
        f"Get one and point lmaps-plugin at it:\n"
        f"    git clone {REPOSITORY_URL}\n"
        f"    export {ENV_VAR}=$PWD/InverseBench\n"
        f"or run from the checkout's root (python main.py ... does this). "
        f"lmaps-plugin is tested against InverseBench commit {PINNED_COMMIT}.")


def require_inversebench(task: str) -> Path:
    """Return the checkout root, making it importable; raise if there is none.

    Args:
        task: what needs InverseBench, in words (e.g. ``"linear inverse scattering"``);
            it is named in the error.

    Raises:
        InverseBenchNotFound: no checkout found, or ``INVERSEBENCH_ROOT`` is wrong.
    """
    root = find_inversebench()
    if root is None:
        raise InverseBenchNotFound(not_found_message(task))
    if not any(Path(entry or ".").resolve() == root for entry in sys.path):
        sys.path.insert(0, str(root))
    return root


def import_upstream(module: str, task: str) -> ModuleType:
    """Import InverseBench module ``module`` (e.g. ``"eval"``), for ``task``.

    Missing piq/torchvision are stood in for during the import
    (:func:`lmaps_plugin.inversebench.stand_ins.optional_dependency_stand_ins`).
    """
    require_inversebench(task)
    try:
        with optional_dependency_stand_ins():
            return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing == module.split(".")[0]:
            raise
        raise ModuleNotFoundError(missing_dependency_message(missing, module, task), name=exc.name) from exc


#: pip extras of lmaps-plugin that install what InverseBench's modules import.
EXTRA_FOR_PACKAGE = {"sigpy": "mri", "ehtim": "blackhole", "pandas": "blackhole", "lmdb": "inversebench",
                     "h5py": "inversebench"}


def missing_dependency_message(package: str, module: str, task: str) -> str:
    """What to install when InverseBench's ``module`` imports ``package`` and it is missing."""
    extra = EXTRA_FOR_PACKAGE.get(package, "inversebench")
    return (f"{task} needs the Python package {package!r}, which is not installed (InverseBench's "
            f"{module!r} imports it). Install it with: pip install -c constraints.txt 'lmaps-plugin[{extra}]' "
            f"(or: pip install {package}).")
