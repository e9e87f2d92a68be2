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
from lasan.quality import check_quality
from lasan.train.manifest import read_manifest
from lasan.train.split import SPLIT_NAMES, patient_split
from lasan.train.synth import SITES, generate_cohort, synthesize_ecg, synthesize_patient
from lasan.train.synth_beats import PAC, PVC, SINUS
from lasan.train.synth_cli import configure, run
from lasan.train.synth_phenotypes import CONFOUNDERS, sample_profile
from lasan.train.synth_sites import ALL_SITES, EXTERNAL_SITES

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
    assert len({r.patient_id for r in rows if not r.external}) == N_PATIENTS
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
    for site in ALL_SITES:
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
    out = capsys.readouterr().out
    assert "6 patients" in out and "external validation" in out and len({r.patient_id for r in rows}) == 7
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--patients", "6", "--external", "0"])
    assert run(args) == 0
    assert not any(r.external for r in read_manifest(tmp_path / "d" / "manifest.csv"))
    with pytest.raises(ConfigError):
        generate_cohort(tmp_path / "bad", n_patients=6, formats=("wfdb", "pdf"))


def test_limb_leads_obey_einthoven_and_goldberger_exactly() -> None:
    rng = np.random.default_rng(0)
    for site, reversal in zip(ALL_SITES, (False, True) * 4, strict=False):
        record, _ = synthesize_ecg(rng, "LQTS", site=site, limb_reversal=reversal)  # a swapped cart still derives
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
    assert 0.2 <= np.mean(lqts < 460) <= 0.55  # concealed / borderline LQTS exists
    assert 0.04 <= np.mean(ctrl >= 450) < 0.3  # borderline QTc in controls (referral population)
    assert np.mean(ctrl >= 480) < 0.05
    assert lqts.min() < np.percentile(ctrl, 90)  # the distributions overlap


def test_control_qtc_by_sex_matches_the_reference_ranges() -> None:
    rng = np.random.default_rng(11)
    profiles = [p for p in (sample_profile(rng, "control") for _ in range(3000)) if "borderline_qtc" not in p.confounders]
    men = np.array([p.qtc_ms for p in profiles if p.sex == "M" and p.age >= 16])
    women = np.array([p.qtc_ms for p in profiles if p.sex == "F" and p.age >= 16])
    assert 395 < men.mean() < 405 and 405 < women.mean() < 415
    assert 17 < men.std() < 23 and 17 < women.std() < 23


def test_arvc_inverts_t_in_v1_v3_more_often_than_controls(ecgs) -> None:
    def inverted_v1_v3(record, truth) -> bool:
        return all(_t_extreme(record, truth, lead) < -0.03 for lead in ("V1", "V2", "V3"))

    arvc = np.mean([inverted_v1_v3(r, t) for r, t in ecgs["ARVC"]])
    ctrl = np.mean([inverted_v1_v3(r, t) for r, t in ecgs["control"]])
    assert arvc > ctrl + 0.1
    assert arvc < 0.9  # incomplete penetrance: not every ARVC patient shows it
    assert ctrl > 0.05  # juvenile pattern, complete RBBB and athletes' TWI mimic it in controls


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


# --- cohort v2: confounders, ectopy, acquisition, external site --------------------------------

CLEAN = replace(SITES[1], noise_scale=0.0, mains_scale=0.0, calibration_sd=0.0)  # 1000 Hz, no noise
_INDEPENDENT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def _qrs_ms(record, r: float) -> float:
    """QRS duration of the beat at ``r`` s on a noise-free record: the span where the spatial
    derivative energy of I, II, V1-V6 exceeds 10 % of its peak (global QRS, earliest onset
    to latest offset across leads)."""
    fs = record.fs
    x = np.stack([record.lead(lead).astype(np.float64) for lead in _INDEPENDENT])
    e = np.convolve(np.abs(np.diff(x, axis=1)).sum(axis=0), np.ones(int(0.01 * fs)), mode="same")
    w = e[int((r - 0.1) * fs) : int((r + 0.14) * fs)]
    above = np.nonzero(w > 0.1 * w.max())[0]
    return float((above[-1] - above[0]) / fs * 1000.0)


def _clean(profile, seed: int, **changes):
    profile = replace(profile, **{"pvc_per_min": 0.0, "pac_per_min": 0.0, **changes})
    return synthesize_ecg(np.random.default_rng(seed), "", profile=profile, site=CLEAN, limb_reversal=False)


