"""Results to PACS: a scored ECG as a DICOM Comprehensive SR and an Encapsulated PDF.

Both are built from the parsed record and its score (never from the received bytes) and
stored in the durable queue as one payload (:func:`pack_objects`) when the result is
stored, so every retry sends the very same objects with the same SOP Instance UIDs; a PACS
drops a repeated SOP Instance UID as a duplicate.

* **Study**: a DICOM ECG's own study (its Study Instance UID, patient and accession
  number), and the SR lists the source ECG (Study/Series/SOP Instance UIDs, SOP class) in
  its Current Requested Procedure Evidence Sequence; the PDF names it in its Source Instance
  Sequence. Other inputs (HL7, WFDB, vendor XML) get a new study whose UIDs are hashed from
  the idempotency key (the same on every attempt), with the patient and order mapped from
  the record's identity part and the order context.
* **SR** (Comprehensive SR Storage): template TID 1500 "Measurement Report" built with
  highdicom, device observer "LASAN", procedure reported LOINC 11524-6 "EKG study", and two
  TID 1501 measurement groups, each with the model as TID 4019 algorithm (name, version):

  - "LASAN classification": one measurement per class probability (``P-<class>``, UCUM
    ``1``), one per disease-class threshold of the configured operating point
    (``T-<class>``), the decision per disease class (``D-<class>``: SNOMED CT 10828004
    Positive / 260385009 Negative), the predicted class (``PRED``), the operating point as
    the group's method (``OP-screening`` / ``OP-confirmation``);
  - "LASAN lead importance": one measurement per model lead (``LI-<lead>``, UCUM ``1``),
    method ``OCCLUSION``.

  Codes are in the private coding scheme ``99LASAN`` (:data:`CODING_SCHEME`), listed in
  docs/integration.md.
* **PDF** (Encapsulated PDF Storage): the 12-lead report page the worker renders
  (:func:`lasan.client.report.render_report`), which draws no patient identifier.
"""

from __future__ import annotations

import io
import logging
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from lasan.errors import IntegrationError
from lasan.formats.dicom import vr_date, vr_sex, vr_text
from lasan.record import ECGRecord

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from lasan.client.score import Score
    from lasan.hl7.oru import OrderContext

__all__ = [
    "CODING_SCHEME",
    "COMPREHENSIVE_SR",
    "ENCAPSULATED_PDF",
    "StudyContext",
    "study_context",
    "build_sr",
    "build_pdf",
    "pacs_objects",
    "pack_objects",
    "unpack_objects",
]

log = logging.getLogger("lasan.integration.pacs")

CODING_SCHEME = "99LASAN"  # private coding scheme ("99" prefix, PS3.16 8.2); codes in docs/integration.md
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
_TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
_GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
_MANUFACTURER = "LASAN"
_PACK_MAGIC = b"LASAN-DICOM-OBJECTS\x001"


@dataclass(frozen=True, repr=False)
class StudyContext:
    """The study the result objects go into, and the patient they are about (PHI: ``repr`` hides it).

    ``source_sop_*`` name the source DICOM ECG; None for non-DICOM inputs.
    """

    study_uid: str
    study_date: str  # DICOM DA
    study_time: str  # DICOM TM
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    accession_number: str
    uid_key: str  # what result UIDs are hashed from (the idempotency key)
    source_series_uid: str | None = None
    source_sop_instance_uid: str | None = None
    source_sop_class_uid: str | None = None

    def __repr__(self) -> str:
        return f"StudyContext(study={self.study_uid}, source={self.source_sop_instance_uid}, <patient redacted>)"

    def uid(self, what: str) -> str:
        """A UID hashed from the idempotency key: the same for every attempt at one ECG."""
        return _result_uid(self.uid_key, what)


def _result_uid(uid_key: str, what: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["lasan-result", uid_key, what]))


def _tm(text: str | None) -> str:
    digits = re.sub(r"[^0-9]", "", (text or "").split("+")[0].split("Z")[0])
    return digits[8:14] if len(digits) >= 12 else ""


_HL7_ESCAPES = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}


def _hl7_first_component(text: str) -> str:
    """The first component of an order field kept as sent (standard delimiters), unescaped."""
    first = text.split("^")[0]
    return re.sub(r"\\([FSTRE])\\", lambda m: _HL7_ESCAPES[m.group(1)], first).strip()


