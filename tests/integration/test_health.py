"""/health names each dependency (queue, Triton, downstream, disk) and is not "ok" while any
of them fails; real HTTP requests to the metrics server, real sockets for the dependencies."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import pytest
from feedkit import free_port

from lasan.integration.config import config_from_dict
from lasan.integration.metrics import Health, Metrics, MetricsServer

pytestmark = pytest.mark.timeout(60)


def _get(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while degraded still carries the document
        return exc.code, json.loads(exc.read())


def _config(tmp_path, triton_port: int, downstream_port: int | None, min_free_disk_mb: float = 1.0):
    data = {
        "listener": {"port": 0},
        "dicom": {"min_free_disk_mb": min_free_disk_mb},
        "triton": {"url": f"127.0.0.1:{triton_port}"},
        "storage": {"queue_db": str(tmp_path / "var" / "q.sqlite"), "outbox": str(tmp_path / "var" / "outbox")},
    }
    if downstream_port is not None:
        data["downstream"] = {"host": "127.0.0.1", "port": downstream_port}
    return config_from_dict(data, tmp_path)


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def _health_over_http(health: Health, counts=lambda: {"received": 0, "sent": 3}) -> tuple[int, dict]:
    async def main():
        server = MetricsServer(Metrics(), health, counts)
        port = await server.start("127.0.0.1", 0)
        try:
            return await asyncio.to_thread(_get, port)
        finally:
            await server.stop()

    return asyncio.run(main())


def test_all_dependencies_up_is_ok(tmp_path):
    triton, downstream = _listening(), _listening()
    try:
        cfg = _config(tmp_path, triton.getsockname()[1], downstream.getsockname()[1])
        status, doc = _health_over_http(Health.watching(cfg))
    finally:
        triton.close()
        downstream.close()
    assert status == 200 and doc["status"] == "ok", doc
    assert set(doc["dependencies"]) == {"queue", "triton", "downstream", "disk"}
    assert doc["failing"] == []


def test_downstream_unreachable_is_not_ok_and_named_then_recovers(tmp_path):
    triton = _listening()
    down_port = free_port()  # nothing listens there: connection refused
    try:
        health = Health.watching(_config(tmp_path, triton.getsockname()[1], down_port))
        status, doc = _health_over_http(health)
        assert status == 503 and doc["status"] != "ok"
        assert doc["failing"] == ["downstream"]
        assert f"127.0.0.1:{down_port}" in doc["dependencies"]["downstream"]["detail"]
        # The downstream system comes back: ok again, no restart needed.
        back = socket.socket()
        back.bind(("127.0.0.1", down_port))
        back.listen(4)
        try:
            status, doc = _health_over_http(health)
        finally:
            back.close()
    finally:
        triton.close()
    assert status == 200 and doc["status"] == "ok", doc


def test_triton_down_or_refusing_calls_is_not_ok(tmp_path):
    downstream = _listening()
    try:
        health = Health.watching(_config(tmp_path, free_port(), downstream.getsockname()[1]))
        status, doc = _health_over_http(health)
        assert status == 503 and doc["failing"] == ["triton"]
        assert "Triton" in doc["dependencies"]["triton"]["detail"]
        # Reachable, but the last scoring call failed (the worker says so): still not ok.
        triton = _listening()
        try:
            health = Health.watching(_config(tmp_path, triton.getsockname()[1], downstream.getsockname()[1]))
            health.triton_reachable = False
            status, doc = _health_over_http(health)
        finally:
            triton.close()
    finally:
        downstream.close()
    assert status == 503 and doc["failing"] == ["triton"]
    assert doc["triton_reachable"] is False


def test_disk_low_and_queue_unreadable_are_not_ok(tmp_path):
    triton = _listening()
    try:
        health = Health.watching(_config(tmp_path, triton.getsockname()[1], None, min_free_disk_mb=1e12))

        def broken_queue():
            raise OSError("disk I/O error")

        status, doc = _health_over_http(health, counts=broken_queue)
    finally:
        triton.close()
    assert status == 503
    assert doc["failing"] == ["disk", "queue"]
    assert "below" in doc["dependencies"]["disk"]["detail"]
    assert "disk I/O error" in doc["dependencies"]["queue"]["detail"]
