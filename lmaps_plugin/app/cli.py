"""The ``lmaps`` command: a Hydra app that reconstructs built-in test images with a diffusion prior.

    lmaps                                   # embedded default: random inpainting of 4 faces, shipped faces prior
    lmaps problem=sr4 num_images=8          # another task (configs/problem/*.yaml)
    lmaps prior=gmm                         # the exact Gaussian-mixture prior fitted on the faces train split
    lmaps algorithm=lmaps_sr4 problem=sr4   # a Table-4 row of the paper (N=200, K=100: slower)
    lmaps algorithm=ib_daps                 # an InverseBench peer (needs INVERSEBENCH_ROOT)
    lmaps num_samples=8                     # an ensemble: adds ensemble_psnr, coverage_90, ... (README "Ensembles")
    lmaps -m problem=sr4,inpaint_random seed=0,1 hydra/launcher=joblib   # a sweep (see lmaps-bench)

Config groups are InverseBench's (``problem``, ``algorithm``) plus ``prior``; the primary config is
``configs/config.yaml``. Results go to ``{exp_dir}/{problem.name}/{algorithm.name}/{exp_name}/`` (InverseBench's
``{problem.exp_dir}/{algorithm.name}/{exp_name}``): ``result_{id}.pt`` (InverseBench layout), ``result_{id}.json``,
``metrics.json``, ``metrics.csv``, ``figure.png`` and, for LMAPS, ``trajectory.png``. A rerun skips finished
samples (``resume=true``); ``overwrite=true`` redoes the requested ones and moves another configuration's results
aside (into the folder's ``.replaced/``).

The configuration is checked against one schema before any work (:mod:`lmaps_plugin.app.schema`); the folder is
locked so that concurrent runs never mix configurations (:mod:`lmaps_plugin.app.folder`). Exit codes: 0 all
requested samples finished, 1 some failed (named on stderr), 2 the configuration or the folder was refused.
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import math
import os
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from filelock import Timeout
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..ensemble import ENSEMBLE_KEYS
from . import results as R
from . import schema
from .folder import FolderBusyError, RunFolder
from .figures import TrajectoryRecorder, save_result_grid, save_trajectory_strip, trajectory_steps
from ..evaluation.metrics import ENSEMBLE_DEFINITIONS, ENSEMBLE_UNITS
from ..inversebench import stand_ins

CONFIG_PATH = "pkg://lmaps_plugin.configs"
CONFIG_NAME = "config"

#: top-level keys that do not change what a sample's result is (left out of the config hash)
RUN_ONLY_KEYS = ("seed", "ids", "num_images", "exp_dir", "exp_name", "device", "threads", "resume", "overwrite",
                 "verbose", "figure", "hydra")


def inversebench_configs_searchpath() -> str:
    """Search-path entry for InverseBench's ``configs/`` when ``INVERSEBENCH_ROOT`` is set, else our own configs
    again (a harmless duplicate: Hydra warns about search paths that do not exist)."""
    root = os.environ.get("INVERSEBENCH_ROOT")
    if root and (Path(root).expanduser() / "configs").is_dir():
        return f"file://{Path(root).expanduser().resolve() / 'configs'}"
    return CONFIG_PATH


# resolver used by configs/config.yaml's hydra.searchpath; registered on import, before Hydra composes the config
OmegaConf.register_new_resolver("lmaps_inversebench_configs", inversebench_configs_searchpath, replace=True)


# --------------------------------------------------------------------------------------------- building
def resolve_device(name: str) -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise schema.ConfigError([f"device={name!r} is not allowed: CUDA is not available on this machine "
                                  f"(allowed here: cpu or auto)"])
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise schema.ConfigError([f"device={name!r} is not allowed: this machine has {torch.cuda.device_count()} "
                                  f"CUDA device(s) (allowed: cuda:0 to cuda:{torch.cuda.device_count() - 1}, cpu "
                                  f"or auto)"])
    return device


def experiment_dir(cfg: DictConfig) -> Path:
    """``{problem.exp_dir}/{algorithm.name}/{exp_name}`` (InverseBench's layout)."""
    for key in ("problem.exp_dir", "algorithm.name", "exp_name"):
        if OmegaConf.select(cfg, key) in (None, ""):
            raise ValueError(f"config key {key} must be set (it names the results folder)")
    return Path(str(cfg.problem.exp_dir)) / str(cfg.algorithm.name) / str(cfg.exp_name)


#: errno values meaning "this path cannot hold results" (the folder is refused, exit 2); any other OSError while
#: writing (a full disk, an I/O error) is a failed run (exit 1)
FOLDER_REFUSED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                                   errno.EISDIR})


def prepare_results_folder(exp_dir: Path, cfg: DictConfig) -> None:
    """Create the results folder and make sure a file can be written in it; a path that cannot hold results
    (``exp_dir`` is a file or under one, a read-only folder) is a :class:`~lmaps_plugin.app.schema.ConfigError`
    naming ``exp_dir``."""
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=exp_dir, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        if exc.errno not in FOLDER_REFUSED_ERRNOS:
            raise
        raise schema.ConfigError([f"exp_dir={str(cfg.exp_dir)!r} is not allowed: the results folder {exp_dir} "
                                  f"cannot be created or written ({os_error_text(exc)}); allowed: a writable "
                                  f"folder (or a path where one can be made)"]) from exc


