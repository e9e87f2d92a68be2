"""Can this input be scored? The one verdict every entry point and ``lasan inspect`` give.

An input is read in fixed steps, each raising a typed error from :mod:`lasan.errors`
whose class decides the protocol answer (``protocol_answer``):

1. :meth:`Reading.start`: detect the format (:func:`lasan.formats.detect_format`); for
   HL7 read the MSH header once (:func:`lasan.hl7.encoding.read_header`) and apply the
   interface's header rules (:func:`check_header`: MSH-10 present, ORU^R01 only);
2. :meth:`Reading.parse`: decode once, parse once (header, order context and record
   together), then :func:`validate_record` once.

The integration intake runs the steps one by one (it looks up duplicates between them);
``lasan inspect`` runs them all through :func:`read_checked`. So the same bytes get the
same verdict and the same reason everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lasan.errors import BadWaveformError, HL7RequiredFieldError, HL7UnsupportedError, MissingLeadsError
from lasan.formats import detect_format, read_ecg
from lasan.hl7.encoding import DecodedMessage, MessageHeader, decode_message, read_header
from lasan.hl7.oru import HL7ECGMessage, parse_oru
from lasan.leads import MODEL_LEADS, STANDARD_LEADS
from lasan.preprocessing import check_input
from lasan.record import ECGRecord

__all__ = [
    "ACCEPTED_MESSAGE",
    "ParsedInput",
    "Reading",
    "check_header",
    "read_checked",
    "validate_record",
]

ACCEPTED_MESSAGE = "ORU^R01"


@dataclass(frozen=True)
class ParsedInput:
    """An input read once: what later steps take instead of the bytes."""

    fmt: str  # "hl7" | "dicom" | "wfdb" | a vendor format (lasan.formats.VENDOR_FORMATS) | "fhir"
    record: ECGRecord
    message: HL7ECGMessage | None = None  # HL7: header and order context
    sop_instance_uid: str | None = None  # DICOM


def validate_record(record: ECGRecord) -> None:
    """Check that ``record`` can be scored (the rule the client applies when it builds a request).

    The 12 standard leads, or else the 8 model leads (I, II, V1-V6) once the missing limb
    leads are derived, as :func:`lasan.client.request.wire_ecg` sends them; and the model's
    input contract (:func:`lasan.preprocessing.check_input`, the code the served preprocess
    model runs: sampling rate 100-20000 Hz, at least 2 s), so that nothing the model would
    refuse is acknowledged AA and then fails without a result.

    Raises:
        BadWaveformError: the recording is empty or too short, samples are not finite numbers,
            or the sampling rate is outside what the model takes.
        MissingLeadsError: a model lead is absent and cannot be derived.
    """
    if record.n_samples < 2:
        raise BadWaveformError("the waveform has no samples; send a recorded ECG")
    if not np.isfinite(record.signal).all():
        raise BadWaveformError("the waveform contains values that are not finite numbers (NaN/inf); check the device export")
    if all(lead in record.leads for lead in STANDARD_LEADS):
        check_input(record.signal, record.fs, record.leads)
        return
    with np.errstate(over="ignore", invalid="ignore"):  # a derived lead that overflows is refused below
        check_input(record.signal, record.fs, record.leads)
        derived = record.with_derived_leads()
    missing = [lead for lead in MODEL_LEADS if lead not in derived.leads]
    if missing:
        raise MissingLeadsError(missing, record.leads)
    # The client sends derived limb leads (I = II - III, ...) as float32: a difference that
    # overflows float32 would reach the model as inf, which it refuses after the AA.
    if not np.isfinite(derived.signal).all():
        raise BadWaveformError("a limb lead derived from the others (I = II - III, II = I + III) is out of range; "
                               "check the device export's amplitude scale")


def check_header(header: MessageHeader) -> None:
    """The interface's rules on an HL7 header, before anything else is read.

    Raises:
        HL7RequiredFieldError: MSH-10 (the control ID, the idempotency key) is empty.
        HL7UnsupportedError: the message is not an ORU^R01 ECG result.
    """
    if not header.control_id:
        raise HL7RequiredFieldError(
            "MSH-10 (message control ID) is empty; the sender must give each message a unique control ID"
        )
    if header.message_code != ACCEPTED_MESSAGE:
        raise HL7UnsupportedError(
            f"message type {header.message_code or '(empty MSH-9)'} is not supported; "
            f"this interface accepts {ACCEPTED_MESSAGE} ECG results only"
        )


class Reading:
    """One input on its way to a verdict; see the module docstring for the steps."""

    def __init__(self, data: bytes | None, fmt: str, header: MessageHeader | None, path: Path | None) -> None:
        self.data, self.fmt, self.header, self._path = data, fmt, header, path

    @classmethod
    def start(cls, data: bytes | str | os.PathLike[str], *, suffix: str = "",
              default_charset: str = "utf-8") -> Reading:
        """Detect the format and, for HL7, read the header (then :attr:`header` is set).

        Args:
            data: the bytes as received, or a path (WFDB records are read from their path).
            suffix: the file name suffix, when the bytes came from a file (``.hl7``, ``.dcm``):
                it decides the format when the content does not.

        Raises:
            ECGFormatError: not a format LASAN reads; HL7HeaderError / HL7DelimiterError.
        """
        if isinstance(data, bytes):
            fmt = detect_format(data, suffix=suffix)
            header = read_header(data, default_charset=default_charset) if fmt == "hl7" else None
            return cls(data, fmt, header, None)
        path = Path(data)
        if path.is_file() and path.suffix.lower() not in (".hea", ".dat"):
            # A file's bytes take the path every entry point's bytes take (same reasons).
            return cls.start(path.read_bytes(), suffix=path.suffix.lower(), default_charset=default_charset)
        fmt = detect_format(path)  # a WFDB record, or a missing path / a folder (raises)
        return cls(None, fmt, None, path)

    def check(self) -> None:
        """The header rules (:func:`check_header`); nothing to check for other formats."""
        if self.header is not None:
            check_header(self.header)

    def parse(self) -> ParsedInput:
        """Decode once, parse once, validate once.

        Raises:
            ECGFormatError: any reader error (HL7CharsetError, HL7WaveformError, MalformedECGError, ...);
            BadWaveformError / MissingLeadsError from :func:`validate_record`.
        """
        parsed = self.read()
        validate_record(parsed.record)
        return parsed

    def read(self) -> ParsedInput:
        """Decode once and parse once, without :func:`validate_record` (``lasan inspect`` describes
        records it would refuse).

        Raises:
            ECGFormatError: any reader error.
        """
        if self.fmt == "hl7":
            assert self.data is not None and self.header is not None
            message = parse_oru(DecodedMessage(self.header, decode_message(self.data, self.header)))
            return ParsedInput("hl7", message.record, message=message)
        if self.fmt == "dicom":
            from lasan.formats.dicom import dataset_to_record, read_dicom_dataset

            assert self.data is not None
            ds = read_dicom_dataset(self.data)
            record = dataset_to_record(ds, what="the DICOM data")
            return ParsedInput("dicom", record, sop_instance_uid=str(ds.get("SOPInstanceUID", "") or "") or None)
        if self.fmt != "wfdb":  # one file's bytes: the vendor exports, FHIR
            assert self.data is not None
            return ParsedInput(self.fmt, read_ecg(self.data, fmt=self.fmt))
        from lasan.formats.wfdb_io import read_wfdb

        assert self._path is not None
        return ParsedInput("wfdb", read_wfdb(self._path))


def read_checked(data: bytes | str | os.PathLike[str], *, suffix: str = "", default_charset: str = "utf-8") -> ParsedInput:
    """Every step at once: the verdict ``lasan inspect`` shows (the intake runs the same steps).

    Raises:
        LasanError: the typed error that refuses the input (see :meth:`Reading.start` / :meth:`Reading.parse`).
    """
    reading = Reading.start(data, suffix=suffix, default_charset=default_charset)
    reading.check()
    return reading.parse()