def study_context(record: ECGRecord, uid_key: str, order: OrderContext | None = None,
                  now: datetime | None = None) -> StudyContext:
    """Where the result objects go: the source ECG's study, or a new one for non-DICOM inputs.

    Args:
        record: the parsed ECG (its acquisition carries the source UIDs when it was DICOM).
        uid_key: stable text naming this ECG (the queue's idempotency key), hashed into new UIDs.
        order: the order context, whose filler/placer order becomes the accession number
            when the record carries none.
    """
    acq, patient = record.acquisition, record.patient
    when = now or datetime.now(timezone.utc)
    accession = patient.accession_number or ""
    if not accession and order is not None:
        accession = _hl7_first_component(order.filler_order or order.placer_order or "")
    dicom_source = acq.study_uid and acq.sop_instance_uid
    sop_class = _GENERAL_ECG if acq.sop_class == "General ECG Waveform Storage" else _TWELVE_LEAD_ECG
    return StudyContext(
        study_uid=acq.study_uid or _result_uid(uid_key, "study"),
        study_date=vr_date(acq.acquired_at) or when.strftime("%Y%m%d"),
        study_time=_tm(acq.acquired_at) or when.strftime("%H%M%S"),
        # The same VR rules as the ECG writer (lasan.formats.dicom): one place turns free text into DICOM.
        patient_id=vr_text(patient.patient_id),
        patient_name=vr_text(patient.name),
        birth_date=vr_date(patient.birth_date),
        sex=vr_sex(patient.sex),
        accession_number=vr_text(accession, 16),
        uid_key=uid_key,
        source_series_uid=acq.series_uid if dicom_source else None,
        source_sop_instance_uid=acq.sop_instance_uid if dicom_source else None,
        source_sop_class_uid=sop_class if dicom_source else None,
    )


def _common(ds: Dataset, ctx: StudyContext) -> None:
    """Patient, General Study and General Equipment modules, shared by the SR and the PDF."""
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = ctx.patient_name
    ds.PatientID = ctx.patient_id
    ds.PatientBirthDate = ctx.birth_date
    ds.PatientSex = ctx.sex
    ds.StudyInstanceUID = ctx.study_uid
    ds.StudyDate = ctx.study_date
    ds.StudyTime = ctx.study_time
    ds.StudyID = ""
    ds.AccessionNumber = ctx.accession_number
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = _MANUFACTURER


