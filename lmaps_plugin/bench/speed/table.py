"""The benchmark's plain-text tables."""
from __future__ import annotations


def print_table(title: str, header: list[str], rows: list[list], notes: list[str] = ()) -> None:
    """``rows`` under ``header`` in aligned columns (first column left, the others right), then ``notes``."""
    cells = [[str(c) for c in header]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join("-" * w for w in widths)
    print(line)
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0:
            print(line)
    for note in notes:
        print(f"  {note}")


def fmt(value) -> str:
    """Floats to three significant digits (whole numbers from 1000 on), ``nan`` as such; the rest by ``str``."""
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
