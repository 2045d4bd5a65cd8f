"""What the ``lmaps`` app (and ``lmaps-calibrate``) refuse, and how: names that would leave the results folder, a
checkpoint replaced under the same path, records with numbers no float holds, files that only look like torch zip
checkpoints, and inputs that once ended in a traceback. Each refusal is one message and exit code 2 for the
configuration, 1 for a failed run, with nothing written."""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lmaps_plugin
import torch
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmaps_plugin.app.compose import compose_app
from lmaps_plugin.app import main as app_main
from lmaps_plugin.app import run as app_run
from lmaps_plugin.app import build
from lmaps_plugin.app import results as R
from record_files import read_one

TINY = ["prior=gmm", "prior.resolution=16", "algorithm.method.num_steps=4", "algorithm.method.inner_steps=2",
        "threads=1", "figure.enabled=false", "verbose=false"]
NAME_ALLOWED = "a non-empty folder name without '/', '\\' or NUL characters (not '.' or '..')"


@pytest.fixture(autouse=True)
def clean_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def config(*overrides):
    return compose_app(list(overrides))


def run_code(monkeypatch, capsys, *overrides) -> tuple[int, str]:
    """Exit code and stderr of ``lmaps <overrides>`` in this process (the console script calls the same main)."""
    GlobalHydra.instance().clear()
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["lmaps", *overrides])
    try:
        app_main.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def exp_folder(root: Path, exp="gmm_faces-seed0") -> Path:
    return root / "inpaint_random" / "LMAPS-cpu" / exp


# ------------------------------------------------------------------------------------- names in paths
@pytest.mark.parametrize("key", ["problem.name", "algorithm.name", "prior.name", "exp_name"])
@pytest.mark.parametrize("value, shown", [("..", "'..'"), (".", "'.'"), ("a/b", "'a/b"), ("a\\\\b", "'a\\\\b"),
                                          ("''", "''")])
def test_a_name_that_becomes_a_folder_is_checked_before_anything_is_written(tmp_path, monkeypatch, capsys, key,
                                                                             value, shown):
    """Before: problem.name=.. algorithm.name=.. exp_name=victim wrote config, metrics and results two levels above
    exp_dir (exit 0); only exp_name was checked."""
    root = tmp_path / "D" / "results"
    code, err = run_code(monkeypatch, capsys, *TINY, "num_images=1", f"exp_dir={root}", f"{key}={value}")
    assert code == app_main.EXIT_USAGE, err
    assert f"{key}={shown}" in err and NAME_ALLOWED in err and "Traceback" not in err
    assert files_under(tmp_path) == []       # not even Hydra's run folder


def test_the_traversal_of_the_report_writes_nothing(tmp_path, monkeypatch, capsys):
    root = tmp_path / "D" / "results"
    code, err = run_code(monkeypatch, capsys, *TINY, "num_images=1", f"exp_dir={root}", "problem.name=..",
                         "algorithm.name=..", "exp_name=victim")
    assert code == app_main.EXIT_USAGE and "problem.name='..' is not allowed" in err and "algorithm.name='..'" in err
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("value", ["..", ".", "", " ", "a/b", "/abs", "a\\b", "a\0b", None, 5, ["x"]])
def test_path_component_problem_refuses_what_leaves_the_folder(value):
    problem = R.path_component_problem("prior.name", value)
    assert problem is not None and problem.startswith("prior.name=") and NAME_ALLOWED in problem
    with pytest.raises(ValueError, match="is not allowed"):
        R.check_path_component("prior.name", value)


@pytest.mark.parametrize("value", ["faces64", "LMAPS-cpu", "gmm_faces-seed0", "a..b", ".hidden", "ünï"])
def test_path_component_problem_allows_plain_names(value):
    assert R.path_component_problem("exp_name", value) is None
    assert R.check_path_component("exp_name", value) == value


# ------------------------------------------------------------------------------- a replaced checkpoint
def _checkpoint(path: Path, seed: int) -> Path:
    from lmaps_plugin.priors import build_edm_unet, save_prior

    torch.manual_seed(seed)
    net = build_edm_unet(dict(img_channels=1, img_resolution=16, model_channels=8, channel_mult=[1, 2], num_blocks=1,
                              attn_resolutions=[8], patch_size=1))
    return save_prior(path, net, meta={"seed": seed})


