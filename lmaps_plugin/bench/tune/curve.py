"""Budget curves of tuning studies: the best value found so far after each counted trial (complete or pruned, in
trial order, as the budget of ``lmaps-bench tune`` counts them), the trial after which it stops improving, and a
figure of the curves of several methods over several study seeds.

Everything but :func:`read_study` and :func:`plot_curves` is a pure function of plain trial records
(:class:`TrialRecord`). A pruned trial is a trial without a value (its running mean after fewer validation images is
not comparable to a full mean); a failed trial is not counted (the tuner queues it again as a new trial)."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

#: trial states that use up the budget (``lmaps_plugin.bench.tune.study.budget_left``)
COUNTED_STATES = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a study: its number, its state (an Optuna ``TrialState`` name) and its value (None unless
    complete)."""
    number: int
    state: str
    value: float | None = None


def counted_values(records: Iterable[TrialRecord], budget: int | None = None) -> list[float | None]:
    """The values of the counted trials in trial order (the first ``budget`` of them): a complete trial's value,
    None for a pruned trial (or a complete one without a finite value). Failed and running trials are left out."""
    counted = sorted((r for r in records if r.state.upper() in COUNTED_STATES), key=lambda r: r.number)
    if budget is not None:
        counted = counted[:budget]
    out: list[float | None] = []
    for r in counted:
        ok = r.state.upper() == "COMPLETE" and r.value is not None and math.isfinite(float(r.value))
        out.append(float(r.value) if ok else None)
    return out


def running_best(values: Sequence[float | None], direction: str = "maximize") -> list[float | None]:
    """The best value among the first 1, 2, ... trials (None while no trial has a value)."""
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
    best: float | None = None
    out: list[float | None] = []
    for v in values:
        if v is not None and (best is None or better(v, best)):
            best = v
        out.append(best)
    return out


def plateau_trial(best: Sequence[float | None], tol: float = 0.1, horizon: int | None = None) -> int | None:
    """The first trial t (1-based) after which the running best improves by less than ``tol`` up to trial
    ``horizon`` (default: the whole curve): |best[horizon] - best[t]| < tol. None when the curve has no value at
    ``horizon`` or is shorter than ``horizon``."""
    horizon = len(best) if horizon is None else horizon
    if horizon < 1 or horizon > len(best) or best[horizon - 1] is None:
        return None
    final = best[horizon - 1]
    for t in range(1, horizon + 1):
        b = best[t - 1]
        if b is not None and abs(final - b) < tol:
            return t
    return horizon  # pragma: no cover - t = horizon always satisfies |final - final| < tol


def value_at(best: Sequence[float | None], trial: int) -> float | None:
    """The running best after ``trial`` trials (1-based); None where the curve is shorter or has no value yet."""
    return best[trial - 1] if 1 <= trial <= len(best) else None


def mean_curve(curves: Sequence[Sequence[float | None]]) -> list[float | None]:
    """The mean over seeds of running-best curves, trial by trial (None where a seed has no value or is shorter)."""
    if not curves:
        return []
    n = max(len(c) for c in curves)
    out: list[float | None] = []
    for i in range(n):
        vals = [c[i] if i < len(c) else None for c in curves]
        out.append(None if any(v is None for v in vals) else sum(vals) / len(vals))
    return out


@dataclass
class MethodSummary:
    """A method's budget curve over seeds: the running best per seed, its mean at the ``points``, the spread
    (sample standard deviation over seeds; 0 for one seed), the plateau of the mean curve and of each seed."""
    method: str
    curves: list[list[float | None]]
    points: dict[int, tuple[float | None, float | None]]
    plateau: int | None
    seed_plateaus: list[int | None]
    horizon: int

    def reaches_plateau_by(self, trial: int) -> bool | None:
        """Whether the mean curve's plateau comes at or before ``trial`` (None without a plateau)."""
        return None if self.plateau is None else self.plateau <= trial


def summarize(method: str, curves: Sequence[Sequence[float | None]], points: Sequence[int] = (6, 12, 18, 24),
              tol: float = 0.1, horizon: int | None = None) -> MethodSummary:
    """Mean ± spread of the running best at each of ``points`` and the plateau trials (see :func:`plateau_trial`)."""
    curves = [list(c) for c in curves]
    horizon = horizon if horizon is not None else max((len(c) for c in curves), default=0)
    at = {}
    for p in points:
        vals = [value_at(c, p) for c in curves]
        if not vals or any(v is None for v in vals):
            at[p] = (None, None)
        else:
            at[p] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return MethodSummary(method, curves, at, plateau_trial(mean_curve(curves), tol, horizon),
                         [plateau_trial(c, tol, horizon) for c in curves], horizon)


def format_table(summaries: Sequence[MethodSummary], labels: Mapping[str, str] | None = None,
                 digits: int = 2) -> str:
    """A Markdown table: method, the running best at each point (mean ± std over seeds), the plateau of the mean
    curve and the plateau per seed."""
    labels = labels or {}
    points = list(summaries[0].points) if summaries else []
    head = ["method", *(f"best after {p}" for p in points), "plateau (mean curve)", "plateau per seed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [labels.get(s.method, s.method)]
        for p in points:
            mean, spread = s.points[p]
            cells.append("–" if mean is None else f"{mean:.{digits}f} ± {spread:.{digits}f}")
        cells.append("–" if s.plateau is None else str(s.plateau))
        cells.append(", ".join("–" if p is None else str(p) for p in s.seed_plateaus))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_study(study_dir: str | Path) -> tuple[list[TrialRecord], str]:
    """The trial records and the direction of the study in ``study_dir`` (opened as ``lmaps-bench tune`` opens it,
    from its ``request.json``)."""
    from .request import REQUEST, TuneRequest
    from .study import open_study, storage_url

    request = TuneRequest.load(Path(study_dir) / REQUEST)
    request.storage = storage_url(request)
    study = open_study(request)
    records = [TrialRecord(t.number, t.state.name, t.value) for t in study.get_trials(deepcopy=False)]
    return records, request.direction


def plot_curves(summaries: Sequence[MethodSummary], path: str | Path, title: str = "",
                labels: Mapping[str, str] | None = None, mark: int | None = 12, ylabel: str = "best val PSNR (dB)",
                dpi: int = 100) -> Path:
    """The running best per trial of each method (steps): the mean over seeds (thick), each seed (thin) and the
    plateau of the mean (marker); a dotted line at trial ``mark``. Written as PNG with matplotlib's Agg backend."""
    import matplotlib  # matplotlib: heavy; the Agg backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: heavy; the Agg backend is chosen before pyplot loads

    labels = labels or {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    try:
        for i, s in enumerate(summaries):
            color = f"C{i}"
            for c in s.curves:
                xs = [t for t, v in enumerate(c, start=1) if v is not None]
                ax.plot(xs, [c[t - 1] for t in xs], color=color, lw=0.7, alpha=0.35, drawstyle="steps-post")
            mean = mean_curve(s.curves)
            xs = [t for t, v in enumerate(mean, start=1) if v is not None]
            ax.plot(xs, [mean[t - 1] for t in xs], color=color, lw=2, label=labels.get(s.method, s.method),
                    drawstyle="steps-post")
            if s.plateau is not None and mean[s.plateau - 1] is not None:
                ax.plot([s.plateau], [mean[s.plateau - 1]], marker="o", color=color, ms=6)
        if mark is not None:
            ax.axvline(mark, color="0.4", ls=":", lw=1)
        ax.set_xlabel("trial")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path
