"""What machine a benchmark ran on: CPU, cores, load, library versions, thread settings."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "describe"]

_PACKAGES = ("torch", "numpy", "tritonclient", "nvidia-pytriton", "hl7apy", "pydicom", "wfdb", "lasan")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, load, versions, and torch's thread settings, as plain JSON data."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "load_average_1_5_15": load,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _PACKAGES},
        "torch_threads": {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        },
        "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "torch_mkldnn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.is_available(),
    }


def describe(info: dict[str, Any]) -> str:
    """One line for the table's caption."""
    versions = info.get("versions", {})
    load = info.get("load_average_1_5_15")
    load_text = f", load {load[0]:.2f}" if load else ""
    return (
        f"{info.get('cpu_model')} ({info.get('usable_cpus')} usable of {info.get('logical_cpus')} CPUs, "
        f"{info.get('memory_gib')} GiB{load_text}); torch {versions.get('torch')} "
        f"({info['torch_threads']['intra_op']} intra-op threads), numpy {versions.get('numpy')}, "
        f"tritonclient {versions.get('tritonclient')}, pytriton {versions.get('nvidia-pytriton')}; "
        f"measured {info.get('measured_at')}"
    )
