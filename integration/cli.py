"""``lasan listen --config FILE.yaml``: run every enabled intake plus the result worker.

:class:`IntegrationApp` wires the parts together from one validated config: the durable
queue, the HL7 MLLP listener, the DICOM receiver, the watch folder, the worker and the
metrics/health endpoint. SIGTERM or SIGINT stops intake first, lets the worker finish
its current pass, then closes the queue; anything unfinished is simply still queued
and resumes on the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import threading
from typing import Any

from lasan.integration.config import AppConfig, load_config, server_ssl_context
from lasan.integration.handoff import ParsedRecords
from lasan.integration.intake import Intake
from lasan.integration.logs import configure_logging, event
from lasan.integration.metrics import Health, Metrics, MetricsServer
from lasan.integration.queue import open_queue
from lasan.integration.stages import ScorerFactory

__all__ = ["IntegrationApp", "configure", "run", "serve"]

log = logging.getLogger("lasan.integration.cli")


class IntegrationApp:
    """All enabled parts of the integration engine, started and stopped together.

    Args:
        scorer_factory: builds the async scorer (default: :class:`lasan.client.api.AsyncTritonScorer`
            from ``config.triton``).
    """

    def __init__(self, config: AppConfig, *, scorer_factory: ScorerFactory | None = None) -> None:
        self.config = config
        self.metrics = Metrics(config.metrics.node)
        self.health = Health.watching(config)  # /health probes Triton, downstream and the queue disk
        self.queue = open_queue(config.storage)
        self.metrics.watch_queue(self.queue)
        self._scorer_factory = scorer_factory
        self.ports: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        self._parts: list[Any] = []
        self._worker_thread: threading.Thread | None = None

    async def start(self) -> dict[str, int]:
        """Start everything; returns the bound ports by part name.

        Raises:
            ConfigError: TLS material cannot be loaded.
            OSError: a port is in use.
        """
        from lasan.integration.worker import ResultWorker

        cfg = self.config
        # The intake hands its parsed records to the worker (parse once, see handoff.py).
        parsed = ParsedRecords()
        self.worker = ResultWorker(cfg, self.queue, self.metrics, self.health, self._scorer_factory, parsed=parsed)
        # One intake for every entry point; worker.wake is thread-safe (intake and pynetdicom threads).
        self.intake = Intake(self.queue, self.metrics, self.health, application=cfg.listener.application,
                             facility=cfg.listener.facility, default_charset=cfg.listener.default_charset,
                             on_stored=self.worker.wake, handoff=parsed)

        if cfg.listener.enabled:
            from lasan.integration.listener import MLLPListener

            ctx = server_ssl_context(cfg.listener.tls) if cfg.listener.tls else None
            self.listener = MLLPListener(cfg.listener, self.intake, ctx)
            self.ports["hl7"] = await self.listener.start()
            self._parts.append(self.listener)
        if cfg.dicom.enabled:
            from lasan.integration.dicom_receiver import DicomReceiver

            self.dicom = DicomReceiver(cfg.dicom, self.intake, disk_path=cfg.storage.queue_db.parent)
            self.ports["dicom"] = await asyncio.to_thread(self.dicom.start)
            self._parts.append(self.dicom)
        if cfg.watch.enabled:
            from lasan.integration.watch import WatchFolder

            self.watch = WatchFolder(cfg.watch, self.intake)
            self.watch.prepare()
            self._tasks.append(asyncio.create_task(self.watch.run(), name="watch"))
            self._parts.append(self.watch)
        from lasan.integration.retention import RetentionJob

        # Patient data is kept only for storage.retention_days (docs/privacy.md).
        self.retention = RetentionJob(cfg, self.queue, on_error=self.health.error)
        self._tasks.append(asyncio.create_task(self.retention.run(), name="retention"))
        self._parts.append(self.retention)
        if cfg.metrics.enabled:
            self.metrics_server = MetricsServer(self.metrics, self.health, self.queue.counts)
            self.ports["metrics"] = await self.metrics_server.start(cfg.metrics.host, cfg.metrics.port)
            self._parts.append(self.metrics_server)
        # The worker gets its own thread and event loop: its gRPC calls, result building and
        # PDF rendering then never hold up this loop, which only frames and answers ACKs.
        self._worker_thread = self.worker.start_thread()
        ports: dict[str, Any] = {f"{k}_port": v for k, v in self.ports.items()}
        event("listen.ready", logging.INFO, log, queue_depth=self.queue.depth(), **ports)
        return dict(self.ports)

    async def stop(self) -> None:
        """Stop intake, then the worker; close the queue."""
        for part in self._parts:
            with contextlib.suppress(Exception):
                result = part.stop()
                if asyncio.iscoroutine(result):
                    await result
        if hasattr(self, "worker"):
            self.worker.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        if self._worker_thread is not None:
            await asyncio.to_thread(self._worker_thread.join, 30)
        self.queue.close()
        event("listen.stopped", logging.INFO, log)


async def serve(config: AppConfig) -> int:
    """Run until SIGTERM / SIGINT; returns the exit status."""
    app = IntegrationApp(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    event("listen.stopping", logging.INFO, log, reason="signal")
    await app.stop()
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.yaml",
                        help="the listener configuration (see configs/listener.example.yaml)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.check:
        print(f"{args.config}: configuration is valid")
        return 0
    configure_logging(config.logging.format, "DEBUG" if getattr(args, "verbose", False) else config.logging.level,
                      config.logging.file)
    return asyncio.run(serve(config))
