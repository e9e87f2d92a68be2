"""Every error LASAN raises on purpose.

One base class so that callers (the CLI, the HL7 listener, the Triton preprocess
model) can catch "anything we explained" apart from bugs. Messages are written for a
clinical IT engineer: what was wrong with the input, and what to do about it.

    LasanError
    ├── ECGFormatError            an ECG file or message could not be turned into a record
    │   ├── UnsupportedFormatError    not an ECG format we read (wrong SOP class, not HL7, ...)
    │   │   └── HL7UnsupportedError       an HL7 message that is not an ORU with an ECG waveform
    │   ├── MalformedECGError         the container is broken (truncated DICOM, HL7 without MSH)
    │   │   └── HL7MalformedError         broken HL7 structure, too large
    │   │       ├── HL7HeaderError            no MSH segment first, or MSH truncated
    │   │       │   └── HL7DelimiterError         MSH-1/MSH-2 are not usable delimiters
    │   │       ├── HL7CharsetError           MSH-18 unknown, or the bytes are not valid in it
    │   │       └── HL7RequiredFieldError     a field the interface needs is empty (MSH-10)
    │   ├── BadWaveformError          the waveform itself is unusable (NaN, unequal leads, too short)
    │   │   └── HL7WaveformError          NA values that are not numbers, leads of unequal length
    │   └── MissingLeadsError         leads the model needs are absent and cannot be derived
    ├── ConfigError               a YAML / model / build configuration is invalid
    ├── CheckpointError           a checkpoint file is missing, corrupt or incompatible
    ├── ModelRepositoryError      a Triton model repository or config.pbtxt is invalid
    │   └── PrecisionGateError        a lower-precision build lost accuracy against fp32 (not written)
    ├── ServerError               the embedded Triton server could not start or stopped
    ├── ScoringError              scoring through Triton failed
    │   └── TritonUnavailableError    the server is unreachable or the model is not ready
    └── IntegrationError          hospital-protocol failures (HL7/MLLP, DICOM network, queue)
        ├── MLLPFramingError          bytes on the wire are not a valid MLLP frame
        ├── HL7MessageError           the HL7 message is malformed or not an ECG result
        ├── ControlIDConflictError    a control ID / SOP Instance UID re-used for different content
        ├── QueueStorageError         the durable queue could not store or update an item
        └── DeliveryError             a result could not be delivered to PACS / a FHIR server (retried)

How each error is answered (the one table, read by :func:`protocol_answer`): every class
carries ``hl7_ack`` (MSA-1: AE = fix and resend, AR = never resend this message),
``hl7_error_code`` (HL7 table 0357, in the ERR segment) and ``dicom_status`` (the C-STORE
status), inherited down the hierarchy and overridden where a subclass means something
more specific. The listener, the DICOM receiver and the watch folder answer through it.

This module is pure Python on purpose: it is copied into the Triton preprocess model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ProtocolAnswer",
    "protocol_answer",
    "LasanError",
    "ECGFormatError",
    "UnsupportedFormatError",
    "MalformedECGError",
    "BadWaveformError",
    "MissingLeadsError",
    "HL7UnsupportedError",
    "HL7MalformedError",
    "HL7WaveformError",
    "HL7HeaderError",
    "HL7DelimiterError",
    "HL7CharsetError",
    "HL7RequiredFieldError",
    "ConfigError",
    "CheckpointError",
    "ModelRepositoryError",
    "PrecisionGateError",
    "ServerError",
    "ScoringError",
    "TritonUnavailableError",
    "IntegrationError",
    "MLLPFramingError",
    "HL7MessageError",
    "ControlIDConflictError",
    "QueueStorageError",
    "DeliveryError",
]


# DICOM C-STORE statuses (PS3.4 GG.4-1, pynetdicom's names).
_A700_OUT_OF_RESOURCES = 0xA700
_A900_DATASET_MISMATCH = 0xA900
_C000_CANNOT_UNDERSTAND = 0xC000
_0111_DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4 general failure status
_C211_PROCESSING_FAILURE = 0xC211


class LasanError(Exception):
    """Base class of every error LASAN raises deliberately."""

    hl7_ack = "AE"
    hl7_error_code = "207"  # HL7 table 0357: application internal error
    dicom_status = _C211_PROCESSING_FAILURE


class ECGFormatError(LasanError):
    """An ECG file or message could not be turned into an ECG record."""

    dicom_status = _C000_CANNOT_UNDERSTAND


class UnsupportedFormatError(ECGFormatError):
    """The input is not an ECG format LASAN reads (or not an ECG at all)."""

    hl7_ack, hl7_error_code = "AR", "200"  # unsupported message type / content: never resend
    dicom_status = _A900_DATASET_MISMATCH


class MalformedECGError(ECGFormatError):
    """The container (DICOM dataset, HL7 message, WFDB header) is broken."""

    hl7_error_code = "100"  # segment sequence / structure error


class BadWaveformError(ECGFormatError):
    """The waveform samples are unusable: NaN, unequal lead lengths, too short, ..."""

    hl7_error_code = "102"  # data type error


class MissingLeadsError(ECGFormatError):
    """Leads the model needs are absent and cannot be derived from the others."""

    hl7_error_code = "101"  # required field missing
    dicom_status = _A900_DATASET_MISMATCH

    def __init__(self, missing: tuple[str, ...] | list[str], available: tuple[str, ...] | list[str]):
        self.missing = tuple(missing)
        self.available = tuple(available)
        super().__init__(
            f"the ECG lacks lead(s) {', '.join(self.missing)} that the model needs "
            f"(found: {', '.join(self.available) or 'none'}); send a recording that "
            "includes them (limb leads I/II can be derived when II/III or I/III are present)"
        )


class HL7UnsupportedError(UnsupportedFormatError):
    """An HL7 v2 message that is not an ORU^R01 result, or carries no ECG waveform (AR 200)."""


class HL7MalformedError(MalformedECGError):
    """An HL7 v2 message whose structure is broken (bad segments, ED payload, size) (AE 100)."""


class HL7HeaderError(HL7MalformedError):
    """No MSH segment first, or a truncated MSH: nothing can be echoed, never resend it (AR 100)."""

    hl7_ack = "AR"


class HL7DelimiterError(HL7HeaderError):
    """MSH-1/MSH-2 are not a usable field separator and encoding characters (AR 102)."""

    hl7_error_code = "102"


class HL7CharsetError(HL7MalformedError):
    """MSH-18 names an unknown character set, or the bytes are not valid in it (AE 103)."""

    hl7_error_code = "103"  # table value not found (HL7 table 0211)


class HL7RequiredFieldError(HL7MalformedError):
    """A field the interface needs is empty, e.g. MSH-10, the message control ID (AE 101)."""

    hl7_error_code = "101"


class HL7WaveformError(BadWaveformError):
    """An HL7 v2 waveform OBX whose samples are unusable (not numbers, unequal leads, no rate) (AE 102)."""


class ConfigError(LasanError):
    """A configuration file or value is invalid."""


class CheckpointError(LasanError):
    """A checkpoint is missing, corrupt, or was written by an incompatible version."""


class ModelRepositoryError(LasanError):
    """A Triton model repository or one of its config.pbtxt files is invalid."""


class PrecisionGateError(ModelRepositoryError):
    """A bf16/int8 build moved validation AUROC or probabilities beyond the gate; nothing was written."""


class ServerError(LasanError):
    """The embedded Triton server could not start, or stopped unexpectedly."""


class ScoringError(LasanError):
    """Scoring an ECG through Triton failed."""


class TritonUnavailableError(ScoringError):
    """Triton is unreachable, or the requested model is not loaded and ready."""


class IntegrationError(LasanError):
    """A hospital-protocol failure (HL7/MLLP, DICOM networking, the durable queue)."""


class MLLPFramingError(IntegrationError):
    """Bytes received on an MLLP connection are not a valid frame."""


class HL7MessageError(IntegrationError):
    """An HL7 v2 exchange went wrong outside an ECG message (a reply that is not an ACK)."""


class ControlIDConflictError(IntegrationError):
    """A sender re-used a control ID (MSH-10, SOP Instance UID) for a different message: nothing
    was stored, the earlier message keeps the ID (AE 205 duplicate key, DICOM 0111 duplicate SOP instance)."""

    hl7_error_code = "205"  # HL7 table 0357: duplicate key identifier
    dicom_status = _0111_DUPLICATE_SOP_INSTANCE


class QueueStorageError(IntegrationError):
    """The durable queue could not store or update an item: nothing was kept (AE 207, DICOM A700)."""

    dicom_status = _A700_OUT_OF_RESOURCES


class DeliveryError(IntegrationError):
    """A result could not reach PACS or a FHIR server (down, refused): it stays queued and is retried."""


@dataclass(frozen=True)
class ProtocolAnswer:
    """How one error is answered on each protocol."""

    hl7_ack: str  # MSA-1: "AE" or "AR"
    hl7_error_code: str  # ERR-3: HL7 table 0357
    dicom_status: int  # C-STORE status


def protocol_answer(exc: BaseException) -> ProtocolAnswer:
    """The answer for ``exc``, from its class's attributes; anything else is an internal error."""
    cls = type(exc) if isinstance(exc, LasanError) else LasanError
    return ProtocolAnswer(cls.hl7_ack, cls.hl7_error_code, cls.dicom_status)
