"""Prometheus metrics and the health endpoint.

One :class:`Metrics` per running app owns its own ``CollectorRegistry`` (no global
registry: two listeners in one test process must not share counters). A tiny asyncio
HTTP server answers ``GET /metrics`` (Prometheus text format) and ``GET /health``
(JSON: queue depth per state, whether Triton answered the last check, the last error).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "Health", "MetricsServer"]


class Metrics:
    """The listener's counters, gauges and histograms, on a private registry.

    ``node`` names this listener (``metrics.node``, default the hostname): with several
    listeners on one shared queue, ``lasan_node_*`` say which node did what, while the queue
    gauges describe the whole shared queue (every node reports the same numbers).
    """

    def __init__(self, node: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.node = node or socket.gethostname()
        Gauge("lasan_node_info", "1 for this listener node (join other series on the node label)", ["node"],
              registry=r).labels(self.node).set(1)
        self.node_scored = Counter("lasan_node_scored", "Results built by this node's worker, by node", ["node"],
                                   registry=r).labels(self.node)
        self.node_sent = Counter("lasan_node_sent", "Results this node's worker delivered, by node", ["node"],
                                 registry=r).labels(self.node)
        self.oldest_lease_age = Gauge(
            "lasan_queue_oldest_lease_age_seconds",
            "Age of the oldest live worker lease in the shared queue (0: none; NaN: queue unreadable)", registry=r)
        self.triton_endpoint_up = Gauge("lasan_triton_endpoint_up",
                                        "1 while a Triton server in triton.urls answers, 0 while it is skipped",
                                        ["url"], registry=r)
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

    def watch_queue(self, queue: object) -> None:
        """Read the oldest lease age from ``queue`` at every scrape (a queue without leases reads 0)."""
        age = getattr(queue, "oldest_lease_age_s", None)

        def read() -> float:
            if age is None:
                return 0.0
            try:
                value = age()
            except Exception:  # noqa: BLE001 - a scrape must answer while the database is down
                return math.nan
            return 0.0 if value is None else float(value)

        self.oldest_lease_age.set_function(read)

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
