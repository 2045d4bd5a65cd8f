"""Every patch in patches/ applies cleanly to the pinned InverseBench commit.

The pinned tree is taken with ``git archive`` from ``INVERSEBENCH_ROOT`` when it is a git checkout
holding the commit, or from a git mirror named by ``INVERSEBENCH_MIRROR``; an ``INVERSEBENCH_ROOT``
that is not a git checkout (such as the snapshot of the pinned commit's files that CI extracts) is
copied as it is.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from lmaps_plugin.inversebench import PINNED_COMMIT, is_inversebench_root

REPO = Path(__file__).resolve().parents[2]
PATCHES = sorted((REPO / "patches").glob("*.patch"))


def _has_pinned_commit(git_dir: str) -> bool:
    result = subprocess.run(["git", "-C", git_dir, "cat-file", "-e", f"{PINNED_COMMIT}^{{commit}}"],
                            capture_output=True)
    return result.returncode == 0


def _is_git_checkout(path: str) -> bool:
    result = subprocess.run(["git", "-C", path, "rev-parse", "--git-dir"], capture_output=True)
    return result.returncode == 0


def _pinned_source() -> tuple[str, str] | None:
    """``('git', dir)`` for a git checkout/mirror with the pinned commit, ``('files', root)`` for a plain
    copy of an InverseBench tree (not a git checkout), else None."""
    root, mirror = os.environ.get("INVERSEBENCH_ROOT"), os.environ.get("INVERSEBENCH_MIRROR")
    for candidate in (root, mirror):
        if candidate and Path(candidate).exists() and _has_pinned_commit(candidate):
            return "git", candidate
    if root and is_inversebench_root(root) and not _is_git_checkout(root):
        return "files", root
    return None


@pytest.fixture(scope="module")
def pinned_tree(tmp_path_factory):
    source = _pinned_source()
    if source is None:
        pytest.skip("InverseBench mirror not available")
    kind, path = source
    tree = tmp_path_factory.mktemp("inversebench")
    if kind == "files":
        shutil.copytree(path, tree, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return tree
    archive = subprocess.run(["git", "-C", path, "archive", "--format=tar", PINNED_COMMIT],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def test_patches_exist_and_are_numbered():
    assert PATCHES, "patches/ holds no .patch files"
    for patch in PATCHES:
        assert re.fullmatch(r"\d{4}-[a-z0-9-]+\.patch", patch.name), patch.name


def test_readme_lists_every_patch_and_the_pinned_commit():
    readme = (REPO / "patches" / "README.md").read_text()
    assert PINNED_COMMIT in readme
    for patch in PATCHES:
        assert patch.name in readme, f"{patch.name} has no line in patches/README.md"


@pytest.mark.parametrize("patch", PATCHES, ids=[p.name for p in PATCHES])
def test_patch_applies_to_pinned_commit(pinned_tree, patch):
    result = subprocess.run(["git", "apply", "--check", "--verbose", str(patch)], cwd=pinned_tree,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_all_patches_apply_together(pinned_tree):
    for patch in PATCHES:
        subprocess.run(["git", "apply", str(patch)], cwd=pinned_tree, check=True, capture_output=True)
    for patch in reversed(PATCHES):  # leave the module's tree as it was
        subprocess.run(["git", "apply", "-R", str(patch)], cwd=pinned_tree, check=True, capture_output=True)
