"""Quality against cost: the Pareto frontier of (cost, score) points and the per-task figure of
``lmaps-bench compare --pareto`` (PSNR against measured seconds per image and against counted network
evaluations per image; one colour per method, circles for single samples, stars for ensemble means).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class Point:
    """One run of one method at one budget: its mean cost and score per image over the compared test images."""
    method: str
    kind: str            # "single" (one sample per image) or "ensemble" (the mean of ``samples`` samples)
    steps: int
    samples: int
    seconds: float
    nfe: float           # network evaluations per image (counted calls × samples)
    psnr: float
    psnr_std: float = 0.0
    ssim: float = math.nan
    n: int = 0


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (lower cost and higher score are better), by increasing cost.

    A point is dominated when another has cost <= and score >= with one of them strict; of exact duplicates the
    first is kept. Points with a non-finite coordinate are left out."""
    finite = [i for i, (c, s) in enumerate(points) if math.isfinite(c) and math.isfinite(s)]
    order = sorted(finite, key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


MARKERS = {"single": "o", "ensemble": "*"}


def plot_task(task: str, points: Sequence[Point], path: str | Path, title: str | None = None) -> Path:
    """Two panels (PSNR against seconds per image, against network evaluations per image, both on log axes),
    each method's single-sample points joined by a line, its ensemble means by a dashed one, the frontier over
    all points drawn as a grey step. Saved as a PNG (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - matplotlib.ticker below

    methods = list(dict.fromkeys(p.method for p in points))
    colours = {m: plt.get_cmap("tab10")(k % 10) for k, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), dpi=90, sharey=True)
    for ax, attr, label in ((axes[0], "seconds", "seconds per image (measured)"),
                            (axes[1], "nfe", "network evaluations per image (counted)")):
        for m in methods:
            for kind, style in (("single", "-"), ("ensemble", "--")):
                mine = sorted((p for p in points if p.method == m and p.kind == kind), key=lambda p: getattr(p, attr))
                if not mine:
                    continue
                # the dashed ensemble line starts at the single sample of the same steps (M = 1)
                start = [p for p in points if p.method == m and p.kind == "single" and p.steps == mine[0].steps]
                if kind == "ensemble" and start:
                    ax.plot([getattr(start[0], attr), getattr(mine[0], attr)], [start[0].psnr, mine[0].psnr], style,
                            color=colours[m], linewidth=1)
                ax.plot([getattr(p, attr) for p in mine], [p.psnr for p in mine], style, color=colours[m],
                        marker=MARKERS[kind], markersize=9 if kind == "ensemble" else 5, linewidth=1,
                        label=f"{m}" if kind == "single" else f"{m} ensemble mean")
                for p in mine:
                    tag = f"M{p.samples}" if kind == "ensemble" else f"{p.steps}"
                    ax.annotate(tag, (getattr(p, attr), p.psnr), textcoords="offset points", xytext=(3, 3),
                                fontsize=6, color=colours[m])
        front = [points[i] for i in pareto_front([(getattr(p, attr), p.psnr) for p in points])]
        if front:
            ax.step([getattr(p, attr) for p in front], [p.psnr for p in front], where="post", color="0.6",
                    linewidth=3, alpha=0.35, zorder=0, label="Pareto frontier")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel("PSNR (dB), mean over test images")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.suptitle(title or f"{task}: PSNR against cost (labels: steps, or M = ensemble size)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["Point", "pareto_front", "plot_task", "MARKERS"]
