"""The worker's two stages, each driven only by what is in the durable queue.

* :class:`ScoringStage`: ``received`` -> score through an :class:`AsyncScorer` (by default
  :class:`lasan.client.api.AsyncTritonScorer`), build the ORU^R01 result and store it
  (``scored``). The result's MSH-10 is derived from the original sender and control ID,
  so it is the same on every attempt.
* :class:`DeliveryStage`: ``scored`` -> write the stored text to the outbox folder (atomic
  rename, same file name every time), send it to the downstream MLLP endpoint and wait
  for ``AA`` with MSA-2 = our MSH-10, then mark ``sent``.

Failures never drop an item (:class:`Bookkeeping`): Triton unreachable, a downstream error
or an AE/AR reply schedule a retry with exponential backoff; an ECG that can never be scored
gets a "not scored" result (OBR-25 = X, the reason), delivered like any result, and stays
in the database for review (``lasan queue``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lasan.errors import DeliveryError, ECGFormatError, LasanError, ScoringError, TritonUnavailableError
from lasan.hl7.ack import AA, parse_ack
from lasan.hl7.oru import OrderContext
from lasan.hl7.result import build_not_scored_result, build_result, result_control_id
from lasan.integration.config import AppConfig, client_ssl_context
from lasan.integration.deliveries import build_deliveries, send_delivery, targets, wants_pdf
from lasan.integration.handoff import Handoff, ParsedRecords
from lasan.integration.intake import read_stored
from lasan.integration.logs import event
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPClient
from lasan.integration.private import private_dir, write_private
from lasan.integration.queue import Queue, QueueItem
from lasan.record import ECGRecord

__all__ = ["AsyncScorer", "ScorerFactory", "Bookkeeping", "ScoringStage", "DeliveryStage", "backoff_delay"]

if TYPE_CHECKING:
    from lasan.client.score import Score

log = logging.getLogger("lasan.integration.worker")

_PENDING_REFRESH_S = 10.0  # an idle worker re-reads the pending deliveries gauge this often


class AsyncScorer(Protocol):
    """What the scoring stage needs from a scorer (:class:`lasan.client.api.AsyncTritonScorer` is one)."""

    async def score(self, record: ECGRecord, *, request_id: str = "") -> Score: ...

    async def close(self) -> None: ...


ScorerFactory = Callable[[], AsyncScorer]


def backoff_delay(attempts: int, initial_s: float, max_s: float, factor: float = 2.0) -> float:
    """Delay before attempt ``attempts + 1``: ``initial * factor**attempts``, capped at ``max_s``."""
    return min(max_s, initial_s * factor ** max(0, attempts))


def _ids(item: QueueItem) -> dict[str, Any]:
    return {"item": item.id, "control_id": item.key.control_id,
            "sender": f"{item.key.sender_app}|{item.key.sender_facility}"}


def _write_atomic(folder: Path, name: str, text: str) -> Path:
    # Results name the patient: 0600 in a 0700 outbox, whatever the umask (integration.private).
    return write_private(private_dir(folder, owned=True) / name, text.encode("utf-8"))


class Bookkeeping:
    """Retry with backoff, or fail for good; both recorded in the queue, the metrics and the log."""

    def __init__(self, config: AppConfig, queue: Queue, metrics: Metrics, health: Health) -> None:
        self.config, self.queue, self.metrics, self.health = config, queue, metrics, health

    async def retry(self, item: QueueItem, stage: str, error: str, ids: dict[str, Any]) -> None:
        r = self.config.retry
        delay = backoff_delay(item.attempts, r.initial_s, r.max_s, r.factor)
        attempts = await asyncio.to_thread(self.queue.schedule_retry, item.id, error, delay)
        self.metrics.retries.labels(stage).inc()
        self.health.error(f"{stage}: {error}")
        event("worker.retry", logging.WARNING, log, stage=stage, attempts=attempts, delay_s=round(delay, 3),
              error=error, **ids)

    async def fail(self, item: QueueItem, error: str, ids: dict[str, Any], order: OrderContext | None = None) -> None:
        """A permanent failure after AA: store a "not scored" result (delivered like any result),
        so the sender's system learns that this ECG will not be scored and why.

        ``order`` is the original's patient and order; without it (the stored message no longer
        reads) the result names only the original control ID. ``error`` never holds patient data.
        """
        key = item.key
        order = order or OrderContext(key.control_id, key.sender_app, key.sender_facility)
        control_id = result_control_id(key.sender_app, key.sender_facility, key.control_id, not_scored=True)
        downstream = self.config.downstream
        result = build_not_scored_result(
            order, error, control_id=control_id, application=self.config.listener.application,
            facility=self.config.listener.facility, receiving_application=downstream.application if downstream else "",
            receiving_facility=downstream.facility if downstream else "")
        await asyncio.to_thread(self.queue.mark_unscorable, item.id, error, result, control_id)
        self.metrics.failures.inc()
        self.health.error(error)
        event("worker.not_scored", logging.ERROR, log, error=error, result_control_id=control_id, **ids)


class ScoringStage:
    """``received`` -> ``scored``: one item at a time (the worker runs several concurrently).

    The scorer is shared by all items in flight; after a failure that may have left its
    channel broken it is marked :attr:`stale` and renewed by :meth:`renew_if_stale`, which
    the worker calls only when no call is in flight.
    """

    def __init__(self, config: AppConfig, books: Bookkeeping, scorer_factory: ScorerFactory | None = None,
                 parsed: ParsedRecords | None = None) -> None:
        self.config, self.books = config, books
        self.queue, self.metrics, self.health = books.queue, books.metrics, books.health
        self._scorer_factory: ScorerFactory = scorer_factory or self._default_scorer
        self._scorer: AsyncScorer | None = None
        self.stale = False  # a fresh gRPC channel is wanted after the current pass
        self._parsed = parsed

    def _default_scorer(self) -> AsyncScorer:
        from lasan.client.failover import FailoverTritonScorer

        t = self.config.triton

        def changed(url: str, up: bool, reason: str) -> None:
            self.metrics.triton_endpoint_up.labels(url).set(1 if up else 0)
            event("triton.endpoint_up" if up else "triton.endpoint_down", logging.INFO if up else logging.WARNING,
                  log, triton=url, reason=reason)

        # Health-checked failover over triton.urls; with one URL it is the plain client with few
        # in-client retries: the queue is the retry mechanism, with its own backoff.
        return FailoverTritonScorer(t.urls, t.model, timeout_s=t.timeout_s, balance=t.balance,
                                    reprobe_s=t.reprobe_s, on_change=changed)

    def _load(self, item: QueueItem) -> Handoff:
        handed = self._parsed.take(item.id) if self._parsed is not None else None
        return handed or read_stored(item.raw, item.kind, item.key, self.config.listener.default_charset)

    async def score(self, item: QueueItem) -> None:
        """Score one ``received`` item and store its result (or schedule a retry, or fail it)."""
        ids = _ids(item)
        try:
            loaded = await asyncio.to_thread(self._load, item)
        except ECGFormatError as exc:
            await self.books.fail(item, f"stored message does not read: {exc}", ids)
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
            self.stale = True
            await self.books.retry(item, "score", f"Triton unavailable: {exc}", ids)
            return
        except (ScoringError, ECGFormatError) as exc:
            await self.books.fail(item, f"the model refused this ECG: {exc}", ids, loaded.order)
            return
        except Exception as exc:  # noqa: BLE001 - unknown: keep the item, try again later
            self.stale = True
            await self.books.retry(item, "score", f"{type(exc).__name__}: {exc}", ids)
            return
        pdf = await self._pdf(loaded.record, score, ids) if wants_pdf(self.config) else None
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
            pdf_report=pdf if self.config.scoring.pdf_report else None,
        )
        # PACS/FHIR payloads are built now, from the parsed record, and stored with the result:
        # retries then send the same objects (same SOP Instance UIDs, same Bundle).
        deliveries = await asyncio.to_thread(build_deliveries, self.config, loaded.record, loaded.order, score,
                                             key=item.key, pdf=pdf) if targets(self.config) else {}
        await asyncio.to_thread(self.queue.mark_scored, item.id, result, control_id, deliveries=deliveries or None)
        self.metrics.node_scored.inc()
        event("worker.scored", logging.INFO, log, result_control_id=control_id, predicted=score.predicted_class,
              model_version=score.model_version, **ids)

    async def _pdf(self, record: ECGRecord, score: Score, ids: dict[str, Any]) -> bytes | None:
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

    async def renew_if_stale(self) -> None:
        """Close a channel marked stale (only with no call in flight: it would fail them too)."""
        if self.stale:
            await self.close()

    async def close(self) -> None:
        scorer, self._scorer, self.stale = self._scorer, None, False
        if scorer is not None:
            try:
                await scorer.close()
            except Exception:  # noqa: BLE001 - closing a broken channel may itself fail
                pass


class DeliveryStage:
    """``scored`` -> ``sent``: outbox file, then the downstream MLLP endpoint, one at a time."""

    def __init__(self, config: AppConfig, books: Bookkeeping) -> None:
        self.config, self.books, self.queue, self.metrics = config, books, books.queue, books.metrics
        self._downstream: MLLPClient | None = None
        self._pending_read_at = -_PENDING_REFRESH_S  # when lasan_deliveries_pending was last read from the queue

    async def send(self, item: QueueItem) -> bool:
        """Deliver a stored result; True when it is marked sent."""
        assert item.result is not None and item.result_control_id is not None
        ids: dict[str, Any] = {"item": item.id, "control_id": item.key.control_id,
                               "result_control_id": item.result_control_id}
        try:
            await asyncio.to_thread(_write_atomic, self.config.storage.outbox, f"{item.result_control_id}.hl7", item.result)
        except OSError as exc:
            await self.books.retry(item, "outbox", f"cannot write the outbox: {exc}", ids)
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
                await self.books.retry(item, "send", f"downstream {downstream.host}:{downstream.port}: "
                                       f"{type(exc).__name__}: {exc}", ids)
                return False
            if ack.code not in (AA, "CA") or ack.control_id != item.result_control_id:
                await self.books.retry(item, "send", f"downstream answered {ack.code} for {ack.control_id!r}: "
                                       f"{ack.text}", ids)
                return False
        await asyncio.to_thread(self.queue.mark_sent, item.id)
        self.metrics.results_sent.inc()
        self.metrics.node_sent.inc()
        event("worker.sent", logging.INFO, log, attempts=item.attempts + 1, **ids)
        return True

    async def send_deliveries(self, worker_id: str, *, limit: int = 8) -> bool:
        """Send the due PACS/FHIR deliveries (one at a time); True when any was attempted.

        A failure schedules that delivery again with backoff (``retry`` settings, per delivery),
        forever: a PACS or FHIR server that is down means queued, never dropped.
        """
        due = await asyncio.to_thread(self.queue.lease_deliveries, worker_id, limit=limit,
                                      lease_s=self.config.storage.lease_s)
        down: dict[str, str] = {}  # target -> error: the rest of this batch for it is not tried again now
        for delivery in due:
            ids: dict[str, Any] = {"item": delivery.item_id, "target": delivery.target,
                                   "control_id": delivery.key.control_id}
            try:
                done = await asyncio.to_thread(send_delivery, self.config, delivery,
                                               target_down=down.get(delivery.target))
            except Exception as exc:  # noqa: BLE001 - DeliveryError or unforeseen: keep it queued, retry
                if not isinstance(exc, DeliveryError):
                    exc = DeliveryError(f"{type(exc).__name__}: {exc}")
                down.setdefault(delivery.target, str(exc))
                r = self.config.retry
                delay = backoff_delay(delivery.attempts, r.initial_s, r.max_s, r.factor)
                attempts = await asyncio.to_thread(self.queue.schedule_delivery_retry, delivery.item_id,
                                                   delivery.target, str(exc), delay)
                self.metrics.retries.labels(delivery.target).inc()
                self.books.health.error(f"{delivery.target}: {exc}")
                event("worker.delivery_retry", logging.WARNING, log, attempts=attempts, delay_s=round(delay, 3),
                      error=str(exc), **ids)
                continue
            await asyncio.to_thread(self.queue.mark_delivered, delivery.item_id, delivery.target)
            self.metrics.deliveries_sent.labels(delivery.target).inc()
            event("worker.delivered", logging.INFO, log, attempts=delivery.attempts + 1, what=done, **ids)
        now = time.monotonic()
        if due or now - self._pending_read_at > _PENDING_REFRESH_S:
            self._pending_read_at = now
            for target, counts in (await asyncio.to_thread(self.queue.delivery_counts)).items():
                self.metrics.deliveries_pending.labels(target).set(counts.get("pending", 0))
        return bool(due)

    async def close(self) -> None:
        if self._downstream is not None:
            await self._downstream.close()
            self._downstream = None
