"""The worker: score queued ECGs through Triton and deliver each result exactly once.

:class:`ResultWorker` schedules; the work is in two stages (:mod:`.stages`): the
:class:`~lasan.integration.stages.ScoringStage` (``received`` -> ``scored``, several in
flight) and the :class:`~lasan.integration.stages.DeliveryStage` (``scored`` -> ``sent``,
one at a time, in queue order). Each is driven only by what is in the durable queue.

Delivery guarantee: a crash after the downstream system received a result but before
``sent`` was committed re-sends the *identical* message (same MSH-10, same content) on
restart. Downstream systems must de-duplicate on MSH-10, as HL7 original-mode
acknowledgement expects; with that, each ACKed message yields exactly one result.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable

from lasan.integration.config import AppConfig
from lasan.integration.deliveries import targets
from lasan.integration.handoff import ParsedRecords
from lasan.integration.logs import event
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import Queue, QueueItem
from lasan.integration.stages import Bookkeeping, DeliveryStage, ScorerFactory, ScoringStage, backoff_delay

__all__ = ["ResultWorker", "backoff_delay"]

log = logging.getLogger("lasan.integration.worker")

_MAX_PASS_ITEMS = 256  # newly stored items join a running pass until it holds this many


class ResultWorker:
    """Drains the queue until :meth:`stop`; see the module docstring for the guarantees.

    :meth:`wake` and :meth:`stop` may be called from any thread. :meth:`start_thread` runs
    the worker on its own event loop in its own thread, so that scoring (gRPC calls,
    result building, reports) never delays the listener's event loop and its ACKs.
    """

    def __init__(
        self,
        config: AppConfig,
        queue: Queue,
        metrics: Metrics,
        health: Health,
        scorer_factory: ScorerFactory | None = None,
        *,
        poll_interval_s: float = 0.2,
        parsed: ParsedRecords | None = None,
    ) -> None:
        self.config, self.queue, self.metrics, self.health = config, queue, metrics, health
        books = Bookkeeping(config, queue, metrics, health)
        self.scoring = ScoringStage(config, books, scorer_factory, parsed)
        self.delivery = DeliveryStage(config, books)
        self._poll = poll_interval_s
        # Names this process's leases in a queue shared by several nodes (the PostgreSQL backend).
        self.worker_id = f"{config.metrics.node}:{os.getpid()}"  # the node name of the metrics, so both agree
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() is on, for wake()/stop()
        self._thread: threading.Thread | None = None
        self._extras: asyncio.Task | None = None  # PACS/FHIR deliveries, beside the HL7 path (never blocking it)

    def wake(self) -> None:
        """Ask the worker to look at the queue now (from any thread)."""
        self._call(self._wake.set)

    def stop(self) -> None:
        """Ask the worker to finish its current pass and return (from any thread)."""
        self._call(self._stop_now)

    def _stop_now(self) -> None:
        self._stop.set()
        self._wake.set()

    def _call(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or loop is running or loop.is_closed():
            fn()  # not started, already finished, or we are on its loop
            return
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop closed between the check and the call: nothing left to wake
            pass

    def start_thread(self) -> threading.Thread:
        """Run :meth:`run` on a new event loop in a new (daemon) thread; returns the thread.

        Join it after :meth:`stop` to wait for the current pass to finish.
        """
        started = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            started.set()
            await self.run()

        def target() -> None:
            try:
                asyncio.run(main())
            except Exception as exc:  # noqa: BLE001 - run() handles item errors; log anything else
                event("worker.crashed", logging.ERROR, log, exc_type=type(exc).__name__, exc=str(exc))
            finally:
                started.set()

        self._thread = threading.Thread(target=target, name="lasan-result-worker", daemon=True)
        self._thread.start()
        started.wait()
        return self._thread

    async def run(self) -> None:
        """Process due items until stopped. Never raises for an item's failure."""
        self._loop = asyncio.get_running_loop()
        event("worker.started", logging.INFO, log, triton=",".join(self.config.triton.urls), model=self.config.triton.model,
              downstream=f"{self.config.downstream.host}:{self.config.downstream.port}" if self.config.downstream else None)
        try:
            while not self._stop.is_set():
                try:
                    worked = await self.run_once()
                except Exception as exc:  # noqa: BLE001 - e.g. the queue DB is briefly unreadable: wait, go on
                    self.health.error(f"worker: {exc}")
                    event("worker.error", logging.ERROR, log, exc_type=type(exc).__name__, exc=str(exc))
                    worked = False
                if not worked:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self._poll)
                    except asyncio.TimeoutError:
                        pass
        finally:
            if self._extras is not None:
                await asyncio.gather(self._extras, return_exceptions=True)
            await self.scoring.close()
            await self.delivery.close()

    async def run_once(self) -> bool:
        """One pass over the due items; True when something was attempted."""
        limit = max(8, 4 * self.config.scoring.concurrency)
        self._start_extras()
        items = await asyncio.to_thread(self._lease, limit)
        if not items:
            return False
        await _Pass(self, items, limit).run()
        return True

    def _start_extras(self) -> None:
        """Send due PACS/FHIR deliveries in a task of their own: a PACS that hangs delays only them."""
        if not targets(self.config) or (self._extras is not None and not self._extras.done()):
            return  # no pacs:/fhir: section, no query each poll (deliveries stored before wait for it)
        if self._extras is not None and not self._extras.cancelled() and self._extras.exception() is not None:
            exc = self._extras.exception()
            self.health.error(f"deliveries: {exc}")
            event("worker.error", logging.ERROR, log, exc_type=type(exc).__name__, exc=str(exc))
        self._extras = asyncio.create_task(self.delivery.send_deliveries(self.worker_id))

    def _lease(self, limit: int) -> list[QueueItem]:
        return self.queue.lease(self.worker_id, limit=limit, lease_s=self.config.storage.lease_s)


