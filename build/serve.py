"""The embedded Triton server: tritonserver 2.51 from the nvidia-pytriton wheel, python backend only.

:class:`TritonServer` is a context manager: it checks the ports, prepares a backend
directory (the wheel's python backend plus the stub built for this Python), starts
``tritonserver`` on a repository, waits until the ``lasan`` ensemble is ready, and
stops the server (and its python-backend stubs) on exit. ``lasan serve`` wraps it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lasan.errors import ServerError
from lasan.tensor_names import ENSEMBLE_MODEL

# Safe default: the embedded Triton answers only this machine unless `lasan serve --all-interfaces`.
LOOPBACK, ALL_INTERFACES = "127.0.0.1", "0.0.0.0"

__all__ = ["LOOPBACK", "ALL_INTERFACES", "TritonServer", "TritonInstallation", "find_triton", "free_port", "check_port", "parse_cpus", "configure", "run"]


# Log lines that are always there on a CPU-only machine and explain nothing.
_NOISE = ("CudaDriverHelper has not been initialized", "Unable to allocate pinned system memory")


@dataclass(frozen=True)
class TritonInstallation:
    """Where the wheel keeps the server binary, the python backend, its stub and bundled libraries."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path


def find_triton() -> TritonInstallation:
    """Locate tritonserver inside the installed nvidia-pytriton wheel.

    Raises:
        ServerError: the wheel is not installed, or has no stub for this Python version.
    """
    import importlib.util

    # find_spec, not import: importing pytriton pulls in its client and gevent, which we do not need.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the embedded Triton server comes from the nvidia-pytriton wheel, which is not installed; "
            "run `make install` (it installs nvidia-pytriton==0.7.0 with --no-deps)"
        )
    root = Path(list(spec.submodule_search_locations)[0]).resolve() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    inst = TritonInstallation(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent.parent / "nvidia_pytriton.libs",
    )
    for what, path in (
        ("server binary", inst.binary),
        ("python backend", inst.python_backend),
        (f"python backend stub for Python {version}", inst.stub),
    ):
        if not path.exists():
            raise ServerError(f"the nvidia-pytriton wheel lacks the {what} ({path})")
    return inst


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(host: str, port: int, what: str) -> None:
    """Raise :class:`ServerError` if ``port`` cannot be bound on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServerError(
                f"the {what} port {port} on {host} is already in use ({exc.strerror}); "
                f"stop the program using it or choose another port with --{what}-port"
            ) from exc


def _die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the process that started us dies.

    Without it a killed test run or a ``kill -9`` of ``lasan serve`` would leave an orphaned
    server holding its ports (it runs in its own session, so terminal signals miss it).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def parse_cpus(text: str) -> frozenset[int]:
    """``"1"``, ``"0-3"`` or ``"0,2-3"`` -> CPU ids (what ``taskset -c`` takes).

    Raises:
        ConfigError: not a CPU list, or a CPU this process may not use.
    """
    from lasan.errors import ConfigError

    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--cpus takes a CPU list like 1, 0-3 or 0,2-3; got {text!r}") from None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else cpus
    if not cpus or not cpus <= allowed:
        raise ConfigError(f"--cpus {text!r} names CPUs outside the ones this process may use ({sorted(allowed)})")
    return frozenset(cpus)


class TritonServer:
    """A running tritonserver process serving ``repo``.

    Use as ``with TritonServer(repo, grpc_port=...) as server: ...``; ``server.grpc_url``
    and ``server.http_url`` are the endpoints. Raises :class:`ServerError` from
    :meth:`start` when a port is taken, the repository does not load (with Triton's
    error lines), or the ensemble is not ready within ``startup_timeout`` seconds.
    """

    def __init__(
        self,
        repo: str | Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        host: str = LOOPBACK,
        log_file: str | Path | None = None,
        work_dir: str | Path | None = None,
        startup_timeout: float = 300.0,
        log_verbose: int = 0,
        nice: int = 0,
        cpus: frozenset[int] | None = None,
    ):
        self.repo = Path(repo).resolve()
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.host = host
        self.work_dir = Path(work_dir) if work_dir else self.repo.parent / ".lasan-triton"
        self.log_file = Path(log_file) if log_file else self.work_dir / "tritonserver.log"
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        # CPU priority / affinity of tritonserver; its python-backend stubs inherit both (they are its
        # children), so a niced server cannot starve an HL7 listener on the same cores (docs/performance.md).
        self.nice = nice
        self.cpus = cpus
        self._process: subprocess.Popen[bytes] | None = None

    # -- endpoints ---------------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def address_arguments(self) -> list[str]:
        """Where Triton listens. Every endpoint gets an explicit address: tritonserver's own
        default for each is 0.0.0.0 (all interfaces), and Triton has no authentication."""
        return [
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
        ]

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and block until the ensemble is ready.

        Raises:
            ServerError: ports taken, repository missing or invalid, or startup timed out.
        """
        if self.running():
            return
        if not (self.repo / ENSEMBLE_MODEL / "config.pbtxt").is_file():
            raise ServerError(
                f"{self.repo} is not a LASAN model repository (no {ENSEMBLE_MODEL}/config.pbtxt); "
                "build one with `lasan build CHECKPOINT --out DIR`"
            )
        for what, port in (("http", self.http_port), ("grpc", self.grpc_port), ("metrics", self.metrics_port)):
            check_port(self.host, port, what)
        inst = find_triton()
        backends = self._backend_directory(inst)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.write_text("")  # errors we report must come from this run
        cmd = [
            str(inst.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            *self.address_arguments(),
            "--allow-gpu-metrics=false",
            f"--log-file={self.log_file}",
            f"--log-verbose={self.log_verbose}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
        ]
        stdout = open(self.work_dir / "tritonserver.stdout", "wb")  # noqa: SIM115 - owned by the process
        try:
            # Own session: a terminal's Ctrl-C reaches us, and we stop Triton in order.
            self._process = subprocess.Popen(
                cmd,
                env=self._environment(inst),
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._in_child,
            )
        finally:
            stdout.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL of its process group after ``timeout`` s)."""
        proc, self._process = self._process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # python-backend stubs share the server's process group; make sure none outlives it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, stop: threading.Event | None = None, poll_s: float = 0.5) -> None:
        """Block until ``stop`` is set; raise :class:`ServerError` if the server dies meanwhile."""
        while not (stop and stop.is_set()):
            if not self.running():
                raise ServerError(f"tritonserver stopped unexpectedly; see {self.log_file}\n{self.error_lines()}")
            time.sleep(poll_s)

    def error_lines(self, limit: int = 20) -> str:
        """Triton's error lines from its log and its stdout (protobuf parse errors land there)."""
        lines: list[str] = []
        for path in (self.log_file, self.work_dir / "tritonserver.stdout"):
            try:
                lines += path.read_text(errors="replace").splitlines()
            except OSError:
                pass
        errors = [
            line
            for line in lines
            if (line[:1] == "E" or "error" in line.lower()) and not any(n in line for n in _NOISE)
        ]
        return "\n".join((errors or lines)[-limit:])

    # -- internals ---------------------------------------------------------------------------
    def _in_child(self) -> None:
        """In the child before exec: die with the parent, then lower priority / pin CPUs if asked."""
        _die_with_parent()
        if self.nice:
            os.nice(self.nice)
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def _backend_directory(self, inst: TritonInstallation) -> Path:
        """A backend folder with the wheel's python backend and the stub for this Python."""
        target = self.work_dir / "backends" / "python"
        target.mkdir(parents=True, exist_ok=True)
        files = [*(p for p in inst.python_backend.iterdir() if p.is_file()), inst.stub]
        for src in files:
            dst = target / src.name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copy2(src, dst)
        return target.parent

    def _environment(self, inst: TritonInstallation) -> dict[str, str]:
        env = dict(os.environ)
        # The stub links the wheel's bundled CUDA runtime even on a CPU-only machine.
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(inst.libs), env.get("LD_LIBRARY_PATH")]))
        # The stub embeds libpython and ignores PYTHONPATH; it finds its prefix through the
        # "python3" on PATH, so this environment's bin/ first gives it our site-packages (numpy, torch).
        scripts = sysconfig.get_paths()["scripts"]
        env["PATH"] = os.pathsep.join(filter(None, [scripts, env.get("PATH")]))
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + self.startup_timeout
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if not self.running():
                    raise ServerError(
                        f"tritonserver exited while loading {self.repo} (the repository is invalid or a model "
                        f"failed to load); Triton said:\n{self.error_lines()}\n(full log: {self.log_file})"
                    )
                try:
                    if client.is_server_ready() and client.is_model_ready(ENSEMBLE_MODEL):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.5)
        finally:
            client.close()
        raise ServerError(
            f"the '{ENSEMBLE_MODEL}' ensemble was not ready after {self.startup_timeout:g} s; "
            f"see {self.log_file}\n{self.error_lines()}"
        )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, type=Path, help="model repository written by `lasan build`")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--host",
        default=LOOPBACK,
        help="address the HTTP, gRPC and metrics endpoints listen on (default: 127.0.0.1, this machine only)",
    )
    where.add_argument(
        "--all-interfaces",
        dest="host",
        action="store_const",
        const=ALL_INTERFACES,
        help="listen on every interface (0.0.0.0): Triton has no authentication, so only behind a firewall "
        "that admits the scoring clients",
    )
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log-file", type=Path, default=None, help="Triton log (default: WORK_DIR/tritonserver.log)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="backend copies and logs (default: .lasan-triton beside the repository)",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the ensemble")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run tritonserver and its python-backend stubs at this CPU niceness (e.g. 10), so that an HL7 "
        "listener on the same cores keeps answering quickly while the model saturates them",
    )
    parser.add_argument(
        "--cpus",
        help="pin tritonserver and its stubs to these CPUs (taskset syntax: 1, 0-3, 0,2-3); leave the others to "
        "the listener",
    )


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _on_signal)
    server = TritonServer(
        args.repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        log_file=args.log_file,
        work_dir=args.work_dir,
        startup_timeout=args.startup_timeout,
        nice=args.nice,
        cpus=parse_cpus(args.cpus) if args.cpus else None,
    )
    print(f"starting Triton on {server.repo} (log: {server.log_file}) ...", flush=True)
    try:
        with server:
            print(f"ready: model '{ENSEMBLE_MODEL}'", flush=True)
            print(f"  gRPC     {server.grpc_url}", flush=True)
            print(f"  HTTP     {server.http_url}", flush=True)
            print(f"  metrics  {server.metrics_url}", flush=True)
            print("Ctrl-C or SIGTERM stops the server.", flush=True)
            try:
                server.wait(stop)
            except KeyboardInterrupt:
                pass
        print("Triton stopped.", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
