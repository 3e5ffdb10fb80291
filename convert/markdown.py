"""Markdown helpers for the model card."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Return a Markdown table. Cells are converted with str()."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)


def pct(value: float, digits: int = 2) -> str:
    """Format a share (0.5) as a percentage ("50.00%")."""
    return f"{100 * value:.{digits}f}%"
