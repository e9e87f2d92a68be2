"""The MLLP listener under fuzzed byte streams, over real loopback sockets.

Each input is a stream built from valid frames (an ORU, an ACK), framing bytes (VT, FS, CR)
in odd places, random bytes and truncations, sent in random chunks; the connection is then
half-closed, or left open so that only the listener's own deadlines can end it. The contract
(tests/fuzz/netkit.py): the listener answers every complete frame with an ACK, closes within
its deadlines, never logs an internal error, and serves the next connection; its memory stays
bounded over many inputs.
"""

from __future__ import annotations

import os
import random
import time
from functools import lru_cache

import pytest
from contract import FUZZ, TOTALS
from hypothesis import given
from hypothesis import strategies as st
from netkit import EventLog, LoopThread, exchange, rss_mb

from lasan.formats.sample import sample_ecg
from lasan.hl7.oru import build_oru
from lasan.integration.config import ListenerConfig
from lasan.integration.intake import Intake
from lasan.integration.listener import MLLPListener
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPDecoder, frame
from lasan.integration.queue import DurableQueue

FRAME_DEADLINE_S = 0.4
IDLE_TIMEOUT_S = 0.4
MAX_FRAME = 256 * 1024
# Answer or close within the deadlines plus the intake of every frame sent (a few ms each here;
# generous so that a loaded CI machine does not fail on speed).
BOUND_S = 15.0


@lru_cache(maxsize=1)
def _valid() -> bytes:
    return build_oru(sample_ecg(fs=250, duration_s=2.0, seed=3), style="na", control_id="MLLPFUZZ")


ACK = b"MSH|^~\\&|A|B|C|D|20260101||ACK|X1|P|2.5\rMSA|AA|X1\r"


@st.composite
def piece(draw) -> bytes:
    kind = draw(st.sampled_from(["frame", "ack", "cut", "token", "noise", "mutated", "huge"]))
    valid = _valid()
    if kind == "frame":
        return frame(valid)
    if kind == "ack":
        return frame(ACK)
    if kind == "cut":  # a frame cut anywhere (a sender that died mid-message)
        f = frame(valid)
        return f[: draw(st.integers(0, len(f) - 1))]
    if kind == "token":
        return draw(st.sampled_from([b"\x0b", b"\x1c", b"\r", b"\x1c\r", b"\x0b\x1c\r", b"\x0b\x0b", b"\r\n"]))
    if kind == "noise":
        return draw(st.binary(max_size=64))
    if kind == "huge":  # over the frame limit: AR, then the connection closes
        return b"\x0b" + b"A" * (MAX_FRAME + draw(st.integers(1, 1000)))
    f = bytearray(frame(valid))
    for _ in range(draw(st.integers(1, 8))):
        f[draw(st.integers(0, len(f) - 1))] = draw(st.integers(0, 255))
    return bytes(f)


@st.composite
def stream(draw) -> tuple[list[bytes], bool]:
    data = b"".join(draw(st.lists(piece(), min_size=1, max_size=6)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if data[a:b]]
    half_close = draw(st.integers(0, 9)) > 0  # left open 10 % of the time: only the deadlines end it
    return chunks, half_close


def _expected_answers(chunks: list[bytes]) -> int | None:
    """Blocks the sans-IO decoder finds in the stream (the listener answers each); None past the limit."""
    decoder, blocks = MLLPDecoder(MAX_FRAME), 0
    try:
        for chunk in chunks:
            blocks += len(decoder.feed(chunk))
    except Exception:  # noqa: BLE001 - FrameTooLargeError: answered AR, then closed; count is not fixed
        return None
    return blocks


@pytest.fixture(scope="module")
def listener(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mllp-fuzz")
    loop = LoopThread()
    config = ListenerConfig(port=0, frame_deadline_s=FRAME_DEADLINE_S, idle_timeout_s=IDLE_TIMEOUT_S,
                            max_message_bytes=MAX_FRAME, message_timeout_s=10.0)
    intake = Intake(DurableQueue(folder / "q.sqlite"), Metrics(), Health(), application="LASAN")
    server = MLLPListener(config, intake)
    port = loop.run(server.start())
    events = EventLog("lasan.integration.listener")
    yield port, events
    events.detach()
    loop.run(server.stop())
    loop.close()


def _still_serving(port: int) -> None:
    answer, _, closed = exchange(port, [frame(_valid())], half_close=True, bound_s=BOUND_S)
    assert closed and b"MSA|A" in answer, f"the listener no longer answers a valid message: {answer[:200]!r}"


def _one(port: int, events: EventLog, chunks: list[bytes], half_close: bool) -> None:
    started = time.perf_counter()
    try:
        answer, took, closed = exchange(port, chunks, half_close=half_close, bound_s=BOUND_S)
        assert closed, f"connection still open after {BOUND_S} s (deadlines {FRAME_DEADLINE_S} / {IDLE_TIMEOUT_S} s)"
        expected = _expected_answers(chunks)
        acks = answer.count(b"\x0bMSH")
        if expected is not None:
            assert acks == expected, f"{expected} complete frames, {acks} answers"
        assert events.count("mllp.connection_error") == 0, "the listener logged an internal error"
    finally:
        entry = TOTALS.setdefault("mllp-framing", [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - started


@FUZZ
@given(stream())
def test_mllp_framing_contract(listener, case):
    port, events = listener
    chunks, half_close = case
    _one(port, events, chunks, half_close)
    _still_serving(port)


def test_mllp_memory_stays_bounded(listener):
    """RSS growth over N random streams (after a warm-up) stays under a fixed bound: no per-connection leak."""
    port, events = listener
    n = int(os.environ.get("LASAN_FUZZ_EXAMPLES", "0") or 0) or 150
    rng = random.Random(12)
    valid = frame(_valid())

    def random_stream() -> list[bytes]:
        parts = [valid, b"\x0b", b"\x1c\r", rng.randbytes(rng.randint(0, 200)), valid[: rng.randint(0, len(valid))]]
        data = b"".join(rng.choice(parts) for _ in range(rng.randint(1, 5)))
        return [data]

    for _ in range(30):  # warm-up: caches, thread pool, sqlite pages
        _one(port, events, random_stream(), True)
    before = rss_mb()
    for _ in range(n):
        _one(port, events, random_stream(), True)
    growth = rss_mb() - before
    assert growth < 64, f"RSS grew {growth:.1f} MB over {n} connections"