@pytest.fixture(scope="module")
def control_profiles() -> list:
    rng = np.random.default_rng(21)
    return [sample_profile(rng, "control") for _ in range(3000)]


def test_every_confounder_appears_in_controls_at_a_plausible_rate(control_profiles) -> None:
    rate = {c: np.mean([c in p.confounders for p in control_profiles]) for c in CONFOUNDERS}
    bounds = {  # referral-population rates of docs/synthetic_cohort.md, with sampling slack
        "juvenile_twi": (0.12, 0.35), "irbbb": (0.08, 0.25), "crbbb": (0.03, 0.08), "early_repol": (0.08, 0.25),
        "lateral_t_flat": (0.02, 0.1), "athlete": (0.08, 0.2), "athlete_twi": (0.01, 0.05),
        "sinus_brady": (0.03, 0.12), "sinus_arrhythmia": (0.05, 0.2), "borderline_qtc": (0.11, 0.19),
        "pac": (0.04, 0.09), "pvc": (0.05, 0.1),
    }
    assert set(bounds) == set(CONFOUNDERS)
    for name, (lo, hi) in bounds.items():
        assert lo <= rate[name] <= hi, (name, rate[name])
    arvc = [sample_profile(np.random.default_rng([5, i]), "ARVC") for i in range(600)]
    assert np.mean(["pvc" in p.confounders for p in arvc]) > rate["pvc"] + 0.1  # frequent PVCs: TFC minor
    assert np.mean([p.pvc_origin == "rv_superior" for p in arvc]) > 0.35  # LBBB superior axis


def test_complete_rbbb_widens_qrs_and_gives_rsr_prime_in_v1(control_profiles) -> None:
    plain = [p for p in control_profiles if not {"crbbb", "irbbb", "early_repol"} & set(p.confounders)][:12]
    widths, normal = [], []
    for i, p in enumerate(plain):
        rbbb, t = _clean(p, i, confounders=(*p.confounders, "crbbb"))
        base, t0 = _clean(p, i)
        widths.append(np.median([_qrs_ms(rbbb, r) for r in t["r_peaks_s"][1:-1]]))
        normal.append(np.median([_qrs_ms(base, r) for r in t0["r_peaks_s"][1:-1]]))
        # rSR' in V1: a late positive R' (after the S) taller than the initial r.
        v1 = rbbb.lead("V1").astype(np.float64)
        r = t["r_peaks_s"][2]
        beat = v1[int((r - 0.06) * rbbb.fs) : int((r + 0.12) * rbbb.fs)] - v1[int((r - 0.07) * rbbb.fs)]
        split = int(0.07 * rbbb.fs)  # 10 ms after the main R: where the terminal forces begin
        assert beat[split:].max() > max(beat[:split].max(), 0.1), i
        assert beat[:split].min() < -0.1  # the S between r and R'
        # broad terminal S in lead I and V6 (rightward terminal forces)
        for lead in ("I", "V6"):
            x = rbbb.lead(lead).astype(np.float64)
            terminal = x[int((r + 0.04) * rbbb.fs) : int((r + 0.09) * rbbb.fs)] - x[int((r - 0.07) * rbbb.fs)]
            assert terminal.mean() < 0, lead
    assert np.mean(np.array(widths) >= 120) >= 0.9 and np.median(normal) < 110


def test_bradycardia_and_sinus_arrhythmia_show_in_the_rhythm(control_profiles) -> None:
    slow = [p for p in control_profiles if {"athlete", "sinus_brady"} & set(p.confounders)][:15]
    hr = [_clean(p, i)[1]["hr_bpm"] for i, p in enumerate(slow)]
    assert np.mean(np.array(hr) < 60) >= 0.8
    athletes = [p for p in control_profiles if "athlete" in p.confounders]
    others = [p for p in control_profiles if p.age >= 16 and not {"athlete"} & set(p.confounders)]
    assert np.mean([p.qrs_amp for p in athletes]) > 1.2 * np.mean([p.qrs_amp for p in others])  # athlete voltage
    young = next(p for p in control_profiles if "sinus_arrhythmia" in p.confounders)
    _, t = synthesize_ecg(np.random.default_rng(2), "", profile=young, site=CLEAN, duration_s=30.0)
    rr = np.diff(t["r_peaks_s"][t["beat_kinds"] == SINUS])
    assert rr.std() / rr.mean() > 0.05