def test_a_checkpoint_replaced_under_its_path_is_another_configuration(tmp_path):
    """Before: the hash covered prior.path only; replacing the file and rerunning with more images averaged the
    old prior's samples with the new one's into one complete summary."""
    path = _checkpoint(tmp_path / "prior.pt", seed=0)
    args = [*TINY[2:], "prior=inversebench", f"prior.path={path}", "prior.channels=1", "prior.resolution=16",
            f"exp_dir={tmp_path / 'res'}"]
    first = build.run_config_hash(config(*args))
    assert app_run.run(config(*args, "num_images=1")).outcomes[0].status == "ok"
    os.utime(path, ns=(1, 1))                                 # same bytes, new timestamp: the same setting
    assert build.run_config_hash(config(*args)) == first
    _checkpoint(path, seed=1)                                 # another prior under the same path
    assert build.run_config_hash(config(*args)) != first
    with pytest.raises(R.ConfigMismatchError, match="different configuration"):
        app_run.run(config(*args, "num_images=2"))
    summary = app_run.run(config(*args, "num_images=2", "overwrite=true"))
    assert [o.status for o in summary.outcomes] == ["ok", "ok"]


def test_configurations_without_checkpoint_files_keep_their_hash():
    assert build.prior_file_digests({"name": "gmm", "net": {"n_components": 4}}) == {}
    assert build.prior_file_digests({"path": "/no/such/file.pt"}) == {}


def test_the_checkpoint_digest_is_cached_by_path_size_and_time(tmp_path, monkeypatch):
    from lmaps_plugin.priors import checkpoint as C

    path = tmp_path / "x.pt"
    path.write_bytes(b"abc")
    first = C.checkpoint_sha256(path)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    monkeypatch.setattr("builtins.open", None)                 # a second read would fail: it comes from the cache
    assert C.checkpoint_sha256(path) == first



VALID = {"id": 5, "status": "ok", "metrics": {"psnr": 20.0}, "result_sha256": "0" * 64, "config_hash": "a" * 64,
         "seed": 0, "seconds": 1.0}


@pytest.mark.parametrize("where", ["metrics", "solver", "seconds"])
def test_an_integer_no_float_holds_is_a_bad_record_not_a_crash(where):
    """Before: "psnr": 10**400 in a record made resume and aggregate exit 1 with OverflowError."""
    record = json.loads(json.dumps(VALID))
    if where == "seconds":
        record["seconds"] = 10 ** 400
    else:
        record[where] = {"psnr": 10 ** 400}
    records, messages = read_one(json.dumps(record).encode())
    assert records == {} and any("result_5.json is not a valid sample record" in m and "run again" in m
                                 for m in messages)


@pytest.mark.parametrize("value, ok", [(1, True), (-2.5, True), (10 ** 300, True), (10 ** 400, False),
                                       (-(10 ** 400), False), (float("nan"), False), (float("inf"), False),
                                       (True, False), ("1", False), (None, False), ([1], False), ({"a": 1}, False)])
def test_is_finite_number(value, ok):
    assert R.is_finite_number(value) is ok


def test_the_writer_refuses_a_huge_integer_metric_with_its_own_error(tmp_path):
    with pytest.raises(R.NonFiniteResultError, match="not a finite number"):
        R.write_record(tmp_path, 0, {"status": "ok", "metrics": {"psnr": 10 ** 400}, "result_sha256": "0" * 64})
    assert list(tmp_path.iterdir()) == []


def test_resume_redoes_a_sample_whose_record_holds_a_huge_integer(tmp_path):
    args = [*TINY, "num_images=1", f"exp_dir={tmp_path / 'res'}"]
    app_run.run(config(*args))
    path = exp_folder(tmp_path / "res") / "result_0.json"
    record = json.loads(path.read_text())
    record["metrics"]["psnr"] = 10 ** 400
    path.write_text(json.dumps(record))
    with pytest.warns(RuntimeWarning, match="result_0.json is not a valid sample record.*psnr="):
        summary = app_run.run(config(*args))
    assert summary.outcomes[0].status == "ok"
    assert R.is_finite_number(json.loads(path.read_text())["metrics"]["psnr"])


