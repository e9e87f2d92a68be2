"""The clinical report page, drawn from a real ECG and a hand-made score (no server needed)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from matplotlib.image import imread

from lasan.client.report import LAYOUT, MM_PER_MV, MM_PER_S, PAGE_MM, render_report, write_ecg_report, write_ecg_reports
from lasan.client.score import Score
from lasan.errors import ConfigError
from lasan.formats.sample import sample_ecg
from lasan.leads import MODEL_LEADS
from lasan.record import PatientIdentity


def _score() -> Score:
    weights = dict(zip(MODEL_LEADS, (0.05, 0.30, 0.20, 0.10, 0.10, 0.10, 0.10, 0.05), strict=True))
    return Score(
        probabilities={"ARVC": 0.61, "LQTS": 0.09, "control": 0.30},
        predicted_class="ARVC",
        screening={"ARVC": True, "LQTS": False},
        confirmation={"ARVC": True, "LQTS": False},
        thresholds={"screening": {"ARVC": 0.2, "LQTS": 0.2}, "confirmation": {"ARVC": 0.6, "LQTS": 0.6}},
        lead_importance=weights,
        model_name="lasan",
        model_version="1+0123456789ab",
        round_trip_ms=10.0,
    )


def _pdf_pages(data: bytes) -> list[tuple[float, float]]:
    boxes = re.findall(rb"/MediaBox\s*\[\s*0\s+0\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    return [(float(w), float(h)) for w, h in boxes]


def test_layout_is_the_standard_twelve_lead_sheet():
    assert [lead for col in zip(*LAYOUT, strict=True) for lead in col] == [
        "I",
        "II",
        "III",
        "aVR",
        "aVL",
        "aVF",
        "V1",
        "V2",
        "V3",
        "V4",
        "V5",
        "V6",
    ]
    assert (MM_PER_S, MM_PER_MV) == (25.0, 10.0)


def test_the_grid_is_drawn_to_physical_scale(mortara):
    fig = render_report(mortara, _score())
    ax = fig.axes[0]
    fig.canvas.draw()
    # One data unit must be one millimetre on the page, on both axes.
    (x0, y0), (x1, y1) = ax.transData.transform([(0, 0), (100, 100)])
    mm_per_px = 25.4 / fig.dpi
    assert (x1 - x0) * mm_per_px == pytest.approx(100, rel=1e-3)
    assert (y1 - y0) * mm_per_px == pytest.approx(100, rel=1e-3)


def test_png_report_is_an_a4_landscape_image(tmp_path, mortara):
    out = write_ecg_report(mortara, _score(), tmp_path / "ecg.png", title="waveform_ecg.dcm")
    assert out.stat().st_size > 50_000
    height, width = imread(out).shape[:2]
    assert width / height == pytest.approx(PAGE_MM[0] / PAGE_MM[1], rel=1e-2)


def test_pdf_report_has_one_a4_landscape_page_per_ecg(tmp_path, mortara):
    eight = replace(mortara, signal=mortara.signal[[0, 1, 6, 7, 8, 9, 10, 11]], leads=MODEL_LEADS)
    out = tmp_path / "reports.pdf"
    assert write_ecg_reports([(mortara, _score(), "a"), (eight, _score(), "b")], out) == [out]
    pages = _pdf_pages(out.read_bytes())
    assert len(pages) == 2
    for w, h in pages:  # points: 297 x 210 mm
        assert (w, h) == (pytest.approx(297 / 25.4 * 72, abs=0.5), pytest.approx(210 / 25.4 * 72, abs=0.5))


def test_several_pngs_get_numbered_files(tmp_path):
    items = [(sample_ecg(seed=s, duration_s=10.0), _score(), None) for s in (1, 2)]
    written = write_ecg_reports(items, tmp_path / "out.png")
    assert [p.name for p in written] == ["out-1.png", "out-2.png"]
    assert all(p.stat().st_size > 50_000 for p in written)


def test_no_patient_identifier_is_drawn(tmp_path):
    rec = replace(sample_ecg(), patient=PatientIdentity(patient_id="MRN-4711", name="DOE^JANE", birth_date="19700101"))
    fig = render_report(rec, _score())
    texts = [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]
    joined = "\n".join(texts)
    assert "Research use only: not a medical device" in joined and "P(ARVC) = 0.610" in joined
    for secret in ("MRN-4711", "DOE", "JANE", "19700101"):
        assert secret not in joined


def test_model_leads_are_shaded_by_importance_and_the_others_are_not():
    fig = render_report(sample_ecg(), _score())
    ax = fig.axes[0]
    shades = [p for p in ax.patches if p.get_alpha() is not None]
    # 8 model-lead panels plus the rhythm strip; III/aVR/aVL/aVF get none.
    assert len(shades) == 9
    lead_alpha = sorted(p.get_alpha() for p in shades[:8])
    assert lead_alpha[-1] > lead_alpha[0]  # II (0.30) darker than I/V6 (0.05)


def test_an_unknown_suffix_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\.png or \.pdf"):
        write_ecg_report(sample_ecg(), _score(), tmp_path / "ecg.svg")


def test_a_short_eight_lead_ecg_still_draws(tmp_path):
    rec = sample_ecg(fs=250.0, duration_s=4.0, leads=MODEL_LEADS)
    out = write_ecg_report(rec, _score(), tmp_path / "short.png")
    assert out.stat().st_size > 50_000 and np.isfinite(imread(out)).all()
