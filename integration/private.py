"""Files that hold patient data at rest (the queue database, outbox results, logs) are created
``0600`` in folders created ``0700``, whatever the process umask: a service started with the
common umask 022 would otherwise leave every stored ECG world-readable.

Folders LASAN creates are made ``0700``; a folder that already exists keeps its mode (it may be
a shared parent such as the working directory) except the ones LASAN owns outright (the outbox),
which :func:`private_dir` is told to tighten.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FILE_MODE", "DIR_MODE", "private_dir", "private_file", "write_private"]

FILE_MODE, DIR_MODE = 0o600, 0o700


def private_dir(path: Path, *, owned: bool = False) -> Path:
    """Create ``path`` (and missing parents) as ``0700``; with ``owned``, tighten it if it exists."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    for folder in missing + ([path] if owned and path not in missing else []):
        os.chmod(folder, DIR_MODE)  # mkdir's mode is filtered by the umask; chmod is not
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty as ``0600`` if it does not exist, and make an existing one ``0600``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename), the file ``0600``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a leftover .tmp from a crash may have had another mode
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
