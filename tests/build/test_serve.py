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


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _nice_and_cpus(pid: int) -> tuple[int, str]:
    nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    cpus = next(
        line.split(":", 1)[1].strip()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Cpus_allowed_list")
    )
    return nice, cpus


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_nice_and_cpus_reach_tritonserver_and_every_stub(cpu_repository: Path, tmp_path: Path):
    # The listener's ACKs keep their share of the cores only if the stubs (where the model runs) are niced too.
    cpu = min(os.sched_getaffinity(0))
    with TritonServer(cpu_repository, **_ports(), work_dir=tmp_path, nice=7, cpus=frozenset({cpu})) as server:
        assert server.pid is not None
        stubs = _children(server.pid)
        assert len(stubs) >= 4, stubs  # preprocess, encoder, fusion, attention_outputs
        base_nice = os.nice(0)
        for pid in (server.pid, *stubs):
            nice, cpus = _nice_and_cpus(pid)
            assert nice == min(19, base_nice + 7), (pid, nice)
            assert cpus == str(cpu), (pid, cpus)


def test_parse_cpus_reads_taskset_lists_and_refuses_foreign_cpus():
    from lasan.build.serve import parse_cpus
    from lasan.errors import ConfigError

    allowed = sorted(os.sched_getaffinity(0))
    assert parse_cpus(str(allowed[0])) == frozenset({allowed[0]})
    if allowed == list(range(allowed[0], allowed[-1] + 1)):
        assert parse_cpus(f"{allowed[0]}-{allowed[-1]}") == frozenset(allowed)
    with pytest.raises(ConfigError, match="CPU list like"):
        parse_cpus("first")
    with pytest.raises(ConfigError, match="outside the ones this process may use"):
        parse_cpus("4096")
