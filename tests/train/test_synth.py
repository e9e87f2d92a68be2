"""The synthetic cohort: real files that every reader reads, determinism, and the physiology the
classes must (and must not) differ in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lasan.errors import ConfigError
from lasan.formats import read_ecg
from lasan.formats.wfdb_io import write_wfdb
from lasan.leads import STANDARD_LEADS
from lasan.train.manifest import read_manifest
from lasan.train.synth import SITES, generate_cohort, synthesize_ecg, synthesize_patient
from lasan.train.synth_cli import configure, run
from lasan.train.synth_phenotypes import sample_profile

N_PATIENTS = 14


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_patients=N_PATIENTS, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_writes_identical_files_and_another_seed_does_not(cohort: Path, tmp_path: Path) -> None:
    again = generate_cohort(tmp_path / "again", n_patients=N_PATIENTS, seed=7)
    first, second = _files(cohort.parent), _files(again.parent)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    other = generate_cohort(tmp_path / "other", n_patients=N_PATIENTS, seed=8)
    assert other.read_bytes() != cohort.read_bytes()


def test_every_file_reads_back_through_the_format_readers(cohort: Path) -> None:
    rows = read_manifest(cohort)
    assert {r.format for r in rows} == {"wfdb", "dicom", "hl7-na", "hl7-ed"}
    assert {r.label for r in rows} == {"ARVC", "LQTS", "control"}
    for row in rows:
        record = read_ecg(row.path)
        assert record.in_standard_order().leads == STANDARD_LEADS
        assert record.fs == pytest.approx(float(row.get("fs")))
        assert record.duration_s == pytest.approx(float(row.get("duration_s")))
        i, ii, iii = (record.lead(n).astype(np.float64) for n in ("I", "II", "III"))
        assert np.max(np.abs(iii - (ii - i))) <= 2e-3  # 1 uV rounding per lead in the file


def test_manifest_describes_patients_consistently(cohort: Path) -> None:
    rows = read_manifest(cohort)
    assert len({r.patient_id for r in rows}) == N_PATIENTS
    per_patient: dict[str, list] = {}
    for row in rows:
        per_patient.setdefault(row.patient_id, []).append(row)
    assert all(1 <= len(v) <= 4 for v in per_patient.values())
    for ecgs in per_patient.values():
        assert len({(r.label, r.sex, r.age, r.get("genotype")) for r in ecgs}) == 1
    for row in rows:
        if row.label == "control":
            assert row.get("genotype") == "none"
        if row.label == "LQTS":
            assert row.get("genotype") in ("LQT1", "LQT2", "LQT3")


def test_every_site_writes_wfdb_that_the_reference_reader_reads_back(tmp_path: Path) -> None:
    import wfdb

    rng = np.random.default_rng(3)
    for site in SITES:
        record, _ = synthesize_ecg(rng, "ARVC", site=site)
        header = write_wfdb(record, tmp_path / site.name)
        ref = wfdb.rdrecord(str(header.with_suffix("")))
        assert ref.fs == pytest.approx(record.fs)
        assert [name.lower() for name in ref.sig_name] == [lead.lower() for lead in record.leads]
        np.testing.assert_allclose(ref.p_signal.T, record.signal, atol=1e-3)  # 1 uV quantisation


def test_cli_writes_the_cohort_and_wfdb_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--out", str(tmp_path / "c"), "--patients", "6", "--seed", "2", "--formats", "wfdb"])
    assert run(args) == 0
    rows = read_manifest(tmp_path / "c" / "manifest.csv")
    assert {r.format for r in rows} == {"wfdb"}
    assert "6 patients" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        generate_cohort(tmp_path / "bad", n_patients=6, formats=("wfdb", "pdf"))


def test_limb_leads_obey_einthoven_and_goldberger_exactly() -> None:
    rng = np.random.default_rng(0)
    for site in SITES:
        record, _ = synthesize_ecg(rng, "LQTS", site=site)
        s = {name: record.lead(name).astype(np.float64) for name in record.leads}
        lsb = 1.0 / site.adc_gain
        assert np.array_equal(s["III"], s["II"] - s["I"]) or np.max(np.abs(s["III"] - (s["II"] - s["I"]))) < 1e-6
        assert np.max(np.abs(s["aVR"] + (s["I"] + s["II"]) / 2)) < 1e-5
        assert np.max(np.abs(s["aVL"] - (s["I"] - s["II"] / 2))) < 1e-5
        assert np.max(np.abs(s["aVF"] - (s["II"] - s["I"] / 2))) < 1e-5
        assert np.allclose(np.round(s["I"] / lsb), s["I"] / lsb, atol=1e-3)  # quantised to the site's ADC


def _t_extreme(record, truth, lead: str) -> float:
    """Signed extreme of the average T wave (R+160 ms .. R+QT-40 ms) of one lead."""
    x = record.lead(lead).astype(np.float64)
    fs = record.fs
    values = []
    for r, qt in zip(truth["r_peaks_s"], truth["qt_s"], strict=True):
        base = int((r - 0.12) * fs)
        lo, hi = int((r + 0.16) * fs), int((r + qt - 0.04) * fs)
        if base < 0 or hi >= len(x):
            continue
        seg = x[lo:hi] - x[base : base + int(0.04 * fs)].mean()
        values.append(seg)
    n = min(len(v) for v in values)
    avg = np.mean([v[:n] for v in values], axis=0)
    return float(avg[np.argmax(np.abs(avg))])


def _cohort_in_memory(label: str, n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [synthesize_ecg(rng, label, site=SITES[0]) for _ in range(n)]


@pytest.fixture(scope="module")
def ecgs() -> dict[str, list[tuple]]:
    return {label: _cohort_in_memory(label, 80, seed) for seed, label in enumerate(("ARVC", "LQTS", "control"))}


def test_lqts_qtc_is_longer_on_average_but_overlaps_controls(ecgs) -> None:
    lqts = np.array([t["qtc_bazett_ms"] for _, t in ecgs["LQTS"]])
    ctrl = np.array([t["qtc_bazett_ms"] for _, t in ecgs["control"]])
    assert lqts.mean() > ctrl.mean() + 40
    assert 0.12 <= np.mean(lqts < 460) <= 0.5  # concealed / borderline LQTS exists
    assert np.mean(ctrl >= 450) < 0.15
    assert lqts.min() < np.percentile(ctrl, 90)  # the distributions overlap


def test_control_qtc_by_sex_matches_the_reference_ranges() -> None:
    rng = np.random.default_rng(11)
    profiles = [sample_profile(rng, "control") for _ in range(3000)]
    men = np.array([p.qtc_ms for p in profiles if p.sex == "M" and p.age >= 16])
    women = np.array([p.qtc_ms for p in profiles if p.sex == "F" and p.age >= 16])
    assert 395 < men.mean() < 405 and 405 < women.mean() < 415
    assert 17 < men.std() < 23 and 17 < women.std() < 23


def test_arvc_inverts_t_in_v1_v3_more_often_than_controls(ecgs) -> None:
    def inverted_v1_v3(record, truth) -> bool:
        return all(_t_extreme(record, truth, lead) < -0.03 for lead in ("V1", "V2", "V3"))

    arvc = np.mean([inverted_v1_v3(r, t) for r, t in ecgs["ARVC"]])
    ctrl = np.mean([inverted_v1_v3(r, t) for r, t in ecgs["control"]])
    assert arvc > ctrl + 0.2
    assert arvc < 0.9  # incomplete penetrance: not every ARVC patient shows it
    assert ctrl > 0.0 or any("juvenile_twi" in t["profile"].confounders for _, t in ecgs["control"])


def _energy_difference(profile, changed, seed: int) -> dict[str, float]:
    """RMS difference per lead between two profiles rendered with identical randomness,
    relative to the lead's own spread (the model sees z-scored leads)."""
    a, _ = synthesize_ecg(np.random.default_rng(seed), "", profile=profile, site=SITES[0])
    b, _ = synthesize_ecg(np.random.default_rng(seed), "", profile=changed, site=SITES[0])
    ref = b.signal.astype(np.float64)
    diff = (a.signal.astype(np.float64) - ref) / ref.std(axis=1, keepdims=True)
    return {lead: float(np.sqrt(np.mean(diff[i] ** 2))) for i, lead in enumerate(a.leads)}


