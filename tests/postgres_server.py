"""A real PostgreSQL for tests: a throwaway cluster made with ``initdb`` in a temp folder.

Import by name (like ``testkit``)::

    from postgres_server import PostgresServer

    @pytest.fixture(scope="module")
    def pg():
        with PostgresServer() as server:          # initdb + start; stopped and removed on exit
            yield server

    url = pg.create_database()                    # a fresh empty database: postgresql://...
    pg.stop(); pg.start(); pg.restart()           # same port and data: "the server was down"
    pg.stop(mode="immediate")                     # a crash (no shutdown checkpoint)

The cluster uses the Debian ``postgresql`` package's binaries (``/usr/lib/postgresql/*/bin``,
newest first; ``LASAN_PG_BIN`` overrides). PostgreSQL refuses to run as root, so as root the
cluster belongs to the ``postgres`` user (``runuser``; the temp folder is given to that user).
It listens on 127.0.0.1 only, on a free port, with ``fsync=on`` and ``synchronous_commit=on``
(the durability the queue promises is the server's real one) and trust authentication for
the ``lasan`` role (loopback, throwaway). Tests are skipped, with the reason, only when the
binaries are absent.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "postgres_bin", "require_postgres"]

_USER = "lasan"  # the database role the tests connect as (superuser of the throwaway cluster)


def postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    candidates = [os.environ["LASAN_PG_BIN"]] if os.environ.get("LASAN_PG_BIN") else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    candidates += [str(Path(p).parent) for p in (shutil.which("initdb"),) if p]
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def require_postgres() -> Path:
    """:func:`postgres_bin`, or skip the test with the reason."""
    found = postgres_bin()
    if found is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: "
                    "install Debian's postgresql package (make install does, as root)")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the test cluster as "
                        "(PostgreSQL refuses to run as root)")
    return found


def _major(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One throwaway PostgreSQL cluster (see the module docstring).

    Raises:
        RuntimeError: initdb or the server fails (with the server log's tail).
    """

    def __init__(self, *, port: int | None = None, bin_dir: Path | None = None) -> None:
        self.bin = bin_dir or require_postgres()
        self.port = port or _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="lasan-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._databases = 0
        self.running = False
        self._initdb()

    # -- life cycle -------------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                               f"{self.log_tail()}")
        return proc

    def _initdb(self) -> None:
        # --no-sync: only initdb's own files skip fsync; the running server has fsync=on.
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", _USER, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "''",  # TCP on loopback only
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "100",
            "shared_buffers": "16MB",
            "log_min_messages": "warning",
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# lasan test cluster\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    def start(self) -> None:
        """Start the server and wait until it accepts connections (same port, same data)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.running = True
        self._wait_ready()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean, disconnects clients) or ``immediate`` (like a crash)."""
        if self.running:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
                      check=False)
            self.running = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server and remove the cluster."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self._run(str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", _USER,
                             "-d", "postgres", check=False)
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL on port {self.port} not ready after {timeout_s:g} s\n{self.log_tail()}")
            time.sleep(0.1)

    # -- databases -------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a new name each call unless given); returns its URL."""
        if name is None:
            self._databases += 1
            name = f"lasan_test_{self._databases}"
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", _USER, name)
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"
