"""Every error LASAN raises on purpose.

One base class so that callers (the CLI, the HL7 listener, the Triton preprocess
model) can catch "anything we explained" apart from bugs. Messages are written for a
clinical IT engineer: what was wrong with the input, and what to do about it.

    LasanError
    ├── ECGFormatError            an ECG file or message could not be turned into a record
    │   ├── UnsupportedFormatError    not an ECG format we read (wrong SOP class, not HL7, ...)
    │   │   └── HL7UnsupportedError       an HL7 message that is not an ORU with an ECG waveform
    │   ├── MalformedECGError         the container is broken (truncated DICOM, HL7 without MSH)
    │   │   └── HL7MalformedError         no MSH, bad encoding characters, bad charset, too large
    │   ├── BadWaveformError          the waveform itself is unusable (NaN, unequal leads, too short)
    │   │   └── HL7WaveformError          NA values that are not numbers, leads of unequal length
    │   └── MissingLeadsError         leads the model needs are absent and cannot be derived
    ├── ConfigError               a YAML / model / build configuration is invalid
    ├── CheckpointError           a checkpoint file is missing, corrupt or incompatible
    ├── ModelRepositoryError      a Triton model repository or config.pbtxt is invalid
    ├── ServerError               the embedded Triton server could not start or stopped
    ├── ScoringError              scoring through Triton failed
    │   └── TritonUnavailableError    the server is unreachable or the model is not ready
    └── IntegrationError          hospital-protocol failures (HL7/MLLP, DICOM network, queue)
        ├── MLLPFramingError          bytes on the wire are not a valid MLLP frame
        ├── HL7MessageError           the HL7 message is malformed or not an ECG result
        └── QueueStorageError         the durable queue could not store or update an item

This module is pure Python on purpose: it is copied into the Triton preprocess model.
"""

from __future__ import annotations

__all__ = [
    "LasanError",
    "ECGFormatError",
    "UnsupportedFormatError",
    "MalformedECGError",
    "BadWaveformError",
    "MissingLeadsError",
    "HL7UnsupportedError",
    "HL7MalformedError",
    "HL7WaveformError",
    "ConfigError",
    "CheckpointError",
    "ModelRepositoryError",
    "ServerError",
    "ScoringError",
    "TritonUnavailableError",
    "IntegrationError",
    "MLLPFramingError",
    "HL7MessageError",
    "QueueStorageError",
]


class LasanError(Exception):
    """Base class of every error LASAN raises deliberately."""


class ECGFormatError(LasanError):
    """An ECG file or message could not be turned into an ECG record."""


class UnsupportedFormatError(ECGFormatError):
    """The input is not an ECG format LASAN reads (or not an ECG at all)."""


class MalformedECGError(ECGFormatError):
    """The container (DICOM dataset, HL7 message, WFDB header) is broken."""


class BadWaveformError(ECGFormatError):
    """The waveform samples are unusable: NaN, unequal lead lengths, too short, ..."""


class MissingLeadsError(ECGFormatError):
    """Leads the model needs are absent and cannot be derived from the others."""

    def __init__(self, missing: tuple[str, ...] | list[str], available: tuple[str, ...] | list[str]):
        self.missing = tuple(missing)
        self.available = tuple(available)
        super().__init__(
            f"the ECG lacks lead(s) {', '.join(self.missing)} that the model needs "
            f"(found: {', '.join(self.available) or 'none'}); send a recording that "
            "includes them (limb leads I/II can be derived when II/III or I/III are present)"
        )


class HL7UnsupportedError(UnsupportedFormatError):
    """An HL7 v2 message that is not an ORU result, or carries no ECG waveform."""

    hl7_error_code = "200"  # HL7 table 0357: unsupported message type / content


class HL7MalformedError(MalformedECGError):
    """An HL7 v2 message whose structure is broken (no MSH, bad delimiters, charset, size)."""

    hl7_error_code = "100"  # HL7 table 0357: segment sequence / structure error


class HL7WaveformError(BadWaveformError):
    """An HL7 v2 waveform OBX whose samples are unusable (not numbers, unequal leads, no rate)."""

    hl7_error_code = "102"  # HL7 table 0357: data type error


class ConfigError(LasanError):
    """A configuration file or value is invalid."""


class CheckpointError(LasanError):
    """A checkpoint is missing, corrupt, or was written by an incompatible version."""


class ModelRepositoryError(LasanError):
    """A Triton model repository or one of its config.pbtxt files is invalid."""


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
    """An HL7 v2 message is malformed, or is not an ECG result we can score."""

    def __init__(self, message: str, *, hl7_error_code: str = "207", reject: bool = False):
        # HL7 table 0357 codes: 100 segment sequence, 101 required field missing,
        # 102 data type error, 200 unsupported message type, 207 application internal error.
        self.hl7_error_code = hl7_error_code
        self.reject = reject  # True -> AR (message can never be processed), else AE
        super().__init__(message)


class QueueStorageError(IntegrationError):
    """The durable queue could not store or update an item."""
