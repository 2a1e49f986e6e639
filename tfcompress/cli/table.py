"""Plain-text tables for terminal output."""

from __future__ import annotations

from typing import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Formats rows under headers; numbers are right-aligned, text left-aligned.

    Example:
      >>> print(format_table(["layer", "params"], [["conv", 80], ["dense", 30]]))
      layer  params
      -----  ------
      conv       80
      dense      30
    """
    cells = [[_text(value) for value in row] for row in rows]
    numeric = [
        all(isinstance(row[i], (int, float)) for row in rows if row[i] != "")
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values):
        parts = [
            v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
