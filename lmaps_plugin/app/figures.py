"""PNG figures of a run (matplotlib, Agg backend: no display needed).

- :func:`save_result_grid`: one row per sample: ground truth, measurement, reconstruction, error; with M >= 2
  samples per image also the ensemble mean, the per-pixel standard deviation and |mean - truth| (the last two on
  one colour scale, in [0, 1] image units, so that a calibrated ensemble shows matching maps).
  The measurement is shown in image space where that makes sense (:func:`~lmaps_plugin.evaluation.metrics.measurement_as_image`:
  the measurement itself, upsampled for super-resolution, or ``Hᵀy``); otherwise (e.g. phase retrieval) as the
  log-magnitude ``log(1 + |y|)`` on its own grid.
- :class:`TrajectoryRecorder` + :func:`save_trajectory_strip`: for LMAPS, the denoiser output x̂0 and the local
  MAP at several noise levels σ, recorded from :func:`~lmaps_plugin.sampler.sample_lmaps`'s ``callback``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..ensemble import ensemble_std  # noqa: E402
from ..evaluation.metrics import measurement_as_image, psnr, to_unit_range  # noqa: E402

Tensor = torch.Tensor


def _show_image(ax, x: Tensor) -> None:
    """Show one (C, H, W) image in [-1, 1]."""
    img = to_unit_range(x).cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img[:3].permute(1, 2, 0).numpy(), interpolation="nearest")


def _show_log_magnitude(ax, y: Tensor) -> None:
    mag = torch.log1p(y.detach().abs().float().cpu())
    while mag.ndim > 2:
        mag = mag.mean(0)
    ax.imshow(mag.numpy(), cmap="viridis", interpolation="nearest")


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def save_result_grid(path: str | os.PathLike, samples: Sequence[dict], forward_op=None, title: str | None = None,
                     dpi: int = 110) -> Path:
    """Write the ground truth / measurement / reconstruction / error grid (4 columns), plus ensemble mean / std /
    |mean - truth| (7 columns) when any sample has M >= 2 reconstructions (:func:`result_grid_columns`).

    Args:
        samples: dicts with ``'target'`` (C, H, W) or (1, C, H, W), ``'recon'`` (N, C, H, W) (the first sample is
            shown; N >= 2 adds the ensemble panels), ``'observation'`` and optionally ``'id'``; all in the prior's
            normalized space ([-1, 1]).
        forward_op: the task's operator, used to show the measurement in image space.
    """
    if not samples:
        raise ValueError("save_result_grid needs at least one sample")
    rows = len(samples)
    cols = result_grid_columns(samples)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.3, rows * 2.4 + (0.4 if title else 0)), squeeze=False)
    for row, sample in zip(axes, samples):
        target = sample["target"].reshape(-1, *sample["target"].shape[-3:])[:1]
        recon = sample["recon"].reshape(-1, *sample["recon"].shape[-3:])[:1].float()
        obs = sample["observation"]
        preview = measurement_as_image(forward_op, obs, tuple(target.shape[1:])) if forward_op is not None else None
        label = f"#{sample['id']} " if "id" in sample else ""
        _show_image(row[0], target[0])
        row[0].set_title(f"{label}ground truth", fontsize=9)
        if preview is not None:
            _show_image(row[1], preview[0])
            kind = "measurement" if tuple(obs.shape[-3:]) == tuple(target.shape[-3:]) else (
                "measurement, bicubic ↑" if obs.shape[-1] < target.shape[-1] else "Hᵀy")
            row[1].set_title(f"{kind} ({psnr(preview[:1], target).item():.2f} dB)", fontsize=9)
        else:
            _show_log_magnitude(row[1], obs[0] if obs.ndim > 2 else obs)
            row[1].set_title("measurement log(1+|y|)", fontsize=9)
        _show_image(row[2], recon[0])
        row[2].set_title(f"reconstruction ({psnr(recon, target).item():.2f} dB)", fontsize=9)
        err = (to_unit_range(recon[0]) - to_unit_range(target[0])).abs().mean(0)
        im = row[3].imshow(err.numpy(), cmap="magma", vmin=0, vmax=max(0.25, float(err.max())),
                           interpolation="nearest")
        row[3].set_title("|error|", fontsize=9)
        fig.colorbar(im, ax=row[3], fraction=0.046, pad=0.04)
        stack = sample["recon"].reshape(-1, *sample["recon"].shape[-3:]).float()
        if cols > 4 and stack.shape[0] >= 2:
            _ensemble_panels(fig, row[4:7], stack, target)
        elif cols > 4:  # a row with one reconstruction in a grid with ensembles
            for ax in row[4:]:
                ax.axis("off")
        for ax in row:
            _off(ax)
    return _finish(fig, path, title, dpi)


def result_grid_columns(samples: Sequence[dict]) -> int:
    """Columns of :func:`save_result_grid`: 4, or 7 when any sample holds M >= 2 reconstructions."""
    return 7 if any(s["recon"].reshape(-1, *s["recon"].shape[-3:]).shape[0] >= 2 for s in samples) else 4


def _ensemble_panels(fig, axes, stack: Tensor, target: Tensor) -> None:
    """Ensemble mean (with its PSNR), per-pixel std and |mean - truth| of ``stack`` (M, C, H, W) in [-1, 1]; std and
    error in [0, 1] image units (std of the unclipped mapped samples), averaged over channels, on one colour
    scale."""
    m = stack.shape[0]
    mean = stack.mean(0, keepdim=True)
    _show_image(axes[0], mean[0])
    axes[0].set_title(f"mean of {m} ({psnr(mean, target).item():.2f} dB)", fontsize=9)
    std = ensemble_std(to_unit_range(stack, clip=False)).mean(0)
    err = (to_unit_range(mean[0]) - to_unit_range(target[0])).abs().mean(0)
    vmax = max(float(std.max()), float(err.max()), 1e-3)
    for ax, image, label in ((axes[1], std, f"std ({m} samples)"), (axes[2], err, "|mean − truth|")):
        im = ax.imshow(image.numpy(), cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _finish(fig, path, title: str | None, dpi: int) -> Path:
    """Title, lay out and save ``fig`` atomically at ``path`` (parents created); returns the path."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically(fig, path, dpi)
    return path


