"""The tables of ``lmaps-bench compare``: Table 1's layout with the tuning budget (``table.md``),
``lmaps-bench aggregate``'s CSV with the tuning columns (``table.csv``), and the tuned configs' provenance
(``tuning.json``), from test entries and tuned configs."""
from __future__ import annotations

import csv
import io
import json

import yaml

from .aggregate import TABLE_METRICS, best_mean, by_task, cell, compared_samples, csv_table
from .tune.outputs import TuneResult

def budget_text(provenance: dict) -> str:
    """``'12 (3 pruned)'``: trials counted (of the budget) and how many stopped early."""
    counted, budget = provenance.get("trials_counted", 0), provenance.get("budget", 0)
    text = f"{counted}" if counted == budget else f"{counted}/{budget}"
    pruned = provenance.get("trials_pruned", 0)
    return f"{text} ({pruned} pruned)" if pruned else text


def compare_markdown(entries, tuning: dict[str, dict[str, dict]], metric: str) -> str:
    """Table 1's layout with the tuning budget: per task, one row per method; mean ± std over the test samples
    every method of the task finished (``n``, :func:`~lmaps_plugin.bench.aggregate.compared_samples`);
    ``done``/``failed`` count each method's own samples; the best mean is bold. ``tuning[task][algorithm name]``
    is a tuned config's provenance."""
    columns = TABLE_METRICS[:3]  # the paper's PSNR, SSIM, LPIPS
    header = ["Task", "Method", "trials", f"val {metric}", *(label for _, label, _ in columns), "n", "done",
              "failed", "s / image"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for task, rows in by_task(entries).items():
        common = compared_samples(rows)
        summaries = [e.summary(common) for e in rows]
        best = {name: best_mean(summaries, name) for name, _, _ in columns}
        for k, (e, s) in enumerate(zip(rows, summaries)):
            prov = tuning.get(task, {}).get(e.algorithm, {})
            val = prov.get("best_value")
            cells = [task if k == 0 else "", e.algorithm, budget_text(prov) if prov else "–",
                     f"{val:.2f}" if isinstance(val, (int, float)) else "–"]
            for name, _, digits in columns:
                stats = s.get(name)
                if stats is None and name in e.unavailable:
                    cells.append("n/a")
                else:
                    cells.append(cell(stats, digits, stats is not None and stats["mean"] == best[name]))
            secs = e.mean_seconds()
            expected = len(e.expected | set(e.samples)) or len(e.samples)
            cells += [str(len(common)) if e.samples else "0", f"{len(e.samples)}/{expected}", str(len(e.failed)),
                      f"{secs:.1f}" if secs is not None else "–"]
            out.append("| " + " | ".join(cells) + " |")
            for (seed, sample_id), reason in sorted(e.failed.items()):
                notes.append(f"failed {task} / {e.algorithm} seed {seed} id {sample_id}: {reason.splitlines()[0][:160]}")
            if prov.get("note"):
                notes.append(f"{task} / {e.algorithm}: {prov['note']}")
    unavailable = sorted({f"{m}: {r}" for e in entries for m, r in e.unavailable.items()})
    return "\n".join(out) + "\n\n" + "".join(f"- {n}\n" for n in unavailable + notes)


def compare_csv(entries, tuning: dict[str, dict[str, dict]]) -> str:
    """``lmaps-bench aggregate``'s CSV with the tuning columns appended (budget, trials, pruned, best val)."""
    rows = list(csv.reader(io.StringIO(csv_table(entries))))
    extra = ["budget", "trials_counted", "trials_pruned", "val_metric", "val_best", "tuned_params"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*rows[0], *extra])
    task_col, algo_col = rows[0].index("task"), rows[0].index("algorithm")
    for row in rows[1:]:
        prov = tuning.get(row[task_col], {}).get(row[algo_col], {})
        writer.writerow([*row, prov.get("budget", ""), prov.get("trials_counted", ""), prov.get("trials_pruned", ""),
                         prov.get("metric", ""), prov.get("best_value", ""),
                         json.dumps(prov.get("params", {}), sort_keys=True) if prov else ""])
    return out.getvalue()


def tuning_table(tuned: dict[tuple[str, str], TuneResult]) -> dict[str, dict[str, dict]]:
    """``{task: {tuned algorithm name: provenance}}`` read back from the tuned config files."""
    out: dict[str, dict[str, dict]] = {}
    for (task, _), result in tuned.items():
        doc = yaml.safe_load(result.tuned_config.read_text(encoding="utf-8"))
        out.setdefault(task, {})[str(doc["name"])] = dict(doc.get("tuned", {}))
    return out


__all__ = ["budget_text", "compare_markdown", "compare_csv", "tuning_table"]
