"""The offline InverseBench rig builds whatever data a requested problem lacks: running
`scripts/run_inversebench_compare.py --problems blackhole,mri` and then `--problems scatter` once said "data ready"
and failed on the missing scattering data. No InverseBench checkout is needed (only the data writer runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lmdb", reason="the data writer needs lmdb (test extra)")

from ib_helpers import load_script  # noqa: E402


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


# ------------------------------------------------------------------------------- the real-size rig

def test_ffhq_pngs_are_what_imagefolder_reads(tmp_path):
    """``ffhq256/<id:05d>.png``: RGB uint8 HWC, read back by ``np.array(Image.open(...))`` as ImageFolder does."""
    import numpy as np
    from PIL import Image

    data = load_script("make_inversebench_data")
    manifest = data.main(["--out", str(tmp_path), "--problems", "ffhq", "--num-test", "2", "--ffhq-resolution", "16"])
    files = sorted((tmp_path / "ffhq256").iterdir())
    assert [f.name for f in files] == ["00000.png", "00001.png"]
    img = np.array(Image.open(files[0]))
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8 and img.std() > 0
    assert manifest["overrides"]["ffhq256"] == [f"problem.data.root={(tmp_path / 'ffhq256').resolve()}",
                                                "problem.data.id_list=0-1", "problem.data.resolution=16"]
    assert manifest["entries"]["ffhq_test"]["count"] == 2


def test_published_checkpoints_take_no_size_overrides(tmp_path):
    ckpt = load_script("make_inversebench_ckpt")
    published = ckpt.parse_args(["--out", str(tmp_path), "--ib-root", str(tmp_path), "--published",
                                 "--problems", "scatter,blackhole,mri,ffhq"])
    assert all(ckpt.model_overrides(p, published) == {} for p in published.problems)
    small = ckpt.parse_args(["--out", str(tmp_path), "--ib-root", str(tmp_path)])
    assert ckpt.model_overrides("mri", small) == {"model_channels": 16, "img_resolution": 64}
    with pytest.raises(SystemExit):   # no small or trained FFHQ prior
        ckpt.parse_args(["--out", str(tmp_path), "--ib-root", str(tmp_path), "--problems", "ffhq"])


def test_real_size_cases_cover_every_supported_problem():
    rig = load_script("real_size")
    names = {c.name for c in rig.cases()}
    assert names == {"scatter-nr360", "scatter-nr180", "scatter-nr60", "mri-4x", "mri-8x", "blackhole-3pct",
                     "blackhole-10pct", "blackhole-100pct", "ffhq-sr", "ffhq-deblur", "ffhq-inpaint", "ffhq-pr"}
    args = rig.parse_args(["--ib-root", "/nonexistent"])
    case = next(c for c in rig.cases() if c.name == "blackhole-3pct")
    assert rig.method_plan("row", case, args) == ("lmaps_blackhole_3pct", ["algorithm.method.num_steps=3"], 3, 100)
    assert rig.method_plan("auto", case, args)[3] == 200
    assert rig.method_plan("dps", case, args)[2:] == (3, 1000)
    assert rig.method_plan("daps", case, args)[2:] == (2, 200)


def test_real_size_projection_splits_setup_network_and_own():
    """Step 1's excess over steps 2..S is set-up; network = bare forward × calls (DPS: forward+backward)."""
    rig = load_script("real_size")
    args = rig.parse_args(["--ib-root", "/nonexistent"])
    bare = {"forward_s": 1.0, "forward_backward_s": 3.0}
    # operator built in 2 s; inference starts at t=10, first network call at 11, steps of 5 (first: 9) s
    record = {"instantiate": [{"target": "op", "seconds": 2.0}],
              "inference": [{"start": 10.0, "end": 30.0, "first_call": 0, "calls": 3}],
              "net_calls": [11.0, 20.0, 25.0]}
    row = rig.analyse(record, "row", bare, 3, 200, args)
    assert row["wall_per_step_s"] == pytest.approx(5.0) and row["network_s"] == 1.0 and row["own_s"] == 4.0
    assert row["setup_s"] == pytest.approx(2.0 + 1.0 + 4.0)
    assert row["projected_s"] == pytest.approx(rig.project(7.0, 1.0, 4.0, 200)) == pytest.approx(1007.0)
    assert rig.analyse(record, "dps", bare, 3, 1000, args)["own_s"] == pytest.approx(2.0)
    # DAPS: 2 levels of 1 ODE call + 5 Langevin steps; published level = 5 calls + 100 Langevin steps
    daps = {"instantiate": [{"target": "op", "seconds": 0.0}],
            "inference": [{"start": 0.0, "end": 6.0, "first_call": 0, "calls": 2}], "net_calls": [0.0, 3.0]}
    row = rig.analyse(daps, "daps", bare, 2, 200, args)
    assert row["network_s"] == 5.0 and row["own_per_langevin_s"] == pytest.approx(0.4)
    assert row["own_s"] == pytest.approx(40.0)
