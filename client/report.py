"""The scored ECG drawn as clinicians read it: a 12-lead sheet with the scores on top.

Standard 3 x 4 layout (columns I/II/III, aVR/aVL/aVF, V1/V2/V3, V4/V5/V6, each showing
the next 2.5 s) and a 10 s lead II rhythm strip, at 25 mm/s and 10 mm/mV on a 1 mm /
5 mm red grid, drawn in millimetres on an A4 landscape page so that a printout at 100 %
measures true. Each of the 8 model leads is shaded by its importance weight; the four
leads the model does not see (III, aVR, aVL, aVF: linear combinations of I and II) are
left unshaded.

Nothing that identifies the patient is drawn. Rendering uses matplotlib's object API
(no pyplot state) so it is safe in servers and threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lasan.client.score import Score
from lasan.dsp import bandpass
from lasan.errors import ConfigError
from lasan.leads import MODEL_LEADS
from lasan.record import ECGRecord

__all__ = ["PAGE_MM", "MM_PER_S", "MM_PER_MV", "LAYOUT", "render_report", "write_ecg_report", "write_ecg_reports"]

PAGE_MM = (297.0, 210.0)  # A4 landscape
MM_PER_S = 25.0
MM_PER_MV = 10.0
COLUMN_S = 2.5
RHYTHM_LEAD = "II"
LAYOUT: tuple[tuple[str, ...], ...] = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)
_CAL_MM = 10.0  # left margin holding the 1 mV calibration pulse
_ROW_MM = 35.0  # 7 large squares: room for +-1.75 mV around each baseline
_GRID_W = _CAL_MM + len(LAYOUT[0]) * COLUMN_S * MM_PER_S  # 260 mm
_GRID_H = (len(LAYOUT) + 1) * _ROW_MM  # 140 mm
_MARGIN_MM = (18.5, 22.0)  # left, bottom; the header fills the top 45 mm
_MINOR, _MAJOR, _TRACE, _SHADE = "#f7c6c6", "#e8767a", "#111111", "#1f6fb4"
_DISPLAY_HIGHPASS_HZ = 0.5  # baseline wander removal for display only; the model has its own filters


def _display_signal(record: ECGRecord) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """All 12 leads (derived where needed) for the first 10 s, baseline removed, in mV."""
    full = record.with_derived_leads()
    n = min(full.n_samples, int(round(len(LAYOUT[0]) * COLUMN_S * full.fs)))
    x = full.signal[:, :n].astype(np.float64)
    x = x - np.median(x, axis=1, keepdims=True)
    if n > 4:
        x = bandpass(x, full.fs, _DISPLAY_HIGHPASS_HZ, None)
    return {lead: x[i] for i, lead in enumerate(full.leads)}, full.derived_leads


def _grid(ax, width: float, height: float) -> None:
    minor = [((x, 0), (x, height)) for x in np.arange(0, width + 0.01, 1.0) if x % 5]
    minor += [((0, y), (width, y)) for y in np.arange(0, height + 0.01, 1.0) if y % 5]
    major = [((x, 0), (x, height)) for x in np.arange(0, width + 0.01, 5.0)]
    major += [((0, y), (width, y)) for y in np.arange(0, height + 0.01, 5.0)]
    ax.add_collection(LineCollection(minor, colors=_MINOR, linewidths=0.25, zorder=0))
    ax.add_collection(LineCollection(major, colors=_MAJOR, linewidths=0.6, zorder=0))


def _calibration(ax, baseline: float) -> None:
    # 1 mV for 0.2 s: 10 mm tall, 5 mm wide.
    xs = np.array([1.5, 3.0, 3.0, 8.0, 8.0, 9.5])
    ys = baseline + np.array([0, 0, MM_PER_MV, MM_PER_MV, 0, 0])
    ax.plot(xs, ys, color=_TRACE, linewidth=0.8, zorder=3)


def _trace(ax, t0_s: float, samples: np.ndarray, fs: float, x0: float, baseline: float, box: Rectangle) -> None:
    if samples.size == 0:
        return
    t = np.arange(samples.size) / fs
    (line,) = ax.plot(x0 + t * MM_PER_S, baseline + samples * MM_PER_MV, color=_TRACE, linewidth=0.6, zorder=3)
    line.set_clip_path(box)


def _header_lines(record: ECGRecord, score: Score, title: str | None) -> list[str]:
    probs = "   ".join(f"P({c}) = {p:.3f}" for c, p in score.probabilities.items())
    screen = ", ".join(c for c, v in score.screening.items() if v) or "none"
    confirm = ", ".join(c for c, v in score.confirmation.items() if v) or "none"
    top = ", ".join(f"{lead} {w:.2f}" for lead, w in score.top_leads(3))
    shown_derived = record.with_derived_leads().derived_leads
    derived = f"   derived leads: {', '.join(shown_derived)}" if shown_derived else ""
    return [
        (title + "   " if title else "") + f"predicted: {score.predicted_class}",
        probs,
        f"screening positive: {screen}   confirmation positive: {confirm}   top leads: {top}",
        f"model {score.model_name} version {score.model_version}   recording {record.fs:g} Hz, "
        f"{record.duration_s:.1f} s, {record.acquisition.source_format}{derived}",
        "25 mm/s   10 mm/mV   display high-pass 0.5 Hz   shading = lead importance (occlusion)   "
        "Research use only: not a medical device, not a diagnosis.",
    ]


def render_report(record: ECGRecord, score: Score, title: str | None = None) -> Figure:
    """The report page for one scored ECG as a matplotlib :class:`~matplotlib.figure.Figure`.

    Args:
        record: the ECG that was scored (any leads; missing limb leads are derived for display).
        score: its score.
        title: optional label for the header (e.g. the file name); never a patient identifier.
    """
    page_w, page_h = PAGE_MM
    fig = Figure(figsize=(page_w / 25.4, page_h / 25.4))
    FigureCanvasAgg(fig)
    left, bottom = _MARGIN_MM
    # Axes of exactly _GRID_W x _GRID_H mm with data units in mm: the drawing is to scale.
    ax = fig.add_axes((left / page_w, bottom / page_h, _GRID_W / page_w, _GRID_H / page_h))
    ax.set_xlim(0, _GRID_W)
    ax.set_ylim(0, _GRID_H)
    ax.set_aspect("equal")
    ax.set_axis_off()
    _grid(ax, _GRID_W, _GRID_H)
    leads, derived = _display_signal(record)
    weights = score.lead_importance
    w_max = max(weights.values(), default=0.0) or 1.0
    col_mm = COLUMN_S * MM_PER_S
    for r, row in enumerate(LAYOUT):
        top = _GRID_H - r * _ROW_MM
        baseline = top - _ROW_MM / 2
        _calibration(ax, baseline)
        for c, lead in enumerate(row):
            x0 = _CAL_MM + c * col_mm
            box = Rectangle((x0, top - _ROW_MM), col_mm, _ROW_MM, transform=ax.transData)
            if lead in MODEL_LEADS and lead in weights:
                alpha = 0.06 + 0.34 * weights[lead] / w_max
                ax.add_patch(Rectangle((x0, top - _ROW_MM), col_mm, _ROW_MM, color=_SHADE, alpha=alpha, lw=0, zorder=1))
                label = f"{lead}  {weights[lead]:.2f}"
                style: dict[str, Any] = {"color": "black", "fontweight": "bold"}
            else:
                label = f"{lead} (derived)" if lead in derived else lead
                style = {"color": "#555555", "fontstyle": "italic"}
            ax.text(x0 + 1.5, top - 2.0, label, fontsize=7, va="top", zorder=4, **style)
            if c:  # lead-change marker, as carts print it
                ax.plot([x0, x0], [baseline - 2.5, baseline + 2.5], color=_TRACE, linewidth=0.6, zorder=3)
            sig = leads.get(lead)
            if sig is None:
                ax.text(x0 + col_mm / 2, baseline, "not recorded", fontsize=7, ha="center", color="#555555")
                continue
            i0 = int(round(c * COLUMN_S * record.fs))
            i1 = int(round((c + 1) * COLUMN_S * record.fs))
            _trace(ax, c * COLUMN_S, sig[i0:i1], record.fs, x0, baseline, box)
    # Rhythm strip: lead II for the whole 10 s.
    top = _ROW_MM
    baseline = top - _ROW_MM / 2
    _calibration(ax, baseline)
    if RHYTHM_LEAD in weights:
        ax.add_patch(
            Rectangle(
                (_CAL_MM, 0),
                4 * col_mm,
                _ROW_MM,
                color=_SHADE,
                alpha=0.03 + 0.12 * weights[RHYTHM_LEAD] / w_max,
                lw=0,
                zorder=1,
            )
        )
    ax.text(_CAL_MM + 1.5, top - 2.0, f"{RHYTHM_LEAD} rhythm strip", fontsize=7, va="top", fontweight="bold", zorder=4)
    box = Rectangle((_CAL_MM, 0), 4 * col_mm, _ROW_MM, transform=ax.transData)
    if RHYTHM_LEAD in leads:
        _trace(ax, 0.0, leads[RHYTHM_LEAD], record.fs, _CAL_MM, baseline, box)
    # Header above the grid.
    y = 1.0 - 8.0 / page_h
    for i, line in enumerate(_header_lines(record, score, title)):
        fig.text(
            left / page_w, y, line, fontsize=11 if i == 0 else 8.5, fontweight="bold" if i == 0 else "normal", va="top"
        )
        y -= (7.0 if i == 0 else 5.2) / page_h
    return fig


def write_ecg_report(record: ECGRecord, score: Score, path: str | Path, title: str | None = None) -> Path:
    """Write one report page to ``path`` (``.png`` at 200 dpi or ``.pdf``, A4 landscape).

    Raises:
        ConfigError: the suffix is neither ``.png`` nor ``.pdf``.
    """
    return write_ecg_reports([(record, score, title)], path)[0]


def write_ecg_reports(items: Sequence[tuple[ECGRecord, Score, str | None]], path: str | Path) -> list[Path]:
    """Write reports for several ECGs.

    A ``.pdf`` path gets one multi-page PDF (one A4 page per ECG, input order). A ``.png``
    path gets one file for a single ECG, else one file per ECG named
    ``<stem>-<n>.png`` (``n`` from 1 in input order) next to ``path``.

    Returns:
        the files written.

    Raises:
        ConfigError: the suffix is neither ``.png`` nor ``.pdf``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".pdf"):
        raise ConfigError(f"a report must be a .png or .pdf file, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".pdf":
        with PdfPages(path) as pdf:
            for record, score, title in items:
                pdf.savefig(render_report(record, score, title))
        return [path]
    written = []
    for n, (record, score, title) in enumerate(items, 1):
        out = path if len(items) == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        render_report(record, score, title).savefig(out, dpi=200)
        written.append(out)
    return written
