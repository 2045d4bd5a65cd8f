"""What a run of the ``lmaps`` app returns (:class:`RunSummary`) and the table it prints at the end."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .sample import SampleOutcome


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


