"""Benchmark rows and the one Markdown table they are printed as.

A row is one measured number with, where the issue names one, the baseline it is compared
with (measured in the same run), the ratio, the target and whether it was met. A row that
could not be measured keeps its place in the table and says why, so a table is never
silently shorter than the last one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Row", "not_run", "render_markdown", "render_targets", "rows_to_json", "format_number"]

COLUMNS = ("section", "metric", "value", "baseline", "ratio", "target", "met?")


@dataclass(frozen=True)
class Row:
    """One line of the results table.

    ``met`` is None where the row has no target; ``note`` is shown next to the value
    (why a row did not run, or what limits a missed target).
    """

    section: str
    metric: str
    value: float | None
    unit: str = ""
    baseline: str = ""  # e.g. "matmul peak 190 GFLOP/s" or "hl7apy 7.1 s"
    ratio: float | None = None
    target: str = ""  # e.g. ">= 0.6"
    met: bool | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def not_run(section: str, metric: str, reason: str, *, target: str = "", unit: str = "") -> Row:
    """A row that keeps its place in the table and states why it has no number."""
    return Row(section, metric, None, unit=unit, target=target, met=None, note=f"not run: {reason}")


def format_number(x: float | None) -> str:
    """Three significant digits, without scientific notation for everyday magnitudes."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    ax = abs(x)
    if ax == 0:
        return "0"
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.01:
        return f"{x:.3g}"
    return f"{x:.2e}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value_cell(row: Row) -> str:
    if row.value is None:
        return row.note or "not run"
    text = f"{format_number(row.value)} {row.unit}".strip()
    return f"{text} ({row.note})" if row.note else text


def _met_cell(row: Row) -> str:
    if row.met is None:
        return "" if row.value is not None or not row.target else "not measured"
    return "yes" if row.met else "**MISSED**"


def render_markdown(rows: Iterable[Row]) -> str:
    """The results as one GitHub Markdown table (columns: section, metric, value, baseline, ratio, target, met?)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        cells = (
            row.section,
            row.metric,
            _value_cell(row),
            row.baseline,
            format_number(row.ratio) if row.ratio is not None else "",
            row.target,
            _met_cell(row),
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def render_targets(rows: Iterable[Row]) -> str:
    """Only the rows that have a target, as a short table (what README.md and the docs point at)."""
    lines = ["| section | target | measured | met? |", "|---|---|---|---|"]
    for row in rows:
        if row.target:
            measured = _value_cell(row) + (f" ({format_number(row.ratio)} x {row.baseline})" if row.ratio is not None
                                           and row.baseline else "")
            lines.append("| " + " | ".join(_cell(c) for c in (row.section, f"{row.metric}: {row.target}", measured,
                                                               _met_cell(row) or "—")) + " |")
    return "\n".join(lines)


def rows_to_json(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [row.to_dict() for row in rows]
