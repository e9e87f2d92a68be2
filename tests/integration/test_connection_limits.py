"""Bounded connections on real loopback sockets: the MLLP listener's frame deadline and idle
timeout (deadlines a drip cannot extend), its connection limits in total and per peer, and the
same bounds on DICOM associations (pynetdicom SCU, raw sockets for the drip)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest
from feedkit import oru, small_ecg

from lasan.hl7.ack import parse_ack
from lasan.integration.config import DicomConfig, ListenerConfig
from lasan.integration.intake import Intake
from lasan.integration.listener import MLLPListener
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPClient, MLLPDecoder, frame, read_block
from lasan.integration.queue import DurableQueue

pytestmark = pytest.mark.timeout(120)


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict]:
    return [dict(getattr(r, "fields", {})) for r in caplog.records if r.getMessage() == name]


async def _listener(tmp_path, **cfg) -> tuple[MLLPListener, int]:
    config = ListenerConfig(port=0, **cfg)
    intake = Intake(DurableQueue(tmp_path / "q.sqlite"), Metrics(), Health(), application=config.application)
    listener = MLLPListener(config, intake)
    return listener, await listener.start()


async def _drip(port: int, payload: bytes, interval_s: float, give_up_s: float) -> tuple[float, int]:
    """Send ``payload`` one byte every ``interval_s``; (seconds until the listener closed, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started, sent = time.monotonic(), 0
    closed = asyncio.ensure_future(reader.read())  # b"" at EOF
    try:
        for byte in payload:
            if closed.done():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except OSError:
                break
            sent += 1
            done, _ = await asyncio.wait({closed}, timeout=interval_s)
            if done:
                break
        await asyncio.wait_for(closed, max(0.0, give_up_s - (time.monotonic() - started)))
        return time.monotonic() - started, sent
    finally:
        closed.cancel()
        writer.close()


@pytest.mark.slow
def test_one_byte_a_second_inside_a_frame_is_closed_at_the_frame_deadline(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    async def main():
        listener, port = await _listener(tmp_path, frame_deadline_s=2.0, idle_timeout_s=60.0)
        try:
            took, sent = await _drip(port, b"\x0bMSH|^~\\&|" + b"A" * 100, interval_s=1.0, give_up_s=15)
            async with MLLPClient("127.0.0.1", port) as client:  # still serving
                ok = parse_ack(await client.send(oru(small_ecg(), "AFTER-DRIP")))
            return took, sent, ok
        finally:
            await listener.stop()

    took, sent, ok = asyncio.run(main())
    # Every byte arrived well within a 1 s timer's reach; only a deadline closes the connection.
    assert 1.8 <= took < 10, took
    assert sent >= 2
    assert ok.code == "AA"
    closed = _events(caplog, "mllp.closed")
    assert any("frame deadline" in e["reason"] for e in closed), closed


@pytest.mark.slow
def test_bytes_outside_frames_do_not_reset_the_idle_timeout(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    async def main():
        listener, port = await _listener(tmp_path, frame_deadline_s=60.0, idle_timeout_s=2.0)
        try:
            # Noise that never starts a frame (no VT), one byte a second.
            return await _drip(port, b"x" * 100, interval_s=1.0, give_up_s=15)
        finally:
            await listener.stop()

    took, sent = asyncio.run(main())
    assert 1.8 <= took < 10, took
    assert sent >= 2
    assert any("idle timeout" in e["reason"] for e in _events(caplog, "mllp.closed"))


def test_idle_timeout_counts_from_the_last_complete_frame(tmp_path):
    async def main():
        listener, port = await _listener(tmp_path, idle_timeout_s=1.5)
        try:
            async with MLLPClient("127.0.0.1", port) as client:
                acks = []
                for i in range(3):  # each complete frame starts a fresh idle period
                    acks.append(parse_ack(await client.send(oru(small_ecg(seed=i), f"IDLE{i}"))).code)
                    await asyncio.sleep(1.0)
                return acks
        finally:
            await listener.stop()

    assert asyncio.run(main()) == ["AA", "AA", "AA"]


def test_connection_over_the_total_limit_is_refused_and_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    async def main():
        listener, port = await _listener(tmp_path, max_connections=3, max_connections_per_peer=10)
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            await asyncio.sleep(0.2)
            r4, w4 = await asyncio.open_connection("127.0.0.1", port)
            fourth = await asyncio.wait_for(r4.read(), 5)  # closed at once, nothing answered
            w4.close()
            open_before = listener.open_connections
            _, w = held.pop()
            w.close()
            await asyncio.sleep(0.3)
            async with MLLPClient("127.0.0.1", port) as client:  # a slot is free again
                ok = parse_ack(await client.send(oru(small_ecg(), "AFTER-LIMIT")))
            for _, w in held:
                w.close()
            return fourth, open_before, ok
        finally:
            await listener.stop()

    fourth, open_before, ok = asyncio.run(main())
    assert fourth == b""
    assert open_before == 3
    assert ok.code == "AA"
    refused = _events(caplog, "mllp.connection_refused")
    assert len(refused) == 1 and "listener.max_connections (3)" in refused[0]["reason"]
    assert refused[0]["peer"].startswith("127.0.0.1:")


def test_connection_limit_per_peer_address(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    async def main():
        listener, port = await _listener(tmp_path, max_connections=10, max_connections_per_peer=2)
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.2)
            r3, w3 = await asyncio.open_connection("127.0.0.1", port)
            third = await asyncio.wait_for(r3.read(), 5)
            w3.close()
            # Another loopback address is another peer: its own two slots.
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            w.write(frame(oru(small_ecg(), "OTHER-PEER")))
            await w.drain()
            client_ok = parse_ack((await read_block(r, MLLPDecoder(), [], idle_timeout_s=10)).decode("latin-1"))
            w.close()
            for _, hw in held:
                hw.close()
            return third, client_ok
        finally:
            await listener.stop()

    third, other_ok = asyncio.run(main())
    assert third == b""
    assert other_ok.code == "AA"
    refused = _events(caplog, "mllp.connection_refused")
    assert len(refused) == 1 and "max_connections_per_peer (2)" in refused[0]["reason"]


# --- DICOM associations ---------------------------------------------------------------


def _receiver(tmp_path, **cfg):
    from lasan.integration.dicom_receiver import DicomReceiver

    config = DicomConfig(enabled=True, port=0, min_free_disk_mb=0, **cfg)
    intake = Intake(DurableQueue(tmp_path / "dq.sqlite"), Metrics(), Health(), application="LASAN")
    receiver = DicomReceiver(config, intake, disk_path=tmp_path)
    return receiver, receiver.start()


def _scu(bind: str = "127.0.0.1"):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="CART01")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    return ae


def test_association_over_the_limit_is_rejected_and_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    receiver, port = _receiver(tmp_path, max_associations=1, max_associations_per_peer=5)
    try:
        first = _scu().associate("127.0.0.1", port, ae_title="LASAN")
        assert first.is_established
        second = _scu().associate("127.0.0.1", port, ae_title="LASAN")
        assert second.is_rejected
        assert first.send_c_echo().Status == 0x0000  # the open one is unaffected
        first.release()
        time.sleep(0.3)
        third = _scu().associate("127.0.0.1", port, ae_title="LASAN")
        assert third.is_established
        third.release()
    finally:
        receiver.stop()
    rejected = _events(caplog, "dicom.association_rejected")
    assert len(rejected) == 1 and "dicom.max_associations (1)" in rejected[0]["reason"]


def test_association_limit_per_peer_address(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    receiver, port = _receiver(tmp_path, max_associations=10, max_associations_per_peer=1)
    try:
        first = _scu().associate("127.0.0.1", port, ae_title="LASAN")
        assert first.is_established
        second = _scu().associate("127.0.0.1", port, ae_title="LASAN")
        assert not second.is_established  # the connection was closed before any PDU was read
        other = _scu().associate("127.0.0.1", port, ae_title="LASAN", bind_address=("127.0.0.2", 0))
        assert other.is_established
        assert other.send_c_echo().Status == 0x0000
        other.release()
        first.release()
    finally:
        receiver.stop()
    refused = _events(caplog, "dicom.connection_refused")
    assert len(refused) == 1 and "max_associations_per_peer (1)" in refused[0]["reason"]


@pytest.mark.slow
def test_dicom_drip_is_cut_at_the_association_deadline(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # pynetdicom's own timers restart on every byte: with a 1.5 s network timeout, a byte every
    # second would hold the slot forever; the wall-clock deadline (3 s) closes it.
    receiver, port = _receiver(tmp_path, association_deadline_s=3.0, network_timeout_s=1.5, acse_timeout_s=60)
    try:
        pdu_header = bytes([0x01, 0x00]) + (10_000).to_bytes(4, "big")  # an A-ASSOCIATE-RQ announcing 10 kB
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            started = time.monotonic()
            closed_after = None
            for byte in pdu_header + b"\x00" * 100:
                try:
                    s.sendall(bytes([byte]))
                    s.settimeout(1.0)
                    if s.recv(1) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed_after = time.monotonic() - started
                    break
        assert closed_after is not None and 2.5 <= closed_after < 10, closed_after
        ok = _scu().associate("127.0.0.1", port, ae_title="LASAN")  # still serving
        assert ok.is_established
        ok.release()
    finally:
        receiver.stop()
    assert _events(caplog, "dicom.association_deadline")


def test_wrong_called_ae_title_is_rejected_and_logged(tmp_path, caplog):
    import shutil
    import subprocess

    caplog.set_level(logging.INFO)
    receiver, port = _receiver(tmp_path)  # require_called_aet is on by default
    try:
        wrong = _scu().associate("127.0.0.1", port, ae_title="NOT-LASAN")
        assert wrong.is_rejected
        right = _scu().associate("127.0.0.1", port, ae_title="LASAN")
        assert right.is_established and right.send_c_echo().Status == 0x0000
        right.release()
        dcmtk = shutil.which("echoscu")
        if dcmtk:  # dcmtk's echoscu as a second, independent SCU
            bad = subprocess.run([dcmtk, "-aet", "CART02", "-aec", "ELSEWHERE", "127.0.0.1", str(port)],
                                 capture_output=True, text=True, timeout=30)
            good = subprocess.run([dcmtk, "-aet", "CART02", "-aec", "LASAN", "127.0.0.1", str(port)],
                                  capture_output=True, text=True, timeout=30)
            assert bad.returncode != 0 and "Rejected" in (bad.stdout + bad.stderr)
            assert good.returncode == 0, good.stderr
    finally:
        receiver.stop()
    rejected = _events(caplog, "dicom.association_rejected")
    assert len(rejected) == (2 if dcmtk else 1), rejected
    assert all("called AE title is not ours" in e["reason"] for e in rejected)
    assert {e["called_ae"] for e in rejected} <= {"NOT-LASAN", "ELSEWHERE"}
