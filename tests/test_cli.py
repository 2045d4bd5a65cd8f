"""The ``lmaps`` app end to end on tiny settings (exact GMM prior at 16×16, a few LMAPS steps): files and numbers,
resume, sharding, interruption, divergence, and clear errors."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from lmaps_plugin.app import cli
from lmaps_plugin.app import results as R
from lmaps_plugin.solver import LMAPS

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
    cli.main()


def config(*overrides):
    with initialize_config_module(config_module="lmaps_plugin.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


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
        cli.run(config(*args, "algorithm.method.inner_steps=3"))
    summary = cli.run(config(*args, "algorithm.method.inner_steps=3", "overwrite=true"))
    assert [o.status for o in summary.outcomes] == ["ok", "ok"]


def test_shards_reproduce_an_unsharded_run(tmp_path):
    whole = cli.run(config(*TINY, "ids=0-2", f"exp_dir={tmp_path / 'a'}", "figure.enabled=false", "verbose=false"))
    for ids in ("0-1", "2"):
        cli.run(config(*TINY, f"ids={ids}", f"exp_dir={tmp_path / 'b'}", "figure.enabled=false", "verbose=false"))
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
        cli.run(cfg)
    exp = folder(tmp_path)
    assert sorted(p.name for p in exp.iterdir() if p.name.startswith("result_")) == ["result_0.json", "result_0.pt"]
    assert not [p for p in exp.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(LMAPS, "inference", original)
    summary = cli.run(cfg)
    assert [o.status for o in summary.outcomes] == ["skipped", "ok", "ok"]
    assert json.loads((exp / "metrics.json").read_text())["complete"]


def test_a_diverging_sample_is_recorded_as_failed_never_written_and_retried(tmp_path):
    cfg = config(*TINY, "num_images=1", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false", "verbose=false",
                 "algorithm.method.lr=1000", "algorithm.method.step_guard=false", "+algorithm.method.max_backoffs=0")
    with pytest.warns(RuntimeWarning, match="sample 0 failed: diverged"):
        summary = cli.run(cfg)
    exp = folder(tmp_path)
    assert summary.outcomes[0].status == "failed"
    assert not (exp / "result_0.pt").exists()
    doc = json.loads((exp / "metrics.json").read_text())
    assert doc["missing"] == [0] and "diverged" in doc["failed"]["0"] and not doc["complete"]
    json.loads((exp / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} written"))
    # a rerun with a sane step size retries the failed sample
    retry = cli.run(config(*TINY, "num_images=1", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false",
                           "verbose=false"))
    assert retry.outcomes[0].status == "ok" and (exp / "result_0.pt").is_file()
    assert json.loads((exp / "metrics.json").read_text())["complete"]


def test_prior_and_data_shapes_must_agree(tmp_path):
    cfg = config(*TINY, "problem.data.resolution=32", f"exp_dir={tmp_path}", "verbose=false")
    with pytest.raises(ValueError, match=r"makes images of shape \(1, 16, 16\).*problem.data gives \(1, 32, 32\)"):
        cli.run(cfg)


def test_default_config_is_the_embedded_demo():
    cfg = config()
    assert cfg.problem.name == "inpaint_random" and cfg.prior.name == "faces64"
    assert cfg.algorithm.method._target_ == "lmaps_plugin.solver.LMAPS"
    assert cfg.problem.data.name == "faces" and cfg.problem.data.resolution == 64 and cfg.num_images == 4
    assert str(cli.experiment_dir(cfg)) == "results/inpaint_random/LMAPS-cpu/faces64-seed0"


def test_config_hash_ignores_seed_ids_and_paths_but_not_algorithm_settings():
    base = cli.run_config_hash(config(*TINY))
    assert cli.run_config_hash(config(*TINY, "seed=3", "ids=4-7", "exp_dir=/elsewhere", "num_images=9")) == base
    assert cli.run_config_hash(config(*TINY, "algorithm.method.k2=5")) != base


def test_checkpoint_prior_loads_weights_only_and_refuses_pickled_modules(tmp_path):
    from lmaps_plugin.priors import UntrustedCheckpointError, build_edm_unet, default_unet_config, save_prior

    net = build_edm_unet(default_unet_config(img_channels=1, img_resolution=16))
    path = save_prior(tmp_path / "tiny.pt", net, meta={"note": "untrained"})
    args = [*TINY[2:], "prior=inversebench", f"prior.path={path}", "prior.channels=1", "prior.resolution=16",
            "num_images=1", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false", "verbose=false"]
    summary = cli.run(config(*args))
    assert summary.outcomes[0].status == "ok"
    pickled = tmp_path / "pickled.pt"
    torch.save({"ema": net}, pickled)
    with pytest.raises(Exception, match="unpickling runs code.*trust_pickle") as info:
        cli.run(config(*[a for a in args if not a.startswith("prior.path")], f"prior.path={pickled}"))
    assert isinstance(info.value, UntrustedCheckpointError) or \
        isinstance(info.value.__cause__, UntrustedCheckpointError)  # Hydra may wrap it


@pytest.mark.parametrize("flag", ["no", "off", "'false'"])
def test_trust_pickle_words_that_mean_no_never_unpickle(tmp_path, flag):
    """prior.trust_pickle=no (a string to Hydra) once counted as trusted and ran the file's code."""
    from test_priors import _evil_checkpoints

    marker, zipped, _ = _evil_checkpoints(tmp_path)
    args = [*TINY[2:], "prior=inversebench", f"prior.path={zipped}", "prior.channels=1", "prior.resolution=16",
            f"prior.trust_pickle={flag}", "num_images=1", f"exp_dir={tmp_path / 'res'}", "figure.enabled=false",
            "verbose=false"]
    with pytest.raises(Exception, match="trust_pickle must be the boolean true or false"):
        cli.run(config(*args))
    assert not marker.exists()
