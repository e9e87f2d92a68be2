"""MLLP (Minimal Lower Layer Protocol) framing for HL7 v2 over TCP.

A frame is ``VT <message bytes> FS CR``. This module knows only bytes: :class:`MLLPDecoder`
is a sans-IO decoder that takes whatever arrived from a socket and yields complete
blocks (frames split across reads, several frames in one read, garbage between frames,
an oversize limit); :func:`read_block` drives it from an asyncio stream, and
:class:`MLLPClient` sends a message and waits for the answer's bytes (used for the
downstream results feed and by tests). Character sets, headers and ACKs are HL7, and
live in :mod:`lasan.hl7`.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from lasan.errors import MLLPFramingError

__all__ = [
    "START_BLOCK",
    "END_BLOCK",
    "CARRIAGE_RETURN",
    "DEFAULT_MAX_FRAME_BYTES",
    "MLLPDecoder",
    "FrameTooLargeError",
    "frame",
    "read_block",
    "MLLPClient",
]

START_BLOCK = b"\x0b"  # VT
END_BLOCK = b"\x1c"  # FS
CARRIAGE_RETURN = b"\x0d"  # CR
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 64 * 1024


class FrameTooLargeError(MLLPFramingError):
    """A frame grew past the configured size limit; the connection cannot be resynchronised cheaply."""

    hl7_ack = "AR"  # resending the same frame can never succeed


@dataclass
class MLLPDecoder:
    """Incremental MLLP decoder: ``feed(data)`` returns the complete blocks found so far.

    Bytes outside a frame (line noise, a sender that forgot VT) are skipped and counted
    in :attr:`discarded_bytes` so the caller can log them. A frame whose end is ``FS``
    without the trailing ``CR`` is still accepted (a common sender bug) once the next
    byte arrives or the stream ends; the lenient rule costs nothing and avoids stalling.
    A VT inside an unfinished frame means the sender abandoned that frame: it is dropped
    (counted in :attr:`truncated_frames`) and decoding restarts at the new VT.

    Raises:
        FrameTooLargeError: from :meth:`feed` when an unfinished frame exceeds ``max_frame_bytes``.
    """

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    discarded_bytes: int = 0
    truncated_frames: int = 0  # frames abandoned because a new VT began before their FS
    _buffer: bytearray = field(default_factory=bytearray, repr=False)
    _in_frame: bool = False
    _swallow_cr: bool = False  # the last frame ended at a read boundary: its CR may come next

    def feed(self, data: bytes) -> list[bytes]:
        blocks: list[bytes] = []
        if self._swallow_cr and data[:1] == CARRIAGE_RETURN:
            data = data[1:]
        self._swallow_cr = False
        self._buffer += data
        while True:
            if not self._in_frame:
                start = self._buffer.find(START_BLOCK)
                if start < 0:
                    self.discarded_bytes += len(self._buffer)
                    self._buffer.clear()
                    return blocks
                self.discarded_bytes += start
                del self._buffer[: start + 1]
                self._in_frame = True
            end = self._buffer.find(END_BLOCK)
            restart = self._buffer.find(START_BLOCK, 0, end if end >= 0 else len(self._buffer))
            if restart >= 0:
                # VT never occurs inside HL7 text: a new frame began before the last one
                # ended, so the sender gave up on it (truncated). Resynchronise on the new VT.
                self.truncated_frames += 1
                self.discarded_bytes += restart + 1
                del self._buffer[: restart + 1]
                continue
            if end < 0:
                if len(self._buffer) > self.max_frame_bytes:
                    size = len(self._buffer)
                    self._buffer.clear()
                    self._in_frame = False
                    raise FrameTooLargeError(
                        f"MLLP frame exceeds the {self.max_frame_bytes} byte limit (received {size} bytes "
                        "without an end-of-block); split the message or raise listener.max_message_bytes"
                    )
                return blocks
            if end > self.max_frame_bytes:
                self._buffer.clear()
                self._in_frame = False
                raise FrameTooLargeError(
                    f"MLLP frame of {end} bytes exceeds the {self.max_frame_bytes} byte limit; "
                    "split the message or raise listener.max_message_bytes"
                )
            blocks.append(bytes(self._buffer[:end]))
            cut = end + 1
            if self._buffer[cut : cut + 1] == CARRIAGE_RETURN:
                cut += 1
            elif cut == len(self._buffer):
                self._swallow_cr = True
            del self._buffer[:cut]
            self._in_frame = False

    @property
    def in_frame(self) -> bool:
        """True between a frame's VT and its FS (even before any of its payload arrived)."""
        return self._in_frame

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished frame (non-zero at EOF means a truncated frame)."""
        return len(self._buffer) if self._in_frame else 0


def frame(message: str | bytes, encoding: str = "utf-8") -> bytes:
    """Wrap one HL7 message in MLLP framing (segments must already end with CR)."""
    # errors="replace": an ACK's free-text reason must never make the answer itself fail.
    payload = message.encode(encoding, errors="replace") if isinstance(message, str) else message
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


async def read_block(
    reader: asyncio.StreamReader,
    decoder: MLLPDecoder,
    pending: list[bytes],
    *,
    idle_timeout_s: float | None = None,
    frame_timeout_s: float | None = None,
) -> bytes | None:
    """The next complete MLLP block from ``reader``, or None at a clean end of stream.

    ``pending`` holds blocks already decoded but not yet returned (several frames in one
    read); pass the same list on every call for one connection.

    Both limits are deadlines fixed when they start, never timers that data re-arms, so a
    sender dripping one byte a second cannot hold the connection: ``idle_timeout_s`` runs
    from this call (the previous frame's end) until a frame begins, and bytes outside a
    frame do not extend it; ``frame_timeout_s`` runs from the first byte of a frame (its VT)
    to its end, and neither more bytes nor an abandoned frame restarted by a new VT
    extend it.

    Raises:
        FrameTooLargeError: a frame exceeded the decoder's limit.
        MLLPFramingError: the stream ended inside a frame (truncated message).
        asyncio.TimeoutError: the idle or frame deadline passed (``decoder.in_frame`` says which).
    """
    loop = asyncio.get_running_loop()
    idle_deadline = None if idle_timeout_s is None else loop.time() + idle_timeout_s
    frame_deadline: float | None = None
    while not pending:
        if decoder.in_frame and frame_timeout_s is not None and frame_deadline is None:
            frame_deadline = loop.time() + frame_timeout_s
        deadline = frame_deadline if frame_deadline is not None else idle_deadline
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        data = await asyncio.wait_for(reader.read(_READ_CHUNK), timeout)
        if not data:
            if decoder.pending_bytes:
                raise MLLPFramingError(
                    f"connection closed inside an MLLP frame ({decoder.pending_bytes} bytes without end-of-block); "
                    "the message was truncated and is not stored"
                )
            return None
        pending.extend(decoder.feed(data))
    return pending.pop(0)


class MLLPClient:
    """A persistent MLLP connection that sends a message and waits for its reply.

    Reconnects lazily after an error. Not safe for concurrent ``send`` calls: one
    message in flight at a time, as MLLP's original-mode acknowledgement requires.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 30.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        encoding: str = "utf-8",
    ) -> None:
        self.host, self.port = host, port
        self._ssl = ssl_context
        self._timeout = timeout_s
        self._max = max_frame_bytes
        self._encoding = encoding
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = MLLPDecoder(max_frame_bytes)
        self._pending: list[bytes] = []

    async def send(self, message: str | bytes) -> bytes:
        """Send one message, return the reply's bytes (normally an ACK: :func:`lasan.hl7.ack.parse_ack` reads them).

        Raises:
            OSError / asyncio.TimeoutError: the peer is unreachable or did not answer in time
                (the connection is dropped so the next call reconnects).
            MLLPFramingError: the reply was not a valid frame.
        """
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, ssl=self._ssl), self._timeout
                )
                self._decoder = MLLPDecoder(self._max)
                self._pending = []
            assert self._reader is not None and self._writer is not None
            self._writer.write(frame(message, self._encoding))
            await asyncio.wait_for(self._writer.drain(), self._timeout)
            block = await asyncio.wait_for(read_block(self._reader, self._decoder, self._pending), self._timeout)
            if block is None:
                raise ConnectionResetError(f"{self.host}:{self.port} closed the connection without a reply")
            return block
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                pass

    async def __aenter__(self) -> MLLPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