def _save_atomically(fig, path: Path, dpi: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


# -------------------------------------------------------------------------------------------- trajectory
def trajectory_steps(num_steps: int, count: int) -> list[int]:
    """``count`` step indices spread evenly over ``0 .. num_steps-1`` (both ends included)."""
    if num_steps < 1 or count < 1:
        return []
    count = min(count, num_steps)
    if count == 1:
        return [num_steps - 1]
    return sorted({round(k * (num_steps - 1) / (count - 1)) for k in range(count)})


class TrajectoryRecorder:
    """A ``callback`` for :func:`~lmaps_plugin.sampler.sample_lmaps` that keeps x̂0 and the local MAP of the first
    sample at the chosen steps (CPU copies)."""

    def __init__(self, steps: Sequence[int]):
        self.steps = set(int(s) for s in steps)
        self.frames: list[dict] = []

    def __call__(self, info: dict) -> None:
        if int(info["i"]) in self.steps:
            self.frames.append({"i": int(info["i"]), "sigma": float(info["sigma"]), "r": float(info["r"]),
                                "denoised": info["denoised"][:1].detach().float().cpu(),
                                "local_map": info["local_map"][:1].detach().float().cpu()})


def save_trajectory_strip(path: str | os.PathLike, frames: Sequence[dict], target: Tensor | None = None,
                          title: str | None = None, dpi: int = 110) -> Path:
    """Two rows (x̂0 = D(x, σ); local MAP) × one column per recorded σ, plus the ground truth if given."""
    if not frames:
        raise ValueError("save_trajectory_strip needs at least one recorded frame")
    cols = len(frames) + (1 if target is not None else 0)
    fig, axes = plt.subplots(2, cols, figsize=(cols * 1.9, 2 * 2.1 + (0.4 if title else 0)), squeeze=False)
    for col, frame in enumerate(frames):
        _show_image(axes[0, col], frame["denoised"][0])
        axes[0, col].set_title(f"σ={frame['sigma']:.3g}", fontsize=8)
        _show_image(axes[1, col], frame["local_map"][0])
        axes[1, col].set_title(f"r={frame['r']:.2f}", fontsize=8)
    if target is not None:
        t = target.reshape(-1, *target.shape[-3:])[0]
        _show_image(axes[0, -1], t)
        axes[0, -1].set_title("ground truth", fontsize=8)
        axes[1, -1].axis("off")
    axes[0, 0].set_ylabel("x̂0 = D(x, σ)", fontsize=8)
    axes[1, 0].set_ylabel("local MAP", fontsize=8)
    for ax in axes.flat:
        _off(ax)
    return _finish(fig, path, title, dpi)


__all__ = ["save_result_grid", "result_grid_columns", "save_trajectory_strip", "TrajectoryRecorder",
           "trajectory_steps"]
