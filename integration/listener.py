"""The HL7 v2 MLLP listener: receive, validate, store durably, then acknowledge.

:class:`HL7Intake` is the per-message logic (bytes in, ACK out) and knows nothing of
sockets; :class:`MLLPListener` is the asyncio server that frames bytes and calls it.
The intake is bound to the server when it starts (no registry).

Per message, in this order (Mirth's rule, "store before acknowledge"):

1. read MSH (sender, control ID, type, character set) - unreadable: ``AR``;
2. a control ID already stored for this sender: the stored ACK again, nothing else;
3. not an ORU^R01: ``AR`` 200; parse the waveform and check it can be scored - not: ``AE``;
4. write raw message + ACK to the durable queue (fsynced) - fails: ``AE``, never ``AA``;
5. answer ``AA`` with MSA-2 = MSH-10.

A handler error of any kind becomes an ACK with AE and an ERR segment; a framing error
closes the connection with a logged reason. The listener itself never dies of either.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lasan.errors import (
    BadWaveformError,
    ECGFormatError,
    HL7MessageError,
    LasanError,
    MalformedECGError,
    MissingLeadsError,
    MLLPFramingError,
    QueueStorageError,
    UnsupportedFormatError,
)
from lasan.integration.config import ListenerConfig
from lasan.integration.handoff import ParsedRecords
from lasan.integration.hl7_ack import AA, AE, AR, MessageHeader, build_ack, read_msh
from lasan.integration.logs import event
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import FrameTooLargeError, MLLPDecoder, decode_hl7, frame, read_block
from lasan.integration.queue import DurableQueue, IdempotencyKey
from lasan.record import ECGRecord

__all__ = ["HL7Intake", "MLLPListener", "validate_record", "error_to_ack_code"]

log = logging.getLogger("lasan.integration.listener")

ParseFn = Callable[[str], Any]  # returns an object with .record (HL7ECGMessage) or an ECGRecord


def validate_record(record: ECGRecord) -> None:
    """Check that ``record`` can be scored, with the client's own lead rule.

    Raises:
        MissingLeadsError: a model lead is absent and cannot be derived.
        BadWaveformError: samples are not finite numbers, or the recording is empty.
    """
    from lasan.client.request import wire_ecg  # the exact rule the scorer applies

    if record.n_samples < 2:
        raise BadWaveformError("the waveform has no samples; send a recorded ECG")
    if not np.isfinite(record.signal).all():
        raise BadWaveformError("the waveform contains values that are not finite numbers (NaN/inf); check the device export")
    wire_ecg(record)


def error_to_ack_code(exc: BaseException) -> tuple[str, str]:
    """Map an error to (MSA-1, HL7 table 0357 code)."""
    if isinstance(exc, HL7MessageError):
        return (AR if exc.reject else AE), exc.hl7_error_code
    if isinstance(exc, UnsupportedFormatError):
        return AR, "200"
    if isinstance(exc, MissingLeadsError):
        return AE, "101"
    if isinstance(exc, BadWaveformError):
        return AE, "102"
    if isinstance(exc, MalformedECGError):
        return AE, "100"
    return AE, "207"


class HL7Intake:
    """Turns one raw HL7 message into its ACK, storing accepted messages first.

    Thread-safe (runs in the listener's own intake threads so that parsing a large message
    and the fsync never block the event loop, and never wait behind the result worker's
    threads).
    """

    def __init__(
        self,
        config: ListenerConfig,
        queue: DurableQueue,
        metrics: Metrics,
        health: Health,
        parse: ParseFn | None = None,
        on_stored: Callable[[], None] | None = None,
        parsed: ParsedRecords | None = None,
    ) -> None:
        """``parse`` defaults to :func:`lasan.formats.hl7.parse_oru`; ``on_stored`` is called (from a
        worker thread) after a new message is stored, e.g. to wake the result worker; ``parsed``
        receives each stored message's record so the worker need not parse it again."""
        self.config, self.queue, self.metrics, self.health = config, queue, metrics, health
        self._on_stored = on_stored
        self._parsed = parsed
        if parse is None:
            from lasan.formats.hl7 import parse_oru

            parse = parse_oru
        self._parse = parse

    def _ack(self, header: MessageHeader | None, code: str, error_code: str | None = None, reason: str | None = None,
             **log_fields: Any) -> str:
        self.metrics.acks.labels(code).inc()
        level = logging.INFO if code == AA else logging.WARNING
        event("hl7.ack", level, log, code=code, control_id=header.control_id if header else None,
              sender=f"{header.sending_application}|{header.sending_facility}" if header else None,
              err=error_code, reason=reason, **log_fields)
        return build_ack(header, code, error_code=error_code, reason=reason,
                         application=self.config.application, facility=self.config.facility)

    def handle(self, raw: bytes, text: str) -> str:
        """The ACK for one decoded message (never raises)."""
        self.metrics.received.labels("hl7").inc()
        header: MessageHeader | None = None
        try:
            header = read_msh(text)
            key = IdempotencyKey(header.sending_application, header.sending_facility, header.control_id)
            earlier = self.queue.lookup(key)
            if earlier is not None and earlier.ack:
                self.metrics.acks.labels("duplicate").inc()
                event("hl7.duplicate", logging.INFO, log, control_id=header.control_id, item=earlier.item_id,
                      sender=f"{header.sending_application}|{header.sending_facility}")
                return earlier.ack
            if header.message_code != "ORU^R01":
                raise HL7MessageError(
                    f"message type {header.message_code or '(empty MSH-9)'} is not supported; "
                    "this interface accepts ORU^R01 ECG results only",
                    hl7_error_code="200",
                    reject=True,
                )
            parsed = self._parse(text)
            record = getattr(parsed, "record", parsed)
            if not isinstance(record, ECGRecord):
                raise HL7MessageError("the message carries no ECG waveform", hl7_error_code="101")
            validate_record(record)
            ack = build_ack(header, AA, application=self.config.application, facility=self.config.facility)
            outcome = self.queue.enqueue(key, raw, source="hl7", kind="hl7", ack=ack)
            if outcome.duplicate and outcome.ack:
                return outcome.ack
            if self._parsed is not None:
                self._parsed.put(outcome.item_id, record)
            if self._on_stored is not None:
                self._on_stored()
            self.metrics.acks.labels(AA).inc()
            event("hl7.ack", logging.INFO, log, code=AA, control_id=header.control_id, item=outcome.item_id,
                  sender=f"{header.sending_application}|{header.sending_facility}", leads=len(record.leads),
                  fs=record.fs)
            return ack
        except QueueStorageError as exc:
            self.health.error(str(exc))
            return self._ack(header, AE, "207", f"the message could not be stored ({exc}); nothing was kept, resend it later")
        except (LasanError, ECGFormatError) as exc:
            code, err = error_to_ack_code(exc)
            return self._ack(header, code, err, str(exc))
        except Exception as exc:  # noqa: BLE001 - STYLE rule 6: a handler bug must not kill the listener
            event("hl7.handler_bug", logging.ERROR, log, control_id=header.control_id if header else None,
                  exc_type=type(exc).__name__)
            return self._ack(header, AE, "207", f"internal error while reading the message ({type(exc).__name__}); "
                             "the message was not stored, resend it or contact the LASAN administrator")


