"""Score ECGs through the served ``lasan`` ensemble over Triton's gRPC API.

Two clients with one behaviour: :class:`TritonScorer` (blocking) and
:class:`AsyncTritonScorer` (asyncio; many ECGs in flight so that Triton's dynamic
batcher fills its batches). Both

* check on connect that the server is live and the model ready, and say what to do when not;
* read the model's metadata and config once (class names, lead order, thresholds, version);
* put a deadline on every call (``timeout_s``);
* retry with exponential backoff only what can pass by itself (UNAVAILABLE,
  DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) and raise anything else at once.

Errors, for callers that queue work (the HL7 listener): :class:`~lasan.errors.TritonUnavailableError`
means "try again later" (server down, model not loaded, timed out after all retries); any
other :class:`~lasan.errors.ScoringError` means the server refused this ECG and will
refuse it again; :class:`~lasan.errors.ECGFormatError` is raised before anything is sent.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from lasan.client.request import WireECG, decode_outputs, model_info_from, wire_ecg
from lasan.client.score import ModelInfo, Score
from lasan.errors import LasanError, ScoringError, TritonUnavailableError
from lasan.record import ECGRecord
from lasan.tensor_names import (
    ENSEMBLE_MODEL,
    ENSEMBLE_OUTPUTS,
    INPUT_ECG,
    INPUT_SAMPLING_RATE,
    OUTPUT_ATTENTION,
)

__all__ = [
    "DEFAULT_URL",
    "TRANSIENT_STATUSES",
    "RetryPolicy",
    "TritonScorer",
    "AsyncTritonScorer",
    "is_transient",
]

DEFAULT_URL = "localhost:8001"
# gRPC codes that may clear by themselves: server restarting or overloaded, queue full, slow.
TRANSIENT_STATUSES: frozenset[str] = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
# Codes that mean the model is not (yet) there: not worth retrying now, but not the ECG's fault.
_MODEL_MISSING_STATUSES = frozenset({"NOT_FOUND"})

RetryHook = Callable[[int, BaseException, float], None]  # (attempt number from 1, error, delay s)


def _status(exc: InferenceServerException) -> str:
    # tritonclient reports str(grpc.StatusCode.X) = "StatusCode.X".
    return str(exc.status() or "").rsplit(".", 1)[-1].upper()


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is a Triton/gRPC error worth retrying (see :data:`TRANSIENT_STATUSES`)."""
    return isinstance(exc, InferenceServerException) and _status(exc) in TRANSIENT_STATUSES


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: delay ``n`` is ``backoff_s * 2**(n-1)``, capped, times U(0.5, 1).

    Jitter keeps many clients that failed together from retrying together.
    """

    retries: int = 3  # extra attempts after the first
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0

    def delay(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1)))
        return base * random.uniform(0.5, 1.0)


def _unavailable(url: str, what: str, exc: BaseException | None = None) -> TritonUnavailableError:
    detail = f" ({exc.message() if isinstance(exc, InferenceServerException) else exc})" if exc else ""
    return TritonUnavailableError(
        f"Triton at {url} {what}{detail}; start it with 'lasan serve REPOSITORY' (or the Triton container) "
        "and check the --url / triton_url setting (gRPC port, usually 8001)"
    )


def _final_error(url: str, model: str, exc: InferenceServerException, attempts: int) -> LasanError:
    status = _status(exc)
    if status == "DEADLINE_EXCEEDED":
        return TritonUnavailableError(
            f"Triton at {url} did not answer within the timeout for model '{model}' "
            f"({attempts} attempt(s)); the server may be overloaded: raise --timeout or try again later"
        )
    if status in TRANSIENT_STATUSES:
        return _unavailable(url, f"could not be reached after {attempts} attempt(s)", exc)
    if status in _MODEL_MISSING_STATUSES:
        return TritonUnavailableError(
            f"model '{model}' is not loaded on Triton at {url} ({exc.message()}); check the model name "
            "(--model) and the model repository the server was started with"
        )
    return ScoringError(f"Triton refused the ECG for model '{model}': {exc.message()}")


def _missing_model_error(url: str, model: str, index: Sequence[dict[str, Any]]) -> TritonUnavailableError:
    ready = sorted({m.get("name", "") for m in index if m.get("state") == "READY"})
    entry = [m for m in index if m.get("name") == model]
    state = (
        f" (state {entry[0].get('state', 'unknown')}: {entry[0].get('reason', '')})"
        if entry
        else " (not in the repository)"
    )
    return TritonUnavailableError(
        f"model '{model}' is not ready on Triton at {url}{state}; ready models: {', '.join(ready) or 'none'}. "
        "Check --model, or build the repository with 'lasan build' and restart the server"
    )


class _Common:
    """Settings and request/response helpers shared by the two clients."""

    def __init__(
        self,
        url: str,
        model: str,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        max_backoff_s: float,
        attention: bool,
        on_retry: RetryHook | None,
    ) -> None:
        if timeout_s <= 0:
            raise ScoringError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url
        self.model = model
        self.timeout_s = float(timeout_s)
        self.retry = RetryPolicy(max(0, int(retries)), float(backoff_s), float(max_backoff_s))
        self.attention = attention
        self._on_retry = on_retry
        self._info: ModelInfo | None = None

    @property
    def model_info(self) -> ModelInfo:
        """The served model's description (available after connecting)."""
        if self._info is None:
            raise TritonUnavailableError(f"not connected to Triton at {self.url}; call connect() first")
        return self._info

    def _inputs(self, wire: WireECG, module: Any) -> tuple[list[Any], list[Any]]:
        ecg = module.InferInput(INPUT_ECG, list(wire.ecg_mv.shape), "FP32")
        ecg.set_data_from_numpy(wire.ecg_mv)
        fs = module.InferInput(INPUT_SAMPLING_RATE, list(wire.sampling_rate_hz.shape), "FP32")
        fs.set_data_from_numpy(wire.sampling_rate_hz)
        declared = self.model_info.outputs  # an older repository may lack newer outputs
        names = [
            n for n in ENSEMBLE_OUTPUTS if (self.attention or n != OUTPUT_ATTENTION) and (not declared or n in declared)
        ]
        return [ecg, fs], [module.InferRequestedOutput(n) for n in names]

    def _decode(self, result: Any, wire: WireECG, started: float) -> Score:
        declared = self.model_info.outputs
        outputs: dict[str, np.ndarray | None] = {
            n: result.as_numpy(n) if not declared or n in declared else None for n in ENSEMBLE_OUTPUTS
        }
        return decode_outputs(outputs, self.model_info, wire, (time.perf_counter() - started) * 1e3)

    def _note_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        if self._on_retry is not None:
            self._on_retry(attempt, exc, delay)


