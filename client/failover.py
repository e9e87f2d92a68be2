"""Score through several Triton servers with health-checked failover.

:class:`FailoverTritonScorer` keeps one :class:`~lasan.client.api.AsyncTritonScorer` per
server and behaves like one scorer (the worker's ``AsyncScorer``):

* a request goes to a healthy server (``round_robin`` over the healthy ones, or ``in_order``:
  the first healthy one, the others stand by);
* a request that fails with :class:`~lasan.errors.TritonUnavailableError` (UNAVAILABLE,
  deadline exceeded, model not ready) marks that server down and is retried at once on the
  next one; a server marked down is skipped for ``reprobe_s`` seconds and then health-checked
  again (live + model ready, with a fresh gRPC channel) before it gets requests;
* only when every server failed does the request raise ``TritonUnavailableError``, so the
  caller's own retry (the queue's backoff) takes over: nothing is dropped;
* anything the ECG itself caused (:class:`~lasan.errors.ScoringError`,
  :class:`~lasan.errors.ECGFormatError`) is raised at once: another server would refuse it too.

One URL behaves exactly like a plain ``AsyncTritonScorer`` (with its in-client retry).
A Kubernetes Service is one URL; list the servers (or a headless Service's pods) to get
per-request failover rather than per-connection balancing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lasan.client.api import AsyncTritonScorer
from lasan.client.score import Score
from lasan.errors import ScoringError, TritonUnavailableError
from lasan.record import ECGRecord
from lasan.tensor_names import ENSEMBLE_MODEL

__all__ = ["BALANCE_POLICIES", "EndpointState", "FailoverTritonScorer"]

BALANCE_POLICIES = ("round_robin", "in_order")
# Called as on_change(url, up, reason) when a server is marked down or found healthy again.
ChangeHook = Callable[[str, bool, str], None]
ScorerMaker = Callable[[str], AsyncTritonScorer]
_MAX_RETIRED = 16  # old channels kept open for calls still in flight on them, then closed


@dataclass(frozen=True)
class EndpointState:
    """One server as the scorer sees it now (for health pages and tests)."""

    url: str
    up: bool
    retry_at: float | None  # monotonic time of the next health check when down
    last_error: str | None


class _Endpoint:
    def __init__(self, url: str) -> None:
        self.url = url
        self.scorer: AsyncTritonScorer | None = None
        self.up = True  # optimistic: the first request is its health check
        self.retry_at = 0.0
        self.failures = 0
        self.last_error: str | None = None


class FailoverTritonScorer:
    """An async scorer over several Triton gRPC endpoints (see the module docstring).

    Args:
        urls: Triton gRPC ``host:port`` endpoints, in preference order for ``in_order``.
        model: the ensemble name.
        timeout_s: deadline of each gRPC call.
        balance: ``round_robin`` or ``in_order``.
        reprobe_s: how long a server found down is skipped before its next health check
            (doubles with each failed check, up to 8x).
        probe_timeout_s: deadline of a health check (a partitioned host must not hold a request
            for the full ``timeout_s`` before the next server is tried).
        on_change: called as ``on_change(url, up, reason)`` when a server goes down or comes back.
        make_scorer: builds the per-server client (default: ``AsyncTritonScorer`` with ``timeout_s``).

    Raises:
        ScoringError: (constructor) no URL, a repeated URL or an unknown ``balance``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        model: str = ENSEMBLE_MODEL,
        *,
        timeout_s: float = 30.0,
        balance: str = "round_robin",
        reprobe_s: float = 5.0,
        probe_timeout_s: float | None = None,
        on_change: ChangeHook | None = None,
        make_scorer: ScorerMaker | None = None,
    ) -> None:
        urls = list(urls)
        if not urls or len(set(urls)) != len(urls):
            raise ScoringError(f"give one or more distinct Triton gRPC host:port endpoints, got {urls!r}")
        if balance not in BALANCE_POLICIES:
            raise ScoringError(f"balance must be one of {', '.join(BALANCE_POLICIES)}, got {balance!r}")
        self.model, self.timeout_s, self.balance = model, float(timeout_s), balance
        self.reprobe_s = float(reprobe_s)
        self.probe_timeout_s = float(probe_timeout_s) if probe_timeout_s else min(5.0, self.timeout_s)
        self._endpoints = [_Endpoint(u) for u in urls]
        self._on_change = on_change
        # One server: keep the plain client's small in-client retry; several: fail over at once instead.
        retries = 1 if len(urls) == 1 else 0
        self._make = make_scorer or (
            lambda url: AsyncTritonScorer(url, model, timeout_s=self.timeout_s, retries=retries, backoff_s=0.2,
                                          max_backoff_s=1.0)
        )
        self._next = 0
        self._retired: list[AsyncTritonScorer] = []
        self._probing: dict[str, asyncio.Task] = {}

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(e.url for e in self._endpoints)

    def states(self) -> list[EndpointState]:
        """Each server's state now."""
        return [EndpointState(e.url, e.up, None if e.up else e.retry_at, e.last_error) for e in self._endpoints]

    def _candidates(self, now: float) -> list[_Endpoint]:
        eps = self._endpoints
        if self.balance == "round_robin":
            start = self._next % len(eps)
            self._next += 1
            eps = eps[start:] + eps[:start]
        for e in eps:
            if not e.up and e.retry_at <= now and e.url not in self._probing:
                # Health-check a returning server in the background: no request waits for it.
                self._probe_task(e)
        healthy = [e for e in eps if e.up]
        if healthy:
            return healthy
        # Every server is down: try them all (joining a running check), soonest check first.
        # The caller's backoff paces these attempts; refusing without trying would only add delay.
        return sorted(eps, key=lambda e: e.retry_at)

    async def score(self, record: ECGRecord, *, request_id: str = "") -> Score:
        """Score one ECG on the first server that answers.

        Raises:
            TritonUnavailableError: every server is down, not ready or timed out (each named).
            ScoringError: a server refused this ECG (not retried elsewhere).
            MissingLeadsError / ECGFormatError: the record cannot be sent at all.
        """
        errors: list[str] = []
        for endpoint in self._candidates(time.monotonic()):
            try:
                scorer = await self._ready(endpoint)
                score = await scorer.score(record, request_id=request_id)
            except TritonUnavailableError as exc:
                self._mark_down(endpoint, exc)
                errors.append(f"{endpoint.url}: {exc}")
                continue
            except (OSError, asyncio.TimeoutError) as exc:  # a check past its deadline, a socket error
                self._mark_down(endpoint, exc)
                errors.append(f"{endpoint.url}: {type(exc).__name__}: {exc}")
                continue
            self._mark_up(endpoint)
            return score
        raise TritonUnavailableError(
            f"none of the {len(self._endpoints)} Triton server(s) could score (" + "; ".join(errors) + "); "
            "the ECG stays queued and is retried; check that at least one server in triton.urls is running"
        )

    async def _ready(self, endpoint: _Endpoint) -> AsyncTritonScorer:
        """The endpoint's client, health-checked first when it is new or coming back from down."""
        if endpoint.scorer is not None and endpoint.up:
            return endpoint.scorer
        # One health check per server at a time; concurrent requests wait for its answer.
        task = self._probing.get(endpoint.url) or self._probe_task(endpoint, background=False)
        return await asyncio.shield(task)

    def _probe_task(self, endpoint: _Endpoint, background: bool = True) -> asyncio.Task:
        task = asyncio.ensure_future(self._probe(endpoint, background))
        self._probing[endpoint.url] = task
        url = endpoint.url

        def forget(_task: asyncio.Task) -> None:
            self._probing.pop(url, None)

        task.add_done_callback(forget)
        if background:  # nobody may await it: retrieve its error so asyncio does not log it as lost
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _probe(self, endpoint: _Endpoint, background: bool) -> AsyncTritonScorer:
        if endpoint.scorer is not None:
            self._retire(endpoint.scorer)
            endpoint.scorer = None
        scorer = self._make(endpoint.url)
        try:
            # connect() checks server live + model ready and reads the model's description.
            await asyncio.wait_for(scorer.connect(), self.probe_timeout_s)
        except BaseException as exc:
            self._retire(scorer)
            if background and isinstance(exc, Exception):
                self._mark_down(endpoint, exc)  # else the request waiting for it does
            raise
        endpoint.scorer = scorer
        if background:
            self._mark_up(endpoint)
        return scorer

    def _mark_down(self, endpoint: _Endpoint, exc: BaseException) -> None:
        now = time.monotonic()
        endpoint.last_error = f"{type(exc).__name__}: {exc}"[:500]
        if not endpoint.up and now < endpoint.retry_at:
            return  # another request in flight already marked it down: count one failure per check
        endpoint.failures += 1
        # Back off the checks of a server that stays down (up to 8x reprobe_s).
        endpoint.retry_at = now + self.reprobe_s * min(8, 2 ** max(0, endpoint.failures - 1))
        if endpoint.up:
            endpoint.up = False
            if endpoint.scorer is not None:
                # Not closed now: other calls may still be in flight on this channel.
                self._retire(endpoint.scorer)
                endpoint.scorer = None
            self._notify(endpoint.url, False, endpoint.last_error)

    def _mark_up(self, endpoint: _Endpoint) -> None:
        endpoint.failures = 0
        if not endpoint.up:
            endpoint.up = True
            endpoint.last_error = None
            self._notify(endpoint.url, True, "health check and request succeeded")

    def _notify(self, url: str, up: bool, reason: str) -> None:
        if self._on_change is not None:
            try:
                self._on_change(url, up, reason)
            except Exception:  # noqa: BLE001 - a metrics/log hook must not break scoring
                pass

    def _retire(self, scorer: AsyncTritonScorer) -> None:
        self._retired.append(scorer)
        while len(self._retired) > _MAX_RETIRED:
            old = self._retired.pop(0)
            asyncio.ensure_future(self._close_quietly(old))

    @staticmethod
    async def _close_quietly(scorer: AsyncTritonScorer) -> None:
        try:
            await scorer.close()
        except Exception:  # noqa: BLE001 - closing a broken channel may itself fail
            pass

    async def close(self) -> None:
        """Close every channel (call with no request in flight)."""
        for task in list(self._probing.values()):
            task.cancel()
        scorers = [e.scorer for e in self._endpoints if e.scorer is not None] + self._retired
        self._retired = []
        for e in self._endpoints:
            e.scorer = None
        for scorer in scorers:
            await self._close_quietly(scorer)

    async def __aenter__(self) -> FailoverTritonScorer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
