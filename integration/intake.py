"""The one intake: every entry point (MLLP, DICOM C-STORE, watch folder) accepts input here.

:meth:`Intake.accept` takes the bytes as received (or a pydicom dataset) and its
:class:`Source`, and returns :class:`Accepted` or :class:`Refused`:

1. detect the format and read the HL7 header once (:class:`lasan.validation.Reading`);
2. the header rules (MSH-10 present, ORU^R01 only);
3. an HL7 control ID already stored for this sender: the stored ACK, nothing else, when the
   content digest matches; a :class:`~lasan.errors.ControlIDConflictError` (AE 205) when the
   control ID was used for a different message (see :func:`hl7_digest`);
4. decode, parse and validate once (the same steps ``lasan inspect`` runs);
5. store the bytes durably with the idempotency key and digest (and, for HL7, the AA to
   send), then hand the parsed record and order context to the worker (:mod:`.handoff`) and
   wake it. A DICOM SOP Instance UID stored before with other content (:func:`record_digest`)
   is a conflict too (DICOM 0x0111, rejected/ from the watch folder).

Any error on the way becomes a :class:`Refused` inside one context manager,
:meth:`Intake.attempt` (pynetdicom's ``attempt``): its answer on every protocol comes from
the error's class through :func:`lasan.errors.protocol_answer`. Each entry point keeps only
its small answer table (ACK + ERR, DICOM status, file move + reason file).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from lasan.errors import (
    ControlIDConflictError,
    LasanError,
    ProtocolAnswer,
    QueueStorageError,
    UnsupportedFormatError,
    protocol_answer,
)
from lasan.hl7.ack import AA, build_ack
from lasan.hl7.encoding import MessageHeader
from lasan.hl7.oru import OrderContext
from lasan.hl7.result import order_from_dicom
from lasan.integration.handoff import Handoff, ParsedRecords
from lasan.integration.logs import event
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import IdempotencyKey, Queue
from lasan.validation import ParsedInput, Reading

__all__ = ["Source", "Accepted", "Refused", "Outcome", "Parser", "Intake", "order_for", "read_stored", "hl7_digest",
           "record_digest"]

log = logging.getLogger("lasan.integration.intake")


class Parser(Protocol):
    """Step 4: decode, parse and validate a started reading (default: :meth:`Reading.parse`)."""

    def __call__(self, reading: Reading) -> ParsedInput: ...


@dataclass(frozen=True)
class Source:
    """Where an input came from.

    Attributes:
        channel: ``"hl7"`` (MLLP), ``"dicom"`` (C-STORE) or ``"watch"``; the queue's source and the metric label.
        formats: the formats this channel carries; anything else is refused (AR 200 / A900).
        suffix: the suffix the bytes are read as when their content does not say (``.hl7`` on MLLP).
        sender: the DICOM calling AE title (``WATCH`` for the watch folder), the first part
            of a DICOM object's idempotency key. HL7 keys come from MSH-3/4/10.
        control_id: a DICOM SOP Instance UID the protocol already gave (C-STORE request).
    """

    channel: str
    formats: tuple[str, ...] = ("hl7", "dicom")
    suffix: str = ""
    sender: str = ""
    control_id: str = ""


@dataclass(frozen=True)
class Accepted:
    """Stored (or stored before): the sender may be told so."""

    key: IdempotencyKey
    item_id: int
    kind: str  # "hl7" | "dicom"
    duplicate: bool  # already stored: nothing new was queued
    ack: str | None  # HL7: the AA stored with the item (a duplicate gets the first one, byte for byte)
    header: MessageHeader | None
    parsed: ParsedInput | None  # None when a duplicate was answered before parsing


@dataclass(frozen=True)
class Refused:
    """Not stored; ``answer`` says how each protocol answers, ``reason`` says why in words."""

    error: BaseException = field(repr=False)
    reason: str
    answer: ProtocolAnswer
    header: MessageHeader | None = None

    @property
    def control_id(self) -> str | None:
        return self.header.control_id if self.header is not None else None


Outcome = Accepted | Refused


def order_for(parsed: ParsedInput, key: IdempotencyKey) -> OrderContext:
    """The order a result goes back to: the HL7 message's own, or built from the DICOM object."""
    if parsed.message is not None:
        return parsed.message.order
    record = parsed.record
    return order_from_dicom(key.control_id, key.sender_app, record.patient, record.patient.accession_number or "",
                            record.acquisition.acquired_at)


