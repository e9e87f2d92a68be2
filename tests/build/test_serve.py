"""The embedded Triton server: start, readiness, clear errors, clean stop (real tritonserver)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lasan.build.serve import TritonServer, check_port, free_port
from lasan.errors import ServerError


def _ports() -> dict[str, int]:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


def test_taken_port_is_refused_before_starting(cpu_repository: Path, tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer(cpu_repository, **{**_ports(), "grpc_port": port}, work_dir=tmp_path)
        with pytest.raises(ServerError, match=rf"the grpc port {port} on 127.0.0.1 is already in use.*--grpc-port"):
            server.start()
        assert server.pid is None and not server.running()
        with pytest.raises(ServerError, match="already in use"):
            check_port("127.0.0.1", port, "http")


def test_folder_that_is_not_a_repository_is_refused(tmp_path: Path):
    with pytest.raises(ServerError, match="is not a LASAN model repository .*lasan build"):
        TritonServer(tmp_path, **_ports(), work_dir=tmp_path / "w").start()


@pytest.mark.slow
def test_invalid_repository_reports_tritons_error(cpu_repository: Path, tmp_path: Path):
    broken = tmp_path / "repo"
    shutil.copytree(cpu_repository, broken)
    cfg = broken / "fusion" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("TYPE_FP32", "TYPE_FP33", 1))
    server = TritonServer(broken, **_ports(), work_dir=tmp_path / "w", startup_timeout=120)
    with pytest.raises(ServerError) as err:
        server.start()
    msg = str(err.value)
    assert "tritonserver exited while loading" in msg
    assert "fusion" in msg and "TYPE_FP33" in msg  # Triton's own words about the broken config
    assert not server.running()


@pytest.mark.slow
def test_lasan_serve_prints_endpoints_and_stops_on_sigterm(cpu_repository: Path, tmp_path: Path):
    ports = _ports()
    log = tmp_path / "triton.log"
    cmd = [
        sys.executable,
        "-m",
        "lasan.cli",
        "serve",
        "--repo",
        str(cpu_repository),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(ports["http_port"]),
        "--grpc-port",
        str(ports["grpc_port"]),
        "--metrics-port",
        str(ports["metrics_port"]),
        "--log-file",
        str(log),
        "--work-dir",
        str(tmp_path / "w"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C or SIGTERM" in line:
                break
        out = "".join(lines)
        assert f"gRPC     127.0.0.1:{ports['grpc_port']}" in out, out
        assert f"HTTP     http://127.0.0.1:{ports['http_port']}" in out
        assert f"metrics  http://127.0.0.1:{ports['metrics_port']}/metrics" in out
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc_port']}")
        assert client.is_model_ready("lasan")
        client.close()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "Triton stopped." in rest
    assert log.stat().st_size > 0
    # The server and its python-backend stubs are gone: the ports are free again.
    for port in ports.values():
        check_port("127.0.0.1", port, "test")
    assert not _processes_using(cpu_repository)


def _processes_using(repo: Path) -> list[int]:
    """PIDs of live tritonserver processes whose command line names ``repo``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "tritonserver" in cmdline and str(repo) in cmdline:
                pids.append(int(entry.name))
    return [p for p in pids if p != os.getpid()]
