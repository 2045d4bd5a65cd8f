"""The request of ``lmaps-bench compare`` and its test runs: the tuned configs (tuned here or given with
``--configs``), one Hydra multirun of the ``lmaps`` app per task over them (:func:`launch`), test folders of an
earlier tuning moved aside (:func:`replace_stale_tests`), and the test entries read back, checked against the tuned
configs' hashes (:func:`current_entries`). :mod:`lmaps_plugin.bench.compare` runs the stages; the budget stages
(:mod:`lmaps_plugin.bench.matched`) launch their variants through :func:`launch` too.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from ..app import results as R
from ..app.build import experiment_dir, run_config_hash
from ..app.compose import compose_app
from .aggregate import collect
from .sweep import SweepRequest, runnable_problems, write_manifest
from .tune.outputs import TuneResult
from .tune.request import TuneError, TuneRequest

@dataclass
class CompareRequest:
    tasks: list[str]
    algorithms: list[str]
    test_ids: list[int]
    seeds: list[int] = field(default_factory=lambda: [0])
    exp_dir: str = "results/compare"
    jobs: int = 2
    launcher: str = "joblib"
    shard_size: int = 4
    configs: str | None = None          # algorithm option prefix of given tuned configs (no tuning)
    match: str | None = None            # "time" or "nfe": the cost-matched stage
    pareto: bool = False
    pareto_scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    pareto_ensembles: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    match_rounds: int = 2               # measure-then-scale rounds of the matched LMAPS runs

    @property
    def tune_dir(self) -> Path:
        return Path(self.exp_dir) / "tune"

    @property
    def config_dir(self) -> Path:
        return self.tune_dir / "configs"

    @property
    def test_dir(self) -> Path:
        return Path(self.exp_dir) / "test"

    @property
    def budget_dir(self) -> Path:
        """Results of the cost-matched and Pareto runs (every variant of a tuned config)."""
        return Path(self.exp_dir) / "budget"


def check_disjoint(val_ids: Sequence[int], test_ids: Sequence[int], val_split: str) -> None:
    """Validation and test images must differ: different splits, or disjoint ids of one split."""
    if val_split == "test":
        raise TuneError("--val-split test would tune on test images; use val (or none with disjoint ids)")
    if val_split == "none":
        shared = sorted(set(val_ids) & set(test_ids))
        if shared:
            raise TuneError(f"--val-split none: val ids and test ids overlap ({shared}); tuning on test images "
                            f"is not a fair comparison")


def check_test_runs(spec: CompareRequest, template: TuneRequest) -> None:
    """Refuse, before any tuning, test runs that would fail on every sample: test ids past the end of the test
    split, a CUDA device without CUDA where the test jobs run on this machine (:class:`TuneError`)."""
    problems: list[str] = []
    for task in spec.tasks:
        base = [f"problem={task}", f"algorithm={spec.algorithms[0]}", *([f"prior={template.prior}"] if template.prior
                                                                          else []), *template.overrides]
        try:
            cfg = compose_app(base)
        except Exception:  # noqa: BLE001 - the tuning stage names composition errors
            continue
        problems += [p for p in runnable_problems(cfg, spec.test_ids, "--test-ids",
                                                  local=spec.launcher != "submitit_slurm") if p not in problems]
    if problems:
        raise TuneError("; ".join(problems))


def packaged_config_dir() -> Path:
    from .. import configs
    return Path(list(configs.__path__)[0])


def tuned_on_own_data_root(provenance: dict) -> bool:
    """A tuned config whose study pointed ``problem.data.root`` at a folder of its own (validation images kept apart
    from the test images, e.g. InverseBench's ``*-val`` folders): its ids are not ids of the test data."""
    return any(str(o).lstrip("+").startswith("problem.data.root=") for o in provenance.get("overrides") or [])


def given_configs(spec: CompareRequest) -> dict[tuple[str, str], TuneResult]:
    """``--configs PREFIX``: the tuned configs ``<PREFIX>/<task>/<algorithm>.yaml`` (in this comparison's config
    folder or the package's ``configs/algorithm/``) stand in for the tuning stage. Raises :class:`TuneError`
    naming every missing file, or a config tuned on the test images (its ``tuned`` block's ``val_split`` and
    ``val_ids`` against ``--test-ids``, as :func:`check_disjoint` checks a tuning stage; not for a study that
    read its own data folder, :func:`tuned_on_own_data_root`)."""
    out, missing = {}, []
    for task in spec.tasks:
        for algorithm in spec.algorithms:
            option = f"{spec.configs}/{task}/{algorithm}"
            found = [d / "algorithm" / f"{option}.yaml" for d in (spec.config_dir, packaged_config_dir())]
            path = next((f for f in found if f.is_file()), None)
            if path is None:
                missing.append(f"{option}.yaml")
                continue
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            prov = doc.get("tuned") or {}
            if prov.get("val_split") is not None and not tuned_on_own_data_root(prov):
                try:
                    check_disjoint([int(i) for i in prov.get("val_ids") or []], spec.test_ids, str(prov["val_split"]))
                except TuneError as exc:
                    raise TuneError(f"--configs {spec.configs}: {path} was tuned on test images: {exc}") from None
            out[(task, algorithm)] = TuneResult(study_dir=path.parent, tuned_config=path, config_dir=spec.config_dir,
                                                option=option, best_value=prov.get("best_value"),
                                                best_params=dict(prov.get("params") or {}), counts={},
                                                finished=int(prov.get("trials_counted") or 0))
    if missing:
        raise TuneError(f"--configs {spec.configs}: no config {', '.join(missing)} (looked in "
                        f"{spec.config_dir / 'algorithm'} and {packaged_config_dir() / 'algorithm'})")
    return out


def test_names(spec: CompareRequest, task: str, options: list[str], prior: str | None,
               overrides: list[str], test_dir: Path | None = None) -> dict:
    """Names of the tuned configs and the task (as ``benchmark.json`` records them), from the composed configs;
    ``runs`` holds each tuned config's identity and the config hash its test records must carry, ``folders``
    its results folder per test seed."""
    names: dict = {"algorithms": {}, "tasks": {}, "runs": [], "folders": {}}
    base = [f"problem={task}", *([f"prior={prior}"] if prior else []), *overrides,
            f"exp_dir={test_dir or spec.test_dir}"]
    for option in options:
        cfg = compose_app([*base, f"algorithm={option}"], config_dir=spec.config_dir)
        names["algorithms"][option] = str(cfg.algorithm.name)
        names["tasks"][task] = str(cfg.problem.name)
        names["dataset"] = str(cfg.problem.data.name)
        names["prior"] = str(cfg.prior.name)
        names["runs"].append({"task": str(cfg.problem.name), "algorithm": str(cfg.algorithm.name),
                              "prior": str(cfg.prior.name), "config_hash": run_config_hash(cfg)})
        folders = []
        for seed in spec.seeds:
            cfg.seed = int(seed)
            folders.append(experiment_dir(cfg))
        names["folders"][option] = folders
    return names


def replace_stale_tests(names: dict) -> list[Path]:
    """Move every test folder of a tuned config's (task, algorithm, prior) that holds records of another config
    hash (an earlier tuning of the same method) into ``.replaced/<UTC time>-<folder>`` next to it, so the re-tuned
    config runs its test samples afresh and old results are never shown beside it. Returns the new places."""
    moved = []
    for run, option in zip(names["runs"], names["algorithms"]):
        identity = (run["task"], run["algorithm"], run["prior"])
        parents = {folder.parent for folder in names["folders"][option]}
        for folder in sorted(p for parent in parents if parent.is_dir() for p in parent.iterdir()
                             if p.is_dir() and not p.name.startswith(".")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                records = R.read_records(folder)
            stale = {r.get("config_hash") for r in records.values()
                     if (r.get("task"), r.get("algorithm"), r.get("prior")) == identity} - {run["config_hash"], None}
            if not stale:
                continue
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            target = folder.parent / ".replaced" / f"{stamp}-{folder.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(target))
            print(f"lmaps-bench compare: {folder} held test results of an earlier tuning of {run['algorithm']} "
                  f"(config hash {', '.join(sorted(h[:12] for h in stale))}, now {run['config_hash'][:12]}); "
                  f"moved to {target}", flush=True)
            moved.append(target)
    return moved


def launch(spec: CompareRequest, template: TuneRequest, task: str, options: list[str], test_dir: Path,
           extra: Sequence[str] = ()) -> tuple[int, list[dict]]:
    """One Hydra multirun of the lmaps app over ``options`` (algorithm configs on ``spec.config_dir``'s search
    path) and the test ids into ``test_dir``, with ``extra`` app overrides (e.g. ``num_samples=4``); test folders
    of earlier configs of the same names are moved aside first (:func:`replace_stale_tests`). Returns the exit
    status and the configs' identities and config hashes (``runs`` of :func:`test_names`)."""
    request = SweepRequest(tasks=[task], algorithms=list(options), seeds=list(spec.seeds),
                           ids=list(spec.test_ids), exp_dir=str(test_dir),
                           shard_size=spec.shard_size, jobs=spec.jobs, launcher=spec.launcher,
                           prior=template.prior, threads=template.threads, figures=False,
                           extra=[*template.overrides, *extra, *template.launcher_overrides])
    command = request.command()
    spec.config_dir.mkdir(parents=True, exist_ok=True)
    command = [*command[:3], f"--config-dir={spec.config_dir.resolve()}", *command[3:]]
    test_dir.mkdir(parents=True, exist_ok=True)
    names = test_names(spec, task, list(options), template.prior, [*template.overrides, *extra], test_dir)
    replace_stale_tests(names)
    write_manifest(request, {k: v for k, v in names.items() if k != "folders"})
    print("lmaps-bench compare: " + " ".join(command[3:]), flush=True)
    code = subprocess.call(command, env={**os.environ, "TQDM_DISABLE": "1"})  # no progress bar per image
    if code != 0:
        print(f"lmaps-bench compare: the runs of {task} ({', '.join(options)}) exited with status {code}",
              file=sys.stderr)
    return code, names["runs"]


class StaleResultsError(RuntimeError):
    """Test records of a tuned config's (task, algorithm, prior) carry another config hash than the tuned config."""


def current_entries(spec: CompareRequest, runs: list[dict], manifest: dict | None,
                    test_dir: Path | None = None) -> list:
    """The test entries of this comparison: one per tuned config (``runs``), holding only the requested (seed,
    id) samples; every record must carry the tuned config's hash (:class:`StaleResultsError` otherwise)."""
    request = {**(manifest or {}), "seeds": list(spec.seeds), "ids": list(spec.test_ids)}
    expected = {(r["task"], r["algorithm"], r["prior"]): r["config_hash"] for r in runs}
    wanted = {(s, i) for s in spec.seeds for i in spec.test_ids}
    entries = []
    for e in collect(test_dir or spec.test_dir, request):
        want = expected.get((e.task, e.algorithm, e.prior))
        if want is None:
            continue   # another method or prior in the same folder: not part of this comparison
        if e.config_hash is not None and e.config_hash != want:
            raise StaleResultsError(f"test results of {e.task} / {e.algorithm} carry config hash "
                                    f"{e.config_hash[:12]}, the tuned config's is {want[:12]}: they are not this "
                                    f"config's results (no table written; run the same command again)")
        e.samples = {k: v for k, v in e.samples.items() if k in wanted}
        e.failed = {k: v for k, v in e.failed.items() if k in wanted}
        e.expected = e.expected & wanted
        e.config_hash = want
        entries.append(e)
    return entries


__all__ = ["CompareRequest", "check_disjoint", "check_test_runs", "packaged_config_dir", "given_configs",
           "test_names", "replace_stale_tests", "launch", "StaleResultsError", "current_entries"]