class MLLPListener:
    """asyncio MLLP server bound to one :class:`HL7Intake`.

    Each message's intake (parse, validate, fsync) runs on the listener's own small thread
    pool, not asyncio's default executor: the result worker's threads (re-reading stored
    messages, its queue writes) use that one, and an ACK must never queue behind them.
    Messages on one connection are still answered strictly in order (MLLP is request /
    response per connection); the pool lets several connections be served at once.
    """

    def __init__(self, config: ListenerConfig, intake: HL7Intake, ssl_context: ssl.SSLContext | None = None,
                 *, intake_threads: int = 4) -> None:
        self.config, self.intake, self._ssl = config, intake, ssl_context
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._intake_threads = intake_threads
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (port 0 picks a free one)."""
        self._executor = ThreadPoolExecutor(self._intake_threads, thread_name_prefix="hl7-intake")
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port, ssl=self._ssl, limit=1 << 20
        )
        port = int(self._server.sockets[0].getsockname()[1])
        event("mllp.listening", logging.INFO, log, host=self.config.host, port=port, tls=self._ssl is not None)
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
        if self._executor is not None:
            # An intake still running (a timed-out message) finishes its store on its own.
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        decoder = MLLPDecoder(self.config.max_message_bytes)
        pending: list[bytes] = []
        count = 0
        reason = "peer closed"
        try:
            while True:
                try:
                    block = await read_block(
                        reader, decoder, pending,
                        idle_timeout_s=self.config.idle_timeout_s,
                        frame_timeout_s=self.config.message_timeout_s,
                    )
                except asyncio.TimeoutError:
                    reason = "frame timeout" if decoder.pending_bytes else "idle timeout"
                    break
                except FrameTooLargeError as exc:
                    reason = "frame too large"
                    self.intake.metrics.acks.labels(AR).inc()
                    event("mllp.frame_rejected", logging.WARNING, log, peer=peer_s, reason=str(exc))
                    await self._write(writer, build_ack(None, AR, error_code="207", reason=str(exc),
                                                        application=self.config.application))
                    break
                except MLLPFramingError as exc:
                    reason = str(exc)
                    break
                if decoder.discarded_bytes or decoder.truncated_frames:
                    event("mllp.discarded", logging.WARNING, log, peer=peer_s, bytes=decoder.discarded_bytes,
                          truncated_frames=decoder.truncated_frames, reason="bytes outside MLLP frames were skipped")
                    decoder.discarded_bytes = decoder.truncated_frames = 0
                if block is None:
                    break
                count += 1
                ack, codec = await self._answer(block, peer_s)
                if not await self._write(writer, ack, codec):
                    reason = "peer went away before the ACK"
                    break
        except asyncio.CancelledError:
            reason = "listener stopping"
        except Exception as exc:  # noqa: BLE001 - STYLE rule 6: one connection's failure stays with it
            reason = f"internal error {type(exc).__name__}"
            event("mllp.connection_error", logging.ERROR, log, peer=peer_s, exc_type=type(exc).__name__, exc=str(exc))
        finally:
            event("mllp.closed", logging.INFO, log, peer=peer_s, messages=count, reason=reason)
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _answer(self, block: bytes, peer: str) -> tuple[str, str]:
        try:
            text, codec = decode_hl7(block, self.config.default_charset)
        except MLLPFramingError as exc:
            header = None
            try:
                header = read_msh(block.decode("latin-1"))
            except HL7MessageError:
                pass
            self.intake.metrics.received.labels("hl7").inc()
            self.intake.metrics.acks.labels(AE).inc()
            event("hl7.ack", logging.WARNING, log, code=AE, peer=peer, err="102", reason=str(exc),
                  control_id=header.control_id if header else None)
            return build_ack(header, AE, error_code="102", reason=str(exc),
                             application=self.config.application), "latin-1"
        try:
            loop = asyncio.get_running_loop()
            ack = await asyncio.wait_for(loop.run_in_executor(self._executor, self.intake.handle, block, text),
                                         self.config.message_timeout_s)
        except asyncio.TimeoutError:
            reason = (f"the message was not processed within {self.config.message_timeout_s:g} s; resend it "
                      "(a re-sent control ID is never processed twice)")
            header = None
            try:
                header = read_msh(text)
            except HL7MessageError:
                pass
            self.intake.metrics.acks.labels(AE).inc()
            event("hl7.ack", logging.WARNING, log, code=AE, peer=peer, err="207", reason=reason,
                  control_id=header.control_id if header else None)
            ack = build_ack(header, AE, error_code="207", reason=reason, application=self.config.application)
        return ack, codec

    async def _write(self, writer: asyncio.StreamWriter, ack: str, codec: str = "utf-8") -> bool:
        try:
            writer.write(frame(ack, codec if codec != "ascii" else "latin-1"))
            await asyncio.wait_for(writer.drain(), self.config.message_timeout_s)
            return True
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            return False
