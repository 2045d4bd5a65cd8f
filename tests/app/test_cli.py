"""The ``lmaps`` app end to end on tiny settings (exact GMM prior at 16×16, a few LMAPS steps): files and numbers,
resume, sharding, interruption, divergence, and clear errors."""
from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from lmaps_plugin.app.compose import compose_app
from lmaps_plugin.app import main as app_main
from lmaps_plugin.app import run as app_run
from lmaps_plugin.app import sample as app_sample
from lmaps_plugin.app import build
from lmaps_plugin.app import results as R
from lmaps_plugin.app.schema import ConfigError
from lmaps_plugin import LMAPS

TINY = ["prior=gmm", "prior.resolution=16", "algorithm.method.num_steps=4", "algorithm.method.inner_steps=2",
        "threads=1"]


@pytest.fixture(autouse=True)
def clean_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def run_main(monkeypatch, *overrides):
    """``lmaps <overrides>`` in this process (the console script calls the same ``main``)."""
    monkeypatch.setattr(sys, "argv", ["lmaps", *overrides])
    app_main.main()


def config(*overrides):
    return compose_app(list(overrides))


def folder(tmp_path, task="inpaint_random", algo="LMAPS-cpu", exp="gmm_faces-seed0"):
    return tmp_path / "res" / task / algo / exp


def psnr_numpy(pred, target):
    """Independent PSNR on (x+1)/2 clipped to [0, 1]."""
    p = np.clip((pred.numpy().astype(np.float64) + 1) / 2, 0, 1)
    t = np.clip((target.numpy().astype(np.float64) + 1) / 2, 0, 1)
    return 10 * math.log10(1.0 / np.mean((p - t) ** 2))


