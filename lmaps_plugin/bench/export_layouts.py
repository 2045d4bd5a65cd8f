"""InverseBench's table layouts for ``lmaps-bench export``: which metrics a problem reports, which config key makes
its column groups (its settings), and the Markdown and LaTeX renderings of one table.

Rows are methods, column groups are the problem's settings (inverse scattering: receivers NR = 360/180/60; multi-coil
MRI: acceleration 4×/8×; black hole: observation ratio 3/10/100 %; the image tasks: one group per task), each cell
mean ± std (population) over the test samples. The black hole gets two rows per method: "best of N" (per test
image the best of its N draws, then the mean over images: InverseBench's evaluator) and "mean over samples" (every
draw counts). A second table gives the counted cost per image (never computed from a config).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from ..evaluation.metrics_file import value_stats
from ..io import is_finite_number

#: per-sample cost keys (lmaps_plugin.cost) and the cost columns: key, Markdown label, LaTeX label, decimals
COST_COLUMNS = (("nfe", "NFE", "NFE", 0), ("forward_calls", "H calls", r"$H$ calls", 0),
                ("vjp_calls", "∇H calls", r"$\nabla H$ calls", 0), ("seconds", "s / image", "s / image", 2))


@dataclass(frozen=True)
class Metric:
    key: str
    label: str          # Markdown
    latex: str
    digits: int
    higher: bool | None  # None: no direction (never bold)


@dataclass(frozen=True)
class Layout:
    family: str
    title: str
    setting_key: str | None                       # dotted config key of the column groups (None: the task name)
    setting_label: Callable[[Any], str]
    setting_order: tuple = ()
    metrics: tuple = ()
    best_of_n: bool = False


def _psnr(label="PSNR"):
    return Metric("psnr", f"{label} ↑", f"{label} $\\uparrow$", 2, True)


SSIM = Metric("ssim", "SSIM ↑", r"SSIM $\uparrow$", 4, True)
SCATTERING = Layout("inverse-scattering", "Linear inverse scattering", "problem.model.numRec",
                    lambda v: f"NR = {v:g}" if isinstance(v, (int, float)) else f"NR = {v}", (360, 180, 60),
                    (_psnr(), SSIM))
MRI = Layout("multi-coil-mri", "Multi-coil MRI", "problem.model.acceleration_ratio",
             lambda v: f"{v:g}×" if isinstance(v, (int, float)) else f"{v}×", (4, 8),
             (_psnr(), SSIM, Metric("data misfit", "data misfit ↓", r"data misfit $\downarrow$", 3, False)))
BLACK_HOLE = Layout(
    "blackhole", "Black hole imaging", "problem.model.observation_time_ratio",
    lambda v: f"{v * 100:g} %" if isinstance(v, (int, float)) else str(v), (0.03, 0.1, 1.0),
    (_psnr(), *(Metric(f"blur_psnr (f={f})", f"blur PSNR f={f} ↑", f"PSNR$_{{f={f}}}$ $\\uparrow$", 2, True)
                for f in (10, 15, 20)),
     Metric("cp_chi2", "χ²cp ↓", r"$\chi^2_{\mathrm{cp}}$ $\downarrow$", 2, False),
     Metric("camp_chi2", "χ²logcamp ↓", r"$\chi^2_{\mathrm{logcamp}}$ $\downarrow$", 2, False)),
    best_of_n=True)
IMAGE = Layout("image", "Image restoration", None, str, (),
               (_psnr(), SSIM, Metric("lpips", "LPIPS ↓", r"LPIPS $\downarrow$", 4, False)))


def layout_for(problem: str, metric_names) -> Layout:
    """The layout of a problem, by its name (InverseBench's ``problem.name``); problems that are none of the three
    physical ones are image tasks when they report PSNR, else a generic layout of the metrics they report."""
    name = problem.lower()
    if "scatter" in name:
        return SCATTERING
    if "mri" in name:
        return MRI
    if "blackhole" in name or "black-hole" in name or "black_hole" in name:
        return BLACK_HOLE
    if "psnr" in metric_names:
        return IMAGE
    metrics = tuple(Metric(m, m, latex_escape(m), 4, None) for m in sorted(metric_names))
    return Layout(f"other-{problem}", problem, None, str, (), metrics)


def config_value(config: dict | None, dotted: str) -> Any:
    """``config['a']['b']`` for ``'a.b'`` (None when any level is absent)."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@dataclass
class Sample:
    """One finished (seed, test id) result of a method at a setting; ``metrics`` hold the cost keys too."""
    problem: str
    table: str                 # the table it goes to (problem name, or the prior for image tasks)
    setting: str               # column group label
    setting_rank: tuple
    method: str                # row label (after --rename)
    algorithm: str             # algorithm.name as run
    seed: int
    id: int
    num_samples: int
    metrics: dict
    seconds: float | None
    source: str
    config_hash: str | None
    config_file: str | None = None


@dataclass
class Table:
    layout: Layout
    key: str
    samples: list = field(default_factory=list)
    missing: list = field(default_factory=list)      # {"setting", "method", "seed", "id", "reason"}
    unavailable: dict = field(default_factory=dict)

    def settings(self) -> list[str]:
        ranks = {s.setting: s.setting_rank for s in self.samples}
        return sorted(ranks, key=lambda s: ranks[s])

    def methods(self) -> list[str]:
        return list(dict.fromkeys(s.method for s in self.samples))

    def cell(self, method: str, setting: str) -> list[Sample]:
        return [s for s in self.samples if s.method == method and s.setting == setting]


def best_per_image(samples: list[Sample], metric: Metric) -> list[float]:
    """Per test id, the best value of ``metric`` over its draws (its seeds; each record is already the evaluator's
    best of its own ``num_samples``)."""
    by_id: dict[int, list[float]] = defaultdict(list)
    for s in samples:
        value = s.metrics.get(metric.key)
        if is_finite_number(value):
            by_id[s.id].append(float(value))
    pick = min if metric.higher is False else max
    return [pick(v) for _, v in sorted(by_id.items())]


def draws_per_image(samples: list[Sample]) -> str:
    """N of "best of N": draws per test image (seeds × num_samples), as ``'4'`` or ``'2–4'``."""
    counts: dict[int, int] = defaultdict(int)
    for s in samples:
        counts[s.id] += s.num_samples
    low, high = min(counts.values(), default=0), max(counts.values(), default=0)
    return str(low) if low == high else f"{low}–{high}"


def row_stats(table: Table) -> list[tuple[str, str, dict]]:
    """``[(row label, mode, {(setting, metric key): stats})]``, mode ``'best'`` or ``'mean'``; the black hole has
    a "best of N" and a "mean over samples" row per method."""
    rows = []
    for method in table.methods():
        modes = ("best", "mean") if table.layout.best_of_n else ("mean",)
        for mode in modes:
            cells, ns = {}, []
            for setting in table.settings():
                chosen = table.cell(method, setting)
                if not chosen:
                    continue
                ns.append(draws_per_image(chosen))
                for m in table.layout.metrics:
                    values = (best_per_image(chosen, m) if mode == "best"
                              else [s.metrics.get(m.key) for s in chosen])
                    cells[(setting, m.key)] = value_stats(values)
            label = method
            if table.layout.best_of_n:
                label = (f"{method} (best of N={'/'.join(dict.fromkeys(ns))})" if mode == "best"
                         else f"{method} (mean over samples)")
            rows.append((label, mode, cells))
    return rows


def seconds_of(metrics: dict, seconds: float | None) -> float | None:
    """Seconds per image: the counted network + solver seconds, else the record's measured inference time."""
    net, solver = metrics.get("network_seconds"), metrics.get("solver_seconds")
    if isinstance(net, (int, float)) and isinstance(solver, (int, float)):
        return float(net) + float(solver)
    return seconds


def cost_stats(samples: list[Sample]) -> dict[str, dict | None]:
    out = {key: value_stats([s.metrics.get(key) for s in samples]) for key, *_ in COST_COLUMNS if key != "seconds"}
    out["seconds"] = value_stats([seconds_of(s.metrics, s.seconds) for s in samples])
    return out


def _best(rows, mode: str, setting: str, m: Metric) -> float | None:
    """The best mean of a column among the rows of one ``mode`` (best of N and mean rows apart)."""
    means = [c[(setting, m.key)]["mean"] for _, md, c in rows if md == mode and c.get((setting, m.key))]
    if m.higher is None or len(means) < 2:
        return None
    return max(means) if m.higher else min(means)


def _fmt(st: dict | None, digits: int, latex: bool, bold: bool, unavailable: bool) -> str:
    if st is None:
        return "n/a" if unavailable else "–"
    if latex:
        text = f"{st['mean']:.{digits}f} $\\pm$ {st['std']:.{digits}f}"
        return f"\\textbf{{{text}}}" if bold else text
    text = f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"
    return f"**{text}**" if bold else text


def _cost_fmt(st: dict | None, digits: int) -> str:
    return "–" if st is None else f"{st['mean']:.{digits}f}"


def table_title(table: Table) -> str:
    layout = table.layout
    what = "(seed, test image) samples" if not layout.best_of_n else "test images (see the rows' labels)"
    return f"{layout.title} ({table.key}): mean ± std over {what}"


def markdown(table: Table) -> str:
    """The accuracy table and the cost table, with notes, as Markdown (one header row: ``setting: metric``)."""
    layout, settings, rows = table.layout, table.settings(), row_stats(table)
    head = ["Method", *(f"{s}: {m.label}" for s in settings for m in layout.metrics)]
    out = [f"### {table_title(table)}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label, mode, cells in rows:
        line = [label]
        for s in settings:
            for m in layout.metrics:
                st = cells.get((s, m.key))
                line.append(_fmt(st, m.digits, False, st is not None and st["mean"] == _best(rows, mode, s, m),
                                 m.key in table.unavailable))
        out.append("| " + " | ".join(line) + " |")
    head = ["Method", *(f"{s}: {label}" for s in settings for _, label, _, _ in COST_COLUMNS)]
    out += ["", f"Counted cost per image (mean over {table.key}'s samples; – where the records hold none):", "",
            "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for method in table.methods():
        line = [method]
        for s in settings:
            costs = cost_stats(table.cell(method, s))
            line += [_cost_fmt(costs[key], d) for key, _, _, d in COST_COLUMNS]
        out.append("| " + " | ".join(line) + " |")
    out += ["", *(f"- {n}" for n in notes(table))]
    return "\n".join(out).rstrip() + "\n"


def notes(table: Table) -> list[str]:
    out = []
    if table.layout.best_of_n:
        out.append("best of N: per test image the best of its N draws (N = seeds × num_samples; max PSNR, min χ²), "
                   "then mean ± std over the images, as InverseBench's black-hole evaluator; mean over samples: "
                   "mean ± std over every (seed, image) result (a result of num_samples M ≥ 2 is already the evaluator's best "
                   "of its M)")
    out += [f"{m}: {reason}" for m, reason in sorted(table.unavailable.items())]
    for item in table.missing:
        out.append(f"missing {item['method']} @ {item['setting']}: seed {item['seed']} id {item['id']} "
                   f"({item['reason']})")
    return out


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "×": r"$\times$",
                  "±": r"$\pm$", "–": "--", "χ": r"$\chi$", "²": r"$^2$", "∇": r"$\nabla$", "↑": r"$\uparrow$",
                  "↓": r"$\downarrow$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _latex_tabular(settings: list[str], columns: list[str], rows: list[list[str]]) -> list[str]:
    width = len(columns)
    out = [r"\begin{tabular}{l" + "c" * (width * len(settings)) + "}", r"\toprule"]
    groups = " & ".join(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(s)}}}" for s in settings)
    out.append(f" & {groups} \\\\")
    out.append("".join(f"\\cmidrule(lr){{{2 + k * width}-{1 + (k + 1) * width}}}" for k in range(len(settings))))
    out.append("Method & " + " & ".join(columns * len(settings)) + r" \\")
    out.append(r"\midrule")
    out += [" & ".join(r) + r" \\" for r in rows]
    out += [r"\bottomrule", r"\end{tabular}"]
    return out


def latex(table: Table) -> str:
    """The accuracy and cost tables as LaTeX (booktabs), one ``table`` environment each."""
    layout, settings, rows = table.layout, table.settings(), row_stats(table)
    body = []
    for label, mode, cells in rows:
        line = [latex_escape(label)]
        for s in settings:
            for m in layout.metrics:
                st = cells.get((s, m.key))
                line.append(_fmt(st, m.digits, True, st is not None and st["mean"] == _best(rows, mode, s, m),
                                 m.key in table.unavailable))
        body.append(line)
    cost_rows = []
    for method in table.methods():
        line = [latex_escape(method)]
        for s in settings:
            costs = cost_stats(table.cell(method, s))
            line += [_cost_fmt(costs[key], d).replace("–", "--") for key, _, _, d in COST_COLUMNS]
        cost_rows.append(line)
    out = ["% written by lmaps-bench export; needs \\usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
           f"\\caption{{{latex_escape(table_title(table))}}}", r"\resizebox{\linewidth}{!}{%",
           *_latex_tabular(settings, [m.latex for m in layout.metrics], body), "}", r"\end{table}", "",
           r"\begin{table}[t]", r"\centering",
           f"\\caption{{{latex_escape(table.layout.title)}: counted cost per image}}",
           r"\resizebox{\linewidth}{!}{%",
           *_latex_tabular(settings, [c[2] for c in COST_COLUMNS], cost_rows), "}", r"\end{table}"]
    return "\n".join(out) + "\n"
