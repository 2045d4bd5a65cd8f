"""The offline InverseBench rig builds whatever data a requested problem lacks: running
`scripts/run_inversebench_compare.py --problems blackhole,mri` and then `--problems scatter` once said "data ready"
and failed on the missing scattering data. No InverseBench checkout is needed (only the data writer runs)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
pytest.importorskip("lmdb", reason="the data writer needs lmdb (test extra)")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_rig_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def rig(monkeypatch):
    rig = load_script("run_inversebench_compare")
    data = load_script("make_inversebench_data")
    calls = []

    def run_in_process(name, args):  # what run_script does in a subprocess, here in-process (fast)
        assert name == "make_inversebench_data.py"
        calls.append(args[args.index("--problems") + 1])
        data.main(args)

    monkeypatch.setattr(rig, "run_script", run_in_process)
    return rig, data, calls


def earlier_blackhole_and_mri(data_dir: Path) -> dict:
    """The manifest an earlier `--problems blackhole,mri` left (their files stand in as folders)."""
    entries = {}
    for key, sub in (("blackhole_measure", "blackhole/measure"), ("blackhole_test", "blackhole/test"),
                     ("mri_test", "mri/test")):
        (data_dir / sub).mkdir(parents=True)
        entries[key] = {"path": str(data_dir / sub)}
    manifest = {"seed": 0, "entries": entries, "timings_s": {"blackhole": 1.0, "mri": 1.0},
                "overrides": {"blackhole-fixed": ["problem.model.imsize=48"],
                              "multi-coil-mri-knee-lmdb-fixed": ["problem.model.total_lines=40"]}}
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_the_rig_builds_the_data_a_requested_problem_lacks(tmp_path, rig):
    rig, _, calls = rig
    data_dir = tmp_path / "data"
    earlier = earlier_blackhole_and_mri(data_dir)
    manifest = rig.ensure_data(data_dir, ["scatter"], num_test=1, num_train=0)
    assert calls == ["scatter"]
    assert Path(manifest["entries"]["scatter_test"]["path"]).is_dir()
    assert manifest["entries"]["scatter_test"]["count"] == 1
    # what was there is kept: entries, and the overrides of the problems not rebuilt
    for key, entry in earlier["entries"].items():
        assert manifest["entries"][key] == entry
    assert manifest["overrides"]["blackhole-fixed"] == ["problem.model.imsize=48"]
    assert manifest["overrides"]["inv-scatter-fixed"][0].endswith("inv-scatter-test")
    assert json.loads((data_dir / "manifest.json").read_text()) == manifest
    # everything requested is there now: nothing is rebuilt
    rig.ensure_data(data_dir, ["scatter", "blackhole", "mri"], num_test=1, num_train=0)
    assert calls == ["scatter"]


def test_a_problem_whose_data_was_deleted_is_rebuilt(tmp_path, rig):
    rig, _, calls = rig
    data_dir = tmp_path / "data"
    earlier_blackhole_and_mri(data_dir)
    (data_dir / "mri" / "test").rmdir()
    assert rig.problems_lacking_data(json.loads((data_dir / "manifest.json").read_text()),
                                     ["blackhole", "mri", "scatter"], num_train=0) == ["mri", "scatter"]
    # training images are needed only when the priors are trained
    assert rig.data_entries("mri", num_train=8) == ("mri_test", "mri_train")
