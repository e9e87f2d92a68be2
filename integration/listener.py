"""The HL7 v2 MLLP listener: frames in, ACKs out; everything else is the intake's.

:class:`MLLPListener` frames bytes and hands each block to the one intake
(:class:`lasan.integration.intake.Intake`), which reads, validates and stores it durably
before anything is acknowledged (Mirth's rule, "store before acknowledge"). What remains
here is the HL7 answer table, :meth:`MLLPListener.answer`: an outcome becomes its ACK
(``AA``; ``AE`` / ``AR`` with an ERR segment, codes from :func:`lasan.errors.protocol_answer`),
its metric and its log line, in one place.

A handler error of any kind becomes an ACK with AE and an ERR segment; a framing error
closes the connection with a logged reason. The listener itself never dies of either.

Connections are bounded (every refusal and close is logged with the peer and why):
``listener.max_connections`` in total and ``listener.max_connections_per_peer`` per IP
address (the next one is closed at once, before any TLS work); the TLS handshake and every
frame must finish within ``listener.frame_deadline_s`` of their first byte; a connection
closes ``listener.idle_timeout_s`` after its last complete frame. These are deadlines, not
inactivity timers, so a sender dripping a byte a second holds a connection no longer than
one who sends nothing (see :func:`lasan.integration.mllp.read_block`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lasan.errors import IntegrationError, LasanError, MLLPFramingError
from lasan.hl7.ack import AA, build_ack
from lasan.hl7.encoding import read_header
from lasan.integration.config import ListenerConfig
from lasan.integration.intake import Accepted, Intake, Outcome, Refused, Source
from lasan.integration.logs import event
from lasan.integration.mllp import FrameTooLargeError, MLLPDecoder, frame, read_block

__all__ = ["MLLPListener", "MLLP_SOURCE"]

log = logging.getLogger("lasan.integration.listener")

# What arrives on an MLLP connection is read as HL7, whatever its first bytes.
MLLP_SOURCE = Source("hl7", formats=("hl7",), suffix=".hl7")


class MLLPListener:
    """asyncio MLLP server bound to one :class:`~lasan.integration.intake.Intake` (when it starts, no registry).

    Each message's intake (parse, validate, fsync) runs on the listener's own small thread
    pool, not asyncio's default executor: the result worker's threads (re-reading stored
    messages, its queue writes) use that one, and an ACK must never queue behind them.
    Messages on one connection are still answered strictly in order (MLLP is request /
    response per connection); the pool lets several connections be served at once.
    """

    def __init__(self, config: ListenerConfig, intake: Intake, ssl_context: ssl.SSLContext | None = None,
                 *, intake_threads: int = 4) -> None:
        self.config, self.intake, self._ssl = config, intake, ssl_context
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._per_peer: dict[str, int] = {}  # open connections by peer IP address
        self._intake_threads = intake_threads
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port (port 0 picks a free one)."""
        self._executor = ThreadPoolExecutor(self._intake_threads, thread_name_prefix="hl7-intake")
        # TLS is started per connection (not start_server's ssl=): the connection limits apply
        # before any handshake work, and a failed handshake is logged with its peer and reason.
        self._server = await asyncio.start_server(
            self._on_connection, self.config.host, self.config.port, limit=1 << 20
        )
        port = int(self._server.sockets[0].getsockname()[1])
        c = self.config
        event("mllp.listening", logging.INFO, log, host=c.host, port=port, tls=self._ssl is not None,
              max_connections=c.max_connections, max_connections_per_peer=c.max_connections_per_peer,
              frame_deadline_s=c.frame_deadline_s, idle_timeout_s=c.idle_timeout_s)
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

    @property
    def open_connections(self) -> int:
        return sum(self._per_peer.values())

    def _admit(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` is refused, or None to admit it (and count it)."""
        c = self.config
        if self.open_connections >= c.max_connections:
            return f"listener.max_connections ({c.max_connections}) connections are open"
        if self._per_peer.get(ip, 0) >= c.max_connections_per_peer:
            return f"listener.max_connections_per_peer ({c.max_connections_per_peer}) connections are open from this address"
        self._per_peer[ip] = self._per_peer.get(ip, 0) + 1
        return None

    def _release(self, ip: str) -> None:
        left = self._per_peer.get(ip, 0) - 1
        if left > 0:
            self._per_peer[ip] = left
        else:
            self._per_peer.pop(ip, None)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        peer_s = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        refused = self._admit(ip)
        if refused is not None:
            event("mllp.connection_refused", logging.WARNING, log, peer=peer_s, reason=refused,
                  open=self.open_connections)
            writer.transport.abort()  # no handshake, no bytes read: the cheapest possible refusal
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            if self._ssl is not None and not await self._start_tls(writer, peer_s):
                return
            await self._serve(reader, writer, peer_s)
        finally:
            self._release(ip)
            if task is not None:
                self._connections.discard(task)

    async def _start_tls(self, writer: asyncio.StreamWriter, peer: str) -> bool:
        """The server side of the TLS handshake, bounded by ``frame_deadline_s``; a failure is logged."""
        try:
            await writer.start_tls(self._ssl, ssl_handshake_timeout=self.config.frame_deadline_s)  # type: ignore[arg-type]
            return True
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except ssl.SSLError as exc:
            reason = exc.reason or exc.strerror or str(exc)  # e.g. WRONG_VERSION_NUMBER, TLSV1_ALERT_UNKNOWN_CA
        except (asyncio.TimeoutError, TimeoutError, ConnectionAbortedError) as exc:
            # asyncio reports its own handshake timeout as ConnectionAbortedError("... taking longer than ...").
            if isinstance(exc, ConnectionAbortedError) and "longer than" not in str(exc):
                reason = f"connection aborted during the handshake: {exc}"
            else:
                reason = f"handshake not finished within listener.frame_deadline_s ({self.config.frame_deadline_s:g} s)"
        except (OSError, EOFError) as exc:
            # A client that does not trust our certificate usually just closes (its alert is lost in the reset).
            reason = (f"{type(exc).__name__}: {exc}" if str(exc) else
                      f"peer closed the connection during the handshake ({type(exc).__name__}; "
                      "does it trust our certificate?)")
        event("mllp.tls_failed", logging.WARNING, log, peer=peer, reason=reason)
        writer.transport.abort()
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer_s: str) -> None:
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
                        frame_timeout_s=self.config.frame_deadline_s,
                    )
                except asyncio.TimeoutError:
                    reason = (f"frame deadline: a frame unfinished {self.config.frame_deadline_s:g} s after its first byte"
                              if decoder.in_frame else
                              f"idle timeout: no complete frame for {self.config.idle_timeout_s:g} s")
                    break
                except FrameTooLargeError as exc:
                    reason = "frame too large"
                    ack, codec = self.answer(self.intake.refuse(exc), peer_s)
                    await self._write(writer, ack, codec)
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

    async def _answer(self, block: bytes, peer: str) -> tuple[str, str]:
        try:
            loop = asyncio.get_running_loop()
            outcome = await asyncio.wait_for(loop.run_in_executor(self._executor, self.intake.accept, block, MLLP_SOURCE),
                                             self.config.message_timeout_s)
        except asyncio.TimeoutError:
            try:
                header = read_header(block)
            except LasanError:
                header = None
            outcome = self.intake.refuse(IntegrationError(
                f"the message was not processed within {self.config.message_timeout_s:g} s; resend it "
                "(a re-sent control ID is never processed twice)"), header)
        return self.answer(outcome, peer)

    def answer(self, outcome: Outcome, peer: str = "") -> tuple[str, str]:
        """The HL7 answer table: ``(ACK text, codec to send it in)``, its metric and its log line."""
        header = outcome.header
        # Answer in the sender's character set when it is known, else in Latin-1 (ASCII-safe, never fails).
        codec = header.codec if header is not None and header.codec not in (None, "ascii") else "latin-1"
        ids: dict[str, Any] = {"control_id": header.control_id if header else None, "sender": header.sender if header else None,
               "peer": peer or None}
        if isinstance(outcome, Accepted):
            assert outcome.ack is not None
            if outcome.duplicate and outcome.parsed is None:
                self.intake.metrics.acks.labels("duplicate").inc()
                event("hl7.duplicate", logging.INFO, log, item=outcome.item_id, **ids)
                return outcome.ack, codec
            self.intake.metrics.acks.labels(AA).inc()
            record = outcome.parsed.record if outcome.parsed else None
            event("hl7.ack", logging.INFO, log, code=AA, item=outcome.item_id, duplicate=outcome.duplicate,
                  leads=len(record.leads) if record else None, fs=record.fs if record else None, **ids)
            return outcome.ack, codec
        assert isinstance(outcome, Refused)
        code, err = outcome.answer.hl7_ack, outcome.answer.hl7_error_code
        self.intake.metrics.acks.labels(code).inc()
        event("hl7.ack", logging.WARNING, log, code=code, err=err, reason=outcome.reason,
              error=type(outcome.error).__name__, **ids)
        ack = build_ack(header, code, error_code=err, reason=outcome.reason,
                        application=self.config.application, facility=self.config.facility)
        return ack, codec

    async def _write(self, writer: asyncio.StreamWriter, ack: str, codec: str = "utf-8") -> bool:
        try:
            writer.write(frame(ack, codec if codec != "ascii" else "latin-1"))
            await asyncio.wait_for(writer.drain(), self.config.message_timeout_s)
            return True
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            return False
