"""The one lead vocabulary: canonical names, every alias met in practice, derivation.

Canonical names are the 12 standard leads spelled as clinicians write them
(``I II III aVR aVL aVF V1..V6``). Every reader maps what its format calls a lead
(WFDB signal names in any case, DICOM channel-source codes and meanings, IEEE 11073
MDC codes used in HL7) through :func:`canonical_lead`, so no reader keeps a table of
its own.

Numpy-only on purpose: copied into the Triton preprocess model.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = [
    "STANDARD_LEADS",
    "MODEL_LEADS",
    "LIMB_LEADS",
    "PRECORDIAL_LEADS",
    "MDC_CODES",
    "SCPECG_CODES",
    "DICOM_CODE_MEANINGS",
    "canonical_lead",
    "mdc_code",
    "derive_missing_leads",
]

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
# The paper's 8 independent leads: III and the augmented leads are linear
# combinations of I and II, so they carry no extra information for the model.
MODEL_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
LIMB_LEADS: tuple[str, ...] = STANDARD_LEADS[:6]
PRECORDIAL_LEADS: tuple[str, ...] = STANDARD_LEADS[6:]

# SCP-ECG lead numbers (EN 1064 / ISO 11073-91064). IEEE 11073-10101 reuses them in
# code partition 2: DICOM writes the term code as "2:N" (CID 3001), while the numeric
# codes HL7 senders put in OBX-3 are 2 * 65536 + 256 + N (the MDC_ECG_ELEC_POTL block,
# 131329 = lead I), often labelled MDC_ECG_LEAD_I (IHE PCD examples). Both are read.
_SCP_NUMBER: dict[str, int] = {
    "I": 1, "II": 2, "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8,
    "III": 61, "aVR": 62, "aVL": 63, "aVF": 64,
}
_MDC_PARTITION_OFFSET = 2 * 65536
_MDC_POTENTIAL_BLOCK = 256

MDC_CODES: dict[str, tuple[int, str]] = {
    name: (_MDC_PARTITION_OFFSET + _MDC_POTENTIAL_BLOCK + n, f"MDC_ECG_LEAD_{name.upper()}")
    for name, n in _SCP_NUMBER.items()
}
SCPECG_CODES: dict[str, str] = {name: f"5.6.3-9-{n}" for name, n in _SCP_NUMBER.items()}
DICOM_CODE_MEANINGS: dict[str, str] = {
    "I": "Lead I (Einthoven)", "II": "Lead II", "III": "Lead III",
    "aVR": "Lead aVR", "aVL": "Lead aVL", "aVF": "Lead aVF",
    **{f"V{i}": f"Lead V{i}" for i in range(1, 7)},
}

_BY_UPPER = {name.upper(): name for name in STANDARD_LEADS}
_BY_NUMBER = {n: name for name, n in _SCP_NUMBER.items()}
# European Einthoven spelling (D1 / DI ...).
_EXTRA_ALIASES = {"D1": "I", "DI": "I", "D2": "II", "DII": "II", "D3": "III", "DIII": "III"}
_LEAD_WORD = re.compile(r"^(?:LEAD|ECG[_ ]LEAD|MDC[_ ]ECG[_ ]LEAD|MDC[_ ]ECG[_ ]ELEC[_ ]POTL)[_ ]?", re.IGNORECASE)
_PARENTHETICAL = re.compile(r"\s*\(.*\)\s*$")
# ASCII digits only: str.isdigit() and \d accept '²' or '٣', which int() then rejects or misreads.
_MDC_COLON = re.compile(r"^2:([0-9]+)$")
_SCP_CODE = re.compile(r"^5\.6\.3-9-([0-9]+)$")


def canonical_lead(raw: str | int | None) -> str | None:
    """Map any lead label met in practice to its canonical name, or None.

    Accepts WFDB names in any case (``i``, ``avr``, ``V1``), DICOM SCP-ECG codes
    (``5.6.3-9-1``), MDC ``2:1`` forms and numeric codes (``131329``), MDC reference ids
    (``MDC_ECG_LEAD_I``), full HL7 CWE triplets (``131329^MDC_ECG_LEAD_I^MDC``), and DICOM
    code meanings (``Lead I (Einthoven)``). Leads outside the 12-lead set (Frank
    ``vx vy vz``, ``MLII``) return None: callers skip them.
    """
    if raw is None:
        return None
    if isinstance(raw, (int, np.integer)):
        return _from_number(int(raw))
    text = str(raw).strip()
    if not text:
        return None
    if "^" in text:  # HL7 CWE: code^text^system; try each component
        for part in text.split("^")[:2]:
            found = canonical_lead(part)
            if found:
                return found
        return None
    if text.isascii() and text.isdigit():
        return _from_number(int(text))
    for pattern in (_MDC_COLON, _SCP_CODE):
        match = pattern.match(text)
        if match:
            return _from_number(int(match.group(1))) if pattern is _MDC_COLON else _BY_NUMBER.get(int(match.group(1)))
    text = _PARENTHETICAL.sub("", text)
    text = _LEAD_WORD.sub("", text).strip().upper().replace(" ", "")
    if text in _BY_UPPER:
        return _BY_UPPER[text]
    return _EXTRA_ALIASES.get(text)


def _from_number(code: int) -> str | None:
    if code >= _MDC_PARTITION_OFFSET:
        code -= _MDC_PARTITION_OFFSET
    if code > _MDC_POTENTIAL_BLOCK:
        code -= _MDC_POTENTIAL_BLOCK
    return _BY_NUMBER.get(code)


def mdc_code(lead: str) -> str:
    """The HL7 CWE triplet for a canonical lead, e.g. ``131329^MDC_ECG_LEAD_I^MDC``."""
    number, ref = MDC_CODES[lead]
    return f"{number}^{ref}^MDC"


# Each derivable lead with the recipes that produce it from present leads.
# Einthoven: II = I + III. Goldberger: aVR = -(I + II)/2, aVL = I - II/2, aVF = II - I/2.
_RECIPES: dict[str, tuple[tuple[tuple[str, float], ...], ...]] = {
    "I": ((("II", 1.0), ("III", -1.0)), (("aVL", 2.0 / 3.0), ("aVR", -2.0 / 3.0))),
    "II": ((("I", 1.0), ("III", 1.0)), (("aVF", 2.0 / 3.0), ("aVR", -2.0 / 3.0))),
    "III": ((("II", 1.0), ("I", -1.0)),),
    "aVR": ((("I", -0.5), ("II", -0.5)),),
    "aVL": ((("I", 1.0), ("II", -0.5)),),
    "aVF": ((("II", 1.0), ("I", -0.5)),),
}


def derive_missing_leads(
    signal: np.ndarray, leads: tuple[str, ...]
) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """Add the limb leads that are missing but derivable (Einthoven / Goldberger).

    Args:
        signal: ``(leads, samples)`` array in canonical-name order given by ``leads``.
        leads: canonical names of the rows.

    Returns:
        ``(signal, leads, derived)``: rows for derived leads are appended, ``derived``
        names them so that quality reports can flag them. Unchanged inputs when nothing
        can be derived.
    """
    rows = {name: signal[i] for i, name in enumerate(leads)}
    derived: list[str] = []
    changed = True
    while changed:  # I from II/III may then enable aVR etc.
        changed = False
        for target, recipes in _RECIPES.items():
            if target in rows:
                continue
            for recipe in recipes:
                if all(src in rows for src, _ in recipe):
                    rows[target] = sum(weight * rows[src] for src, weight in recipe).astype(signal.dtype)
                    derived.append(target)
                    changed = True
                    break
    if not derived:
        return signal, leads, ()
    order = tuple(name for name in STANDARD_LEADS if name in rows)
    return np.stack([rows[name] for name in order]), order, tuple(derived)
