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
import os
import shutil
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from lasan.integration.config import AppConfig

__all__ = ["Metrics", "Health", "MetricsServer", "Probe", "tcp_probe", "disk_probe"]

# A dependency check: None while the dependency is fine, else what is wrong (no patient data).
Probe = Callable[[], "str | None"]
_PROBE_TIMEOUT_S = 2.0


def tcp_probe(host: str, port: int, what: str, timeout_s: float = _PROBE_TIMEOUT_S) -> Probe:
    """Fails while nothing accepts a TCP connection at ``host:port`` (connect, then close at once)."""

    def probe() -> str | None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return None
        except OSError as exc:
            return f"{what} {host}:{port} unreachable: {exc.strerror or type(exc).__name__}"

    return probe


def disk_probe(folder: Path, min_free_mb: float) -> Probe:
    """Fails while ``folder`` (or the nearest existing folder above it) is read-only, not writable or low on space."""

    def probe() -> str | None:
        path = folder
        while not path.exists() and path != path.parent:
            path = path.parent
        try:
            if os.statvfs(path).f_flag & os.ST_RDONLY:
                return f"{path} is on a read-only file system"
            if not os.access(path, os.W_OK | os.X_OK):
                return f"{path} is not writable by this process"
            free = shutil.disk_usage(path).free / 1e6
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        if free < min_free_mb:
            return f"{free:.0f} MB free at {path}, below {min_free_mb:g} MB (dicom.min_free_disk_mb)"
        return None

    return probe



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
        self.deliveries_sent = Counter("lasan_deliveries_sent", "PACS/FHIR deliveries completed, by target",
                                       ["target"], registry=r)
        self.deliveries_pending = Gauge("lasan_deliveries_pending",
                                        "PACS/FHIR deliveries waiting (target down or in backoff), by target",
                                        ["target"], registry=r)
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
    """What /health reports: the worker and listener update it, ``probes`` check each dependency.

    ``/health`` is "ok" only while every dependency is: the queue reads, Triton answered its
    last call and accepts connections, the downstream system accepts connections, the queue's
    disk is writable with space left. :meth:`watching` builds the probes from a configuration.
    """

    triton_reachable: bool | None = None  # None: not tried yet
    last_error: str | None = None
    last_error_at: float | None = None
    started_at: float = field(default_factory=time.time)
    probes: dict[str, Probe] = field(default_factory=dict)  # dependency name -> check, run at every /health

    def error(self, text: str) -> None:
        self.last_error, self.last_error_at = text, time.time()

    @classmethod
    def watching(cls, config: AppConfig) -> Health:
        """A Health with probes for ``config``'s Triton server(s), downstream system and queue disk."""
        health = cls()
        urls = config.triton.urls or (config.triton.url,)
        endpoints = [tcp_probe(*_host_port(url), "Triton") for url in urls]

        def triton() -> str | None:
            if health.triton_reachable is False:
                return "the last scoring call found Triton unavailable"
            failures = [f for f in (probe() for probe in endpoints) if f]
            # Several Tritons (failover): failing only when none of them is reachable.
            return "; ".join(failures) if len(failures) == len(endpoints) else None

        health.probes["triton"] = triton
        if config.downstream is not None:
            health.probes["downstream"] = tcp_probe(config.downstream.host, config.downstream.port, "downstream")
        if config.pacs is not None:  # results to PACS and FHIR wait (queued) while these are down
            health.probes["pacs"] = tcp_probe(config.pacs.host, config.pacs.port, "PACS")
        if config.fhir is not None and config.fhir.base_url:
            url = urllib.parse.urlsplit(config.fhir.base_url)
            port = url.port or (443 if url.scheme == "https" else 80)
            health.probes["fhir"] = tcp_probe(url.hostname or "", port, "FHIR server")
        storage = config.storage
        if getattr(storage, "queue_url", None) is None:
            health.probes["disk"] = disk_probe(storage.queue_db.parent, config.dicom.min_free_disk_mb)
        else:
            health.probes["disk"] = disk_probe(storage.outbox, config.dicom.min_free_disk_mb)
        return health

    def check(self) -> dict[str, dict[str, object]]:
        """Run every probe: ``{name: {"ok": bool, "detail": text or None}}`` (a probe that raises is failing)."""
        out: dict[str, dict[str, object]] = {}
        for name, probe in self.probes.items():
            try:
                detail = probe()
            except Exception as exc:  # noqa: BLE001 - a broken probe is a failing dependency, never a dead /health
                detail = f"check failed: {type(exc).__name__}: {exc}"
            out[name] = {"ok": detail is None, "detail": detail}
        return out


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.rpartition(":")
    return (host.strip("[]") or "localhost", int(port) if port.isdigit() else 8001)


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

    def _queue_counts(self) -> tuple[dict[str, int], str | None]:
        try:
            counts = self._counts()
            for state, n in counts.items():
                self._metrics.queue_depth.labels(state).set(n)
            return counts, None
        except Exception as exc:  # noqa: BLE001 - /health must answer even when the DB is broken
            self._health.error(f"queue unreadable: {exc}")
            return {}, f"queue unreadable: {exc}"

    def health_document(self) -> dict:
        """The /health JSON; blocking (probes connect and stat), so the server runs it in a thread."""
        counts, queue_error = self._queue_counts()
        h = self._health
        dependencies: dict[str, dict[str, object]] = {"queue": {"ok": queue_error is None, "detail": queue_error}}
        dependencies.update(h.check())
        if "triton" not in dependencies and h.triton_reachable is False:
            dependencies["triton"] = {"ok": False, "detail": "the last scoring call found Triton unavailable"}
        failing = sorted(name for name, dep in dependencies.items() if not dep["ok"])
        return {
            "status": "degraded" if failing else "ok",
            "failing": failing,
            "dependencies": dependencies,
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
                await asyncio.to_thread(self._queue_counts)  # refresh the queue gauges
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self._metrics.render()
            elif path.startswith("/health"):
                doc = await asyncio.to_thread(self.health_document)
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
