"""The worker: score queued ECGs through Triton and deliver each result exactly once.

Two stages per item, each driven only by what is in the durable queue:

* ``received`` -> score through :class:`lasan.client.AsyncTritonScorer` (several in
  flight), build the ORU^R01 result and store it (``scored``). The result's MSH-10 is
  derived from the original sender and control ID, so it is the same on every attempt.
* ``scored`` -> write the stored text to the outbox folder (atomic rename, same file name
  every time), send it to the downstream MLLP endpoint and wait for ``AA`` with MSA-2 =
  our MSH-10, then mark ``sent``.

Failures never drop an item: Triton unreachable, a downstream error or an AE/AR reply
schedule a retry with exponential backoff (``retry`` in the config). Only an ECG that can
never be scored (the model refuses it, the stored message no longer reads) becomes
``failed``, and stays in the database for review.

Delivery guarantee: a crash after the downstream system received a result but before
``sent`` was committed re-sends the *identical* message (same MSH-10, same content) on
restart. Downstream systems must de-duplicate on MSH-10, as HL7 original-mode
acknowledgement expects; with that, each ACKed message yields exactly one result.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lasan.errors import ECGFormatError, HL7MessageError, LasanError, ScoringError, TritonUnavailableError
from lasan.integration.config import AppConfig, client_ssl_context
from lasan.integration.handoff import ParsedRecords
from lasan.integration.hl7_ack import AA, parse_ack
from lasan.integration.logs import event
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPClient, decode_hl7
from lasan.integration.queue import DurableQueue, QueueItem
from lasan.integration.results import OrderContext, build_result, order_from_dicom, order_from_hl7, result_control_id
from lasan.record import ECGRecord

__all__ = ["ResultWorker", "load_item", "backoff_delay"]

log = logging.getLogger("lasan.integration.worker")

ScorerFactory = Callable[[], Any]  # returns an object with async connect()/score(record)/close()
_MAX_PASS_ITEMS = 256  # newly stored items join a running pass until it holds this many


def backoff_delay(attempts: int, initial_s: float, max_s: float, factor: float = 2.0) -> float:
    """Delay before attempt ``attempts + 1``: ``initial * factor**attempts``, capped at ``max_s``."""
    return min(max_s, initial_s * factor ** max(0, attempts))


@dataclass(frozen=True)
class _Loaded:
    record: ECGRecord
    order: OrderContext


def load_item(item: QueueItem, default_charset: str = "utf-8", record: ECGRecord | None = None) -> _Loaded:
    """Re-read a stored message into the record to score and the order to answer.

    ``record``, when given, is the record the listener parsed from these very bytes before
    it stored them (see :mod:`.handoff`); an HL7 message is then not parsed again.

    Raises:
        ECGFormatError: the stored bytes no longer read as an ECG (should not happen: they
            were validated before the ACK).
    """
    if item.kind == "hl7":
        text, _ = decode_hl7(item.raw, default_charset)
        if record is None:
            from lasan.formats.hl7 import parse_oru

            record = parse_oru(text).record
        return _Loaded(record, order_from_hl7(text))
    if item.kind == "dicom":
        from lasan.formats.dicom import read_dicom

        record = read_dicom(item.raw)
        accession = _dicom_accession(item.raw)
        return _Loaded(record, order_from_dicom(item.key.control_id, item.key.sender_app, record.patient,
                                                accession, record.acquisition.acquired_at))
    raise HL7MessageError(f"queue item {item.id} has unknown kind {item.kind!r}")


def _dicom_accession(raw: bytes) -> str:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, specific_tags=["AccessionNumber"], force=True)
    return str(ds.get("AccessionNumber", "") or "")


def _write_atomic(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(text.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final


class ResultWorker:
    """Drains the queue until :meth:`stop`; see the module docstring for the guarantees.

    :meth:`wake` and :meth:`stop` may be called from any thread. :meth:`start_thread` runs
    the worker on its own event loop in its own thread, so that scoring (gRPC calls,
    result building, reports) never delays the listener's event loop and its ACKs.
    """

    def __init__(
        self,
        config: AppConfig,
        queue: DurableQueue,
        metrics: Metrics,
        health: Health,
        scorer_factory: ScorerFactory | None = None,
        *,
        poll_interval_s: float = 0.2,
        parsed: ParsedRecords | None = None,
    ) -> None:
        self.config, self.queue, self.metrics, self.health = config, queue, metrics, health
        self._scorer_factory = scorer_factory or self._default_scorer
        self._scorer: Any = None
        self._scorer_stale = False  # a fresh gRPC channel is wanted after the current pass
        self._poll = poll_interval_s
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._downstream: MLLPClient | None = None
        self._parsed = parsed
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() is on, for wake()/stop()
        self._thread: threading.Thread | None = None

    def _default_scorer(self) -> Any:
        from lasan.client.api import AsyncTritonScorer

        t = self.config.triton
        # Few in-client retries: the queue is the retry mechanism, with its own backoff.
        return AsyncTritonScorer(t.url, t.model, timeout_s=t.timeout_s, retries=1, backoff_s=0.2, max_backoff_s=1.0)

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
        event("worker.started", logging.INFO, log, triton=self.config.triton.url, model=self.config.triton.model,
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
            await self._close_scorer()
            if self._downstream is not None:
                await self._downstream.close()

    async def run_once(self) -> bool:
        """One pass over the due items; True when something was attempted."""
        limit = max(8, 4 * self.config.scoring.concurrency)
        items = await asyncio.to_thread(self.queue.due, None, limit)
        if not items:
            return False
        gate = asyncio.Semaphore(self.config.scoring.concurrency)

        async def one(item: QueueItem) -> None:
            async with gate:
                await self._score(item)

        scoring: dict[int, asyncio.Task] = {}
        last_id = 0

        def start(batch: list[QueueItem]) -> None:
            nonlocal last_id
            for i in batch:
                last_id = max(last_id, i.id)
                if i.state == "received":
                    scoring[i.id] = asyncio.create_task(one(i))

        async def join_new() -> None:
            # Messages stored since the pass began join it at once instead of waiting for
            # its end (bounded, so one pass cannot run forever under a steady feed).
            self._wake.clear()
            fresh = await asyncio.to_thread(self.queue.due, None, limit, after_id=last_id)
            items.extend(fresh)
            start(fresh)

        def may_join() -> bool:
            # Not while stopping, nor over a channel that failed (it is renewed after the pass).
            return len(items) < _MAX_PASS_ITEMS and not self._stop.is_set() and not self._scorer_stale

        async def until_done(task: asyncio.Task) -> None:
            while not task.done():
                if not may_join():
                    await task
                    return
                if self._wake.is_set():
                    await join_new()
                    continue
                waiter = asyncio.create_task(self._wake.wait())
                try:
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            await task  # its exception, if any

        start(items)
        try:
            # Send in queue order, one at a time (original-mode ACK on one connection), each
            # as soon as it and the items before it are scored: the first result of a pass
            # does not wait for the slowest ECG of the pass.
            index = 0
            while index < len(items):
                item = items[index]
                index += 1
                if self._stop.is_set():
                    break
                if item.id in scoring:
                    await until_done(scoring[item.id])
                    item = await asyncio.to_thread(self.queue.get, item.id)
                if item.state == "scored" and not await self._send(item):
                    # Downstream is failing: leave the rest for later passes instead of
                    # waiting out one connection timeout per item now.
                    break
        finally:
            # Scoring already started finishes (its result is stored for the next pass).
            await asyncio.gather(*scoring.values(), return_exceptions=True)
            if self._scorer_stale:
                # Closed only here, with no call in flight: closing a shared channel under
                # other tasks would fail their calls too.
                await self._close_scorer()
        return True

    # -- stage 1: score --------------------------------------------------------------------

    async def _score(self, item: QueueItem) -> None:
        ids = {"item": item.id, "control_id": item.key.control_id, "sender": f"{item.key.sender_app}|{item.key.sender_facility}"}
        record = self._parsed.take(item.id) if self._parsed is not None else None
        try:
            loaded = await asyncio.to_thread(load_item, item, self.config.listener.default_charset, record)
        except ECGFormatError as exc:
            await self._fail(item, f"stored message does not read: {exc}", ids)
            return
        try:
            if self._scorer is None:
                self._scorer = self._scorer_factory()
            started = time.perf_counter()
            score = await self._scorer.score(loaded.record, request_id=item.key.control_id[:64])
            self.metrics.scoring_latency.observe(time.perf_counter() - started)
            self.health.triton_reachable = True
            self.metrics.triton_up.set(1)
        except TritonUnavailableError as exc:
            self.health.triton_reachable = False
            self.metrics.triton_up.set(0)
            # A fresh gRPC channel next pass: an old one can sit in a long reconnect backoff.
            self._scorer_stale = True
            await self._retry(item, "score", f"Triton unavailable: {exc}", ids)
            return
        except (ScoringError, ECGFormatError) as exc:
            await self._fail(item, f"the model refused this ECG: {exc}", ids)
            return
        except Exception as exc:  # noqa: BLE001 - unknown: keep the item, try again later
            self._scorer_stale = True
            await self._retry(item, "score", f"{type(exc).__name__}: {exc}", ids)
            return
        pdf = await self._pdf(loaded.record, score, ids) if self.config.scoring.pdf_report else None
        downstream = self.config.downstream
        control_id = result_control_id(item.key.sender_app, item.key.sender_facility, item.key.control_id)
        result = build_result(
            loaded.order,
            score,
            control_id=control_id,
            thresholds_mode=self.config.scoring.thresholds_mode,
            application=self.config.listener.application,
            facility=self.config.listener.facility,
            receiving_application=downstream.application if downstream else "",
            receiving_facility=downstream.facility if downstream else "",
            pdf_report=pdf,
        )
        await asyncio.to_thread(self.queue.mark_scored, item.id, result, control_id)
        event("worker.scored", logging.INFO, log, result_control_id=control_id, predicted=score.predicted_class,
              model_version=score.model_version, **ids)

    async def _pdf(self, record: ECGRecord, score: Any, ids: dict) -> bytes | None:
        def render() -> bytes:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            from lasan.client.report import render_report

            fig = render_report(record, score)
            buf = io.BytesIO()
            try:
                fig.savefig(buf, format="pdf")
            finally:
                plt.close(fig)
            return buf.getvalue()

        try:
            return await asyncio.to_thread(render)
        except Exception as exc:  # noqa: BLE001 - a missing report must not block the result
            event("worker.report_failed", logging.WARNING, log, exc_type=type(exc).__name__, **ids)
            return None

    # -- stage 2: deliver ------------------------------------------------------------------

    async def _send(self, item: QueueItem) -> bool:
        """Deliver a stored result; True when it is marked sent."""
        assert item.result is not None and item.result_control_id is not None
        ids = {"item": item.id, "control_id": item.key.control_id, "result_control_id": item.result_control_id}
        try:
            await asyncio.to_thread(_write_atomic, self.config.storage.outbox, f"{item.result_control_id}.hl7", item.result)
        except OSError as exc:
            await self._retry(item, "outbox", f"cannot write the outbox: {exc}", ids)
            return False
        downstream = self.config.downstream
        if downstream is not None:
            if self._downstream is None:
                ctx = client_ssl_context(downstream.tls) if downstream.tls else None
                self._downstream = MLLPClient(downstream.host, downstream.port, ssl_context=ctx,
                                              timeout_s=downstream.timeout_s)
            try:
                reply = await self._downstream.send(item.result)
                ack = parse_ack(reply)
            except (OSError, asyncio.TimeoutError, LasanError) as exc:
                await self._retry(item, "send", f"downstream {downstream.host}:{downstream.port}: "
                                  f"{type(exc).__name__}: {exc}", ids)
                return False
            if ack.code not in (AA, "CA") or ack.control_id != item.result_control_id:
                await self._retry(item, "send", f"downstream answered {ack.code} for {ack.control_id!r}: {ack.text}", ids)
                return False
        await asyncio.to_thread(self.queue.mark_sent, item.id)
        self.metrics.results_sent.inc()
        event("worker.sent", logging.INFO, log, attempts=item.attempts + 1, **ids)
        return True

    # -- bookkeeping ------------------------------------------------------------------------

    async def _retry(self, item: QueueItem, stage: str, error: str, ids: dict) -> None:
        r = self.config.retry
        delay = backoff_delay(item.attempts, r.initial_s, r.max_s, r.factor)
        attempts = await asyncio.to_thread(self.queue.schedule_retry, item.id, error, delay)
        self.metrics.retries.labels(stage).inc()
        self.health.error(f"{stage}: {error}")
        event("worker.retry", logging.WARNING, log, stage=stage, attempts=attempts, delay_s=round(delay, 3),
              error=error, **ids)

    async def _fail(self, item: QueueItem, error: str, ids: dict) -> None:
        await asyncio.to_thread(self.queue.mark_failed, item.id, error)
        self.metrics.failures.inc()
        self.health.error(error)
        event("worker.failed", logging.ERROR, log, error=error, **ids)

    async def _close_scorer(self) -> None:
        scorer, self._scorer, self._scorer_stale = self._scorer, None, False
        if scorer is not None:
            try:
                await scorer.close()
            except Exception:  # noqa: BLE001 - closing a broken channel may itself fail
                pass
