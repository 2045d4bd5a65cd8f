"""The ``lmaps`` command: a Hydra app that reconstructs built-in test images with a diffusion prior.

    lmaps                                   # embedded default: random inpainting of 4 faces, shipped faces prior
    lmaps problem=sr4 num_images=8          # another task (configs/problem/*.yaml)
    lmaps prior=gmm                         # the exact Gaussian-mixture prior fitted on the faces train split
    lmaps algorithm=lmaps_sr4 problem=sr4   # a Table-4 row of the paper (N=200, K=100: slower)
    lmaps algorithm=ib_daps                 # an InverseBench peer (needs INVERSEBENCH_ROOT)
    lmaps -m problem=sr4,inpaint_random seed=0,1 hydra/launcher=joblib   # a sweep (see lmaps-bench)

Config groups are InverseBench's (``problem``, ``algorithm``) plus ``prior``; the primary config is
``configs/config.yaml``. Results go to ``{exp_dir}/{problem.name}/{algorithm.name}/{exp_name}/`` (InverseBench's
``{problem.exp_dir}/{algorithm.name}/{exp_name}``): ``result_{id}.pt`` (InverseBench layout), ``result_{id}.json``,
``metrics.json``, ``metrics.csv``, ``figure.png`` and, for LMAPS, ``trajectory.png``. A rerun skips finished
samples (``resume=true``); ``overwrite=true`` redoes them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import results as R
from .figures import TrajectoryRecorder, save_result_grid, save_trajectory_strip, trajectory_steps

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
        raise ValueError(f"device={name!r} but CUDA is not available; use device=cpu or device=auto")
    return device


def experiment_dir(cfg: DictConfig) -> Path:
    """``{problem.exp_dir}/{algorithm.name}/{exp_name}`` (InverseBench's layout)."""
    for key in ("problem.exp_dir", "algorithm.name", "exp_name"):
        if OmegaConf.select(cfg, key) in (None, ""):
            raise ValueError(f"config key {key} must be set (it names the results folder)")
    return Path(str(cfg.problem.exp_dir)) / str(cfg.algorithm.name) / str(cfg.exp_name)


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
    kwargs = {}
    if cfg.get("ids") is not None:
        ids = cfg.ids
        kwargs["id_list"] = OmegaConf.to_container(ids) if OmegaConf.is_config(ids) else str(ids)
    return instantiate(cfg.problem.data, **kwargs)


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


def run_config_hash(cfg: DictConfig) -> str:
    """Hash of what determines a sample's result: problem (minus paths and the id selection), algorithm, prior,
    num_samples. Seeds, ids, paths and run options are left out, so shards and seeds of one setting share it."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in RUN_ONLY_KEYS:
        container.pop(key, None)
    problem = container.get("problem", {})
    problem.pop("exp_dir", None)
    for key in ("num_images", "id_list"):
        problem.get("data", {}).pop(key, None)
    return R.config_hash(container)


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


def _to_batch(data: dict, device: torch.device) -> dict:
    return {k: (v[None].to(device) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}


def _inference(algo, observation, num_samples: int, recorder: TrajectoryRecorder | None):
    from ..solver import LMAPS

    if recorder is not None and isinstance(algo, LMAPS):
        return algo.inference(observation, num_samples=num_samples, callback=recorder)
    return algo.inference(observation, num_samples=num_samples)


def run_sample(algo, forward_op, evaluator, data: dict, sample_id: int, cfg: DictConfig, exp_dir: Path,
               device: torch.device, base: dict, recorder: TrajectoryRecorder | None = None) -> SampleOutcome:
    """Measure, reconstruct, save (atomically, never NaN) and evaluate one sample; ``base`` is the common part of
    the sample records (:func:`record_base`)."""
    from ..solver import LMAPSDivergenceError

    batch = _to_batch(data, device)
    torch.manual_seed(sample_seed(cfg.seed, sample_id, "observation"))
    observation = forward_op(batch)
    target = batch["target"]
    torch.manual_seed(sample_seed(cfg.seed, sample_id, "algorithm"))
    start = time.perf_counter()
    try:
        recon = _inference(algo, observation, int(cfg.num_samples), recorder).detach()
    except LMAPSDivergenceError as exc:
        return _record_failure(exp_dir, sample_id, base, f"diverged: {exc}", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    result = {"observation": observation.detach().cpu(), "recon": forward_op.unnormalize(recon).cpu(),
              "target": forward_op.unnormalize(target).cpu()}
    try:
        R.save_result(exp_dir, sample_id, **result, meta={"id": int(sample_id), "seed": int(cfg.seed),
                                                          "seconds": seconds})
    except R.NonFiniteResultError:
        return _record_failure(exp_dir, sample_id, base, "non-finite reconstruction (NaN or inf); not written",
                               seconds)
    metrics = evaluator(pred=result["recon"], target=result["target"], observation=result["observation"])
    R.write_record(exp_dir, sample_id, {**base, "status": "ok", "metrics": _finite(metrics), "seconds": seconds})
    return SampleOutcome(sample_id, "ok", _finite(metrics), seconds)


def _finite(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


def _record_failure(exp_dir: Path, sample_id: int, base: dict, reason: str, seconds: float) -> SampleOutcome:
    warnings.warn(f"sample {sample_id} failed: {reason}", RuntimeWarning, stacklevel=3)
    R.write_record(exp_dir, sample_id, {**base, "status": "failed", "reason": reason, "seconds": seconds})
    return SampleOutcome(sample_id, "failed", seconds=seconds, reason=reason)


def reevaluate(evaluator, exp_dir: Path, sample_id: int, base: dict) -> SampleOutcome:
    """Metrics of a finished ``result_{id}.pt`` that has no record yet (e.g. killed between the two writes)."""
    result = R.load_result(R.result_path(exp_dir, sample_id))
    metrics = _finite(evaluator(pred=result["recon"], target=result["target"], observation=result["observation"]))
    seconds = (result.get("meta") or {}).get("seconds")
    R.write_record(exp_dir, sample_id, {**base, "status": "ok", "metrics": metrics, "seconds": seconds})
    return SampleOutcome(sample_id, "skipped", metrics, seconds)


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


def run(cfg: DictConfig) -> RunSummary:
    """Run the configured task, algorithm and prior over the selected images; write results and figures."""
    start = time.perf_counter()
    torch.set_num_threads(max(1, int(cfg.threads)))
    device = resolve_device(str(cfg.device))
    exp_dir = experiment_dir(cfg)
    exp_dir.mkdir(parents=True, exist_ok=True)

    forward_op = instantiate(cfg.problem.model, device=device)
    dataset = build_dataset(cfg)
    net = build_prior(cfg, device)
    check_compatible(net, dataset, cfg)
    algo = build_algorithm(cfg, net, forward_op)
    evaluator = instantiate(cfg.problem.evaluator, forward_op=forward_op)
    unavailable = dict(getattr(evaluator, "unavailable", {}) or {})
    config_hash = run_config_hash(cfg)

    records = R.read_records(exp_dir)
    if cfg.overwrite:
        records = {}
    else:
        R.check_config(records, config_hash, exp_dir)
    R.atomic_write_text(exp_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    ids = [int(i) for i in dataset.id_list]
    want_trajectory = bool(cfg.figure.enabled and cfg.figure.trajectory)
    recorder = None
    if want_trajectory and hasattr(algo, "num_steps"):
        recorder = TrajectoryRecorder(trajectory_steps(int(algo.num_steps), int(cfg.figure.trajectory_frames)))
    base = record_base(cfg, config_hash, unavailable)
    _say(cfg, f"lmaps: {cfg.algorithm.name} on {cfg.problem.name} ({len(ids)} image(s), prior "
              f"{cfg.prior.get('name')}, seed {cfg.seed}) -> {exp_dir}")
    outcomes = []
    trajectory_target = None
    for index, sample_id in enumerate(ids):
        finished = cfg.resume and not cfg.overwrite and R.is_finished(exp_dir, sample_id)
        record = records.get(sample_id)
        if finished and record is not None and record.get("status") == "ok":
            outcomes.append(SampleOutcome(sample_id, "skipped", record.get("metrics", {}), record.get("seconds")))
            continue
        if finished:
            outcomes.append(reevaluate(evaluator, exp_dir, sample_id, base))
            continue
        use_recorder = recorder if (recorder is not None and not recorder.frames) else None
        outcome = run_sample(algo, forward_op, evaluator, dataset[index], sample_id, cfg, exp_dir, device,
                             base, use_recorder)
        outcomes.append(outcome)
        if use_recorder is not None:
            trajectory_target = dataset[index]["target"]
        _say(cfg, _progress_line(outcome, len(outcomes), len(ids)))
    if hasattr(forward_op, "close"):
        forward_op.close()

    records = R.read_records(exp_dir)
    json_path, csv_path = R.write_metrics(
        exp_dir, records, expected_ids=ids, unavailable=unavailable,
        info={k: v for k, v in base.items() if k != "unavailable"})
    figure = trajectory = None
    if cfg.figure.enabled:
        figure = _result_figure(exp_dir, ids, forward_op, cfg)
        if recorder is not None and recorder.frames:
            trajectory = save_trajectory_strip(exp_dir / "trajectory.png", recorder.frames,
                                               target=trajectory_target,
                                               title=f"{cfg.algorithm.name} trajectory, sample {ids[0]}")
    stats = R.summarize({o.sample_id: o.metrics for o in outcomes if o.status != "failed"})
    summary = RunSummary(exp_dir, outcomes, stats, unavailable, json_path, csv_path, figure, trajectory,
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
    return (f"  [{done}/{total}] sample {outcome.sample_id}: PSNR {m.get('psnr', float('nan')):.2f} dB, "
            f"SSIM {m.get('ssim', float('nan')):.3f} ({outcome.seconds:.1f} s)")


def _result_figure(exp_dir: Path, ids: list[int], forward_op, cfg: DictConfig) -> Path | None:
    samples = []
    for sample_id in ids:
        if len(samples) >= int(cfg.figure.max_images):
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
           ("lpips", "LPIPS", "{:.4f}"), ("misfit_rms", "misfit", "{:.4f}"))


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
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """Console script ``lmaps``."""
    _hydra_main()


if __name__ == "__main__":
    main()