@pytest.mark.parametrize("data, problem", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"id": 5, "status": "ok", "name": "\xff\xfe"}', "not UTF-8"),
    (b'{"psnr": ' + b"9" * 5000 + b"}", "not JSON"),
    (b"{", "not JSON"),
])
def test_read_json_file_gives_one_line_problems(tmp_path, data, problem):
    path = tmp_path / "x.json"
    path.write_bytes(data)
    document, found = R.read_json_file(path)
    assert document is None and problem in found and "\n" not in found
    assert R.read_json_file(tmp_path / "missing.json", missing_ok=True) == (None, None)
    assert "cannot be read" in R.read_json_file(tmp_path / "missing.json")[1]
    assert "cannot be read" in R.read_json_file(tmp_path)[1]
    path.write_text('{"a": [1, 2.5, null]}')
    assert R.read_json_file(path) == ({"a": [1, 2.5, None]}, None)


# Hypothesis: the record reader never crashes, on integers of any size, deep nesting and bytes that are not UTF-8
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)


def _contract(records, messages):
    if 5 in records:
        r = records[5]
        assert r["id"] == 5 and r["status"] in ("ok", "failed") and not messages
        if r["status"] == "ok":
            assert all(R.is_finite_number(v) for v in r["metrics"].values())
    else:
        assert any("result_5.json" in m and "run again" in m for m in messages), messages


@FUZZ
@given(where=st.sampled_from(["metrics.psnr", "seconds", "seed", "id", "solver.x", "extra"]),
       value=st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8))
def test_fuzz_any_size_integers_anywhere_in_a_record(where, value):
    record = json.loads(json.dumps(VALID))
    head, _, tail = where.partition(".")
    if tail:
        record.setdefault(head, {})[tail] = value
    else:
        record[head] = value
    try:
        text = json.dumps(record, allow_nan=True)
    except ValueError:  # an integer beyond Python's str() digit limit cannot be written at all
        return
    _contract(*read_one(text.encode()))


@FUZZ
@given(depth=st.integers(1, 50_000), opener=st.sampled_from(["[", '{"a":']),
       where=st.sampled_from(["metrics", "unknown"]))
def test_fuzz_deep_nesting(depth, opener, where):
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    text = json.dumps(VALID)[:-1] + f', "{where}": {nested}}}'
    _contract(*read_one(text.encode()))


@FUZZ
@given(prefix=st.binary(max_size=8), bad=st.binary(min_size=1, max_size=8).filter(
    lambda b: not _is_utf8(b)), suffix=st.binary(max_size=8))
def test_fuzz_bytes_that_are_not_utf8(prefix, bad, suffix):
    body = json.dumps(VALID).encode()
    data = body[:20] + prefix + bad + suffix + body[20:]
    records, messages = read_one(data)
    assert records == {} and any("result_5.json" in m for m in messages)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ----------------------------------------------------------------------------- polyglot pickles
class _RunsCode:
    """Unpickling this object creates ``marker`` (a stand-in for a payload that runs code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _small_zip(top="archive") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{top}/data.pkl", pickle.dumps({"ema": {}}))
        archive.writestr(f"{top}/version", "3\n")
    return buffer.getvalue()


def _polyglots(tmp_path) -> tuple[Path, list[Path]]:
    marker = tmp_path / "code-ran"
    payload = pickle.dumps({"ema": _RunsCode(marker)}, protocol=2)
    appended = tmp_path / "appended.pt"
    appended.write_bytes(payload + _small_zip())                 # a bare pickle with a zip appended
    zipped = io.BytesIO()
    torch.save({"ema": _RunsCode(marker)}, zipped)
    prefixed = tmp_path / "prefixed.pt"
    prefixed.write_bytes(payload + zipped.getvalue())            # a pickle, then a real torch.save archive
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"PK\x03\x04" + payload)                    # zip signature, no archive
    stray = tmp_path / "stray.pt"
    stray.write_bytes(_small_zip(top="a")[:0] + _zip_without_data_pkl())
    return marker, [appended, prefixed, torn, stray]


def _zip_without_data_pkl() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/other.pkl", b"x")
    return buffer.getvalue()


@pytest.mark.parametrize("trusted", [True, False])
def test_a_pickle_with_a_zip_appended_is_refused_before_unpickling(tmp_path, trusted):
    """Before: a bare pickle with a small zip appended passed zipfile.is_zipfile, and prior.trust_pickle=true then
    unpickled it through torch's legacy path (the payload ran)."""
    from lmaps_plugin.priors import load_prior
    from lmaps_plugin.priors.checkpoint import NotATorchZipError, UntrustedCheckpointError, torch_zip_problem

    marker, paths = _polyglots(tmp_path)
    for path in paths:
        assert torch_zip_problem(path) is not None, path
        with pytest.raises(NotATorchZipError, match="is not a torch.save zip checkpoint"):
            load_prior(path, trust_pickle=trusted)
        assert not marker.exists(), path
    assert issubclass(NotATorchZipError, UntrustedCheckpointError) and issubclass(NotATorchZipError, ValueError)