def _evidence(ctx: StudyContext) -> Dataset:
    """The source ECG's header as highdicom wants its evidence (patient, study, UIDs)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    _common(ds, ctx)
    ds.SeriesInstanceUID = ctx.source_series_uid or ctx.uid("no-source-series")
    ds.SOPInstanceUID = ctx.source_sop_instance_uid or ctx.uid("no-source")
    ds.SOPClassUID = ctx.source_sop_class_uid or _TWELVE_LEAD_ECG
    return ds


def _code(value: str, meaning: str) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, CODING_SCHEME, meaning)


def build_sr(score: Score, ctx: StudyContext, *, operating_point: str = "screening",
             now: datetime | None = None) -> Dataset:
    """The Comprehensive SR (TID 1500) of one score; see the module docstring for its content.

    Raises:
        IntegrationError: highdicom refuses the content (a LASAN bug: nothing is sent).
    """
    # highdicom logs each module it copies at INFO/DEBUG: noise in a listener's log, never needed.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        # highdicom's warnings quote values (e.g. 'The string "<patient name>" is unlikely to represent
        # the intended person name'); a listener's stderr is its log, so only their kind is logged.
        warnings.simplefilter("always")
        sr = _build_sr(score, ctx, operating_point=operating_point, now=now)
    for kind in sorted({type(w.message).__name__ for w in caught}):
        log.info("highdicom warned while building an SR (%s; message withheld: it may quote patient data)", kind)
    return sr


def _build_sr(score: Score, ctx: StudyContext, *, operating_point: str, now: datetime | None) -> Dataset:
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    unit = Code("1", "UCUM", "no units")
    algorithm = hd.sr.AlgorithmIdentification(name=f"LASAN {score.model_name}"[:64], version=score.model_version[:64])
    decisions: Mapping[str, bool] = getattr(score, operating_point)
    cut = score.thresholds.get(operating_point, {})
    positive, negative = Code("10828004", "SCT", "Positive"), Code("260385009", "SCT", "Negative")
    try:
        classification = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=ctx.uid("tracking-classification"),
                                                         identifier="LASAN classification"),
            method=_code(f"OP-{operating_point}", f"LASAN {operating_point} operating point"),
            algorithm_id=algorithm,
            measurements=[
                *(hd.sr.Measurement(name=_code(f"P-{cls}"[:16], f"Probability of {cls}"), value=round(float(p), 6),
                                    unit=unit) for cls, p in score.probabilities.items()),
                *(hd.sr.Measurement(name=_code(f"T-{cls}"[:16], f"Decision threshold for {cls}"),
                                    value=round(float(cut[cls]), 6), unit=unit) for cls in decisions if cls in cut),
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(name=_code("PRED", "Predicted class"),
                                            value=_code(score.predicted_class[:16], score.predicted_class)),
                *(hd.sr.QualitativeEvaluation(name=_code(f"D-{cls}"[:16], f"{cls} at the {operating_point} point"),
                                              value=positive if flag else negative) for cls, flag in decisions.items()),
            ],
        )
        importance = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=ctx.uid("tracking-importance"),
                                                         identifier="LASAN lead importance"),
            method=_code("OCCLUSION", "Lead occlusion importance"),
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=_code(f"LI-{lead}", f"Importance of lead {lead}"),
                                            value=round(float(w), 6), unit=unit)
                          for lead, w in score.lead_importance.items()],
        )
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=str(_device_uid()), name="LASAN", manufacturer_name=_MANUFACTURER,
                model_name=f"{score.model_name} {score.model_version}"[:64]),
        )
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=Code("11524-6", "LN", "EKG study"),
            imaging_measurements=[classification, importance],
        )
        when = now or datetime.now(timezone.utc)
        sr = hd.sr.ComprehensiveSR(
            evidence=[_evidence(ctx)],
            content=report[0],
            series_instance_uid=ctx.uid("sr-series"),
            series_number=901,
            sop_instance_uid=ctx.uid("sr"),
            instance_number=1,
            manufacturer=_MANUFACTURER,
            is_complete=True,
            series_description="LASAN ECG classification",
            manufacturer_model_name=score.model_name[:64],
            software_versions=score.model_version[:64],
            coding_schemes=[CodingSchemeIdentificationItem(
                designator=CODING_SCHEME, name="LASAN ECG classification codes",
                responsible_organization="LASAN project (docs/integration.md)")],
            content_date=when.strftime("%Y%m%d"),
            content_time=when.strftime("%H%M%S"),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        # Only the exception type: highdicom's messages may quote a value, e.g. the patient's name.
        raise IntegrationError(f"the DICOM SR of this result could not be built ({type(exc).__name__} in highdicom); "
                               "this is a LASAN bug, please report it") from exc
    if ctx.source_sop_instance_uid is None:
        # Nothing DICOM to reference: the evidence highdicom needs for the patient and study is not an object.
        for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if keyword in sr:
                delattr(sr, keyword)
    return sr


def _device_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["lasan-device-observer"]))


def build_pdf(pdf: bytes, ctx: StudyContext, *, title: str = "LASAN 12-lead ECG report",
              now: datetime | None = None) -> Dataset:
    """The Encapsulated PDF Storage object holding ``pdf`` (the report page), in ``ctx``'s study.

    Raises:
        IntegrationError: ``pdf`` is not a PDF document.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

    if not pdf.startswith(b"%PDF-"):
        raise IntegrationError("the report to encapsulate is not a PDF document; this is a LASAN bug")
    when = now or datetime.now(timezone.utc)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    meta.MediaStorageSOPInstanceUID = UID(ctx.uid("pdf"))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]  # in memory
    _common(ds, ctx)
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = ctx.uid("pdf-series")
    ds.SeriesNumber = 902
    ds.SeriesDescription = "LASAN ECG report"
    ds.ConversionType = "WSD"  # SC Equipment: made on a workstation
    ds.InstanceNumber = 1
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"  # the page draws no patient identifier (lasan.client.report)
    ds.DocumentTitle = title
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "11524-6", "LN", "EKG study"
    ds.ConceptNameCodeSequence = [concept]
    if ctx.source_sop_instance_uid:
        source = Dataset()
        source.ReferencedSOPClassUID = ctx.source_sop_class_uid
        source.ReferencedSOPInstanceUID = ctx.source_sop_instance_uid
        ds.SourceInstanceSequence = [source]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # OB: even length
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pacs_objects(record: ECGRecord, score: Score, *, uid_key: str, order: OrderContext | None = None,
                 pdf: bytes | None = None, operating_point: str = "screening") -> list[bytes]:
    """The DICOM Part 10 files to send for one scored ECG: the SR, then the PDF when there is one.

    Raises:
        IntegrationError: an object could not be built (a LASAN bug).
    """
    ctx = study_context(record, uid_key, order)
    objects = [_part10(build_sr(score, ctx, operating_point=operating_point))]
    if pdf is not None:
        objects.append(_part10(build_pdf(pdf, ctx)))
    return objects


def pack_objects(objects: Sequence[bytes]) -> bytes:
    """One queue payload holding several DICOM files (length-prefixed, in order)."""
    parts = [_PACK_MAGIC, struct.pack(">I", len(objects))]
    for blob in objects:
        parts += [struct.pack(">Q", len(blob)), blob]
    return b"".join(parts)


def unpack_objects(payload: bytes) -> list[bytes]:
    """The DICOM files of a :func:`pack_objects` payload.

    Raises:
        IntegrationError: the payload is not one we wrote, or is truncated.
    """
    if not payload.startswith(_PACK_MAGIC):
        raise IntegrationError("the stored PACS delivery is not a LASAN object list; it cannot be sent")
    at = len(_PACK_MAGIC)
    try:
        (count,) = struct.unpack_from(">I", payload, at)
        at += 4
        objects = []
        for _ in range(count):
            (size,) = struct.unpack_from(">Q", payload, at)
            at += 8
            if at + size > len(payload):
                raise struct.error("object runs past the end")
            objects.append(payload[at:at + size])
            at += size
    except struct.error as exc:
        raise IntegrationError(f"the stored PACS delivery is truncated ({exc}); it cannot be sent") from exc
    return objects
