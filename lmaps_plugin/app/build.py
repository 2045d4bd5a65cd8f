"""What a run of the ``lmaps`` app is built from: the device, the results folder, the prior, the test images, the
operator, the algorithm and the evaluator (:func:`build_task`), and the hash of what determines a sample's result
(:func:`run_config_hash`). A value one of them refuses is a configuration error naming its group."""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..inversebench import require_inversebench
from ..priors.checkpoint import checkpoint_sha256
from . import results as R
from . import schema

#: top-level keys that do not change what a sample's result is (left out of the config hash)
RUN_ONLY_KEYS = ("seed", "ids", "num_images", "exp_dir", "exp_name", "device", "threads", "resume", "overwrite",
                 "verbose", "figure", "hydra")


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
        # a list goes as "0,5": InverseBench's datasets parse id_list as that string (ours take either)
        listed = OmegaConf.to_container(ids) if OmegaConf.is_config(ids) else None
        kwargs["id_list"] = ",".join(str(i) for i in listed) if listed is not None else str(ids)
        key = f"ids={cfg.ids!r}" if listed is None else f"ids={listed!r}"
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
def refusals(key: str):
    try:
        yield
    except REFUSALS as exc:
        raise _refused(key, exc) from exc


def build_task(cfg: DictConfig, dataset, device: torch.device) -> Task:
    """Operator, prior, algorithm and evaluator of the run. A value one of them refuses (``problem.model.*``,
    ``prior.*``, ``algorithm.method.*``: a ``ValueError``/``TypeError`` from its class, a missing file or
    package) is a :class:`~lmaps_plugin.app.schema.ConfigError` naming the group, so the run exits with 2 before
    anything is written."""
    with refusals("problem.model"):
        forward_op = instantiate(cfg.problem.model, device=device)
    with refusals("prior"):
        net = build_prior(cfg, device)
        check_compatible(net, dataset, cfg)
    with refusals("algorithm.method"):
        algo = build_algorithm(cfg, net, forward_op)
    with refusals("problem.evaluator"):
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


