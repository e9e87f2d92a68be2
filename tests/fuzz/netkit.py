"""Shared parts of the protocol harnesses: the real server under test in a background thread,
the log events it wrote, a socket exchange with a hard bound, and the process's RSS.

The protocol contract (MLLP framing, DICOM association): whatever bytes arrive, the server
answers or closes the connection, never later than its own deadlines allow, never dies, and
serves the next connection; its memory does not grow with the number of inputs.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any

import psutil

__all__ = ["LoopThread", "EventLog", "exchange", "rss_mb"]


class LoopThread:
    """An asyncio loop in a daemon thread, so sync hypothesis tests can drive asyncio servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fuzz-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class EventLog(logging.Handler):
    """Collects the names of the structured events logged under ``logger`` (e.g. ``mllp.connection_error``)."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.DEBUG)
        self.names: list[str] = []
        self._logger = logging.getLogger(logger)
        self._old_level = self._logger.level
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(record.getMessage())

    def count(self, name: str) -> int:
        return self.names.count(name)

    def detach(self) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)


def exchange(port: int, chunks: list[bytes], *, half_close: bool, bound_s: float,
             source: str = "127.0.0.1") -> tuple[bytes, float, bool]:
    """Send ``chunks`` on a fresh connection, then read until the server closes.

    Returns ``(everything received, seconds until the close, closed)``; ``closed`` is False only
    when the server kept the connection past ``bound_s`` (the contract's "never hangs").
    """
    started = time.monotonic()
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=bound_s, source_address=(source, 0)) as s:
        try:
            for chunk in chunks:
                s.sendall(chunk)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close while we still send: that is an answer too
        return read_until_closed(s, received, started, bound_s)


def read_until_closed(s: socket.socket, received: bytearray, started: float,
                      bound_s: float) -> tuple[bytes, float, bool]:
    """Read until the server closes (or resets) the connection or ``bound_s`` since ``started`` pass.

    Returns what :func:`exchange` returns, ``received`` included.
    """
    while True:
        left = bound_s - (time.monotonic() - started)
        if left <= 0:
            return bytes(received), time.monotonic() - started, False
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except TimeoutError:
            return bytes(received), time.monotonic() - started, False
        except OSError:
            break  # reset by the server: closed
        if not data:
            break
        received += data
    return bytes(received), time.monotonic() - started, True


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6