def test_pvcs_are_wide_premature_beats_with_a_compensatory_pause_and_pacs_reset_the_sinus(control_profiles) -> None:
    widths, sinus_widths = [], []
    for i, p in enumerate(control_profiles[:9]):
        origin = ("rvot", "lv", "rv_superior")[i % 3]
        record, t = _clean(p, i, pvc_per_min=30.0, pvc_origin=origin, confounders=())
        kinds, r = t["beat_kinds"], t["r_peaks_s"]
        assert (kinds == PVC).sum() >= 1
        for k in range(1, len(r) - 1):
            if kinds[k] == PVC and kinds[k - 1] == SINUS and kinds[k + 1] == SINUS:
                widths.append(_qrs_ms(record, r[k]))
                assert r[k] - r[k - 1] < 0.75 * (r[k + 1] - r[k])  # premature, then a long pause
            elif kinds[k] == SINUS:
                sinus_widths.append(_qrs_ms(record, r[k]))
    assert np.median(widths) >= 130 and np.median(widths) > np.median(sinus_widths) + 40
    record, t = _clean(control_profiles[0], 3, pac_per_min=30.0, confounders=())
    kinds, r = t["beat_kinds"], t["r_peaks_s"]
    assert (kinds == PAC).sum() >= 1
    k = int(np.nonzero(kinds == PAC)[0][0])
    assert abs(_qrs_ms(record, r[k]) - _qrs_ms(record, r[k - 1])) < 15  # conducted: a normal QRS


def test_limb_lead_reversal_swaps_the_leads_and_quality_flags_it() -> None:
    rng = np.random.default_rng(8)
    flagged = 0
    for i in range(12):
        profile = replace(sample_profile(rng, "control"), axis_deg=float(20 + 4 * i))
        right, _ = synthesize_ecg(np.random.default_rng(i), "", profile=profile, site=CLEAN, limb_reversal=False)
        swapped, truth = synthesize_ecg(np.random.default_rng(i), "", profile=profile, site=CLEAN, limb_reversal=True)
        assert truth["limb_reversal"]
        lead = {n: (right.lead(n).astype(np.float64), swapped.lead(n).astype(np.float64)) for n in right.leads}
        np.testing.assert_allclose(lead["I"][1], -lead["I"][0], atol=5e-3)  # a few ADC units of rounding
        np.testing.assert_allclose(lead["II"][1], lead["III"][0], atol=5e-3)  # a few ADC units of rounding
        np.testing.assert_allclose(lead["aVR"][1], lead["aVL"][0], atol=5e-3)  # a few ADC units of rounding
        np.testing.assert_allclose(lead["aVF"][1], lead["aVF"][0], atol=5e-3)  # a few ADC units of rounding
        np.testing.assert_allclose(lead["V3"][1], lead["V3"][0], atol=5e-3)  # a few ADC units of rounding
        assert "limb_lead_reversal" not in {f.code for f in check_quality(right)}
        flagged += "limb_lead_reversal" in {f.code for f in check_quality(swapped)}
    assert flagged >= 10


def test_external_site_is_in_the_manifest_and_never_in_the_split(cohort: Path) -> None:
    rows = read_manifest(cohort)
    external = [r for r in rows if r.external]
    assert external and all(r.site in {s.name for s in EXTERNAL_SITES} for r in external)
    assert all(r.patient_id.startswith("EXT") for r in external)
    assert not any(r.site in {s.name for s in EXTERNAL_SITES} for r in rows if not r.external)
    split = patient_split(rows, seed=0)
    ext_ids = {r.patient_id for r in external}
    assert set(split.external_patients) == ext_ids
    for name in SPLIT_NAMES:
        assert not ext_ids & set(split.patients(name))
    # The external sites differ in their acquisition: other filters, rates, mains, noise.
    internal = {(s.fs, s.filter_low_hz, s.filter_high_hz, s.mains_hz, s.notch) for s in SITES}
    assert all((s.fs, s.filter_low_hz, s.filter_high_hz, s.mains_hz, s.notch) not in internal for s in EXTERNAL_SITES)
    assert min(s.noise_scale for s in EXTERNAL_SITES) > max(s.noise_scale for s in SITES if s.name != "site-C")


