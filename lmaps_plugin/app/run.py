"""A run of the ``lmaps`` app: open (and lock) the results folder, run or resume its samples, write the metrics
file and the figures (:func:`run`)."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from filelock import Timeout
from omegaconf import DictConfig, OmegaConf

from ..evaluation.metrics import ENSEMBLE_DEFINITIONS, ENSEMBLE_UNITS
from ..inversebench import stand_ins
from . import results as R
from . import schema
from .folder import RunFolder
from .figures import TrajectoryRecorder, save_result_grid, save_trajectory_strip, trajectory_steps
from .build import (Task, build_dataset, build_task, experiment_dir, prepare_results_folder, record_base,
                    resolve_device, run_config_hash)
from .report import RunSummary, format_report
from .sample import (SampleOutcome, add_ensemble_keys, ensemble_unavailable, needs_ensemble_keys, reevaluate,
                     result_meta, run_sample)


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
    device, forward_op, algo, evaluator = task.device, task.forward_op, task.algo, task.evaluator
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
                trajectory_sample.update(id=sample_id, target=torch.as_tensor(dataset[index]["target"]))
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
        _say(cfg, progress_line(outcomes[sample_id], len(outcomes), len(ids)))
    for index, sample_id in deferred:
        _say(cfg, f"  waiting for sample {sample_id} (in progress in another run)")
        with folder.sample_lock(sample_id):
            outcomes[sample_id] = process(index, sample_id)
        _say(cfg, progress_line(outcomes[sample_id], len(outcomes), len(ids)))
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


def progress_line(outcome: SampleOutcome, done: int, total: int) -> str:
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


