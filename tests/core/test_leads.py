"""The one lead vocabulary: every alias met in practice, and limb-lead derivation."""

from __future__ import annotations

import numpy as np
import pytest

from lasan.formats.sample import sample_ecg
from lasan.leads import (
    DICOM_CODE_MEANINGS,
    MODEL_LEADS,
    SCPECG_CODES,
    STANDARD_LEADS,
    canonical_lead,
    derive_missing_leads,
    mdc_code,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("i", "I"), ("I", "I"), ("ii", "II"), ("III", "III"), ("iii", "III"),
        ("avr", "aVR"), ("AVR", "aVR"), ("aVL", "aVL"), ("avf", "aVF"),
        ("v1", "V1"), ("V6", "V6"), (" v3 ", "V3"),
        ("5.6.3-9-1", "I"), ("5.6.3-9-2", "II"), ("5.6.3-9-3", "V1"), ("5.6.3-9-8", "V6"),
        ("5.6.3-9-61", "III"), ("5.6.3-9-62", "aVR"), ("5.6.3-9-64", "aVF"),
        ("2:1", "I"), ("2:2", "II"), ("2:61", "III"), ("2:63", "aVL"), ("2:7", "V5"),
        (131329, "I"), ("131329", "I"), (131330, "II"), (131331, "V1"), (131389, "III"), (131390, "aVR"),
        ("131329^MDC_ECG_LEAD_I^MDC", "I"), ("131390^MDC_ECG_LEAD_AVR^MDC", "aVR"),
        ("^MDC_ECG_LEAD_V2^MDC", "V2"), ("MDC_ECG_LEAD_AVF", "aVF"),
        ("Lead I (Einthoven)", "I"), ("Lead II", "II"), ("Lead aVR", "aVR"), ("Lead V4", "V4"),
        ("I^Lead I^L", "I"),  # a local HL7 code
        ("131329^MDC_ECG_ELEC_POTL_I^MDC", "I"), ("MDC_ECG_ELEC_POTL_V5", "V5"), ("131073", "I"), ("2:257", "I"),
        ("D2", "II"), ("DIII", "III"),
    ],
)
def test_aliases_map_to_canonical_names(raw, expected):
    assert canonical_lead(raw) == expected


@pytest.mark.parametrize("raw", ["vx", "VY", "vz", "MLII", "", None, "5.6.3-9-99", "2:200", "Lead X", "999^FOO^L"])
def test_non_12_lead_labels_map_to_none(raw):
    assert canonical_lead(raw) is None


def test_every_standard_lead_round_trips_through_its_codes():
    for lead in STANDARD_LEADS:
        assert canonical_lead(SCPECG_CODES[lead]) == lead
        assert canonical_lead(DICOM_CODE_MEANINGS[lead]) == lead
        assert canonical_lead(mdc_code(lead)) == lead
        assert canonical_lead(lead.lower()) == lead


def test_mdc_code_of_lead_i_is_the_ieee_11073_code():
    assert mdc_code("I") == "131329^MDC_ECG_LEAD_I^MDC"
    assert mdc_code("aVF") == "131392^MDC_ECG_LEAD_AVF^MDC"


def _limb(record):
    return {name: record.lead(name).astype(np.float64) for name in STANDARD_LEADS[:6]}


def test_ii_is_derived_from_i_and_iii_exactly():
    full = sample_ecg(leads=STANDARD_LEADS)
    keep = tuple(lead for lead in STANDARD_LEADS if lead != "II")
    signal = np.stack([full.lead(name) for name in keep])
    out, leads, derived = derive_missing_leads(signal, keep)
    assert derived == ("II",)
    assert leads == STANDARD_LEADS
    np.testing.assert_allclose(out[leads.index("II")], full.lead("II"), atol=1e-5)


def test_all_limb_leads_from_i_and_ii():
    full = sample_ecg()
    keep = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    out, leads, derived = derive_missing_leads(np.stack([full.lead(n) for n in keep]), keep)
    assert set(derived) == {"III", "aVR", "aVL", "aVF"}
    assert leads == STANDARD_LEADS
    for name in ("III", "aVR", "aVL", "aVF"):
        np.testing.assert_allclose(out[leads.index(name)], full.lead(name), atol=1e-5)


def test_i_derived_from_augmented_leads_then_ii_iii():
    full = sample_ecg()
    keep = ("aVR", "aVL", "aVF", "V1")
    out, leads, derived = derive_missing_leads(np.stack([full.lead(n) for n in keep]), keep)
    assert {"I", "II", "III"} <= set(derived)
    for name in ("I", "II", "III"):
        np.testing.assert_allclose(out[leads.index(name)], full.lead(name), atol=1e-4)


def test_nothing_to_derive_leaves_input_unchanged():
    full = sample_ecg(leads=("V1", "V2"))
    out, leads, derived = derive_missing_leads(full.signal, full.leads)
    assert derived == () and leads == ("V1", "V2") and out is full.signal


def test_record_flags_derived_leads():
    full = sample_ecg(leads=("I", "III", "V1", "V2", "V3", "V4", "V5", "V6"))
    rec = full.with_derived_leads()
    assert "II" in rec.derived_leads and set(MODEL_LEADS) <= set(rec.leads)