def test_lmaps_end_to_end_writes_results_table_and_figures(tmp_path, monkeypatch, capsys):
    run_main(monkeypatch, *TINY, "num_images=2", f"exp_dir={tmp_path / 'res'}")
    out = capsys.readouterr().out
    exp = folder(tmp_path)
    for name in ("result_0.pt", "result_1.pt", "result_0.json", "metrics.json", "metrics.csv", "figure.png",
                 "trajectory.png", "config.yaml"):
        assert (exp / name).is_file(), name
    assert (exp / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "meas. PSNR" in out and "mean±std" in out and f"results: {exp.resolve()}" in out
    assert f"figure:  {(exp / 'figure.png').resolve()}" in out
    data = torch.load(exp / "result_1.pt", weights_only=True)
    assert data["recon"].shape == data["target"].shape == (1, 1, 16, 16)
    doc = json.loads((exp / "metrics.json").read_text())
    assert doc["complete"] and doc["ids"] == [0, 1] and doc["missing"] == []
    assert doc["samples"]["1"]["psnr"] == pytest.approx(psnr_numpy(data["recon"], data["target"]), abs=1e-3)
    assert doc["unavailable"].get("lpips", "unavailable: ").startswith("unavailable: ") or "lpips" in doc["stats"]
    # the mean row is the mean of the per-sample values
    assert doc["summary"]["psnr"] == pytest.approx(np.mean(doc["per_sample"]["psnr"]))


def test_rerun_skips_finished_samples_and_refuses_a_changed_configuration(tmp_path, monkeypatch, capsys):
    args = [*TINY, "num_images=2", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false"]
    run_main(monkeypatch, *args)
    exp = folder(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in exp.glob("result_*")}
    capsys.readouterr()
    run_main(monkeypatch, *args)
    assert capsys.readouterr().out.count("skipped") == 2
    assert {p.name: p.stat().st_mtime_ns for p in exp.glob("result_*")} == stamps
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit):  # Hydra prints the error and exits 1
        run_main(monkeypatch, *args, "algorithm.method.inner_steps=3")
    assert "made with a different configuration" in capsys.readouterr().err
    GlobalHydra.instance().clear()
    with pytest.raises(R.ConfigMismatchError, match="exp_name=.*overwrite=true"):
        app_run.run(config(*args, "algorithm.method.inner_steps=3"))
    summary = app_run.run(config(*args, "algorithm.method.inner_steps=3", "overwrite=true"))
    assert [o.status for o in summary.outcomes] == ["ok", "ok"]


def test_shards_reproduce_an_unsharded_run(tmp_path):
    whole = app_run.run(config(*TINY, "ids=0-2", f"exp_dir={tmp_path / 'a'}", "figure.enabled=false", "verbose=false"))
    for ids in ("0-1", "2"):
        app_run.run(config(*TINY, f"ids={ids}", f"exp_dir={tmp_path / 'b'}", "figure.enabled=false", "verbose=false"))
    assert [o.sample_id for o in whole.outcomes] == [0, 1, 2]
    for i in range(3):
        a = torch.load(whole.exp_dir / f"result_{i}.pt", weights_only=True)
        b = torch.load(tmp_path / "b" / whole.exp_dir.relative_to(tmp_path / "a") / f"result_{i}.pt",
                       weights_only=True)
        assert torch.equal(a["recon"], b["recon"]) and torch.equal(a["observation"], b["observation"])


def test_interrupted_run_leaves_complete_files_and_resumes(tmp_path, monkeypatch):
    cfg = config(*TINY, "num_images=3", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false", "verbose=false")
    original = LMAPS.inference
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second sample
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LMAPS, "inference", interrupted)
    with pytest.raises(KeyboardInterrupt):
        app_run.run(cfg)
    exp = folder(tmp_path)
    assert sorted(p.name for p in exp.iterdir() if p.name.startswith("result_")) == ["result_0.json", "result_0.pt"]
    assert not [p for p in exp.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(LMAPS, "inference", original)
    summary = app_run.run(cfg)
    assert [o.status for o in summary.outcomes] == ["skipped", "ok", "ok"]
    assert json.loads((exp / "metrics.json").read_text())["complete"]


def test_a_diverging_sample_is_recorded_as_failed_never_written_and_retried(tmp_path):
    cfg = config(*TINY, "num_images=1", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false", "verbose=false",
                 "algorithm.method.lr=1000", "algorithm.method.step_guard=false", "+algorithm.method.max_backoffs=0")
    with pytest.warns(RuntimeWarning, match="sample 0 failed: diverged"):
        summary = app_run.run(cfg)
    exp = folder(tmp_path)
    assert summary.outcomes[0].status == "failed"
    assert not (exp / "result_0.pt").exists()
    doc = json.loads((exp / "metrics.json").read_text())
    assert doc["missing"] == [0] and "diverged" in doc["failed"]["0"] and not doc["complete"]
    json.loads((exp / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} written"))
    # a rerun with a sane step size retries the failed sample
    retry = app_run.run(config(*TINY, "num_images=1", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false",
                           "verbose=false"))
    assert retry.outcomes[0].status == "ok" and (exp / "result_0.pt").is_file()
    assert json.loads((exp / "metrics.json").read_text())["complete"]


def test_prior_and_data_shapes_must_agree(tmp_path):
    cfg = config(*TINY, "problem.data.resolution=32", f"exp_dir={tmp_path}", "verbose=false")
    with pytest.raises(ValueError, match=r"makes images of shape \(1, 16, 16\).*problem.data gives \(1, 32, 32\)"):
        app_run.run(cfg)


def test_default_config_is_the_embedded_demo():
    cfg = config()
    assert cfg.problem.name == "inpaint_random" and cfg.prior.name == "faces64"
    assert cfg.algorithm.method._target_ == "lmaps_plugin.LMAPS"
    assert cfg.problem.data.name == "faces" and cfg.problem.data.resolution == 64 and cfg.num_images == 4
    assert str(build.experiment_dir(cfg)) == "results/inpaint_random/LMAPS-cpu/faces64-seed0"


def test_config_hash_ignores_seed_ids_and_paths_but_not_algorithm_settings():
    base = build.run_config_hash(config(*TINY))
    assert build.run_config_hash(config(*TINY, "seed=3", "ids=4-7", "exp_dir=/elsewhere", "num_images=9")) == base
    assert build.run_config_hash(config(*TINY, "algorithm.method.k2=5")) != base


def test_checkpoint_prior_loads_weights_only_and_refuses_pickled_modules(tmp_path):
    from lmaps_plugin.priors import UntrustedCheckpointError, build_edm_unet, default_unet_config, save_prior

    net = build_edm_unet(default_unet_config(img_channels=1, img_resolution=16))
    path = save_prior(tmp_path / "tiny.pt", net, meta={"note": "untrained"})
    args = [*TINY[2:], "prior=inversebench", f"prior.path={path}", "prior.channels=1", "prior.resolution=16",
            "num_images=1", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false", "verbose=false"]
    summary = app_run.run(config(*args))
    assert summary.outcomes[0].status == "ok"
    pickled = tmp_path / "pickled.pt"
    torch.save({"ema": net}, pickled)
    with pytest.raises(Exception, match="unpickling runs code.*trust_pickle") as info:
        app_run.run(config(*[a for a in args if not a.startswith("prior.path")], f"prior.path={pickled}",
                       "exp_name=pickled"))
    chain, error = [], info.value          # a ConfigError naming prior (exit 2), from Hydra's wrapper of ours
    while error is not None:
        chain.append(error)
        error = error.__cause__
    assert isinstance(chain[0], ConfigError) and "prior: UntrustedCheckpointError" in str(chain[0])
    assert any(isinstance(e, UntrustedCheckpointError) for e in chain)


@pytest.mark.parametrize("flag", ["no", "off", "'false'"])
def test_trust_pickle_words_that_mean_no_never_unpickle(tmp_path, flag):
    """prior.trust_pickle=no (a string to Hydra) once counted as trusted and ran the file's code."""
    from evil_checkpoints import evil_checkpoints as _evil_checkpoints

    marker, zipped, _ = _evil_checkpoints(tmp_path)
    args = [*TINY[2:], "prior=inversebench", f"prior.path={zipped}", "prior.channels=1", "prior.resolution=16",
            f"prior.trust_pickle={flag}", "num_images=1", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false",
            "verbose=false"]
    with pytest.raises(Exception, match="trust_pickle must be the boolean true or false"):
        app_run.run(config(*args))
    assert not marker.exists()


# ================================================================ hardening: regression tests
FAST = [*TINY, "figure.enabled=false", "verbose=false"]
STATS = ["algorithm.method._target_=fake_algorithms.StatsAlgorithm"]


def run_code(monkeypatch, capsys, *overrides) -> tuple[int, str]:
    """Exit code and stderr of ``lmaps <overrides>`` (in this process)."""
    GlobalHydra.instance().clear()
    capsys.readouterr()
    try:
        run_main(monkeypatch, *overrides)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def stamps(folder):
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("result_*")}


@pytest.mark.parametrize("bad, shown", [("overwrite=no", "overwrite='no'"), ("overwrite=off", "overwrite='off'"),
                                        ("resume=maybe", "resume='maybe'"), ("verbose=1", "verbose=1")])
def test_booleans_are_only_true_or_false_and_nothing_is_touched(tmp_path, monkeypatch, capsys, bad, shown):
    """Guards against this failure: overwrite=no meant overwrite (a non-empty string is true) and replaced a run's results."""
    args = [*FAST, "num_images=2", f"exp_dir={tmp_path / 'res'}"]
    assert run_code(monkeypatch, capsys, *args)[0] == 0
    before = stamps(folder(tmp_path))
    code, err = run_code(monkeypatch, capsys, *args, "algorithm.method.k2=50", bad)
    assert code == app_main.EXIT_USAGE
    assert f"{shown} is not allowed: a boolean, true or false" in err and "Traceback" not in err
    assert stamps(folder(tmp_path)) == before


def test_a_run_of_another_configuration_is_refused_while_one_works_in_the_folder(tmp_path):
    """One process: a live run registered in the folder with another config hash refuses this run before
    any sample is written; a live run of the same configuration does not."""
    from lmaps_plugin.app.folder import FolderBusyError, RunFolder

    cfg = config(*FAST, "num_images=1", f"exp_dir={tmp_path / 'res'}")
    exp = build.experiment_dir(cfg)
    other = RunFolder(exp, "0" * 64, 0)
    with other.mutex():
        other.register([0])
    try:
        with pytest.raises(FolderBusyError, match="in use by a run with a different configuration"):
            app_run.run(cfg)
        assert not list(exp.glob("result_*"))
    finally:
        other.unregister()
    same = RunFolder(exp, build.run_config_hash(cfg), 0)
    with same.mutex():
        same.register([5])
    try:
        assert [o.status for o in app_run.run(cfg).outcomes] == ["ok"]
    finally:
        same.unregister()


def test_a_result_file_and_a_record_of_different_runs_never_count_together(tmp_path):
    """the .pt of one run with the .json of another (what two unlocked runs left) is detected by the
    record's SHA-256 of its .pt, and the sample is redone."""
    args = [*FAST, "num_images=2", f"exp_dir={tmp_path / 'res'}"]
    app_run.run(config(*args))
    exp = folder(tmp_path)
    R.save_result(exp, 0, *(torch.zeros(1, 1, 16, 16),) * 3)  # another run's .pt, written alone
    with pytest.warns(RuntimeWarning, match="result_0.pt does not match result_0.json"):
        summary = app_run.run(config(*args))
    assert [o.status for o in summary.outcomes] == ["ok", "skipped"]
    record = json.loads((exp / "result_0.json").read_text())
    assert record["result_sha256"] == R.file_sha256(exp / "result_0.pt")


def test_overwrite_moves_another_configuration_aside_and_never_counts_it(tmp_path):
    """Guards against this failure: overwrite=true with fewer ids kept the other configuration's samples 2, 3 and counted them
    (n = 4 while 2 were run)."""
    app_run.run(config(*FAST, "num_images=4", f"exp_dir={tmp_path / 'res'}"))
    exp = folder(tmp_path)
    summary = app_run.run(config(*FAST, "num_images=2", f"exp_dir={tmp_path / 'res'}", "algorithm.method.k2=50",
                             "overwrite=true"))
    assert [o.status for o in summary.outcomes] == ["ok", "ok"]
    doc = json.loads((exp / "metrics.json").read_text())
    assert doc["ids"] == [0, 1] and doc["stats"]["psnr"]["n"] == 2 and doc["complete"]
    assert sorted(p.name for p in exp.glob("result_*.pt")) == ["result_0.pt", "result_1.pt"]
    (aside,) = (exp / ".replaced").iterdir()
    assert sorted(p.name for p in aside.glob("result_*.pt")) == [f"result_{i}.pt" for i in range(4)]
    new_hash = build.run_config_hash(config(*FAST, "algorithm.method.k2=50"))
    assert {json.loads(p.read_text())["config_hash"] for p in exp.glob("result_*.json")} == {new_hash}


def test_temporary_files_older_than_every_live_run_are_removed(tmp_path):
    """Guards against this failure: a SIGKILL during a save left .result_1.pt.<rand>.tmp forever."""
    import os
    import time

    from lmaps_plugin.app.folder import RunFolder

    cfg = config(*FAST, "num_images=1", f"exp_dir={tmp_path / 'res'}")
    exp = build.experiment_dir(cfg)
    exp.mkdir(parents=True)
    stale = exp / ".result_1.pt.k2x9a.tmp"
    stale.write_bytes(b"half a file")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    live = RunFolder(exp, build.run_config_hash(cfg), 0)  # a live run of the same setting, writing right now
    with live.mutex():
        live.register([3])
    fresh = exp / ".result_3.pt.q8d1z.tmp"
    fresh.write_bytes(b"being written")
    try:
        app_run.run(cfg)
    finally:
        live.unregister()
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "abc", "-0.1", "true"])
def test_sigma_noise_must_be_a_finite_non_negative_number(tmp_path, monkeypatch, capsys, value):
    """Guards against this failure: nan/inf ran every sample into a misleading divergence error and exited 0; abc gave
    "'<' not supported between 'str' and 'int'"."""
    code, err = run_code(monkeypatch, capsys, *FAST, f"problem.model.sigma_noise={value}", f"exp_dir={tmp_path}")
    assert code == app_main.EXIT_USAGE and "Traceback" not in err
    assert "problem.model.sigma_noise=" in err and "is not allowed: a finite number >= 0" in err
    assert not list(tmp_path.rglob("result_*"))


def test_exit_code_is_non_zero_with_a_summary_line_when_a_sample_fails(tmp_path, monkeypatch, capsys):
    """Guards against this failure: every sample could fail and `lmaps` still exited 0."""
    with pytest.warns(RuntimeWarning, match="failed: diverged"):
        code, err = run_code(monkeypatch, capsys, *FAST, "num_images=2", f"exp_dir={tmp_path}",
                             "algorithm.method.lr=1000", "algorithm.method.step_guard=false",
                             "+algorithm.method.max_backoffs=0")
    assert code == app_main.EXIT_SAMPLES_FAILED
    assert "lmaps: 2 of 2 requested sample(s) failed: 0 (diverged" in err and "; 1 (diverged" in err


def test_a_non_finite_observation_fails_with_its_own_message(tmp_path, monkeypatch):
    from lmaps_plugin.operators.linear import RandomInpainting

    original = RandomInpainting.forward

    def poisoned(self, x, *args, **kwargs):
        y = original(self, x, *args, **kwargs)
        return y + float("nan")

    monkeypatch.setattr(RandomInpainting, "forward", poisoned)
    with pytest.warns(RuntimeWarning, match="non-finite observation"):
        summary = app_run.run(config(*FAST, "num_images=1", f"exp_dir={tmp_path}"))
    assert summary.outcomes[0].status == "failed" and "non-finite observation" in summary.outcomes[0].reason
    assert "diverged" not in summary.outcomes[0].reason


def test_config_hash_comes_from_typed_values(tmp_path, monkeypatch, capsys):
    """Guards against this failure: k2=100 was refused against the default 100.0, and num_samples=1.5 ran as 1."""
    args = [*FAST, "num_images=1", f"exp_dir={tmp_path / 'res'}"]
    app_run.run(config(*args))
    assert [o.status for o in app_run.run(config(*args, "algorithm.method.k2=100")).outcomes] == ["skipped"]
    code, err = run_code(monkeypatch, capsys, *args, "num_samples=1.5")
    assert code == app_main.EXIT_USAGE and "num_samples=1.5 is not allowed: an integer >= 1" in err


@pytest.mark.parametrize("text", ["[]", '{"id": 2, "status": "ok", "metrics": {"psnr": NaN}}'])
def test_a_wrong_record_is_named_and_its_sample_redone(tmp_path, text):
    """Guards against this failure: '[]' crashed the run (AttributeError: 'list' object has no attribute 'get')."""
    args = [*FAST, "num_images=3", f"exp_dir={tmp_path / 'res'}"]
    app_run.run(config(*args))
    exp = folder(tmp_path)
    (exp / "result_2.json").write_text(text)
    with pytest.warns(RuntimeWarning, match="result_2.json is not a valid sample record"):
        summary = app_run.run(config(*args))
    assert [o.status for o in summary.outcomes] == ["skipped", "skipped", "ok"]
    assert json.loads((exp / "metrics.json").read_text())["complete"]


def test_a_wrong_record_is_named_once_per_run(tmp_path):
    """A run reads the folder's records at its start and again per sample: before, Python's default filter showed
    the same warning twice (once attributed to each reader)."""
    args = [*FAST, "num_images=2", f"exp_dir={tmp_path / 'res'}"]
    app_run.run(config(*args))
    (folder(tmp_path) / "result_1.json").write_text("[]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        app_run.run(config(*args))
    assert sum("result_1.json is not a valid sample record" in str(w.message) for w in caught) == 1


def test_trajectory_title_names_the_sample_it_shows(tmp_path, monkeypatch):
    """Guards against this failure: after a resume, trajectory.png said "sample 0" but showed sample 1 (the first one run)."""
    args = [*TINY, "verbose=false", f"exp_dir={tmp_path / 'res'}"]
    app_run.run(config(*args, "ids=0", "figure.enabled=false"))
    shown = {}

    def capture(path, frames, target=None, title=None):
        shown.update(title=title, target=target)
        return path

    monkeypatch.setattr(app_run, "save_trajectory_strip", capture)
    cfg = config(*args, "num_images=2")
    summary = app_run.run(cfg)
    assert [o.status for o in summary.outcomes] == ["skipped", "ok"]
    assert shown["title"].endswith("trajectory, sample 1")
    assert torch.equal(shown["target"], build.build_dataset(cfg)[1]["target"])


def test_metrics_of_a_folder_count_every_shard_requested_into_it(tmp_path, monkeypatch):
    """Guards against this failure: after an interrupted sharded run metrics.json said complete: true, missing: [] with 2
    of 4 ids (each shard only knew its own ids)."""
    args = [*FAST, f"exp_dir={tmp_path / 'res'}"]
    original = LMAPS.inference

    def killed(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(LMAPS, "inference", killed)
    with pytest.raises(KeyboardInterrupt):
        app_run.run(config(*args, "ids=2-3"))  # the second shard is interrupted
    monkeypatch.setattr(LMAPS, "inference", original)
    app_run.run(config(*args, "ids=0-1"))      # the first shard finishes
    doc = json.loads((folder(tmp_path) / "metrics.json").read_text())
    assert doc["ids"] == [0, 1] and doc["requested"] == [0, 1, 2, 3]
    assert doc["missing"] == [2, 3] and doc["complete"] is False
    app_run.run(config(*args, "ids=2-3"))      # and once it is redone, the folder is complete
    assert json.loads((folder(tmp_path) / "metrics.json").read_text())["complete"]


def test_a_non_finite_metric_fails_the_sample_instead_of_vanishing(tmp_path, monkeypatch):
    """Guards against this failure: a NaN metric was dropped from a record still marked ok."""
    from lmaps_plugin.evaluation.metrics import ImageEvaluator

    original = ImageEvaluator.evaluate

    def nan_ssim(self, *a, **k):
        return {**original(self, *a, **k), "ssim": float("nan")}

    monkeypatch.setattr(ImageEvaluator, "evaluate", nan_ssim)
    with pytest.warns(RuntimeWarning, match="non-finite metric"):
        summary = app_run.run(config(*FAST, "num_images=1", f"exp_dir={tmp_path / 'res'}"))
    assert summary.outcomes[0].status == "failed" and "ssim=nan" in summary.outcomes[0].reason
    doc = json.loads((folder(tmp_path) / "metrics.json").read_text())
    assert doc["ids"] == [] and doc["missing"] == [0] and "ssim=nan" in doc["failed"]["0"]


@pytest.mark.parametrize("value, allowed", [("0", "threads=0"), ("abc", "threads='abc'"), ("1.5", "threads=1.5")])
def test_threads_must_be_a_positive_integer(tmp_path, monkeypatch, capsys, value, allowed):
    """Guards against this failure: threads=0 ran silently, threads=abc gave "invalid literal for int()"."""
    code, err = run_code(monkeypatch, capsys, *FAST, f"threads={value}", f"exp_dir={tmp_path}")
    assert code == app_main.EXIT_USAGE and f"{allowed} is not allowed: an integer >= 1" in err and "Traceback" not in err


@pytest.mark.parametrize("override, message", [
    ("algorithm.method.lr=abc", "algorithm.method: ValueError: LMAPS: lr='abc' is invalid"),
    ("algorithm.method.step_guard=no", "algorithm.method: ValueError: LMAPS: step_guard='no' is invalid"),
    ("algorithm.method.num_steps=1.5", "algorithm.method: ValueError: LMAPS: num_steps=1.5 is invalid"),
    ("prior.n_components=0", "prior: "),
])
def test_a_group_value_its_class_refuses_exits_2_before_any_results_folder(tmp_path, monkeypatch, capsys, override,
                                                                           message):
    """Typed configuration: values inside prior.* and algorithm.method.* are checked by their classes;
    before, a refused one exited 1 ("a sample failed") after creating the results folder."""
    code, err = run_code(monkeypatch, capsys, *FAST, override.replace("prior.", "prior.net."), f"exp_dir={tmp_path}")
    assert code == app_main.EXIT_USAGE and message in err and "Traceback" not in err
    written = {p.name for p in (tmp_path / "inpaint_random" / "LMAPS-cpu" / "gmm_faces-seed0").iterdir()}
    assert written <= {".hydra", "lmaps.log"}    # Hydra's own run files only: no lock, record or metrics.json


def test_solver_run_statistics_go_into_records_and_metrics(tmp_path):
    app_run.run(config(*FAST, *STATS, "num_images=3", f"exp_dir={tmp_path / 'res'}"))
    exp = folder(tmp_path)
    stats = [json.loads((exp / f"result_{i}.json").read_text())["solver"] for i in range(3)]
    assert stats[2] == {"cg_relative_residual_max": pytest.approx(3e-7), "cg_iterations_mean": 13.0,
                        "guard_steps": 0}
    doc = json.loads((exp / "metrics.json").read_text())
    assert doc["solver"] == {"cg_relative_residual_max": pytest.approx(3e-7), "cg_iterations_mean": 12.0}


def test_lmaps_without_arguments_is_still_the_embedded_default():
    """The README's promise: `lmaps` composes and validates with no override."""
    from lmaps_plugin.app import schema

    options = schema.validate(config())
    assert options.sample_ids == (0, 1, 2, 3) and options.device == "cpu" and options.threads == 1


# ---------------------------------------------------------------------------------- two real processes
def _lmaps_process(tmp_path, tag, gate, *overrides):
    import os
    import subprocess
    from pathlib import Path

    helpers = str(Path(__file__).resolve().parents[1] / "helpers")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [helpers, os.environ.get("PYTHONPATH")])),
           "LMAPS_TEST_GATE": str(gate), "LMAPS_TEST_LOG": str(tmp_path / "calls.log")}
    cmd = [sys.executable, "-c", "from lmaps_plugin.app.main import main; main()", *TINY, "figure.enabled=false",
           f"exp_dir={tmp_path / 'res'}", f"hydra.run.dir={tmp_path / ('hydra-' + tag)}",
           "algorithm.method._target_=fake_algorithms.GatedAlgorithm", *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_two_real_processes_share_a_folder_safely(tmp_path):
    """A (ids 0-1) holds sample 0 at a gate; B (another configuration) is refused with exit code 2 while A works;
    C (A's configuration, ids 0-3, no gate) takes only the samples not in progress (1, 2, 3), then waits for
    sample 0 and skips it once A has written it. Every sample is computed exactly once, by one process, and the
    folder holds one configuration."""
    import time

    log, gate, open_gate = tmp_path / "calls.log", tmp_path / "gate", tmp_path / "open"
    open_gate.touch()
    a = _lmaps_process(tmp_path, "a", gate, "ids=0-1")
    deadline = time.monotonic() + 240
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        assert a.poll() is None, a.communicate()
        time.sleep(0.1)
    b = _lmaps_process(tmp_path, "b", open_gate, "ids=0-1", "algorithm.method.k2=50")
    _, b_err = b.communicate(timeout=240)
    assert b.returncode == 2 and "in use by a run with a different configuration" in b_err and "Traceback" not in b_err
    c = _lmaps_process(tmp_path, "c", open_gate, "ids=0-3")
    while log.read_text().count("\n") < 4 and time.monotonic() < deadline:
        assert c.poll() is None, c.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    assert c.poll() is None  # C waits for sample 0, held by A
    gate.touch()
    a_out, a_err = a.communicate(timeout=240)
    c_out, c_err = c.communicate(timeout=240)
    assert a.returncode == 0 and c.returncode == 0, (a_err[-2000:], c_err[-2000:])
    assert "sample 0 is in progress in another run" in c_out
    calls = [line.split() for line in log.read_text().splitlines()]
    assert len(calls) == 4 and len({digest for _, digest in calls}) == 4  # each sample computed once
    assert [pid for pid, _ in calls].count(str(a.pid)) == 1  # A: sample 0 only; C: the three others
    exp = folder(tmp_path)
    assert len({json.loads(p.read_text())["config_hash"] for p in exp.glob("result_*.json")}) == 1
    for i in range(4):
        record = json.loads((exp / f"result_{i}.json").read_text())
        assert record["status"] == "ok" and record["result_sha256"] == R.file_sha256(exp / f"result_{i}.pt")
    doc = json.loads((exp / "metrics.json").read_text())
    assert doc["complete"] and doc["ids"] == [0, 1, 2, 3]


def test_progress_line_reports_the_cg_residual_of_an_exact_solve():
    outcome = app_sample.SampleOutcome(3, "ok", {"psnr": 30.0, "ssim": 0.9}, 2.0,
                                solver={"cg_relative_residual_max": 0.0093, "cg_iterations_mean": 2.5})
    line = app_run.progress_line(outcome, 1, 4)
    assert "sample 3: PSNR 30.00 dB" in line and "CG relative residual <= 0.0093 (2.5 iterations/step)" in line
    assert "CG" not in app_run.progress_line(app_sample.SampleOutcome(3, "ok", {"psnr": 30.0}, 2.0), 1, 4)