def test_arvc_changes_sit_in_the_right_precordial_leads() -> None:
    rng = np.random.default_rng(5)
    profile = next(p for p in (sample_profile(rng, "ARVC") for _ in range(200)) if p.phenotype == "overt")
    healthy = replace(profile, twi_extent="", tad_ms=42.0, epsilon=(), rv_voltage=1.0)
    d = _energy_difference(profile, healthy, seed=1)
    assert max(d[lead] for lead in ("I", "II", "III", "aVR", "aVL", "aVF")) < 1e-6  # RV terms are not in the limb leads
    assert np.mean([d[v] for v in ("V1", "V2", "V3")]) > 3 * np.mean([d[v] for v in ("V5", "V6")])


def test_lqts_t_morphology_is_strongest_in_lateral_leads() -> None:
    rng = np.random.default_rng(9)
    for genotype in ("LQT1", "LQT2", "LQT3"):
        profile = next(p for p in (sample_profile(rng, "LQTS") for _ in range(300)) if p.genotype == genotype)
        strong = replace(profile, expression=1.0, confounders=(), twi_extent="")
        none = replace(strong, expression=0.0)
        d = _energy_difference(strong, none, seed=2)
        lateral = np.mean([d[v] for v in ("I", "aVL", "V5", "V6")])
        right = np.mean([d[v] for v in ("V1", "V2", "V3")])
        assert lateral > right, genotype


def test_heart_rate_varies_with_respiration_and_qt_follows_rr() -> None:
    rng = np.random.default_rng(4)
    profile = replace(sample_profile(rng, "control"), age=20)
    _, truth = synthesize_ecg(rng, "", profile=profile, site=SITES[0], duration_s=30.0)
    rr = np.diff(truth["r_peaks_s"])
    assert rr.std() > 0.01  # tens of ms, as resting sinus rhythm
    qt = truth["qt_s"][1:]
    assert np.corrcoef(rr, qt)[0, 1] > 0.3  # longer cycles, longer QT (with hysteresis)


def test_patient_ecgs_vary_within_the_patient_and_share_identity() -> None:
    ecgs = synthesize_patient(np.random.default_rng(1), "LQTS", "P1", n_ecgs=3)
    assert len(ecgs) == 3
    assert len({t["profile"] for _, t in ecgs}) == 1
    assert len({round(t["qtc_bazett_ms"], 3) for _, t in ecgs}) == 3
    assert all(r.patient.patient_id == "P1" for r, _ in ecgs)
    with pytest.raises(ConfigError):
        synthesize_patient(np.random.default_rng(1), "Brugada", "P2")