def os_error_text(exc: OSError) -> str:
    """``'<strerror>: <file>'`` of an OSError in one line (its errno's text when it carries no message)."""
    text = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return f"{text}: {exc.filename}" if exc.filename else text


def _ensure_importable(target: str, what: str) -> None:
    """Import InverseBench's checkout when ``target`` lives there (e.g. ``algo.dps.DPS`` from its configs)."""
    top = target.split(".", 1)[0]
    if importlib.util.find_spec(top) is None:
        from ..inversebench import require_inversebench

        require_inversebench(f"{what} {target!r}")


def build_prior(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    if "net" not in cfg.prior:
        raise ValueError("the prior config must have a 'net' entry with a _target_ (see configs/prior/*.yaml)")
    net = instantiate(cfg.prior.net)
    net = net.to(device).eval()
    for attr in ("img_channels", "img_resolution"):
        if not hasattr(net, attr):
            raise TypeError(f"prior {cfg.prior.get('name')!r}: the network has no {attr!r} attribute (an EDM-style "
                            f"denoiser net(x, sigma) with img_channels/img_resolution is required)")
    return net


def build_dataset(cfg: DictConfig):
    """The problem's test images that ``ids`` / ``num_images`` select. A selection the data set cannot give (an id
    beyond its test split, more images than it has) is a :class:`~lmaps_plugin.app.schema.ConfigError` naming that
    key, before any results folder is touched."""
    kwargs = {}
    if cfg.get("ids") is not None:
        ids = cfg.ids
        kwargs["id_list"] = OmegaConf.to_container(ids) if OmegaConf.is_config(ids) else str(ids)
        key = f"ids={cfg.ids!r}" if not OmegaConf.is_config(ids) else f"ids={kwargs['id_list']!r}"
    else:
        key = f"num_images={cfg.get('num_images')!r}"
    try:
        return instantiate(cfg.problem.data, **kwargs)
    except REFUSALS as exc:
        refused = _refused("problem.data", exc)
        cause = _root_cause(exc)
        if isinstance(cause, ValueError):  # the data set's word on the selection (e.g. an id beyond the split)
            refused = schema.ConfigError([f"{key} is not allowed: {cause}"])
        raise refused from exc


def check_compatible(net, dataset, cfg: DictConfig) -> None:
    """The prior must produce images of the data's shape."""
    image = dataset[0]["target"]
    res = net.img_resolution
    res = (res, res) if isinstance(res, int) else tuple(res)
    want = (int(net.img_channels), *res)
    if tuple(image.shape) != want:
        raise ValueError(
            f"prior {cfg.prior.get('name')!r} makes images of shape {want} (channels, height, width) but "
            f"problem.data gives {tuple(image.shape)}; set problem.data.channels/resolution to match the prior "
            f"(the app does so from prior.channels/prior.resolution unless overridden) or choose another prior")


def build_algorithm(cfg: DictConfig, net, forward_op):
    target = str(cfg.algorithm.method.get("_target_", ""))
    if not target:
        raise ValueError("algorithm.method must have a _target_ (see configs/algorithm/*.yaml)")
    _ensure_importable(target, "the algorithm")
    return instantiate(cfg.algorithm.method, forward_op=forward_op, net=net)


@dataclass
class Task:
    """The pieces of a run, built from the config before any results folder is touched."""
    device: torch.device
    forward_op: object
    net: torch.nn.Module
    algo: object
    evaluator: object


def _root_cause(exc: BaseException) -> BaseException:
    """The exception a class raised inside Hydra's ``instantiate`` (which wraps it)."""
    cause = exc
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        cause = cause.__cause__
    return cause


def _refused(key: str, exc: BaseException) -> schema.ConfigError:
    """A group's value that its class refuses (e.g. ``algorithm.method.lr=abc``), as a configuration error."""
    cause = _root_cause(exc)
    return schema.ConfigError([f"{key}: {type(cause).__name__}: {cause}"])


#: what a class raises for a value it refuses (or a missing file or package): a configuration error, exit 2
REFUSALS = (InstantiationException, ValueError, TypeError, FileNotFoundError, ImportError)


@contextmanager
def _refusals(key: str):
    try:
        yield
    except REFUSALS as exc:
        raise _refused(key, exc) from exc


def build_task(cfg: DictConfig, dataset, device: torch.device) -> Task:
    """Operator, prior, algorithm and evaluator of the run. A value one of them refuses (``problem.model.*``,
    ``prior.*``, ``algorithm.method.*``: a ``ValueError``/``TypeError`` from its class, a missing file or
    package) is a :class:`~lmaps_plugin.app.schema.ConfigError` naming the group, so the run exits with 2 before
    anything is written."""
    with _refusals("problem.model"):
        forward_op = instantiate(cfg.problem.model, device=device)
    with _refusals("prior"):
        net = build_prior(cfg, device)
        check_compatible(net, dataset, cfg)
    with _refusals("algorithm.method"):
        algo = build_algorithm(cfg, net, forward_op)
    with _refusals("problem.evaluator"):
        evaluator = instantiate(cfg.problem.evaluator, forward_op=forward_op)
    return Task(device, forward_op, net, algo, evaluator)


def run_config_hash(cfg: DictConfig) -> str:
    """Hash of what determines a sample's result: problem (minus paths and the id selection), algorithm, prior,
    num_samples. Seeds, ids, paths and run options are left out, so shards and seeds of one setting share it.

    Computed from validated, typed values: the config must pass :func:`lmaps_plugin.app.schema.validate`, and
    numbers count by value (``k2=100`` and ``k2=100.0`` are one setting, :func:`~lmaps_plugin.app.schema.canonical`).
    """
    options = schema.validate(cfg)
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in RUN_ONLY_KEYS:
        container.pop(key, None)
    problem = container.get("problem", {})
    problem.pop("exp_dir", None)
    for key in ("num_images", "id_list"):
        problem.get("data", {}).pop(key, None)
    container["num_samples"] = options.num_samples
    digests = prior_file_digests(container.get("prior"))
    if digests:  # only where the prior reads files: the hash of every other configuration stays what it was
        container["prior_file_sha256"] = digests
    return R.config_hash(schema.canonical(container))


def prior_file_digests(prior, prefix: str = "prior") -> dict[str, str]:
    """``{dotted key: SHA-256}`` of the files the prior group names under a ``path`` key (``prior.path``,
    ``prior.net.path``: a checkpoint): the same path holding another file is another configuration. Keys naming
    no existing file are left out (loading the prior refuses them)."""
    from ..priors.checkpoint import checkpoint_sha256

    out: dict[str, str] = {}
    if not isinstance(prior, dict):
        return out
    for key, value in prior.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(prior_file_digests(value, dotted))
        elif (key == "path" or str(key).endswith("_path")) and isinstance(value, str) and value \
                and os.path.isfile(value):
            out[dotted] = checkpoint_sha256(value)
    return out


def record_base(cfg: DictConfig, config_hash: str, unavailable: dict) -> dict:
    """What every sample record of this run shares (identity of the setting; read by ``lmaps-bench aggregate``)."""
    return {"config_hash": config_hash, "seed": int(cfg.seed), "task": str(cfg.problem.name),
            "algorithm": str(cfg.algorithm.name), "prior": str(cfg.prior.get("name", "")),
            "dataset": str(OmegaConf.select(cfg, "problem.data.name", default="")),
            "num_samples": int(cfg.num_samples), "unavailable": dict(unavailable)}


def sample_seed(seed: int, sample_id: int, purpose: str) -> int:
    """A seed that depends only on (run seed, sample id, purpose): shards reproduce an unsharded run."""
    digest = hashlib.sha256(f"{int(seed)}|{int(sample_id)}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# -------------------------------------------------------------------------------------------- one sample
@dataclass
class SampleOutcome:
    sample_id: int
    status: str                      # 'ok', 'skipped' (finished before), 'failed'
    metrics: dict = field(default_factory=dict)
    seconds: float | None = None
    reason: str | None = None
    solver: dict | None = None       # the algorithm's last_run_stats (LMAPS: CG residual, iterations, ...)


def _to_batch(data: dict, device: torch.device) -> dict:
    return {k: (v[None].to(device) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}


def _inference(algo, observation, num_samples: int, recorder: TrajectoryRecorder | None):
    from ..algorithm import LMAPS

    if recorder is not None and isinstance(algo, LMAPS):
        return algo.inference(observation, num_samples=num_samples, callback=recorder)
    return algo.inference(observation, num_samples=num_samples)


def solver_stats(algo) -> dict | None:
    """The algorithm's ``last_run_stats`` (a dict of numbers set by each ``inference`` call, e.g. LMAPS' CG
    residuals), as finite JSON numbers; None when the algorithm has none. Non-finite or non-numeric entries are
    left out with a warning naming them."""
    stats = getattr(algo, "last_run_stats", None)
    if not isinstance(stats, dict):
        return None
    out, dropped = {}, []
    for key, value in stats.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = value if isinstance(value, int) else float(value)
        else:
            dropped.append(f"{key}={value!r:.40}")
    if dropped:
        warnings.warn(f"solver statistics left out of the record (not finite numbers): {', '.join(dropped)}",
                      RuntimeWarning, stacklevel=2)
    return out


def split_metrics(metrics: dict) -> tuple[dict, dict]:
    """``(finite, non_finite)`` numeric metrics (floats); non-numeric entries are ignored."""
    finite, bad = {}, {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        (finite if math.isfinite(float(value)) else bad)[str(key)] = float(value)
    return finite, bad


def ensemble_keys(evaluator, result: dict) -> dict:
    """A saved result's ensemble keys: with M >= 2 ``recon`` samples, its evaluator's ``evaluate_ensemble``
    (:meth:`lmaps_plugin.evaluation.metrics.ImageEvaluator.evaluate_ensemble`); empty for M = 1 or an evaluator without one
    (see :func:`ensemble_unavailable`)."""
    ensemble = getattr(evaluator, "evaluate_ensemble", None)
    if callable(ensemble) and result["recon"].shape[0] >= 2:
        return dict(ensemble(result["recon"], result["target"]))
    return {}


def evaluate_result(evaluator, result: dict) -> dict:
    """A saved result's metrics: the evaluator's (means over the ``recon`` samples) and its :func:`ensemble_keys`."""
    metrics = dict(evaluator(pred=result["recon"], target=result["target"], observation=result["observation"]))
    return {**metrics, **ensemble_keys(evaluator, result)}


def ensemble_unavailable(evaluator, num_samples: int) -> dict:
    """``{key: 'unavailable: <reason>'}`` for the ensemble keys when ``num_samples >= 2`` but the task's evaluator
    cannot give them (no ``evaluate_ensemble``); empty otherwise."""
    if num_samples < 2 or callable(getattr(evaluator, "evaluate_ensemble", None)):
        return {}
    reason = (f"unavailable: the task's evaluator {type(evaluator).__name__} has no evaluate_ensemble (the ensemble "
              f"keys come from lmaps_plugin.evaluation.metrics.ImageEvaluator)")
    return {key: reason for key in ENSEMBLE_KEYS}


def needs_ensemble_keys(record: dict, evaluator) -> bool:
    """An ok record of an M >= 2 run written before the ensemble keys existed (they are added on resume)."""
    return (record.get("status") == "ok" and int(record.get("num_samples", 1)) >= 2
            and "ensemble_size" not in record.get("metrics", {})
            and callable(getattr(evaluator, "evaluate_ensemble", None)))


def run_sample(algo, forward_op, evaluator, data: dict, sample_id: int, cfg: DictConfig, exp_dir: Path,
               device: torch.device, base: dict, recorder: TrajectoryRecorder | None = None) -> SampleOutcome:
    """Measure, reconstruct, save (atomically, never NaN) and evaluate one sample; ``base`` is the common part of
    the sample records (:func:`record_base`)."""
    from ..local_map import LMAPSDivergenceError

    batch = _to_batch(data, device)
    torch.manual_seed(sample_seed(cfg.seed, sample_id, "observation"))
    observation = forward_op(batch)
    target = batch["target"]
    if isinstance(observation, torch.Tensor) and not bool(torch.isfinite(observation).all()):
        return _record_failure(exp_dir, sample_id, base, "non-finite observation: the forward operator gave NaN "
                               "or inf (check problem.model and the data); not run", 0.0)
    torch.manual_seed(sample_seed(cfg.seed, sample_id, "algorithm"))
    start = time.perf_counter()
    try:
        recon = _inference(algo, observation, int(cfg.num_samples), recorder).detach()
    except LMAPSDivergenceError as exc:
        return _record_failure(exp_dir, sample_id, base, f"diverged: {exc}", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    stats = solver_stats(algo)
    result = {"observation": observation.detach().cpu(), "recon": forward_op.unnormalize(recon).cpu(),
              "target": forward_op.unnormalize(target).cpu()}
    try:
        path = R.save_result(exp_dir, sample_id, **result, meta={
            "id": int(sample_id), "seed": int(cfg.seed), "seconds": seconds, "config_hash": base["config_hash"]})
    except R.NonFiniteResultError:
        return _record_failure(exp_dir, sample_id, base, "non-finite reconstruction (NaN or inf); not written",
                               seconds)
    metrics = evaluate_result(evaluator, result)
    extra = {"solver": stats} if stats is not None else {}
    return _record_result(exp_dir, sample_id, base, metrics, seconds, R.file_sha256(path), extra, "ok")


def _record_result(exp_dir: Path, sample_id: int, base: dict, metrics: dict, seconds, sha: str, extra: dict,
                   status: str) -> SampleOutcome:
    """Write the record of a saved result: ok, or failed when a metric is not finite (the ``.pt`` is kept)."""
    finite, bad = split_metrics(metrics)
    if bad:
        reason = (f"non-finite metric(s) {', '.join(f'{k}={v}' for k, v in bad.items())} (the reconstruction is "
                  f"kept in {R.result_path(exp_dir, sample_id).name})")
        return _record_failure(exp_dir, sample_id, base, reason, seconds)
    R.write_record(exp_dir, sample_id, {**base, "status": "ok", "metrics": finite, "seconds": seconds,
                                        "result_sha256": sha, **extra})
    return SampleOutcome(sample_id, status, finite, seconds, solver=extra.get("solver"))


def _record_failure(exp_dir: Path, sample_id: int, base: dict, reason: str, seconds: float) -> SampleOutcome:
    warnings.warn(f"sample {sample_id} failed: {reason}", RuntimeWarning, stacklevel=3)
    R.write_record(exp_dir, sample_id, {**base, "status": "failed", "reason": reason, "seconds": seconds})
    return SampleOutcome(sample_id, "failed", seconds=seconds, reason=reason)


def result_meta(exp_dir: Path, sample_id: int) -> dict | None:
    """The ``meta`` of a readable, finite ``result_{id}.pt`` (None when there is none)."""
    if not R.is_finished(exp_dir, sample_id):
        return None
    meta = R.load_result(R.result_path(exp_dir, sample_id)).get("meta")
    return meta if isinstance(meta, dict) else {}


def reevaluate(evaluator, exp_dir: Path, sample_id: int, base: dict) -> SampleOutcome:
    """Metrics of a finished ``result_{id}.pt`` of this setting that has no valid record (e.g. killed between the
    two writes)."""
    path = R.result_path(exp_dir, sample_id)
    result = R.load_result(path)
    metrics = evaluate_result(evaluator, result)
    seconds = (result.get("meta") or {}).get("seconds")
    return _record_result(exp_dir, sample_id, base, metrics, seconds, R.file_sha256(path), {}, "skipped")


def add_ensemble_keys(evaluator, exp_dir: Path, sample_id: int, record: dict, base: dict) -> SampleOutcome:
    """Rewrite a finished M >= 2 record of this setting written before the ensemble keys existed: the same
    metrics, seconds and solver statistics plus the ensemble keys of its (verified) ``.pt``."""
    ensemble = ensemble_keys(evaluator, R.load_result(R.result_path(exp_dir, sample_id)))
    extra = {"solver": record["solver"]} if isinstance(record.get("solver"), dict) else {}
    return _record_result(exp_dir, sample_id, base, {**record["metrics"], **ensemble}, record.get("seconds"),
                          record["result_sha256"], extra, "skipped")


# ------------------------------------------------------------------------------------------------- a run
@dataclass
class RunSummary:
    exp_dir: Path
    outcomes: list[SampleOutcome]
    stats: dict
    unavailable: dict
    metrics_json: Path
    metrics_csv: Path
    figure: Path | None
    trajectory: Path | None
    seconds: float

    @property
    def failed(self) -> list[SampleOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class SamplesFailedError(RuntimeError):
    """Some requested samples failed (raised in Hydra multirun jobs, so that the sweep reports them)."""


def failure_line(summary: RunSummary) -> str:
    """``'lmaps: 2 of 4 requested sample(s) failed: 1 (diverged: ...); 3 (...)'``."""
    parts = "; ".join(f"{o.sample_id} ({(o.reason or 'failed')[:160]})" for o in summary.failed)
    return (f"lmaps: {len(summary.failed)} of {len(summary.outcomes)} requested sample(s) failed: {parts}. "
            f"Their records say why; a rerun retries them.")


#: result files that describe the folder as a whole (moved aside with an overwritten configuration)
FOLDER_FILES = (R.METRICS_JSON, R.METRICS_CSV, "figure.png", "trajectory.png", "config.yaml")


def _foreign_ids(exp_dir: Path, config_hash: str, seed: int) -> list[int]:
    """Ids whose result files in ``exp_dir`` do not belong to this setting (another config hash or seed, an invalid
    record without a result of ours, or a ``.pt`` of unknown origin)."""
    out = []
    for sample_id in sorted(set(R.result_ids(exp_dir, "pt")) | set(R.result_ids(exp_dir, "json"))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = R.read_record(R.record_path(exp_dir, sample_id), sample_id)
            meta = result_meta(exp_dir, sample_id) if R.result_path(exp_dir, sample_id).exists() else None
        ours_record = record is not None and R.same_setting(record, config_hash, seed)
        ours_result = meta is None or (meta.get("config_hash") == config_hash and meta.get("seed") == seed)
        if not (ours_record and ours_result) and not (record is None and meta is not None and ours_result):
            out.append(sample_id)
    return out


def open_folder(folder: RunFolder, cfg: DictConfig, options: schema.RunOptions, ids: list[int]) -> list[int]:
    """A run's start in its folder (under the folder lock): refuse a live run of another setting, move another
    configuration's results aside (``overwrite=true``) or refuse to mix with them, remove temporary files left by
    killed writers, register, and return every id requested in the folder by runs of this setting."""
    exp_dir = folder.exp_dir
    live = folder.live_runs()
    folder.refuse_other_settings(live)
    reset = False
    if options.overwrite:
        foreign = _foreign_ids(exp_dir, folder.config_hash, folder.seed)
        state = folder.read_state()
        if foreign or (state and (state.get("config_hash"), state.get("seed")) != (folder.config_hash, folder.seed)):
            names = [f"result_{i}.{ext}" for i in foreign for ext in ("pt", "json")] + list(FOLDER_FILES)
            moved = folder.move_aside(names, label="replaced")
            reset = True
            if moved is not None:
                _say(cfg, f"lmaps: overwrite=true: moved {len(foreign)} sample(s) of another configuration and the "
                          f"folder's summaries to {moved}")
    else:
        R.check_config(R.read_records(exp_dir), folder.config_hash, exp_dir, seed=folder.seed)
    for path in folder.remove_stale_temp_files(live):
        _say(cfg, f"lmaps: removed {path.name}, left by a writer that was killed")
    folder.register(ids)
    requested = folder.requested_ids(ids, reset=reset)
    R.atomic_write_text(exp_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    return requested


def folder_records(exp_dir: Path, config_hash: str, seed: int) -> dict[int, dict]:
    """Valid records of this setting; an ok one counts only when its ``.pt`` matches it (SHA-256)."""
    out = {}
    for sample_id, record in R.read_records(exp_dir).items():
        if not R.same_setting(record, config_hash, seed):
            continue
        if record["status"] == "ok" and not R.verified(exp_dir, sample_id, record):
            continue
        out[sample_id] = record
    return out


def metric_backend_of(evaluator) -> str:
    """The implementation behind an evaluator's metrics: its class's dotted path, or, for InverseBench's own
    evaluators, the PSNR/SSIM package they compute with (piq or our stand-in)."""
    cls = type(evaluator)
    if cls.__module__.startswith("lmaps_plugin"):
        return f"{cls.__module__}.{cls.__qualname__}"
    return stand_ins.metric_backend()


def write_folder_metrics(folder: RunFolder, info: dict, unavailable: dict, metric_backend: str | None = None
                         ) -> tuple[Path, Path]:
    """``metrics.json`` / ``metrics.csv`` of the folder (call under the folder lock): every record of this setting,
    against every id requested in the folder (so an interrupted shard's samples show as missing)."""
    records = folder_records(folder.exp_dir, folder.config_hash, folder.seed)
    requested = folder.read_state().get("requested") or []
    merged = dict(unavailable)
    for record in records.values():
        for name, reason in (record.get("unavailable") or {}).items():
            merged.setdefault(name, reason)
    ok_names = {k for r in records.values() if r["status"] == "ok" for k in r["metrics"]}
    merged = {k: v for k, v in merged.items() if k not in ok_names}
    return R.write_metrics(folder.exp_dir, records, expected_ids=requested, unavailable=merged, info=info,
                           metric_backend=metric_backend)


def run(cfg: DictConfig) -> RunSummary:
    """Run the configured task, algorithm and prior over the selected images; write results and figures.

    The configuration is validated first (:func:`lmaps_plugin.app.schema.validate`: a :class:`ConfigError` before
    any work). The results folder is shared safely with concurrent runs (:mod:`lmaps_plugin.app.folder`): a run of
    another configuration is refused while one works there; runs of the same configuration split the samples."""
    start = time.perf_counter()
    options = schema.validate(cfg)
    config_hash = run_config_hash(cfg)
    torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    exp_dir = experiment_dir(cfg)
    dataset = build_dataset(cfg)
    ids = [int(i) for i in dataset.id_list]
    task = build_task(cfg, dataset, device)         # refuses bad group values before any folder is touched
    prepare_results_folder(exp_dir, cfg)
    info = {k: v for k, v in record_base(cfg, config_hash, {}).items() if k != "unavailable"}
    if options.num_samples >= 2:
        info["ensemble"] = {"size": options.num_samples, "units": ENSEMBLE_UNITS, "keys": dict(ENSEMBLE_DEFINITIONS)}
    folder = RunFolder(exp_dir, config_hash, options.seed)
    with folder.mutex():
        try:
            open_folder(folder, cfg, options, ids)
            write_folder_metrics(folder, info, {}, metric_backend_of(task.evaluator))
        except BaseException:
            folder.unregister()
            raise
    try:
        return _run_samples(cfg, options, folder, dataset, ids, task, info, start)
    finally:
        folder.unregister()


def _run_samples(cfg: DictConfig, options: schema.RunOptions, folder: RunFolder, dataset, ids: list[int],
                 task: "Task", info: dict, start: float) -> RunSummary:
    exp_dir = folder.exp_dir
    device, forward_op, net, algo, evaluator = task.device, task.forward_op, task.net, task.algo, task.evaluator
    unavailable = {**(getattr(evaluator, "unavailable", {}) or {}),
                   **ensemble_unavailable(evaluator, options.num_samples)}
    base = record_base(cfg, folder.config_hash, unavailable)

    recorder = None
    if options.figure.enabled and options.figure.trajectory and hasattr(algo, "num_steps"):
        recorder = TrajectoryRecorder(trajectory_steps(int(algo.num_steps), options.figure.trajectory_frames))
    trajectory_sample: dict = {}
    _say(cfg, f"lmaps: {cfg.algorithm.name} on {cfg.problem.name} ({len(ids)} image(s), prior "
              f"{cfg.prior.get('name')}, seed {cfg.seed}) -> {exp_dir}")

    def process(index: int, sample_id: int) -> SampleOutcome:
        """One sample, under its lock: skip it when finished (fresh look: another run may just have done it). A
        record that is present but invalid, or does not match its ``.pt``, is redone from scratch."""
        if options.resume and not options.overwrite:
            record = R.read_record(R.record_path(exp_dir, sample_id), sample_id)
            if record is not None and record["status"] == "ok" and R.same_setting(record, folder.config_hash,
                                                                                   folder.seed) \
                    and R.verified(exp_dir, sample_id, record):
                if needs_ensemble_keys(record, evaluator):  # finished before the ensemble keys existed
                    return add_ensemble_keys(evaluator, exp_dir, sample_id, record, base)
                return SampleOutcome(sample_id, "skipped", record["metrics"], record.get("seconds"))
            meta = result_meta(exp_dir, sample_id) if not R.record_path(exp_dir, sample_id).exists() else None
            if meta is not None and meta.get("config_hash") == folder.config_hash and meta.get("seed") == folder.seed:
                return reevaluate(evaluator, exp_dir, sample_id, base)  # killed between the .pt and its record
        use_recorder = recorder if (recorder is not None and not trajectory_sample) else None
        outcome = run_sample(algo, forward_op, evaluator, dataset[index], sample_id, cfg, exp_dir, device, base,
                             use_recorder)
        if use_recorder is not None:
            if outcome.status == "ok" and use_recorder.frames:
                trajectory_sample.update(id=sample_id, target=dataset[index]["target"])
            else:
                use_recorder.frames.clear()
        return outcome

    outcomes: dict[int, SampleOutcome] = {}
    deferred = []
    for index, sample_id in enumerate(ids):
        lock = folder.sample_lock(sample_id)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            deferred.append((index, sample_id))
            _say(cfg, f"  sample {sample_id} is in progress in another run; coming back to it at the end")
            continue
        try:
            outcomes[sample_id] = process(index, sample_id)
        finally:
            lock.release()
        _say(cfg, _progress_line(outcomes[sample_id], len(outcomes), len(ids)))
    for index, sample_id in deferred:
        _say(cfg, f"  waiting for sample {sample_id} (in progress in another run)")
        with folder.sample_lock(sample_id):
            outcomes[sample_id] = process(index, sample_id)
        _say(cfg, _progress_line(outcomes[sample_id], len(outcomes), len(ids)))
    if hasattr(forward_op, "close"):
        forward_op.close()
    ordered = [outcomes[i] for i in ids]

    with folder.mutex():
        json_path, csv_path = write_folder_metrics(folder, info, unavailable, metric_backend_of(evaluator))
    figure = trajectory = None
    if options.figure.enabled:
        done = [o.sample_id for o in ordered if o.status != "failed"]
        figure = _result_figure(exp_dir, done, forward_op, cfg, options.figure.max_images)
        if trajectory_sample:
            trajectory = save_trajectory_strip(exp_dir / "trajectory.png", recorder.frames,
                                               target=trajectory_sample["target"],
                                               title=f"{cfg.algorithm.name} trajectory, sample "
                                                     f"{trajectory_sample['id']}")
    stats = R.summarize({o.sample_id: o.metrics for o in ordered if o.status != "failed"})
    summary = RunSummary(exp_dir, ordered, stats, unavailable, json_path, csv_path, figure, trajectory,
                         time.perf_counter() - start)
    print(format_report(summary, cfg))
    return summary


def _say(cfg: DictConfig, text: str) -> None:
    if cfg.verbose:
        print(text, flush=True)


def _progress_line(outcome: SampleOutcome, done: int, total: int) -> str:
    if outcome.status == "failed":
        return f"  [{done}/{total}] sample {outcome.sample_id}: FAILED ({outcome.reason})"
    m = outcome.metrics
    cg = ""
    if outcome.solver and "cg_relative_residual_max" in outcome.solver:
        cg = (f", CG relative residual <= {outcome.solver['cg_relative_residual_max']:.2g} "
              f"({outcome.solver.get('cg_iterations_mean', 0):.1f} iterations/step)")
    ensemble = ""
    if "ensemble_psnr" in m:
        ensemble = (f"; mean of {int(m['ensemble_size'])}: PSNR {m['ensemble_psnr']:.2f} dB, 90% coverage "
                    f"{m['coverage_90']:.2f}")
    seconds = f"{outcome.seconds:.1f} s" if outcome.seconds is not None else "- s"
    return (f"  [{done}/{total}] sample {outcome.sample_id}: PSNR {m.get('psnr', float('nan')):.2f} dB, "
            f"SSIM {m.get('ssim', float('nan')):.3f}{ensemble} ({seconds}){cg}")


def _result_figure(exp_dir: Path, ids: list[int], forward_op, cfg: DictConfig, max_images: int) -> Path | None:
    samples = []
    for sample_id in ids:
        if len(samples) >= max_images:
            break
        if R.result_path(exp_dir, sample_id).is_file():
            data = R.load_result(R.result_path(exp_dir, sample_id))
            samples.append({"id": sample_id, "observation": data["observation"],
                            "recon": forward_op.normalize(data["recon"]),
                            "target": forward_op.normalize(data["target"])})
    if not samples:
        return None
    title = f"{cfg.algorithm.name} on {cfg.problem.name} (prior {cfg.prior.get('name')}, seed {cfg.seed})"
    return save_result_grid(exp_dir / "figure.png", samples, forward_op=forward_op, title=title)


# ------------------------------------------------------------------------------------------------ report
COLUMNS = (("meas_psnr", "meas. PSNR", "{:.2f}"), ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
           ("lpips", "LPIPS", "{:.4f}"), ("misfit_rms", "misfit", "{:.4f}"),
           ("ensemble_psnr", "ens. PSNR", "{:.2f}"), ("coverage_90", "cov. 90%", "{:.3f}"),
           ("z2_mean", "z²", "{:.2f}"))


def format_report(summary: RunSummary, cfg: DictConfig | None = None) -> str:
    """The metrics table printed at the end of a run: one row per sample, then mean ± std, then the paths."""
    present = [c for c in COLUMNS if c[0] in summary.stats]
    header = ["id", *(c[1] for c in present), "seconds", "status"]
    rows = []
    for o in summary.outcomes:
        cells = [str(o.sample_id)]
        cells += [(fmt.format(o.metrics[key]) if key in o.metrics else "-") for key, _, fmt in present]
        cells += [f"{o.seconds:.1f}" if o.seconds is not None else "-", o.status]
        rows.append(cells)
    mean_row = ["mean±std", *(f"{fmt.format(summary.stats[k]['mean'])}±{fmt.format(summary.stats[k]['std'])}"
                              for k, _, fmt in present), "", ""]
    rows.append(mean_row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows[:-1]),
           line(["-" * w for w in widths]), line(rows[-1])]
    if cfg is not None:
        out.insert(0, f"{cfg.algorithm.name} on {cfg.problem.name}, prior {cfg.prior.get('name')}, "
                      f"seed {cfg.seed}, noise sigma_y={OmegaConf.select(cfg, 'problem.model.sigma_noise')}")
    notes = ["meas. PSNR: the measurement shown as an image (upsampled / as is) vs ground truth; "
             "misfit: RMS data residual per measurement (about sigma_y at a noise-level fit)"]
    if "ensemble_psnr" in summary.stats or "coverage_90" in summary.stats:
        size = next((int(o.metrics["ensemble_size"]) for o in summary.outcomes if "ensemble_size" in o.metrics), "M")
        notes.append(f"ensemble of {size} samples per image: ens. PSNR = PSNR of their mean; cov. 90% = fraction of "
                     f"pixels inside the 90% predictive interval (0.90 when calibrated); z² = mean squared z-score "
                     f"(1 when calibrated, M >= 4); std_mean and the rest in metrics.json")
    notes += [f"{name}: {reason}" for name, reason in summary.unavailable.items()]
    failed = [o.sample_id for o in summary.outcomes if o.status == "failed"]
    if failed:
        notes.append(f"failed samples (not written; a rerun retries them): {failed}")
    out += notes
    out.append(f"results: {summary.exp_dir.resolve()}")
    out.append(f"metrics: {summary.metrics_json.resolve()} (and {summary.metrics_csv.name})")
    if summary.figure is not None:
        out.append(f"figure:  {summary.figure.resolve()}")
    if summary.trajectory is not None:
        out.append(f"trajectory: {summary.trajectory.resolve()}")
    out.append(f"wall time: {summary.seconds:.1f} s")
    return "\n".join(out)


# -------------------------------------------------------------------------------------------- entry point
#: exit codes of the ``lmaps`` command
EXIT_OK, EXIT_SAMPLES_FAILED, EXIT_USAGE = 0, 1, 2
#: errors that are the user's to fix: printed as one message, without a traceback (exit code 2)
USER_ERRORS = (schema.ConfigError, R.ConfigMismatchError, FolderBusyError)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    """Exit codes: 0 when every requested sample finished, 1 when any failed (a summary line names them) or the run
    stopped on an error writing its files (a full disk: one line names it), 2 for a configuration the schema refuses
    or a results folder that may not be used. In a Hydra multirun the job raises instead, so the sweep reports it
    and exits non-zero after the other jobs ran."""
    global _TASK_STARTED
    _TASK_STARTED = True
    try:
        summary = run(cfg)
    except USER_ERRORS as exc:
        if _in_multirun():
            raise
        print(f"lmaps: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        if _in_multirun():
            raise
        code = EXIT_USAGE if exc.errno in FOLDER_REFUSED_ERRNOS else EXIT_SAMPLES_FAILED
        print(f"lmaps: the run stopped: cannot write its files ({os_error_text(exc)}); finished samples are kept, "
              f"a rerun continues", file=sys.stderr, flush=True)
        sys.exit(code)
    if summary.failed:
        line = failure_line(summary)
        if _in_multirun():
            raise SamplesFailedError(line)
        print(line, file=sys.stderr, flush=True)
        sys.exit(EXIT_SAMPLES_FAILED)


#: set when Hydra hands the composed config to the app: errors before that are the configuration's
_TASK_STARTED = False


def _composition_errors() -> tuple[type[BaseException], ...]:
    """What Hydra raises when it cannot compose the configuration: its own errors (an unknown group option, an
    override it cannot parse), OmegaConf's (a missing key, a bad interpolation), a YAML syntax error, and an
    ``OSError`` making its run folder (``exp_dir`` under a file, a read-only folder)."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return HydraException, OmegaConfBaseException, yaml.YAMLError, OSError


@contextmanager
def _composition_refusals(prog: str):
    """While Hydra composes the configuration, an error of :func:`_composition_errors` is one line on stderr and
    exit code 2 (Hydra prints it, often with a traceback, and exits 1). Errors once the app runs are untouched."""
    from hydra._internal import utils as hydra_utils

    original = getattr(hydra_utils, "run_and_report", None)
    if original is None:  # another Hydra version: its own report stands
        yield
        return
    errors = _composition_errors()

    def run_and_report(func):
        try:
            return func()
        except errors as exc:
            if _TASK_STARTED:
                return original(lambda: _reraise(exc))
            text = " ".join(str(exc).split())
            print(f"{prog}: the configuration was refused ({type(exc).__name__}: {text[:600]})", file=sys.stderr,
                  flush=True)
            sys.exit(EXIT_USAGE)
        except Exception as exc:  # noqa: BLE001 - Hydra's own report, as before
            return original(lambda: _reraise(exc))

    from hydra._internal import hydra as hydra_internal

    original_run_job = getattr(hydra_internal, "run_job", None)

    def run_job(*args, **kwargs):
        """Hydra's single run: refuse a name that would put its run folder elsewhere before Hydra makes it."""
        problems = path_name_problems(kwargs.get("config"))
        if problems:
            print(f"{prog}: {schema.ConfigError(problems)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USAGE)
        return original_run_job(*args, **kwargs)

    hydra_utils.run_and_report = run_and_report
    if original_run_job is not None:
        hydra_internal.run_job = run_job
    try:
        yield
    finally:
        hydra_utils.run_and_report = original
        if original_run_job is not None:
            hydra_internal.run_job = original_run_job


#: the configured names that become folders of the results path (and of Hydra's run folder)
PATH_NAME_KEYS = ("exp_name", "problem.name", "algorithm.name", "prior.name")


def path_name_problems(cfg) -> list[str]:
    """:func:`lmaps_plugin.app.results.path_component_problem` of each :data:`PATH_NAME_KEYS` value the config
    sets (keys it lacks, or cannot resolve yet, are left to :func:`lmaps_plugin.app.schema.validate`)."""
    problems = []
    for key in PATH_NAME_KEYS if cfg is not None else ():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # noqa: BLE001 - an interpolation only the app can resolve; the schema checks it later
            continue
        if value is not None:
            problem = R.path_component_problem(key, value)
            if problem:
                problems.append(problem)
    return problems


def _reraise(exc: BaseException):
    raise exc


def main() -> None:
    """Console script ``lmaps``."""
    global _TASK_STARTED
    _TASK_STARTED = False
    with _composition_refusals("lmaps"):
        _hydra_main()


if __name__ == "__main__":
    main()
