"""Resident memory of a served deployment: tritonserver and each python-backend stub, from /proc.

RSS counts every page a process has resident, so shared pages (libpython, the python
backend's shared-memory region that the server and every stub map) are counted once per
process; PSS divides each shared page among the processes that map it, so the PSS of all
processes adds up to what the deployment really occupies. Both are reported; the
deployment total (the issue's 0.5 GB target) is the sum of PSS.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProcessMemory", "MemorySampler", "deployment_processes", "read_memory", "model_of_stub"]

_STUB_MODEL = re.compile(r"/([^/\0]+)/\d+/model\.py")


@dataclass(frozen=True)
class ProcessMemory:
    """One process: what it serves, resident set and proportional set, in MiB."""

    pid: int
    name: str  # "tritonserver" or the model a stub serves (with "#n" for a second instance)
    rss_mib: float
    pss_mib: float


def _kib(path: Path, key: str) -> float | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def model_of_stub(cmdline: str) -> str | None:
    """The model a python-backend stub serves, from its command line (``.../encoder/1/model.py ...``)."""
    m = _STUB_MODEL.search(cmdline)
    return m.group(1) if m else None


def deployment_processes(server_pid: int) -> dict[int, str]:
    """``{pid: name}`` of tritonserver and its python-backend stubs (its direct children)."""
    out = {server_pid: "tritonserver"}
    seen: dict[str, int] = {}
    for stat in sorted(Path("/proc").glob("[0-9]*/stat"), key=lambda p: int(p.parent.name)):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != server_pid:
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue  # ended while we looked
        model = model_of_stub(cmdline) or "child"
        seen[model] = seen.get(model, 0) + 1
        out[int(stat.parent.name)] = model if seen[model] == 1 else f"{model}#{seen[model]}"
    return out


def read_memory(processes: dict[int, str]) -> list[ProcessMemory]:
    """Current RSS and PSS of each process that still exists."""
    out = []
    for pid, name in processes.items():
        rss = _kib(Path(f"/proc/{pid}/status"), "VmRSS")
        pss = _kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss")
        if rss is None:
            continue
        out.append(ProcessMemory(pid, name, rss / 1024.0, (pss if pss is not None else rss) / 1024.0))
    return out


@dataclass
class MemorySampler:
    """Samples the deployment's memory every ``interval_s`` in a thread; keeps each process's peak."""

    processes: dict[int, str]
    interval_s: float = 0.25
    peak: dict[int, ProcessMemory] = field(default_factory=dict)
    peak_total_pss_mib: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = read_memory(self.processes)
            self.peak_total_pss_mib = max(self.peak_total_pss_mib, sum(p.pss_mib for p in sample))
            for p in sample:
                old = self.peak.get(p.pid)
                if old is None or p.rss_mib > old.rss_mib:
                    self.peak[p.pid] = p
            self._stop.wait(self.interval_s)