class TritonScorer(_Common):
    """Blocking client for the served LASAN ensemble.

    Example::

        with TritonScorer("localhost:8001") as scorer:
            score = scorer.score(read_ecg("ecg.dcm"))

    Args:
        url: Triton gRPC ``host:port``.
        model: ensemble name (default :data:`lasan.tensor_names.ENSEMBLE_MODEL`).
        timeout_s: deadline for each gRPC call, seconds.
        retries: extra attempts after a transient failure (0 = fail at once).
        backoff_s: first retry delay; doubles each time, capped at ``max_backoff_s``.
        attention: also fetch the inter-lead attention maps (``Score.attention``).
        on_retry: called as ``on_retry(attempt, error, delay_s)`` before each retry (metrics, logs).
        connect: check readiness and read the model description now (else on first use).

    Raises:
        TritonUnavailableError: (when connecting) the server is unreachable, or the model is
            missing or not ready.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = ENSEMBLE_MODEL,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        max_backoff_s: float = 5.0,
        attention: bool = False,
        on_retry: RetryHook | None = None,
        connect: bool = True,
    ) -> None:
        super().__init__(url, model, timeout_s, retries, backoff_s, max_backoff_s, attention, on_retry)
        self._client = grpcclient.InferenceServerClient(url=url)
        if connect:
            try:
                self.connect()
            except BaseException:
                self._client.close()
                raise

    def __enter__(self) -> TritonScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _call(self, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return fn()
            except InferenceServerException as exc:
                if not is_transient(exc) or attempt >= self.retry.retries:
                    raise _final_error(self.url, self.model, exc, attempt + 1) from None
                attempt += 1
                delay = self.retry.delay(attempt)
                self._note_retry(attempt, exc, delay)
                time.sleep(delay)

    def connect(self) -> ModelInfo:
        """Check that the server is live and the model ready; read the model description once.

        Raises:
            TritonUnavailableError: unreachable server, or model missing / not ready.
        """
        if self._info is not None:
            return self._info
        t = self.timeout_s
        live = self._call(lambda: self._client.is_server_live(client_timeout=t))
        if not live:
            raise _unavailable(self.url, "answers but is not live (starting up or shutting down)")
        if not self._call(lambda: self._client.is_model_ready(self.model, client_timeout=t)):
            index = self._call(lambda: self._client.get_model_repository_index(as_json=True, client_timeout=t))
            raise _missing_model_error(self.url, self.model, index.get("models", []))
        metadata = self._call(lambda: self._client.get_model_metadata(self.model, as_json=True, client_timeout=t))
        config = self._call(lambda: self._client.get_model_config(self.model, as_json=True, client_timeout=t))
        self._info = model_info_from(metadata, config)
        return self._info

    def score(self, record: ECGRecord, *, request_id: str = "") -> Score:
        """Score one ECG.

        Args:
            record: the ECG; its leads are reordered (and limb leads derived) for the wire.
            request_id: a correlation id sent to Triton (never a patient identifier).

        Raises:
            MissingLeadsError: the record lacks model leads that cannot be derived.
            TritonUnavailableError: server down, model not ready, or timed out after all retries.
            ScoringError: the server rejected this ECG (its message included); not retried.
        """
        self.connect()
        wire = wire_ecg(record)
        inputs, outputs = self._inputs(wire, grpcclient)
        started = time.perf_counter()
        result = self._call(
            lambda: self._client.infer(
                self.model, inputs, outputs=outputs, request_id=request_id, client_timeout=self.timeout_s
            )
        )
        return self._decode(result, wire, started)

    def score_many(self, records: Iterable[ECGRecord]) -> list[Score | LasanError]:
        """Score each record in turn; a failure is returned in its place instead of raised.

        Raises:
            TritonUnavailableError: only from connecting; later outages appear per item.
        """
        self.connect()
        out: list[Score | LasanError] = []
        for record in records:
            try:
                out.append(self.score(record))
            except LasanError as exc:
                out.append(exc)
        return out


class AsyncTritonScorer(_Common):
    """asyncio client: same behaviour as :class:`TritonScorer`, many requests in flight.

    Example::

        async with AsyncTritonScorer("localhost:8001") as scorer:
            scores = await scorer.score_many(records, concurrency=32)

    The gRPC channel belongs to the event loop that first uses it: create, use and close
    the scorer inside one loop. Arguments as :class:`TritonScorer` (no ``connect``:
    call ``await connect()`` or use ``async with``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model: str = ENSEMBLE_MODEL,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        max_backoff_s: float = 5.0,
        attention: bool = False,
        on_retry: RetryHook | None = None,
    ) -> None:
        super().__init__(url, model, timeout_s, retries, backoff_s, max_backoff_s, attention, on_retry)
        self._client: aioclient.InferenceServerClient | None = None

    async def __aenter__(self) -> AsyncTritonScorer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return await fn()
            except InferenceServerException as exc:
                if not is_transient(exc) or attempt >= self.retry.retries:
                    raise _final_error(self.url, self.model, exc, attempt + 1) from None
                attempt += 1
                delay = self.retry.delay(attempt)
                self._note_retry(attempt, exc, delay)
                await asyncio.sleep(delay)

    async def connect(self) -> ModelInfo:
        """As :meth:`TritonScorer.connect`.

        Raises:
            TritonUnavailableError: unreachable server, or model missing / not ready.
        """
        if self._info is not None:
            return self._info
        if self._client is None:
            self._client = aioclient.InferenceServerClient(url=self.url)
        c, t = self._client, self.timeout_s
        live = await self._call(lambda: c.is_server_live(client_timeout=t))
        if not live:
            raise _unavailable(self.url, "answers but is not live (starting up or shutting down)")
        if not await self._call(lambda: c.is_model_ready(self.model, client_timeout=t)):
            index = await self._call(lambda: c.get_model_repository_index(as_json=True, client_timeout=t))
            raise _missing_model_error(self.url, self.model, index.get("models", []))
        metadata = await self._call(lambda: c.get_model_metadata(self.model, as_json=True, client_timeout=t))
        config = await self._call(lambda: c.get_model_config(self.model, as_json=True, client_timeout=t))
        self._info = model_info_from(metadata, config)
        return self._info

    async def score(self, record: ECGRecord, *, request_id: str = "") -> Score:
        """As :meth:`TritonScorer.score` (same errors)."""
        await self.connect()
        assert self._client is not None
        c = self._client
        wire = wire_ecg(record)
        inputs, outputs = self._inputs(wire, aioclient)
        started = time.perf_counter()
        result = await self._call(
            lambda: c.infer(self.model, inputs, outputs=outputs, request_id=request_id, client_timeout=self.timeout_s)
        )
        return self._decode(result, wire, started)

    async def score_many(self, records: Iterable[ECGRecord], *, concurrency: int = 16) -> list[Score | LasanError]:
        """Score all records with up to ``concurrency`` requests in flight; results in input order.

        A failure is returned in its item's place instead of raised.

        Raises:
            TritonUnavailableError: only from connecting; later outages appear per item.
        """
        await self.connect()
        gate = asyncio.Semaphore(max(1, int(concurrency)))

        async def one(record: ECGRecord) -> Score | LasanError:
            async with gate:
                try:
                    return await self.score(record)
                except LasanError as exc:
                    return exc

        return list(await asyncio.gather(*(one(r) for r in records)))
