"""A study's storage is data written by whoever can reach it: its trials become a tuned config only when they are
draws of the resolved search space (names, distributions, values), and the base config is trial 0 as given."""
from __future__ import annotations

import argparse

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from lmaps_plugin.bench.tune import outputs as OUT  # noqa: E402
from lmaps_plugin.bench.tune import request as RQ  # noqa: E402
from lmaps_plugin.bench.tune import study as ST  # noqa: E402
from lmaps_plugin.bench.tune import command as T  # noqa: E402
from lmaps_plugin.bench.tune import space as S  # noqa: E402

TINY = ["algorithm.method.num_steps=5"]
Float = optuna.distributions.FloatDistribution
Cat = optuna.distributions.CategoricalDistribution


def tiny_request(tmp_path, trials=1, overrides=(), **kwargs) -> RQ.TuneRequest:
    return RQ.TuneRequest(task="inpaint_random", algorithm="lmaps_cpu", trials=trials, val_ids=[0],
                         exp_dir=str(tmp_path / "tune"), overrides=[*TINY, *overrides], **kwargs)


def with_budget(request: RQ.TuneRequest, trials: int) -> RQ.TuneRequest:
    return RQ.TuneRequest(**{**request.__dict__, "trials": trials})


def add_trial(request, params, distributions, value=99.0):
    study = ST.open_study(request)
    study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    return study.trials[-1].number


@pytest.fixture
def finished_study(tmp_path):
    request = tiny_request(tmp_path, trials=1)
    result = T.tune(request, plots=False)
    return tmp_path, request, result


def gd_trial_params(lr=0.01):
    params = {"algorithm.method.inner_solver": "gd", "algorithm.method.lr": lr,
              "algorithm.method.inner_steps": 20, "algorithm.method.k1": 0.2, "algorithm.method.k2": 50.0}
    dists = {"algorithm.method.inner_solver": Cat(["gd", "cg"]),
             "algorithm.method.lr": Float(1e-3, 0.5, log=True),
             "algorithm.method.inner_steps": optuna.distributions.IntDistribution(1, 100, log=True),
             "algorithm.method.k1": Float(0.02, 2.0, log=True), "algorithm.method.k2": Float(1.0, 1000.0, log=True)}
    return params, dists


def test_a_foreign_target_key_in_the_storage_is_refused_and_never_written(finished_study, tmp_path):
    tmp, request, first = finished_study
    before = first.tuned_config.read_text()
    evil = {"algorithm.method.extra._target_": "lmaps_plugin.inversebench.factories.checkpoint_prior",
            "algorithm.method.extra.path": str(tmp / "evil.pt"), "algorithm.method.extra.trust_pickle": True}
    number = add_trial(request, evil, {k: Cat([v]) for k, v in evil.items()}, value=1e9)
    with pytest.raises(RQ.TuneError, match=rf"trial {number} is not a draw.*_target_"):
        T.tune(tiny_request(tmp, trials=2), plots=False)
    assert first.tuned_config.read_text() == before                  # nothing written
    assert "_target_: lmaps_plugin.inversebench" not in first.tuned_config.read_text()


@pytest.mark.parametrize("tamper", ["distribution", "out_of_range", "missing_key", "extra_key"])
def test_a_trial_that_is_not_a_draw_of_the_space_is_refused(finished_study, tamper):
    tmp, request, first = finished_study
    params, dists = gd_trial_params()
    if tamper == "distribution":
        dists["algorithm.method.lr"] = Float(1e-3, 50.0, log=True)
    elif tamper == "out_of_range":
        params["algorithm.method.k2"] = 5000.0
        dists["algorithm.method.k2"] = Float(1.0, 10000.0, log=True)
    elif tamper == "missing_key":
        del params["algorithm.method.k1"], dists["algorithm.method.k1"]
    else:
        params["algorithm.method.cg_tol"], dists["algorithm.method.cg_tol"] = 1e-4, Float(1e-8, 1e-2, log=True)
    number = add_trial(request, params, dists)
    with pytest.raises(RQ.TuneError, match=rf"trial {number} is not a draw"):
        OUT.finalize(with_budget(request, 2), plots=False)


