"""Failed TLS handshakes on the MLLP listener are logged with the peer and the reason, and the
listener keeps serving; real TLS clients on loopback, certificates made by openssl."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess

import pytest
from feedkit import oru, small_ecg

from lasan.hl7.ack import parse_ack
from lasan.integration.config import ListenerConfig, TLSConfig, server_ssl_context
from lasan.integration.intake import Intake
from lasan.integration.listener import MLLPListener
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPClient, frame
from lasan.integration.queue import DurableQueue

pytestmark = pytest.mark.timeout(120)


def _self_signed(folder, name: str):
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls-failures")
    return {"server": _self_signed(folder, "server"), "other": _self_signed(folder, "other-ca")}


def _events(caplog, name):
    return [dict(getattr(r, "fields", {})) for r in caplog.records if r.getMessage() == name]


async def _tls_listener(tmp_path, cert, key, **cfg):
    config = ListenerConfig(port=0, **cfg)
    intake = Intake(DurableQueue(tmp_path / "q.sqlite"), Metrics(), Health(), application="LASAN")
    listener = MLLPListener(config, intake, server_ssl_context(TLSConfig(cert_file=cert, key_file=key)))
    return listener, await listener.start()


def test_failed_handshakes_are_logged_with_peer_and_reason(tmp_path, pki, caplog):
    caplog.set_level(logging.INFO)
    cert, key = pki["server"]
    other_ca, _ = pki["other"]

    async def main():
        listener, port = await _tls_listener(tmp_path, cert, key)
        try:
            # 1. A client that trusts another CA: it aborts the handshake (unknown CA alert).
            wrong_ca = ssl.create_default_context(cafile=str(other_ca))
            with pytest.raises(ssl.SSLError):
                async with MLLPClient("127.0.0.1", port, ssl_context=wrong_ca, timeout_s=10) as client:
                    await client.send(oru(small_ecg(), "WRONGCA"))
            # 2. Plain HL7 sent to the TLS port: not a ClientHello.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(frame(oru(small_ecg(), "PLAIN")))
            await writer.drain()
            plain_answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            # 3. A correct client is still served.
            good = ssl.create_default_context(cafile=str(cert))
            async with MLLPClient("127.0.0.1", port, ssl_context=good, timeout_s=10) as client:
                ok = parse_ack(await client.send(oru(small_ecg(), "GOODTLS")))
            await asyncio.sleep(0.2)
            return plain_answer, ok
        finally:
            await listener.stop()

    plain_answer, ok = asyncio.run(main())
    assert b"MSA" not in plain_answer  # no ACK over plain text
    assert ok.code == "AA"
    failed = _events(caplog, "mllp.tls_failed")
    assert len(failed) == 2, failed
    assert all(e["peer"].startswith("127.0.0.1:") for e in failed)
    reasons = " ".join(e["reason"] for e in failed).upper()
    # The client that distrusts us sends an alert and closes: the reason is the alert or the close.
    assert "UNKNOWN_CA" in reasons or "DURING THE HANDSHAKE" in reasons, reasons
    assert "WRONG_VERSION_NUMBER" in reasons or "HTTP_REQUEST" in reasons or "RECORD" in reasons, reasons


def test_a_stalled_handshake_is_cut_at_the_frame_deadline_and_logged(tmp_path, pki, caplog):
    caplog.set_level(logging.INFO)
    cert, key = pki["server"]

    async def main():
        listener, port = await _tls_listener(tmp_path, cert, key, frame_deadline_s=1.0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01")  # the start of a TLS record, then nothing
            await writer.drain()
            eof = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return eof
        finally:
            await listener.stop()

    assert asyncio.run(main()) == b""
    failed = _events(caplog, "mllp.tls_failed")
    assert len(failed) == 1 and "frame_deadline_s" in failed[0]["reason"], failed
