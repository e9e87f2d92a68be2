"""Prometheus metrics and the health endpoint.

One :class:`Metrics` per running app owns its own ``CollectorRegistry`` (no global
registry: two listeners in one test process must not share counters). A tiny asyncio
HTTP server answers ``GET /metrics`` (Prometheus text format) and ``GET /health``
(JSON: queue depth per state, whether Triton answered the last check, the last error).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "Health", "MetricsServer"]


class Metrics:
    """The listener's counters, gauges and histograms, on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("lasan_messages_received", "Messages received, by source", ["source"], registry=r)
        self.acks = Counter("lasan_acks", "Acknowledgements returned, by code (AA/AE/AR or DICOM status)",
                            ["code"], registry=r)
        self.queue_depth = Gauge("lasan_queue_depth", "Queue items by state", ["state"], registry=r)
        self.scoring_latency = Histogram(
            "lasan_scoring_latency_seconds", "Time to score one ECG through Triton", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.results_sent = Counter("lasan_results_sent", "Result messages delivered downstream", registry=r)
        self.retries = Counter("lasan_retries", "Retries scheduled, by stage", ["stage"], registry=r)
        self.failures = Counter("lasan_failed_items", "Items that can never be scored", registry=r)
        self.triton_up = Gauge("lasan_triton_up", "1 when the last Triton call succeeded", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Health:
    """What /health reports; the worker and listener update it."""

    triton_reachable: bool | None = None  # None: not tried yet
    last_error: str | None = None
    last_error_at: float | None = None
    started_at: float = field(default_factory=time.time)

    def error(self, text: str) -> None:
        self.last_error, self.last_error_at = text, time.time()


class MetricsServer:
    """``/metrics`` and ``/health`` over plain HTTP/1.0 on asyncio (no framework needed for two GETs)."""

    def __init__(self, metrics: Metrics, health: Health, queue_counts: Callable[[], dict[str, int]]) -> None:
        self._metrics, self._health, self._counts = metrics, health, queue_counts
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def health_document(self) -> dict:
        try:
            counts = self._counts()
            for state, n in counts.items():
                self._metrics.queue_depth.labels(state).set(n)
        except Exception as exc:  # noqa: BLE001 - /health must answer even when the DB is broken
            counts = {}
            self._health.error(f"queue unreadable: {exc}")
        h = self._health
        ok = bool(counts) and h.triton_reachable is not False
        return {
            "status": "ok" if ok else "degraded",
            "queue": counts,
            "queue_depth": counts.get("received", 0) + counts.get("scored", 0),
            "triton_reachable": h.triton_reachable,
            "last_error": h.last_error,
            "last_error_at": h.last_error_at,
            "uptime_s": round(time.time() - h.started_at, 1),
        }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = line[1] if len(line) >= 2 else "/"
            if line and line[0] != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path.startswith("/metrics"):
                self.health_document()  # refresh the queue gauges
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self._metrics.render()
            elif path.startswith("/health"):
                doc = self.health_document()
                status = "200 OK" if doc["status"] == "ok" else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps(doc).encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics or /health\n"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
