"""Real result receivers for tests: dcmtk's ``storescp`` as a PACS on a free loopback port,
and a FHIR base (``FhirServer``: a local HTTP server).

Import by name (like ``testkit``)::

    from dicom_pacs import StoreSCP, dciodvfy_errors

    with StoreSCP(tmp_path / "pacs") as pacs:              # started; stopped on exit
        config = config_from_dict({..., "pacs": pacs.config_section()})
        ...
        files = pacs.wait_for(2)                            # Paths of what arrived
        datasets = pacs.datasets()                          # parsed with pydicom

``StoreSCP(folder, ae_title="PACS", port=None, tls=None)`` (``tls=(key_file, cert_file)``:
DICOM TLS): ``start()`` / ``stop()`` can be called
again (``stop()`` then ``start()`` keeps the port: "the PACS was down, now it is up").
Every received object is kept as its own file (``+uf``), so an object sent twice shows up
twice. ``dciodvfy_errors(path)`` runs dicom3tools' IOD validator and returns its ``Error``
lines (``pytest.skip`` with the reason when dciodvfy is not installed).

``FhirServer()``: ``.url`` is a FHIR base on loopback; ``.status`` is what it answers (503 =
down, 201 = accepted); ``.accepted`` holds every Bundle it took, ``.refused`` counts the others;
``close()``.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

__all__ = ["StoreSCP", "FhirServer", "free_port", "dciodvfy_errors", "require_storescp"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_storescp() -> str:
    """The storescp executable, or skip the test naming what to install."""
    exe = shutil.which("storescp")
    if exe is None:
        pytest.skip("dcmtk's storescp is not installed (Debian package dcmtk, in the Makefile's APT_PACKAGES)")
    return exe


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The ``Error`` lines dicom3tools' ``dciodvfy`` reports for one DICOM file (warnings are not errors)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dicom3tools' dciodvfy is not installed (Debian package dicom3tools, in the Makefile's APT_PACKAGES)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


class StoreSCP:
    """dcmtk ``storescp`` writing every object it receives into ``folder``."""

    def __init__(self, folder: str | Path, *, ae_title: str = "PACS", port: int | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.folder = Path(folder)
        self.tls = tls  # (key file, certificate file): DICOM TLS, peer certificate not required
        self.ae_title = ae_title
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> StoreSCP:
        """Start storescp and wait until it accepts connections."""
        exe = require_storescp()
        if self.running:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self._log = open(self.folder.parent / f"storescp-{self.port}.log", "ab")  # noqa: SIM115 - closed in stop()
        # +uf: a unique file per received object, so a duplicate delivery is visible as a second file.
        tls = ["+tls", str(self.tls[0]), str(self.tls[1]), "-ic"] if self.tls else []
        self._proc = subprocess.Popen(
            [exe, "-aet", self.ae_title, "-od", str(self.folder), "+uf", "-v", *tls, str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"storescp exited with {self._proc.returncode}; see {self._log.name}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"storescp did not listen on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        """Stop storescp (the received files stay)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> StoreSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def config_section(self, **extra: Any) -> dict[str, Any]:
        """The ``pacs:`` section of a LASAN YAML config pointing at this storescp."""
        return {"host": self.host, "port": self.port, "called_ae": self.ae_title, "calling_ae": "LASAN",
                "timeout_s": 5.0, **extra}

    def received(self) -> list[Path]:
        """Files received so far (sorted by name)."""
        if not self.folder.exists():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Path]:
        """Wait until at least ``count`` objects arrived (and their files are complete); returns them all."""
        import pydicom

        deadline = time.monotonic() + timeout_s
        while True:
            files = self.received()
            if len(files) >= count:
                try:
                    for path in files:
                        pydicom.dcmread(path)
                    return files
                except Exception:  # noqa: BLE001 - a file still being written; look again
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"storescp received {len(files)} object(s), expected {count}, "
                                     f"within {timeout_s} s")
            time.sleep(0.1)

    def datasets(self) -> list[Any]:
        """Every received object, parsed with pydicom."""
        import pydicom

        return [pydicom.dcmread(path) for path in self.received()]


class FhirServer:
    """A FHIR base on loopback: answers ``status`` (503 = down) and keeps every accepted Bundle."""

    def __init__(self) -> None:
        self.status = 503
        self.accepted: list[dict] = []
        self.refused = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.status < 300:
                    outer.accepted.append(body)
                else:
                    outer.refused += 1
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