def test_a_genuine_draw_is_accepted(finished_study):
    tmp, request, _ = finished_study
    params, dists = gd_trial_params(lr=0.02)
    number = add_trial(request, params, dists, value=1e6)
    result = OUT.finalize(with_budget(request, 2), plots=False)
    doc = yaml.safe_load(result.tuned_config.read_text())
    assert doc["tuned"]["best_trial"] == number and doc["method"]["lr"] == 0.02


def test_the_tune_command_exits_2_naming_the_trial(finished_study, capsys):
    tmp, request, _ = finished_study
    evil = {"algorithm.method.extra._target_": "os.system"}
    number = add_trial(request, evil, {k: Cat([v]) for k, v in evil.items()})
    args = argparse.Namespace(task="inpaint_random", algorithm="lmaps_cpu", prior=None, trials=2, val_ids="0",
                              val_split="val", metric="psnr", seed=0, exp_dir=str(tmp / "tune"), storage=None,
                              study_name=None, workers=1, launcher="auto", pruner="median", prune_after=1,
                              space=None, threads=1, no_baseline=False, overrides=list(TINY), install=False,
                              no_plots=True)
    assert T.main(args) == 2
    err = capsys.readouterr().err
    assert f"trial {number} is not a draw" in err and "_target_" in err


def test_a_space_file_cannot_search_a_hydra_target(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("params:\n  algorithm.method.extra._target_: {choices: [os.system]}\n")
    with pytest.raises(S.SpaceError, match="_target_ is a Hydra instantiation key"):
        S.resolve_space("bad", path=path)
    with pytest.raises(RQ.TuneError, match="Hydra instantiation keys"):
        RQ.trial_config(optuna_free_cfg(), {"algorithm._target_": "os.system"}, tmp_path, "x")


def optuna_free_cfg():
    from omegaconf import OmegaConf
    return OmegaConf.create({"algorithm": {"method": {}}, "exp_dir": "", "exp_name": ""})


# ----------------------------------------------------------------------------- the base config is trial 0
def test_a_base_value_outside_the_space_widens_it_and_is_trial_0(tmp_path):
    request = tiny_request(tmp_path, trials=1, overrides=["algorithm.method.k2=5000"])
    result = T.tune(request, plots=False)
    study = ST.open_study(request)
    trial0 = study.trials[0]
    assert trial0.user_attrs.get("baseline") is True
    assert trial0.params["algorithm.method.k2"] == 5000.0          # as given, not a random draw
    assert request.resolved_space["algorithm.method.k2"]["high"] == 5000.0
    assert any("widened" in note and "k2" in note for note in request.space_notes)
    doc = yaml.safe_load(result.tuned_config.read_text())
    assert doc["method"]["k2"] == 5000.0


def test_include_base_values_widens_ranges_and_choices_and_refuses_impossible_ones():
    space = S.SearchSpace("x", "x.yaml", (S.Param("a", "float", 1.0, 2.0, log=True),
                                          S.Param("b", "categorical", choices=("gd", "cg")),
                                          S.Param("c", "int", 1.0, 5.0)))
    base = {"a": 0.5, "b": "auto", "c": 9.0}
    wide = S.include_base_values(space, base.get)
    assert wide.params[0].low == 0.5 and wide.params[0].high == 2.0
    assert wide.params[1].choices == ("gd", "cg", "auto") and wide.params[2].high == 9.0
    assert len(wide.notes) == 3
    assert S.include_base_values(space, {"a": 1.5, "b": "gd", "c": 2}.get) == space   # inside: unchanged
    with pytest.raises(S.SpaceError, match="cannot lie in the range"):
        S.include_base_values(space, {"a": -1.0}.get)
    with pytest.raises(S.SpaceError, match="cannot lie in the range"):
        S.include_base_values(space, {"c": 2.5}.get)


def test_a_stored_value_no_float_holds_is_refused_not_a_crash():
    space = S.SearchSpace("x", "x.yaml", (S.Param("k2", "float", 1.0, 1000.0, log=True),))
    problems = S.trial_problems({"k2": 10 ** 400}, {"k2": S.distribution(space.params[0])}, space)
    assert problems == [f"'k2' = {10 ** 400!r} is outside the space ({space.params[0].describe()})"]