def read_stored(raw: bytes, kind: str, key: IdempotencyKey, default_charset: str = "utf-8") -> Handoff:
    """Re-read a stored item (after a restart, or when the hand-off was dropped): once, as at intake.

    Raises:
        ECGFormatError: the stored bytes no longer read (they were validated before the ACK).
    """
    parsed = Reading.start(raw, suffix=".hl7" if kind == "hl7" else ".dcm", default_charset=default_charset).read()
    return Handoff(parsed.record, order_for(parsed, key))


def hl7_digest(data: bytes, header: MessageHeader) -> str:
    """sha256 (hex) of what an HL7 message says, to tell a re-send from a re-used MSH-10.

    The message as received minus what a genuine re-send may change: MLLP framing, a UTF-8
    byte-order mark, surrounding whitespace, the segment terminator (CR, LF or CRLF) and MSH-7
    (the time of the message, which some engines set again when they re-send). Everything else
    counts, so another patient, ECG or order under the same MSH-10 is a different message.
    """
    wide = bool(header.codec) and str(header.codec).replace("_", "-").lower().startswith(("utf-16", "utf-32"))
    if wide:  # compare the text: the header was read from it, not from the bytes
        data = data.decode(str(header.codec), errors="replace").encode("utf-8")
    body = data.strip(b"\x0b\x1c \t\r\n")
    body = body[3:] if body.startswith(b"\xef\xbb\xbf") else body
    segments = [s for s in body.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r") if s]
    # A narrow header is read as Latin-1, so its separator is one byte of the message.
    sep = header.field_separator.encode("utf-8" if wide else "latin-1", errors="replace")
    msh = segments[0].split(sep)
    if len(msh) > 6:
        msh[6] = b""  # MSH-7 (fields[0] is "MSH", MSH-1 is the separator itself)
    return hashlib.sha256(b"\r".join([sep.join(msh), *segments[1:]])).hexdigest()


def record_digest(parsed: ParsedInput) -> str:
    """sha256 (hex) of what a DICOM object (or an export file) says: patient, order and waveform
    as read, so that a re-send in another transfer syntax is still the same object."""
    record, patient = parsed.record, parsed.record.patient
    h = hashlib.sha256()
    for value in (patient.patient_id, patient.name, patient.birth_date, patient.sex, patient.accession_number,
                  record.acquisition.acquired_at, repr(record.fs), ",".join(record.leads)):
        h.update((value or "").encode("utf-8") + b"\x1f")
    h.update(record.signal.tobytes())
    return h.hexdigest()


def _conflict(key: IdempotencyKey, item_id: int) -> ControlIDConflictError:
    what = "MSH-10 (message control ID)" if key.sender_facility != "DICOM" else "SOP Instance UID"
    return ControlIDConflictError(
        f"control ID already used for a different message: {what} {key.control_id!r} from {key.sender_app} "
        f"(stored as item {item_id}); nothing was stored: give each new message its own control ID "
        "and resend it (an unchanged re-send gets the original acknowledgement)")


def _parse_reading(reading: Reading) -> ParsedInput:
    return reading.parse()


class _Attempt:
    """What :meth:`Intake.attempt` knows when an error arrives."""

    header: MessageHeader | None = None
    refused: Refused | None = None


def _dataset_bytes(dataset: Any) -> bytes:
    from pydicom import dcmwrite

    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


class Intake:
    """Accept → validate → store → hand over, for every entry point. Thread-safe.

    Args:
        application, facility: our MSH-3 / MSH-4 in the AA stored with an HL7 message.
        default_charset: the codec of an HL7 message whose MSH-18 is empty.
        parse: step 4 (tests inject failures here); :meth:`Reading.parse` by default.
        on_stored: called after a new item is stored (from the caller's thread), e.g. to wake the worker.
        handoff: receives each new item's parsed record and order so the worker need not read it again.
    """

    def __init__(
        self,
        queue: Queue,
        metrics: Metrics,
        health: Health,
        *,
        application: str = "LASAN",
        facility: str = "",
        default_charset: str = "utf-8",
        parse: Parser | None = None,
        on_stored: Callable[[], None] | None = None,
        handoff: ParsedRecords | None = None,
    ) -> None:
        self.queue, self.metrics, self.health = queue, metrics, health
        self.application, self.facility, self.default_charset = application, facility, default_charset
        self._parse: Parser = parse if parse is not None else _parse_reading
        self._on_stored = on_stored
        self._handoff = handoff

    @contextlib.contextmanager
    def attempt(self, state: _Attempt, source: Source) -> Iterator[None]:
        """Turn any error in the block into ``state.refused`` (never raises)."""
        try:
            yield
        except QueueStorageError as exc:
            self.health.error(str(exc))
            state.refused = Refused(exc, f"the message could not be stored ({exc}); nothing was kept, resend it later",
                                    protocol_answer(exc), state.header)
        except LasanError as exc:
            state.refused = Refused(exc, " ".join(str(exc).split()), protocol_answer(exc), state.header)
        except Exception as exc:  # noqa: BLE001 - STYLE rule 6: a handler bug must not kill a listener
            event("intake.handler_bug", logging.ERROR, log, channel=source.channel, exc_type=type(exc).__name__,
                  control_id=state.header.control_id if state.header else None)
            self.health.error(f"intake: {type(exc).__name__}")
            state.refused = Refused(
                exc, f"internal error while reading the message ({type(exc).__name__}); the message was not "
                "stored, resend it or contact the LASAN administrator", protocol_answer(exc), state.header)

    def refuse(self, error: LasanError, header: MessageHeader | None = None) -> Refused:
        """A refusal an entry point decides itself (frame too large, timeout), answered like any other."""
        return Refused(error, " ".join(str(error).split()), protocol_answer(error), header)

    def accept(self, data: bytes | Any, source: Source) -> Outcome:
        """Accept one input: bytes as received, or a pydicom ``Dataset``. Never raises."""
        self.metrics.received.labels(source.channel).inc()
        state = _Attempt()
        with self.attempt(state, source):
            return self._accept(data if isinstance(data, bytes) else _dataset_bytes(data), source, state)
        assert state.refused is not None
        return state.refused

    def _accept(self, data: bytes, source: Source, state: _Attempt) -> Accepted:
        reading = Reading.start(data, suffix=source.suffix, default_charset=self.default_charset)
        state.header = header = reading.header
        if reading.fmt not in source.formats:
            raise UnsupportedFormatError(
                f"this {source.channel} interface takes {' or '.join(f.upper() for f in source.formats)} "
                f"ECGs, not {reading.fmt.upper()}"
            )
        reading.check()
        key: IdempotencyKey | None = None
        digest: str | None = None
        if header is not None:
            # Answered before the waveform is read: a re-send costs one header read (and one hash).
            key = IdempotencyKey(header.sending_application, header.sending_facility, header.control_id)
            digest = hl7_digest(data, header)
            earlier = self.queue.lookup(key, digest=digest)
            if earlier is not None and earlier.conflict:
                raise _conflict(key, earlier.item_id)
            if earlier is not None and earlier.ack:
                return Accepted(key, earlier.item_id, "hl7", True, earlier.ack, header, None)
        parsed = self._parse(reading)
        if key is None:
            uid = source.control_id or parsed.sop_instance_uid or hashlib.sha256(data).hexdigest()[:40]
            key = IdempotencyKey(source.sender or source.channel.upper(), "DICOM", uid)
            digest = record_digest(parsed)
        ack = build_ack(header, AA, application=self.application, facility=self.facility) if header else None
        if parsed.message is not None and data[:1] == b"\x0b":
            # A file may hold one MLLP frame: the message is stored, not its framing bytes.
            data = data[1:data.rfind(b"\x1c")] if b"\x1c" in data else data[1:]
        outcome = self.queue.enqueue(key, data, source=source.channel, kind=parsed.fmt, ack=ack, digest=digest)
        if outcome.conflict:
            raise _conflict(key, outcome.item_id)
        if outcome.duplicate:
            return Accepted(key, outcome.item_id, parsed.fmt, True, outcome.ack or ack, header, parsed)
        if self._handoff is not None:
            self._handoff.put(outcome.item_id, Handoff(parsed.record, order_for(parsed, key)))
        if self._on_stored is not None:
            self._on_stored()
        return Accepted(key, outcome.item_id, parsed.fmt, False, ack, header, parsed)
