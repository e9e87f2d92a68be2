"""Fault tests (short, in CI): the downstream system unreachable (connection refused) for a
while, a read-only queue at start, a full disk mid-stream. Real processes, sockets and file
systems; the file-system faults mount a size-limited tmpfs and are skipped without root.
The long version of all this is scripts/soak.py (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from feedkit import Downstream, ListenerProcess, free_port, msh10, oru, small_ecg

from lasan.hl7.ack import parse_ack
from lasan.integration.config import ListenerConfig
from lasan.integration.intake import Intake
from lasan.integration.listener import MLLPListener
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import MLLPClient
from lasan.integration.queue import DurableQueue

pytestmark = pytest.mark.timeout(300)


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def _send(port: int, messages: dict[str, bytes]) -> dict[str, str]:
    async def main() -> dict[str, str]:
        codes = {}
        async with MLLPClient("127.0.0.1", port, timeout_s=30) as client:
            for cid, message in messages.items():
                codes[cid] = parse_ack(await client.send(message)).code
        return codes

    return asyncio.run(main())


@contextlib.contextmanager
def _tmpfs(path: Path, size_kb: int):
    """A real, size-limited file system (root only; the test is skipped otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited tmpfs (disk full / read-only file system)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the container lacks CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_downstream_refusing_connections_for_a_while_then_back_gets_everything(triton_server, listener_process):
    down_port = free_port()  # nothing listens there yet: connection refused, not an AE
    lp = listener_process(triton_server.grpc_url, down_port).start()
    metrics_port = int(__import__("yaml").safe_load(lp.config_path.read_text())["metrics"]["port"])
    messages = {f"DOWN{i:02d}": oru(small_ecg(seed=i), f"DOWN{i:02d}") for i in range(12)}
    assert _send(lp.hl7_port, messages) == dict.fromkeys(messages, "AA")

    deadline = time.time() + 60
    while time.time() < deadline and _health(metrics_port)["queue"].get("scored", 0) < len(messages):
        time.sleep(0.2)
    health = _health(metrics_port)
    assert health["queue"]["scored"] == len(messages) and health["queue"].get("sent", 0) == 0
    assert "downstream" in health["failing"]
    assert f"127.0.0.1:{down_port}" in health["dependencies"]["downstream"]["detail"]

    downstream = Downstream(port=down_port)  # the system comes back on its address
    try:
        got = downstream.wait_for(set(messages), timeout=120)
    finally:
        downstream.close()
    assert all(len({msh10(r) for r in results}) == 1 for results in got.values())
    deadline = time.time() + 30
    while time.time() < deadline and _health(metrics_port)["queue"].get("sent", 0) < len(messages):
        time.sleep(0.2)
    assert _health(metrics_port)["queue"]["sent"] == len(messages)
    assert lp.terminate() == 0


def test_read_only_queue_at_start_refuses_to_start_with_a_clear_error(tmp_path):
    with _tmpfs(tmp_path / "fs", 4096) as fs:
        var = fs / "var"
        var.mkdir()
        DurableQueue(var / "queue.sqlite").close()  # an existing queue, as after a restart
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        config = {
            "listener": {"port": free_port()},
            "triton": {"url": f"127.0.0.1:{free_port()}"},
            "storage": {"queue_db": str(var / "queue.sqlite"), "outbox": str(var / "outbox")},
            "metrics": {"enabled": False},
        }
        work = tmp_path / "work"
        work.mkdir()
        lp = ListenerProcess(config, work)
        with pytest.raises(AssertionError, match="exited"):
            lp.start(timeout=60)
        subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
    log = lp.log_text()
    assert lp.proc is not None and lp.proc.returncode not in (0, None)
    assert "queue" in log and "Read-only file system" in log, log[-2000:]
    assert "Traceback" not in log  # a sentence for the operator, not a stack trace


def test_disk_full_mid_stream_answers_ae_never_aa_then_recovers(tmp_path):
    with _tmpfs(tmp_path / "fs", 8192) as fs:
        queue = DurableQueue(fs / "queue.sqlite")

        async def main():
            intake = Intake(queue, Metrics(), Health(), application="LASAN")
            listener = MLLPListener(ListenerConfig(port=0), intake)
            port = await listener.start()
            try:
                async with MLLPClient("127.0.0.1", port, timeout_s=30) as client:
                    before = {}
                    for i in range(3):
                        before[f"F{i}"] = parse_ack(await client.send(oru(small_ecg(seed=i), f"F{i}"))).code
                    # Fill what is left of the file system with another file.
                    with open(fs / "filler.bin", "wb", buffering=0) as f, contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                    during = {}
                    for i in range(3, 9):
                        during[f"F{i}"] = parse_ack(await client.send(oru(small_ecg(seed=i), f"F{i}"))).code
                    (fs / "filler.bin").unlink()
                    after = parse_ack(await client.send(oru(small_ecg(seed=3), "F3"))).code  # resent
                return before, during, after
            finally:
                await listener.stop()

        before, during, after = asyncio.run(main())
        stored = {item.key.control_id for item in queue.items()} if hasattr(queue, "items") else None
        counts = queue.counts()
        queue.close()
    assert set(before.values()) == {"AA"}
    assert "AE" in during.values() or "AR" in during.values(), during
    # An AA while the disk is full is only allowed for a message that was in fact stored.
    aa_during = {cid for cid, code in during.items() if code == "AA"}
    if stored is not None:
        assert aa_during <= stored, (aa_during, stored)
    assert counts["received"] == len(before) + len(aa_during) + (after == "AA" and "F3" not in aa_during)
    assert after == "AA"


@contextlib.contextmanager
def _ext4(tmp_path: Path, size_mb: int = 32):
    """A loop-mounted ext4 with errors=remount-ro: the kernel can force it read-only under open files."""
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount an ext4 image (read-only file system mid-stream)")
    image, mount = tmp_path / "queue.img", tmp_path / "ext4"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    done = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(mount)], capture_output=True, text=True)
    if not done or done.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here ({made.stderr or (done and done.stderr)})")
    try:
        device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mount)], capture_output=True,
                                text=True).stdout.strip()
        yield mount, Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error")
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_queue_file_system_going_read_only_mid_stream_answers_ae_never_aa(tmp_path):
    with _ext4(tmp_path) as (fs, trigger):
        if not trigger.exists():
            pytest.skip(f"{trigger} is missing: this kernel cannot simulate an ext4 error")
        queue = DurableQueue(fs / "queue.sqlite")

        async def main():
            listener = MLLPListener(ListenerConfig(port=0), Intake(queue, Metrics(), Health(), application="LASAN"))
            port = await listener.start()
            try:
                async with MLLPClient("127.0.0.1", port, timeout_s=30) as client:
                    before = [parse_ack(await client.send(oru(small_ecg(seed=i), f"R{i}"))).code for i in range(2)]
                    trigger.write_text("test: simulated disk error\n")  # what a failing disk does
                    during = [parse_ack(await client.send(oru(small_ecg(seed=i), f"R{i}"))).code for i in range(2, 6)]
                return before, during
            finally:
                await listener.stop()

        before, during = asyncio.run(main())
        with contextlib.suppress(Exception):
            queue.close()
    assert before == ["AA", "AA"]
    assert during and "AA" not in during, during  # answered, never acknowledged as stored
