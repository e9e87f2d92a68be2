"""Health-checked failover over several real Triton servers (lasan.client.failover).

Server B is the shared session server; server A is our own, started on reserved ports
after the scorer has already found it down, and SIGKILLed mid-stream later. Which server
answered is read from each server's own Prometheus counter of successful requests.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from lasan.client.api import AsyncTritonScorer
from lasan.client.failover import FailoverTritonScorer
from lasan.errors import ScoringError, TritonUnavailableError
from lasan.formats.sample import sample_ecg
from lasan.tensor_names import ENSEMBLE_MODEL

pytestmark = pytest.mark.slow


def _successes(metrics_url: str) -> float:
    """Triton's own count of successful inferences of the ensemble on one server."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(rf'nv_inference_request_success\{{model="{ENSEMBLE_MODEL}",version="1"\}} ([0-9.e+]+)', text)
    assert found, "Triton's metrics have no success counter for the ensemble"
    return float(found.group(1))


def _records(n: int):
    return [sample_ecg(fs=250.0, seed=s, heart_rate_bpm=55 + 3 * (s % 10)) for s in range(n)]


def test_one_server_missing_then_started_then_killed_mid_stream(triton_server, free_tcp_port, tmp_path):
    from lasan.build.serve import TritonServer

    a_ports = {"grpc_port": free_tcp_port(), "http_port": free_tcp_port(), "metrics_port": free_tcp_port()}
    a_url = f"127.0.0.1:{a_ports['grpc_port']}"
    b_url = triton_server.grpc_url
    changes: list[tuple[str, bool]] = []
    records = _records(24)

    async def stream(scorer: FailoverTritonScorer, batch, on_done=None):
        gate = asyncio.Semaphore(4)
        done = 0

        async def one(record):
            nonlocal done
            async with gate:
                score = await scorer.score(record)
            done += 1
            if on_done is not None:
                on_done(done)
            return score

        return await asyncio.gather(*(one(r) for r in batch))

    async def reference():
        async with AsyncTritonScorer(b_url, timeout_s=60) as plain:
            return [await plain.score(r) for r in records]

    expected = asyncio.run(reference())
    server_a = TritonServer(triton_server.repository, work_dir=tmp_path / "triton-a", startup_timeout=300, **a_ports)

    async def scenario():
        scorer = FailoverTritonScorer([a_url, b_url], timeout_s=60, reprobe_s=0.5,
                                      on_change=lambda url, up, why: changes.append((url, up)))
        try:
            # 1. A is not running: every ECG is scored (on B), A is marked down.
            b_before = _successes(triton_server.metrics_url)
            first = await stream(scorer, records[:8])
            assert changes == [(a_url, False)]
            assert _successes(triton_server.metrics_url) - b_before >= 8
            # 2. A starts: after its re-probe delay it is health-checked and takes requests again.
            await asyncio.to_thread(server_a.start)
            await asyncio.sleep(0.6)
            warm = [await scorer.score(records[8])]  # the next request starts A's health check
            for _ in range(100):
                if (a_url, True) in changes:
                    break
                await asyncio.sleep(0.1)
            second = warm + await stream(scorer, records[9:16])
            assert (a_url, True) in changes
            assert _successes(server_a.metrics_url) >= 1  # round robin: A answered part of them
            # 3. A is SIGKILLed mid-stream: the rest are still scored, by B.
            killed = asyncio.Event()

            def kill_after_two(done: int) -> None:
                if done == 2 and not killed.is_set():
                    killed.set()
                    os.killpg(server_a.pid, signal.SIGKILL)

            b_before = _successes(triton_server.metrics_url)
            third = await stream(scorer, records[16:], on_done=kill_after_two)
            assert killed.is_set() and changes[-1] == (a_url, False)
            assert _successes(triton_server.metrics_url) - b_before >= 4
            assert {url: up for url, up in ((s.url, s.up) for s in scorer.states())} == {a_url: False, b_url: True}
            return first + second + third
        finally:
            await scorer.close()
            server_a.stop()

    scores = asyncio.run(scenario())
    assert len(scores) == len(records)
    for got, want in zip(scores, expected, strict=True):
        np.testing.assert_allclose(list(got.probabilities.values()), list(want.probabilities.values()), atol=1e-4)
    assert len({round(s.probabilities["ARVC"], 5) for s in scores}) > 1  # different ECGs, different scores


def test_all_servers_down_raises_unavailable_naming_each(free_tcp_port):
    urls = [f"127.0.0.1:{free_tcp_port()}", f"127.0.0.1:{free_tcp_port()}"]
    changes: list[tuple[str, bool]] = []

    async def run():
        async with FailoverTritonScorer(urls, timeout_s=5, on_change=lambda u, up, why: changes.append((u, up))) as s:
            with pytest.raises(TritonUnavailableError) as info:
                await s.score(sample_ecg(seed=1))
            # Both are down and neither is due: a second request still tries both (the
            # caller's backoff paces it) and still raises the retryable error.
            with pytest.raises(TritonUnavailableError):
                await s.score(sample_ecg(seed=1))
            return info.value

    error = asyncio.run(run())
    assert all(url in str(error) for url in urls) and "retried" in str(error)
    assert sorted(changes) == sorted((u, False) for u in urls)  # each reported down once


def test_an_ecg_the_model_refuses_is_not_retried_on_the_other_server(triton_server, free_tcp_port):
    asked: list[str] = []

    def make(url: str) -> AsyncTritonScorer:
        scorer = AsyncTritonScorer(url, timeout_s=60, retries=0)
        original = scorer.score

        async def counted(record, *, request_id=""):
            asked.append(url)
            return await original(record, request_id=request_id)

        scorer.score = counted  # type: ignore[method-assign]
        return scorer

    short = replace(sample_ecg(seed=2), signal=sample_ecg(seed=2).signal[:, :200])  # 0.4 s: preprocessing refuses

    async def run():
        urls = [triton_server.grpc_url, f"127.0.0.1:{free_tcp_port()}"]
        async with FailoverTritonScorer(urls, balance="in_order", make_scorer=make) as s:
            with pytest.raises(ScoringError) as info:
                await s.score(short)
            assert not isinstance(info.value, TritonUnavailableError)
            assert all(state.up for state in s.states())

    asyncio.run(run())
    assert asked == [triton_server.grpc_url]


def test_bad_endpoint_lists_are_refused():
    with pytest.raises(ScoringError):
        FailoverTritonScorer([])
    with pytest.raises(ScoringError):
        FailoverTritonScorer(["a:1", "a:1"])
    with pytest.raises(ScoringError):
        FailoverTritonScorer(["a:1"], balance="random")