class _Pass:
    """One pass: score the due items concurrently, send in queue order as each is ready.

    Messages stored while the pass runs join it at once (see :meth:`_join_new`), up to
    ``_MAX_PASS_ITEMS``, instead of waiting for the pass to end.
    """

    def __init__(self, worker: ResultWorker, items: list[QueueItem], limit: int) -> None:
        self.worker, self.items, self.limit = worker, items, limit
        self.queue, self.scoring, self.delivery = worker.queue, worker.scoring, worker.delivery
        self._gate = asyncio.Semaphore(worker.config.scoring.concurrency)
        self._tasks: dict[int, asyncio.Task] = {}

    async def run(self) -> None:
        self._start(self.items)
        try:
            # Send in queue order, one at a time (original-mode ACK on one connection), each
            # as soon as it and the items before it are scored: the first result of a pass
            # does not wait for the slowest ECG of the pass.
            index = 0
            while index < len(self.items):
                item = self.items[index]
                index += 1
                if self.worker._stop.is_set():
                    break
                if item.id in self._tasks:
                    await self._until_scored(self._tasks[item.id])
                    item = await asyncio.to_thread(self.queue.get, item.id)
                if item.state == "scored" and not await self.delivery.send(item):
                    # Downstream is failing: leave the rest for later passes instead of
                    # waiting out one connection timeout per item now.
                    break
        finally:
            # Scoring already started finishes (its result is stored for the next pass).
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            # What this pass did not finish goes back to the queue, for this node or another.
            await asyncio.to_thread(self.queue.release_leases, self.worker.worker_id)
            # Renewed only here, with no call in flight: closing a shared channel under
            # other tasks would fail their calls too.
            await self.scoring.renew_if_stale()

    async def _score(self, item: QueueItem) -> None:
        async with self._gate:
            await self.scoring.score(item)

    def _start(self, batch: list[QueueItem]) -> None:
        for item in batch:
            if item.state == "received":
                self._tasks[item.id] = asyncio.create_task(self._score(item))

    async def _join_new(self) -> None:
        # Bounded (see _may_join), so one pass cannot run forever under a steady feed.
        self.worker._wake.clear()
        leased = await asyncio.to_thread(self.worker._lease, self.limit)
        known = {item.id for item in self.items}
        fresh = [item for item in leased if item.id not in known]
        self.items.extend(fresh)
        self._start(fresh)

    def _may_join(self) -> bool:
        # Not while stopping, nor over a channel that failed (it is renewed after the pass).
        return len(self.items) < _MAX_PASS_ITEMS and not self.worker._stop.is_set() and not self.scoring.stale

    async def _until_scored(self, task: asyncio.Task) -> None:
        """Wait for ``task``, letting newly stored messages join the pass meanwhile."""
        wake = self.worker._wake
        while not task.done():
            if not self._may_join():
                await task
                return
            if wake.is_set():
                await self._join_new()
                continue
            waiter = asyncio.create_task(wake.wait())
            try:
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        await task  # its exception, if any