def test_the_app_refuses_a_trusted_polyglot_with_exit_2(tmp_path, monkeypatch, capsys):
    marker, paths = _polyglots(tmp_path)
    code, err = run_code(monkeypatch, capsys, *TINY[2:], "prior=inversebench", f"prior.path={paths[0]}",
                         "prior.channels=1", "prior.resolution=16", "prior.trust_pickle=true", "num_images=1",
                         f"exp_dir={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == app_main.EXIT_USAGE and "NotATorchZipError" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "res").exists()


def test_real_torch_checkpoints_still_pass_the_layout_check(tmp_path):
    from lmaps_plugin.priors import builtin_prior_names
    from lmaps_plugin.priors.checkpoint import torch_zip_problem

    path = _checkpoint(tmp_path / "p.pt", seed=0)
    assert torch_zip_problem(path) is None
    weights = Path(lmaps_plugin.__file__).parent / "priors" / "weights"
    for name in builtin_prior_names():
        assert torch_zip_problem(weights / f"{name}.pt") is None


# -------------------------------------------------------------------------- one line, the right code
def test_device_cuda_without_cuda_is_a_configuration_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_code(monkeypatch, capsys, *TINY, "device=cuda", "num_images=1", f"exp_dir={tmp_path / 'res'}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert code == app_main.EXIT_USAGE and "device='cuda' is not allowed: CUDA is not available" in err
    assert "Traceback" not in err and not (tmp_path / "res").exists()


@pytest.mark.parametrize("override, shown", [("ids=30", "ids=30 is not allowed: the faces test split has 12"),
                                             ("num_images=13", "num_images=13 is not allowed: the faces test split")])
def test_ids_beyond_the_test_split_exit_2_before_any_folder(tmp_path, monkeypatch, capsys, override, shown):
    code, err = run_code(monkeypatch, capsys, *TINY, override, f"exp_dir={tmp_path / 'res'}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert code == app_main.EXIT_USAGE and shown in err and "Traceback" not in err
    assert not (tmp_path / "res").exists()


def test_exp_dir_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    for extra in ([], [f"hydra.run.dir={tmp_path / 'run'}"]):    # Hydra's run folder under it, or elsewhere
        code, err = run_code(monkeypatch, capsys, *TINY, "num_images=1", f"exp_dir={target}", *extra)
        assert code == app_main.EXIT_USAGE and str(target) in err and "Not a directory" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert target.read_text() == "keep me"


def test_a_read_only_results_folder_is_refused(tmp_path, monkeypatch, capsys):
    root = tmp_path / "res"
    exp = exp_folder(root)
    exp.mkdir(parents=True)
    if os.geteuid() == 0:   # root writes anywhere: the folder answers as a read-only one does
        def read_only(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(exp))
        monkeypatch.setattr(build.tempfile, "mkstemp", read_only)
    else:
        exp.chmod(0o555)
    try:
        code, err = run_code(monkeypatch, capsys, *TINY, "num_images=1", f"exp_dir={root}",
                             f"hydra.run.dir={tmp_path / 'run'}")
    finally:
        exp.chmod(0o755)
    assert code == app_main.EXIT_USAGE and f"exp_dir='{root}' is not allowed" in err and "Permission denied" in err
    assert "Traceback" not in err and files_under(exp) == []


def test_a_full_disk_stops_the_run_with_exit_1_and_one_line(tmp_path, monkeypatch, capsys):
    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(R, "atomic_write", full)
    code, err = run_code(monkeypatch, capsys, *TINY, "num_images=1", f"exp_dir={tmp_path / 'res'}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert code == app_main.EXIT_SAMPLES_FAILED and "No space left on device" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "res").rglob("result_*"))


@pytest.mark.parametrize("group, name, text, shown", [
    ("algorithm", "nomethod", "name: nomethod\n", "algorithm.method is missing"),
    ("algorithm", "five", "name: five\nmethod: 5\n", "algorithm.method=5 is not allowed: a group of keys"),
    ("algorithm", "broken", "name: broken\nmethod: {a: [1,\n", "broken.yaml"),
    ("problem", "nomodel", None, "problem.model is missing"),
])
def test_a_broken_group_yaml_exits_2_with_one_message(tmp_path, monkeypatch, capsys, group, name, text, shown):
    """Before: AttributeError / ConfigAttributeError / a yaml ParserError traceback, exit 1."""
    config_dir = tmp_path / "configs"
    (config_dir / group).mkdir(parents=True)
    if text is None:   # the shipped inpaint_random problem without its model
        source = Path(lmaps_plugin.__file__).parents[1] / "configs" / "problem" / "inpaint_random.yaml"
        lines, skip = [], False
        for line in source.read_text().splitlines():
            if line.startswith("model:"):
                skip = True
            elif skip and line and not line.startswith((" ", "#")):
                skip = False
            if not skip:
                lines.append(line)
        text = "\n".join(lines) + "\n"
    (config_dir / group / f"{name}.yaml").write_text(text)
    tiny = [o for o in TINY if not o.startswith("algorithm.")] if group == "algorithm" else TINY
    code, err = run_code(monkeypatch, capsys, "--config-dir", str(config_dir), *tiny, f"{group}={name}",
                         "num_images=1", f"exp_dir={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == app_main.EXIT_USAGE and shown in err and "Traceback" not in err, err
    assert not (tmp_path / "res").exists()


def test_old_module_names_are_not_aliased_by_an_import_hook(tmp_path):
    """Before: python -m lmaps_plugin.cli crashed with AttributeError from a global import hook of the package."""
    env = {**os.environ, "PYTHONPATH": str(Path(lmaps_plugin.__file__).parents[1])}
    old = subprocess.run([sys.executable, "-m", "lmaps_plugin.cli"], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=120)
    assert old.returncode == 1 and "No module named lmaps_plugin.cli" in old.stderr
    assert "Traceback" not in old.stderr and "AttributeError" not in old.stderr
    new = subprocess.run([sys.executable, "-m", "lmaps_plugin.app.main", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=120)
    assert new.returncode == 0 and "lmaps" in new.stdout
    code = ("import sys, lmaps_plugin; "
            "assert not [f for f in sys.meta_path if type(f).__module__.startswith('lmaps_plugin')]")
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=120).returncode == 0


@pytest.mark.parametrize("overrides, code, shown", [
    (["foo=1"], 2, "the configuration was refused (ConfigCompositionException"),
    (["problem=nosuch"], 2, "Could not find 'problem/nosuch'"),
    (["problem.model.sigma_noise=-1"], 2, "problem.model.sigma_noise=-1 is not allowed"),
    (["prior.name=.."], 2, "prior.name='..' is not allowed"),
    (["ids=30"], 2, "ids=30 is not allowed"),
])
def test_lmaps_calibrate_follows_the_exit_code_contract(capsys, overrides, code, shown):
    from lmaps_plugin.app.calibrate import main

    assert main(overrides) == code
    err = capsys.readouterr().err
    assert shown in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_lmaps_calibrate_exits_0_when_it_prints_and_1_when_it_fails(capsys, monkeypatch):
    from lmaps_plugin.app import calibrate as calibration

    assert calibration.main(["prior=gmm", "prior.resolution=16"]) == 0
    assert "lmaps_auto: sigma_y" in capsys.readouterr().out

    def broken(*args):
        raise RuntimeError("the solve broke")

    monkeypatch.setattr(calibration, "_print_rule", broken)
    assert calibration.main(["prior=gmm", "prior.resolution=16"]) == 1
    err = capsys.readouterr().err
    assert "lmaps-calibrate: failed: RuntimeError: the solve broke" in err and len(err.strip().splitlines()) == 1


def test_lmaps_calibrate_builds_the_operator_and_prior_on_the_apps_device(capsys, monkeypatch):
    """InverseBench's operators default to device='cuda': the operator gets the app's device, as in a run."""
    from lmaps_plugin.app import calibrate as calibration

    seen = {}
    real = calibration.instantiate

    def recording(node, **kwargs):
        seen.setdefault("operator", kwargs)
        return real(node, **kwargs)

    monkeypatch.setattr(calibration, "instantiate", recording)
    monkeypatch.setattr(calibration, "_print_rule", lambda cfg, op, data, net: seen.update(net=net))
    assert calibration.main(["prior=gmm", "prior.resolution=16", "device=cpu"]) == 0
    assert seen["operator"] == {"device": torch.device("cpu")}
    assert next(seen["net"].parameters(), torch.zeros(1)).device.type == "cpu" and not seen["net"].training
