"""The MLLP listener on real loopback sockets, without Triton: ACK rules, persistence,
storage failure, character sets, timeouts, TLS, handler errors."""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import subprocess

import pytest
from feedkit import oru, small_ecg

from lasan.hl7.ack import parse_ack
from lasan.integration.config import ListenerConfig, TLSConfig, server_ssl_context
from lasan.integration.intake import Intake
from lasan.integration.listener import MLLPListener
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPClient, MLLPDecoder, frame, read_block
from lasan.integration.queue import DurableQueue


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _listener(tmp_path, parse=None, ssl_context=None, **cfg):
    config = ListenerConfig(port=0, **cfg)
    queue = DurableQueue(tmp_path / "q.sqlite")
    intake = Intake(queue, Metrics(), Health(), application=config.application, parse=parse)
    listener = MLLPListener(config, intake, ssl_context)
    port = await listener.start()
    return listener, queue, port


def test_persistent_connection_pipelined_frames_and_duplicates(tmp_path):
    messages = [oru(small_ecg(seed=i), f"P{i}") for i in range(5)]

    async def main():
        listener, queue, port = await _listener(tmp_path)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # All five frames in one write, then one frame split over three writes.
            writer.write(b"".join(frame(m) for m in messages))
            split = frame(messages[0])  # a re-send of P0
            for part in (split[:5], split[5:4000], split[4000:]):
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
            dec, pending, acks = MLLPDecoder(), [], []
            for _ in range(6):
                acks.append((await read_block(reader, dec, pending)).decode())
            writer.close()
            return acks, queue.counts()
        finally:
            await listener.stop()

    acks, counts = _run(main())
    parsed = [parse_ack(a) for a in acks]
    assert [(a.code, a.control_id) for a in parsed] == [("AA", f"P{i}") for i in range(5)] + [("AA", "P0")]
    assert acks[5] == acks[0]  # the stored ACK, byte for byte
    assert counts["received"] == 5  # the re-send was not stored twice


def test_storage_failure_never_answers_aa(tmp_path):
    async def main():
        listener, queue, port = await _listener(tmp_path)
        queue._db.execute("PRAGMA busy_timeout=100")
        blocker = sqlite3.connect(str(tmp_path / "q.sqlite"), timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")  # the database cannot be written
        try:
            async with MLLPClient("127.0.0.1", port) as client:
                failed = parse_ack(await client.send(oru(small_ecg(), "S1")))
                blocker.rollback()
                ok = parse_ack(await client.send(oru(small_ecg(), "S1")))
            return failed, ok, queue.counts()
        finally:
            blocker.close()
            await listener.stop()

    failed, ok, counts = _run(main())
    assert failed.code == "AE" and "could not be stored" in failed.text
    assert ok.code == "AA" and counts["received"] == 1


def test_msh18_latin1_message_is_decoded_and_answered_in_kind(tmp_path):
    message = oru(small_ecg(), "L1", charset="8859/1")
    assert b"8859/1" in message

    async def main():
        listener, queue, port = await _listener(tmp_path)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(frame(message.replace(b"Zenobia", "Zenöbia".encode("latin-1"))))
            ack = await read_block(reader, MLLPDecoder(), [])
            writer.close()
            return ack, queue
        finally:
            await listener.stop()

    ack, queue = _run(main())
    assert parse_ack(ack.decode("latin-1")).code == "AA"
    assert b"|8859/1" in ack.split(b"\r")[0]


def test_idle_and_frame_timeouts_close_the_connection(tmp_path):
    async def main():
        listener, _, port = await _listener(tmp_path, idle_timeout_s=0.3, frame_deadline_s=0.3)
        try:
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            idle = await asyncio.wait_for(r1.read(), 5)  # EOF: closed by the listener
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(b"\x0bMSH|^~\\&|half")
            stalled = await asyncio.wait_for(r2.read(), 5)
            async with MLLPClient("127.0.0.1", port) as client:  # still serving
                ok = parse_ack(await client.send(oru(small_ecg(), "AFTER")))
            return idle, stalled, ok
        finally:
            await listener.stop()

    idle, stalled, ok = _run(main())
    assert idle == b"" and stalled == b"" and ok.code == "AA"


def test_handler_error_becomes_ae_and_listener_survives(tmp_path):
    calls = []

    def exploding_parse(reading):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug in a parser")
        return reading.parse()

    async def main():
        listener, _, port = await _listener(tmp_path, parse=exploding_parse)
        try:
            async with MLLPClient("127.0.0.1", port) as client:
                first = parse_ack(await client.send(oru(small_ecg(), "H1")))
                second = parse_ack(await client.send(oru(small_ecg(), "H1")))
            return first, second
        finally:
            await listener.stop()

    first, second = _run(main())
    assert first.code == "AE" and "internal error" in first.text and "RuntimeError" in first.text
    assert second.code == "AA"  # the failed attempt stored nothing, so a re-send is processed


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_listener(tmp_path, certificate):
    cert, key = certificate
    server_ctx = server_ssl_context(TLSConfig(cert_file=cert, key_file=key))
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main():
        listener, _, port = await _listener(tmp_path, ssl_context=server_ctx)
        try:
            async with MLLPClient("127.0.0.1", port, ssl_context=client_ctx) as client:
                ack = parse_ack(await client.send(oru(small_ecg(), "TLS1")))
            # A plain-TCP client gets no ACK from a TLS port.
            try:
                async with MLLPClient("127.0.0.1", port, timeout_s=2) as plain:
                    await plain.send(oru(small_ecg(), "PLAIN"))
                plain_result = "answered"
            except (OSError, asyncio.TimeoutError):
                plain_result = "refused"
            return ack, plain_result
        finally:
            await listener.stop()

    ack, plain_result = _run(main())
    assert ack.code == "AA" and plain_result == "refused"
