"""Helpers for the integration tests: ECG messages with known PHI, a downstream MLLP
server that records results, and a ``lasan listen`` subprocess.

Everything runs over real loopback sockets. The downstream server runs its own event
loop in a thread so the same fixture serves in-process apps and listener subprocesses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from lasan.leads import MODEL_LEADS
from lasan.record import ECGRecord, PatientIdentity

REPO_ROOT = Path(__file__).resolve().parents[2]

# Identifiers put into every test message; no log line may ever contain them.
PHI = PatientIdentity(patient_id="MRN7730419", name="Quillfeather^Zenobia", birth_date="19431207", sex="F")
PHI_STRINGS = ("MRN7730419", "Quillfeather", "Zenobia", "19431207")


def small_ecg(seed: int = 0, leads: tuple[str, ...] = MODEL_LEADS, fs: float = 250.0) -> ECGRecord:
    """8 leads, 10 s at 250 Hz: quick to send and to score, still a full model input."""
    from lasan.formats.sample import sample_ecg

    rec = sample_ecg(fs=fs, duration_s=10.0, seed=seed, leads=leads)
    return dataclasses.replace(rec, patient=PHI)


def oru(record: ECGRecord, control_id: str, style: str = "na", sender: str = "CART", facility: str = "WARD7",
        **kw) -> bytes:
    from lasan.hl7.oru import build_oru

    return build_oru(record, style=style, control_id=control_id, sending_application=sender,
                     sending_facility=facility, placer_order_number=f"PL-{control_id}",
                     filler_order_number=f"FI-{control_id}", **kw)


def obx_values(result: str) -> dict[str, str]:
    """OBX-3 code -> OBX-5 value of a result message (standard delimiters)."""
    out = {}
    for seg in re.split(r"\r", result):
        f = seg.split("|")
        if f[0] == "OBX":
            out[f[3].split("^")[0]] = f[5]
    return out


def result_probabilities(result: str) -> dict[str, float]:
    return {code[len("PROB-"):]: float(v) for code, v in obx_values(result).items() if code.startswith("PROB-")}


def msh10(message: str) -> str:
    return message.split("\r", 1)[0].split("|")[9]


class Downstream:
    """A downstream MLLP server: records every result and answers AA (or AE / nothing when told)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port  # 0: any free port (a fixed one lets a test bring "the same" system back)
        self.received: list[str] = []
        self.mode = "AA"  # AA | AE | close
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from lasan.hl7.ack import build_ack
        from lasan.hl7.encoding import read_header
        from lasan.integration.mllp import MLLPDecoder, frame, read_block

        dec, pending = MLLPDecoder(), []
        try:
            while True:
                block = await read_block(reader, dec, pending)
                if block is None:
                    break
                text = block.decode("utf-8")
                if self.mode == "close":
                    break
                with self._lock:
                    self.received.append(text)
                writer.write(frame(build_ack(read_header(text), self.mode, reason="test says no" if self.mode != "AA" else None)))
                await writer.drain()
        except Exception:  # noqa: BLE001 - a test peer: drop the connection
            pass
        finally:
            writer.close()

    def by_original(self) -> dict[str, list[str]]:
        """Original MSH-10 -> every result received for it (accepted ones only)."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for text in self.received:
                out.setdefault(obx_values(text)["ORIG-MSH10"], []).append(text)
        return out

    def wait_for(self, originals: set[str], timeout: float) -> dict[str, list[str]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = self.by_original()
            if originals <= set(got):
                return got
            time.sleep(0.1)
        got = self.by_original()
        missing = sorted(originals - set(got))
        raise AssertionError(f"{len(missing)} result(s) never arrived downstream, e.g. {missing[:5]}")

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ListenerProcess:
    """``lasan listen --config`` as a subprocess, its output captured in a log file."""

    def __init__(self, config: dict, work: Path) -> None:
        self.work = work
        self.config_path = work / "listen.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.hl7_port = config["listener"]["port"]
        self.log_path = work / "listener-output.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> ListenerProcess:
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lasan.cli", "listen", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
        )
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lasan listen exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.hl7_port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"lasan listen did not open port {self.hl7_port}:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")
