"""The result message: an HL7 v2.5.1 ORU^R01 carrying LASAN's score back to the hospital.

Codes come from a local coding system, ``99LASAN`` (HL7's convention for local tables:
``99zzz``); the table is in docs/integration.md. The result goes back to the patient and
order it came from: the PID segment of the original HL7 message is copied verbatim (or
built from the DICOM patient module), OBR-2 / OBR-3 repeat the original placer / filler
order numbers, and an OBX plus OBR-20 carry the original MSH-10.

Built by hand, not with hl7apy: the structure is fixed, and a base64 PDF in an ED OBX is
hundreds of kilobytes that hl7apy would validate character by character.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Protocol

from lasan.hl7.encoding import escape_hl7
from lasan.hl7.oru import OrderContext
from lasan.record import PatientIdentity

__all__ = [
    "CODE_SYSTEM",
    "ScoreLike",
    "order_from_dicom",
    "result_control_id",
    "build_result",
    "build_not_scored_result",
    "RESULT_CODES",
    "NOT_SCORED_STATUS",
]

CODE_SYSTEM = "99LASAN"

# code -> (text, OBX-2 value type); per-class and per-lead codes are built from these stems.
RESULT_CODES: dict[str, tuple[str, str]] = {
    "LASAN-PANEL": ("LASAN inherited arrhythmia ECG analysis", "OBR-4"),
    "ORIG-MSH10": ("Original message control ID", "ST"),
    "MODEL": ("Model name and version", "ST"),
    "PROB-<CLASS>": ("Probability of <class>", "NM"),
    "PRED": ("Most probable class", "CWE"),
    "SCR-<CLASS>": ("<class> at the screening operating point", "CWE"),
    "CNF-<CLASS>": ("<class> at the confirmation operating point", "CWE"),
    "DECISION": ("Decision at the configured operating point", "CWE"),
    "LEADIMP-<LEAD>": ("Lead importance of <lead>", "NM"),
    "REPORT-PDF": ("ECG report with lead-importance shading", "ED"),
    "DISCLAIMER": ("Research use only; not a diagnosis", "ST"),
    "NOT-SCORED": ("ECG not scored; the reason is the value", "TX"),
}

# HL7 v2.5.1 table 0123 (OBR-25) and table 0085 (OBX-11): "X" = no results available /
# results cannot be obtained for this observation. A not-scored result carries it in both.
NOT_SCORED_STATUS = "X"


class ScoreLike(Protocol):
    """What a result reports (:class:`lasan.client.score.Score` is one); the core does not import the client."""

    @property
    def probabilities(self) -> Mapping[str, float]: ...
    @property
    def predicted_class(self) -> str: ...
    @property
    def screening(self) -> Mapping[str, bool]: ...
    @property
    def confirmation(self) -> Mapping[str, bool]: ...
    @property
    def lead_importance(self) -> Mapping[str, float]: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> str: ...


def order_from_dicom(control_id: str, calling_ae: str, patient: PatientIdentity, accession: str = "",
                     acquired_at: str | None = None) -> OrderContext:
    """The order context of a DICOM ECG: accession number as filler order, SOP Instance UID as control ID."""
    return OrderContext(
        original_control_id=control_id,
        sending_application=calling_ae,
        sending_facility="DICOM",
        filler_order=escape_hl7(accession) if accession else "",
        observation_time=_iso_to_hl7(acquired_at),
        patient=patient,
    )


def _iso_to_hl7(iso: str | None) -> str:
    if not iso:
        return ""
    digits = re.sub(r"[^0-9]", "", iso.split("+")[0].split("Z")[0])
    return digits[:14]


def result_control_id(sender_app: str, sender_facility: str, control_id: str, *, not_scored: bool = False) -> str:
    """A result MSH-10 that is the same for every attempt at one original message (ST(20)).

    A "not scored" result gets its own (``not_scored``): when the item is re-queued and scored
    later, the score is a new message to a receiver that drops repeated MSH-10s.
    """
    key = f"{sender_app}|{sender_facility}|{control_id}" + ("|not-scored" if not_scored else "")
    digest = hashlib.sha256(key.encode()).hexdigest()
    return "LSN" + digest[:17].upper()


def _pid_from_identity(patient: PatientIdentity | None) -> str:
    p = patient or PatientIdentity()
    name = escape_hl7(p.name or "").replace("\\S\\", "^")  # DICOM PN uses ^ like HL7 XPN
    birth = re.sub(r"[^0-9]", "", p.birth_date or "")[:8]
    sex = {"M": "M", "F": "F", "O": "O"}.get((p.sex or "").upper()[:1], "U" if p.sex else "")
    return f"PID|1||{escape_hl7(p.patient_id or '')}||{name}||{birth}|{sex}"


def _num(value: float) -> str:
    # repr of the Python float: the same digits `lasan score --json` prints.
    return repr(float(value))


def _cwe(code: str, text: str) -> str:
    return f"{code}^{escape_hl7(text)}^{CODE_SYSTEM}"


def build_result(
    order: OrderContext,
    score: ScoreLike,
    *,
    control_id: str,
    thresholds_mode: str = "screening",
    application: str = "LASAN",
    facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    pdf_report: bytes | None = None,
    now: datetime | None = None,
) -> str:
    """The ORU^R01 result for one scored ECG (segments end with CR, standard delimiters).

    ``thresholds_mode`` (``screening`` | ``confirmation``) picks the operating point
    whose decision is reported in the DECISION OBX; both are always reported per class.
    """
    ts = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    recv_app = receiving_application or order.sending_application
    recv_fac = receiving_facility or order.sending_facility
    segments = [
        f"MSH|^~\\&|{escape_hl7(application)}|{escape_hl7(facility)}|{escape_hl7(recv_app)}|{escape_hl7(recv_fac)}|"
        f"{ts}||ORU^R01^ORU_R01|{control_id}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        order.pid_segment or _pid_from_identity(order.patient),
        f"OBR|1|{order.placer_order}|{order.filler_order}|{_cwe('LASAN-PANEL', RESULT_CODES['LASAN-PANEL'][0])}"
        f"|||{order.observation_time}|||||||||||||{escape_hl7(order.original_control_id)}||{ts}|||F",
    ]
    obx: list[str] = []

    def add(value_type: str, code: str, text: str, value: str, units: str = "", sub_id: str = "") -> None:
        obx.append(f"OBX|{len(obx) + 1}|{value_type}|{_cwe(code, text)}|{sub_id}|{value}|{units}|||||F|||{ts}")

    add("ST", "ORIG-MSH10", RESULT_CODES["ORIG-MSH10"][0], escape_hl7(order.original_control_id))
    add("ST", "MODEL", RESULT_CODES["MODEL"][0], escape_hl7(f"{score.model_name} {score.model_version}"))
    for cls, p in score.probabilities.items():
        add("NM", f"PROB-{cls.upper()}", f"Probability of {cls}", _num(p), "1^ratio^UCUM")
    add("CWE", "PRED", RESULT_CODES["PRED"][0], _cwe(score.predicted_class.upper(), score.predicted_class))
    for point, prefix, calls in (("screening", "SCR", score.screening), ("confirmation", "CNF", score.confirmation)):
        for cls, positive in calls.items():
            add("CWE", f"{prefix}-{cls.upper()}", f"{cls} at the {point} operating point",
                _cwe("POS", "Positive") if positive else _cwe("NEG", "Negative"))
    chosen = score.screening if thresholds_mode == "screening" else score.confirmation
    flagged = [cls for cls, positive in chosen.items() if positive]
    decision = "~".join(_cwe(c.upper(), f"{c} flagged") for c in flagged) or _cwe("NONE", "No inherited arrhythmia flagged")
    add("CWE", "DECISION", f"Decision at the {thresholds_mode} operating point", decision)
    for lead, weight in score.lead_importance.items():
        add("NM", f"LEADIMP-{lead.upper()}", f"Lead importance of {lead}", _num(weight), "1^ratio^UCUM", sub_id=lead)
    if pdf_report is not None:
        data = base64.b64encode(pdf_report).decode("ascii")
        add("ED", "REPORT-PDF", RESULT_CODES["REPORT-PDF"][0], f"LASAN^application^pdf^Base64^{data}")
    add("ST", "DISCLAIMER", RESULT_CODES["DISCLAIMER"][0], "Research use only. Not a medical device. Not a diagnosis.")
    return "\r".join(segments + obx) + "\r"


def build_not_scored_result(
    order: OrderContext,
    reason: str,
    *,
    control_id: str,
    application: str = "LASAN",
    facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    now: datetime | None = None,
) -> str:
    """The ORU^R01 that says an acknowledged ECG will never be scored, and why.

    Same MSH-10 rule, patient and order as :func:`build_result` (the receiver files it where
    a score would have gone), but OBR-25 = ``X`` (table 0123: no results available) and one
    ``NOT-SCORED`` OBX with OBX-11 = ``X`` (table 0085: results cannot be obtained) whose
    value, repeated in an NTE for result viewers, is ``reason``. ``reason`` must not name the
    patient (it comes from a typed error's message). Without a PID or patient in ``order``
    (a stored message that no longer reads) the PID segment is left out (optional in ORU^R01).
    """
    ts = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    recv_app = receiving_application or order.sending_application
    recv_fac = receiving_facility or order.sending_facility
    text = escape_hl7(" ".join(reason.split()) or "not scored")
    pid = order.pid_segment or (_pid_from_identity(order.patient) if order.patient is not None else None)
    x = NOT_SCORED_STATUS
    segments = [
        f"MSH|^~\\&|{escape_hl7(application)}|{escape_hl7(facility)}|{escape_hl7(recv_app)}|{escape_hl7(recv_fac)}|"
        f"{ts}||ORU^R01^ORU_R01|{control_id}|P|2.5.1|||AL|NE||UNICODE UTF-8",
        *([pid] if pid else []),
        f"OBR|1|{order.placer_order}|{order.filler_order}|{_cwe('LASAN-PANEL', RESULT_CODES['LASAN-PANEL'][0])}"
        f"|||{order.observation_time}|||||||||||||{escape_hl7(order.original_control_id)}||{ts}|||{x}",
        f"OBX|1|ST|{_cwe('ORIG-MSH10', RESULT_CODES['ORIG-MSH10'][0])}||{escape_hl7(order.original_control_id)}"
        f"||||||F|||{ts}",
        f"OBX|2|TX|{_cwe('NOT-SCORED', 'ECG not scored')}||{text}||||||{x}|||{ts}",
        f"NTE|1|L|LASAN did not score this ECG: {text}",
    ]
    return "\r".join(segments) + "\r"