def test_the_internal_cohort_does_not_depend_on_the_external_size(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", n_patients=4, seed=3, formats=("wfdb",), n_external=0)
    b = generate_cohort(tmp_path / "b", n_patients=4, seed=3, formats=("wfdb",), n_external=2)
    rows_b = [r for r in read_manifest(b) if not r.external]
    assert [r.path.read_bytes() for r in read_manifest(a) if r.path.suffix == ".dat"] == [
        r.path.read_bytes() for r in rows_b if r.path.suffix == ".dat"
    ]


def test_concealed_lqts_has_a_normal_qtc_but_keeps_the_genotype_t_shape() -> None:
    rng = np.random.default_rng(13)
    lqts = [sample_profile(rng, "LQTS") for _ in range(1500)]
    concealed = [p for p in lqts if p.phenotype == "concealed"]
    assert 0.25 <= len(concealed) / len(lqts) <= 0.35
    assert np.mean([p.qtc_ms for p in concealed]) < 445
    assert np.mean([p.expression for p in concealed]) > 0.25  # the morphology is the signal left


def _avg_beat(record, truth, lead: str, start: float, stop: float) -> np.ndarray:
    """Average of one lead over [R + start, R + stop] s of every sinus beat, PR segment as zero."""
    x, fs = record.lead(lead).astype(np.float64), record.fs
    segs = []
    for r, kind in zip(truth["r_peaks_s"][1:-1], truth["beat_kinds"][1:-1], strict=True):
        if kind == SINUS:
            base = x[int((r - 0.07) * fs) : int((r - 0.05) * fs)].mean()
            segs.append(x[int((r + start) * fs) : int((r + stop) * fs)] - base)
    return np.mean(segs, axis=0)


def test_athletes_twi_follows_st_elevation_and_early_repolarisation_lifts_the_j_point(control_profiles) -> None:
    plain = [p for p in control_profiles if p.age >= 16 and not {"early_repol", "crbbb", "irbbb"} & set(p.confounders)]
    for i, p in enumerate(plain[:6]):
        base_rec, t0 = _clean(p, i, confounders=(), twi_extent="", twi_depth_mv=0.0, anterior_st_mv=0.0)
        athlete, t1 = _clean(p, i, confounders=("athlete", "athlete_twi"), twi_extent="V1-V4", twi_depth_mv=0.2,
                             anterior_st_mv=0.2)
        st = slice(0, int(0.04 * athlete.fs))  # the first 40 ms of the 60-140 ms window: ST
        diff = _avg_beat(athlete, t1, "V2", 0.06, 0.14) - _avg_beat(base_rec, t0, "V2", 0.06, 0.14)
        assert diff[st].mean() > 0.05  # ST elevation in V2 ...
        t_diff = _avg_beat(athlete, t1, "V2", 0.2, 0.4) - _avg_beat(base_rec, t0, "V2", 0.2, 0.4)
        assert t_diff.min() < -0.1  # ... then the T wave goes down
        er, t2 = _clean(p, i, confounders=("early_repol",))
        j = _avg_beat(er, t2, "V5", 0.05, 0.09) - _avg_beat(base_rec, t0, "V5", 0.05, 0.09)
        assert j.mean() > 0.02


def test_borderline_qtc_controls_measure_in_the_grey_zone(control_profiles) -> None:
    grey = [p for p in control_profiles if "borderline_qtc" in p.confounders][:15]
    qtc = np.array([_clean(p, i)[1]["qtc_fridericia_ms"] for i, p in enumerate(grey)])
    assert 430 < np.median(qtc) < 470


@pytest.mark.parametrize("site", ALL_SITES, ids=lambda s: s.name)
def test_every_site_writes_its_own_format_and_read_ecg_reads_it_back(site, tmp_path: Path) -> None:
    from lasan.formats import write_ecg

    record, _ = synthesize_ecg(np.random.default_rng(4), "control", site=site, patient_id="P1",
                               acquired_at="2022-03-04T05:06:07")
    fmt = {"hl7": "hl7-ed", "dicom": "dicom", "wfdb": "wfdb"}[site.format]
    suffix = {"hl7-ed": ".hl7", "dicom": ".dcm", "wfdb": ""}[fmt]
    path = write_ecg(record, tmp_path / f"ecg{suffix}", fmt=fmt, **({"control_id": "C1"} if fmt == "hl7-ed" else {}))
    back = read_ecg(path).in_standard_order()
    assert back.fs == pytest.approx(site.fs) and back.leads == STANDARD_LEADS
    np.testing.assert_allclose(back.signal, record.in_standard_order().signal, atol=3e-3)
