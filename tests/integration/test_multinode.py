"""Two ``lasan listen`` nodes on one real PostgreSQL queue, each scoring through its own list
of real Triton servers, delivering to one real downstream MLLP receiver.

One stream of 300 HL7 messages is spread over both nodes while, in turn, the PostgreSQL
server is stopped and started again, node A's preferred Triton is SIGKILLed, and node A
itself is SIGKILLed. The senders behave like an interface engine: a message without ``AA``
is sent again (to the other node when its own is gone) until it gets one. Then:

* while PostgreSQL was down no message sent in that time got ``AA``;
* every message got ``AA`` and yields exactly one distinct result downstream (by result
  MSH-10; the same result re-sent after a node died is allowed);
* a message ``AA``'d by node A, re-sent to node B, gets node A's original ACK.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from feedkit import Downstream, ListenerProcess, free_port, msh10, oru, small_ecg
from postgres_server import PostgresServer, postgres_bin

from lasan.errors import LasanError
from lasan.hl7.ack import parse_ack
from lasan.integration.mllp import MLLPClient

pytestmark = pytest.mark.slow

N_MESSAGES = 300
PG_DOWN_AT, TRITON_KILL_AT, NODE_KILL_AT = 40, 110, 180  # AA'd messages so far
PG_DOWN_S = 3.0


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: "
                    "install Debian's postgresql package (make install does, as root)")
    pytest.importorskip("psycopg", reason="psycopg is in the integration extra: pip install -e '.[integration]'")
    with PostgresServer() as server:
        yield server


@dataclass
class Attempt:
    node: str
    sent_at: float
    answered_at: float
    code: str  # AA / AE / AR, or "closed" when the connection failed
    ack: bytes = b""


@dataclass
class Feed:
    """Where each message stands; shared by the two sender threads."""

    attempts: dict[str, list[Attempt]] = field(default_factory=dict)
    acked: dict[str, Attempt] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    progress: threading.Condition = field(default_factory=threading.Condition)

    def note(self, cid: str, attempt: Attempt) -> None:
        with self.lock:
            self.attempts.setdefault(cid, []).append(attempt)
            if attempt.code == "AA":
                self.acked.setdefault(cid, attempt)
        with self.progress:
            self.progress.notify_all()

    def wait_acked(self, n: int, timeout: float) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: len(self.acked) >= n, timeout), \
                f"only {len(self.acked)} of {n} messages AA'd"


def _sender(feed: Feed, messages: dict[str, bytes], nodes: dict[str, ListenerProcess], prefer: str,
            deadline: float) -> None:
    """Send each message until AA, on one connection at a time, moving to the other node when ours is gone."""

    async def main() -> None:
        order = [prefer] + [n for n in nodes if n != prefer]
        client: MLLPClient | None = None
        node = order[0]
        for cid, message in messages.items():
            while time.time() < deadline:
                if not nodes[node].alive():
                    node = next(n for n in order if nodes[n].alive())
                    if client is not None:
                        await client.close()
                    client = None
                client = client or MLLPClient("127.0.0.1", nodes[node].hl7_port, timeout_s=20)
                sent_at = time.time()
                try:
                    reply = await client.send(message)
                    ack = parse_ack(reply)
                    feed.note(cid, Attempt(node, sent_at, time.time(), ack.code, reply))
                    if ack.code == "AA":
                        break
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, LasanError):
                    feed.note(cid, Attempt(node, sent_at, time.time(), "closed"))
                await asyncio.sleep(0.2)  # the interface engine's retry interval
        if client is not None:
            await client.close()

    asyncio.run(main())


def _listener(tmp: Path, name: str, queue_url: str, urls: list[str], downstream: int) -> ListenerProcess:
    work = tmp / name
    work.mkdir()
    config = {
        "listener": {"port": free_port(), "message_timeout_s": 20, "idle_timeout_s": 120},
        "triton": {"urls": urls, "balance": "in_order", "timeout_s": 10, "reprobe_s": 1},
        "downstream": {"host": "127.0.0.1", "port": downstream, "timeout_s": 5},
        # A short lease: node A's items must reach node B soon after A dies.
        "storage": {"queue_url": queue_url, "queue_db": str(work / "unused.sqlite"), "outbox": str(work / "outbox"),
                    "lease_s": 5},
        "retry": {"initial_s": 0.2, "max_s": 1.0},
        "metrics": {"port": free_port(), "node": name},
        "logging": {"format": "kv", "level": "INFO"},
        "scoring": {"concurrency": 8},
    }
    return ListenerProcess(config, work)


def test_two_nodes_one_queue_survive_a_node_a_triton_and_a_database_restart(
    pg, triton_server, downstream: Downstream, tmp_path, assert_no_phi
):
    from lasan.build.serve import TritonServer

    queue_url = pg.create_database()
    own = TritonServer(triton_server.repository, grpc_port=free_port(), http_port=free_port(),
                       metrics_port=free_port(), work_dir=tmp_path / "triton-a", startup_timeout=300)
    own.start()
    nodes: dict[str, ListenerProcess] = {}
    try:
        # Node A prefers its own Triton and fails over to the shared one; node B uses the shared one.
        nodes["node-a"] = _listener(tmp_path, "node-a", queue_url, [own.grpc_url, triton_server.grpc_url],
                                    downstream.port).start()
        nodes["node-b"] = _listener(tmp_path, "node-b", queue_url, [triton_server.grpc_url, own.grpc_url],
                                    downstream.port).start()
        records = [small_ecg(seed=s) for s in range(4)]
        messages = {f"MN{i:03d}": oru(records[i % 4], f"MN{i:03d}") for i in range(N_MESSAGES)}
        feed = Feed()
        deadline = time.time() + 120
        shares = {"node-a": dict(list(messages.items())[0::2]), "node-b": dict(list(messages.items())[1::2])}
        senders = [threading.Thread(target=_sender, args=(feed, shares[n], nodes, n, deadline), daemon=True)
                   for n in shares]
        for t in senders:
            t.start()

        feed.wait_acked(PG_DOWN_AT, 60)
        pg.stop()
        down_from = time.time()
        time.sleep(PG_DOWN_S)
        down_until = time.time()
        pg.start()

        feed.wait_acked(TRITON_KILL_AT, 60)
        os.killpg(own.pid, signal.SIGKILL)
        feed.wait_acked(NODE_KILL_AT, 60)
        nodes["node-a"].kill()
        for t in senders:
            t.join(max(1.0, deadline - time.time()))

        # 1. No AA while PostgreSQL was down, though messages were in flight (the listener holds
        #    them until the database answers, or answers AE). The first half second after the
        #    stop is left out: an AA for a row committed just before it may still be on its way.
        settled = down_from + 0.5
        in_flight = [a for tries in feed.attempts.values() for a in tries
                     if a.sent_at <= down_until and a.answered_at >= settled]
        assert in_flight, "no message was in flight while PostgreSQL was down: the check below would prove nothing"
        answered_while_down = [a for a in in_flight if a.answered_at <= down_until]
        assert all(a.code != "AA" for a in answered_while_down), [(a.code, a.node) for a in answered_while_down]
        # 2. Every message got its AA in the end (from one node or the other).
        assert set(feed.acked) == set(messages)
        assert {a.node for a in feed.acked.values()} == {"node-a", "node-b"}
        # 3. A re-send to the other node gets the original ACK, byte for byte.
        from_a = [cid for cid, a in feed.acked.items() if a.node == "node-a"][:5]
        assert from_a

        async def resend() -> dict[str, bytes]:
            async with MLLPClient("127.0.0.1", nodes["node-b"].hl7_port, timeout_s=20) as client:
                return {cid: await client.send(messages[cid]) for cid in from_a}

        again = asyncio.run(resend())
        for cid in from_a:
            assert again[cid] == feed.acked[cid].ack, f"{cid}: node B answered another ACK than node A stored"
        # 4. Exactly one distinct result per message reaches downstream (re-sends of it allowed).
        got = downstream.wait_for(set(messages), timeout=150)
        assert set(got) == set(messages)
        for cid, results in got.items():
            assert len({msh10(r) for r in results}) == 1, f"{cid} produced {len(results)} different results"
        for lp in nodes.values():
            assert_no_phi(lp.log_text())
    finally:
        for lp in nodes.values():
            lp.kill()
        own.stop()
