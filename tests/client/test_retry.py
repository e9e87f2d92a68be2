"""Readiness and retry behaviour against real gRPC failures (a loopback port with nothing listening)."""

from __future__ import annotations

import asyncio

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lasan.cli import main
from lasan.client.api import AsyncTritonScorer, RetryPolicy, TritonScorer, is_transient
from lasan.client.cli import EXIT_TRITON_UNAVAILABLE
from lasan.errors import ScoringError, TritonUnavailableError


@pytest.fixture
def dead_url(free_tcp_port) -> str:
    return f"127.0.0.1:{free_tcp_port()}"


def test_connection_refused_is_a_transient_grpc_error(dead_url):
    client = grpcclient.InferenceServerClient(dead_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.is_server_live(client_timeout=5)
    finally:
        client.close()
    assert is_transient(info.value)


def test_non_grpc_errors_and_bad_input_codes_are_not_transient():
    assert not is_transient(ValueError("x"))
    assert not is_transient(InferenceServerException("bad", status="StatusCode.INVALID_ARGUMENT"))
    assert not is_transient(InferenceServerException("boom", status="StatusCode.INTERNAL"))
    assert is_transient(InferenceServerException("busy", status="StatusCode.RESOURCE_EXHAUSTED"))
    assert is_transient(InferenceServerException("slow", status="StatusCode.DEADLINE_EXCEEDED"))


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(retries=5, backoff_s=0.1, max_backoff_s=0.3)
    for attempt, base in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)):
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(base * 0.5 <= d <= base for d in delays)


def test_unreachable_server_is_retried_then_reported_with_the_url(dead_url):
    retries: list[tuple[int, float]] = []
    with pytest.raises(TritonUnavailableError) as info:
        TritonScorer(dead_url, retries=2, backoff_s=0.01, on_retry=lambda n, exc, delay: retries.append((n, delay)))
    assert [n for n, _ in retries] == [1, 2]
    assert dead_url in str(info.value) and "lasan serve" in str(info.value)


def test_unreachable_server_without_retries_fails_at_once(dead_url):
    calls = []
    with pytest.raises(TritonUnavailableError):
        TritonScorer(dead_url, retries=0, on_retry=lambda *a: calls.append(a))
    assert calls == []


def test_async_scorer_reports_an_unreachable_server(dead_url):
    async def connect() -> None:
        async with AsyncTritonScorer(dead_url, retries=1, backoff_s=0.01):
            pass

    with pytest.raises(TritonUnavailableError, match=dead_url):
        asyncio.run(connect())


def test_a_non_positive_timeout_is_refused():
    with pytest.raises(ScoringError, match="timeout"):
        TritonScorer("127.0.0.1:1", timeout_s=0, connect=False)


def test_cli_with_triton_down_prints_one_error_line_and_a_distinct_exit_code(dead_url, ecg_files, capsys):
    code = main(["score", str(ecg_files["wfdb"]), "--url", dead_url, "--retries", "0"])
    out, err = capsys.readouterr()
    assert code == EXIT_TRITON_UNAVAILABLE
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and dead_url in lines[0] and lines[0].startswith("lasan score: error:")
