"""The watch folder: DICOM, HL7 and ECG-system export files (GE MUSE, Philips Sierra, HL7 aECG,
SCP-ECG, Mortara XML, EDF) that ECG carts and ECG management systems write into a shared folder.

Polling (portable to network shares where inotify does not see remote writes). A file
is taken only after its size and modification time have not changed for ``stable_s``
(a cart may still be writing it). It then goes through the one intake
(:class:`lasan.integration.intake.Intake`) exactly like a message from the network (same
verdict, same reason), and only when stored is it moved to ``processed/``. A file the
intake refuses goes to ``rejected/`` with ``<name>.reason.txt`` beside it at once, whatever the
reason (a file that cannot be read never gets better, so it is never retried). Only a storage
failure (the queue is unwritable) is transient: the file stays for the next scans, at most
``max_store_attempts`` times, then goes to ``rejected/`` too with a reason saying to resubmit it.
One file's failure never stops the scan of the others.
A crash between storing and moving is harmless: the idempotency key (HL7 MSH-3/4/10,
DICOM SOP Instance UID, a hash of an export file's bytes) makes the second intake a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from lasan.errors import QueueStorageError
from lasan.formats import FORMATS
from lasan.integration.config import WatchConfig
from lasan.integration.intake import Accepted, Intake, Source
from lasan.integration.logs import event

# One file each: HL7, DICOM, the ECG-system exports, FHIR (a WFDB record is several files).
WATCH_FORMATS = tuple(fmt for fmt in FORMATS if fmt != "wfdb")

__all__ = ["WatchFolder", "WATCH_FORMATS", "PROCESSED", "REJECTED", "MAX_STORE_ATTEMPTS"]

log = logging.getLogger("lasan.integration.watch")

PROCESSED, REJECTED = "processed", "rejected"
# Storage failures are retried once per scan (poll_interval_s apart): 30 x 2 s rides out a
# queue that is briefly locked or a full disk that is cleared, without retrying forever.
MAX_STORE_ATTEMPTS = 30


class WatchFolder:
    """Polls ``config.folder``; :meth:`scan_once` is the whole algorithm, :meth:`run` repeats it."""

    def __init__(self, config: WatchConfig, intake: Intake, *, max_store_attempts: int = MAX_STORE_ATTEMPTS) -> None:
        self.config, self.intake = config, intake
        self.metrics, self.health = intake.metrics, intake.health
        self.max_store_attempts = max(1, max_store_attempts)
        self._seen: dict[Path, tuple[int, float, float]] = {}  # path -> (size, mtime, first seen unchanged)
        self._store_failures: dict[Path, int] = {}  # path -> storage failures so far (the only retried error)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def prepare(self) -> None:
        """Create the folder and its processed/ and rejected/ subfolders."""
        folder = self.config.folder
        for sub in (folder, folder / PROCESSED, folder / REJECTED):
            sub.mkdir(parents=True, exist_ok=True)

    async def run(self) -> None:
        folder = self.config.folder
        self.prepare()
        event("watch.started", logging.INFO, log, folder=str(folder))
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.scan_once)  # the intake wakes the worker per stored file
            except Exception as exc:  # noqa: BLE001 - a broken share must not end the watch
                self.health.error(f"watch: {exc}")
                event("watch.error", logging.ERROR, log, exc_type=type(exc).__name__, exc=str(exc))
            try:
                await asyncio.wait_for(self._stop.wait(), self.config.poll_interval_s)
            except asyncio.TimeoutError:
                pass

    def scan_once(self, now: float | None = None) -> int:
        """Take every stable file; returns how many were stored."""
        now = time.time() if now is None else now
        folder = self.config.folder
        stored = 0
        present = set()
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            present.add(path)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            prev = self._seen.get(path)
            if prev is None or prev[0] != st.st_size or prev[1] != st.st_mtime:
                self._seen[path] = (st.st_size, st.st_mtime, now)
                if self.config.stable_s > 0:
                    continue
                prev = self._seen[path]
            if now - prev[2] < self.config.stable_s:
                continue
            self._seen.pop(path, None)
            try:
                stored += self._take(path)
            except Exception as exc:  # noqa: BLE001 - one poison file must not stop the scan of the others
                self._poisoned(path, exc)
        for gone in set(self._seen) - present:
            self._seen.pop(gone, None)
        for gone in set(self._store_failures) - present:
            self._store_failures.pop(gone, None)
        return stored

    def _poisoned(self, path: Path, exc: Exception) -> None:
        """A file whose handling failed outside the intake (e.g. it could not be moved): reject it
        if possible, else leave it and say so; the next files are taken either way."""
        self.health.error(f"watch: {type(exc).__name__} on {path.name}")
        event("watch.file_error", logging.ERROR, log, file=path.name, exc_type=type(exc).__name__, exc=str(exc))
        try:
            self._reject(path, f"internal error while taking the file ({type(exc).__name__}); "
                         "contact the LASAN administrator")
        except OSError as move_exc:
            event("watch.reject_failed", logging.ERROR, log, file=path.name, exc=str(move_exc))

    def _take(self, path: Path) -> int:
        """The watch folder's answer table: processed/, rejected/ + reason, or left for the next scan."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            self.metrics.received.labels("watch").inc()
            return self._reject(path, f"cannot read the file: {exc.strerror or exc}")
        outcome = self.intake.accept(raw, Source("watch", formats=WATCH_FORMATS, suffix=path.suffix.lower(), sender="WATCH"))
        if isinstance(outcome, Accepted):
            self._store_failures.pop(path, None)
            self._move(path, PROCESSED)
            self.metrics.acks.labels("watch_stored").inc()
            event("watch.stored", logging.INFO, log, file=path.name, kind=outcome.kind, control_id=outcome.key.control_id,
                  item=outcome.item_id, duplicate=outcome.duplicate)
            return 0 if outcome.duplicate else 1
        if isinstance(outcome.error, QueueStorageError):
            failures = self._store_failures[path] = self._store_failures.get(path, 0) + 1
            event("watch.store_failed", logging.ERROR, log, file=path.name, reason=outcome.reason, attempt=failures,
                  max_attempts=self.max_store_attempts)
            if failures < self.max_store_attempts:
                return 0  # transient: the next scan tries again
            self._store_failures.pop(path, None)
            return self._reject(path, f"{outcome.reason} (gave up after {failures} attempts; put the file back in "
                                "the watch folder once the queue storage is fixed)", control_id=outcome.control_id)
        return self._reject(path, outcome.reason, control_id=outcome.control_id)

    def _reject(self, path: Path, reason: str, **fields: Any) -> int:
        self._move(path, REJECTED, reason=reason)
        self.metrics.acks.labels("watch_rejected").inc()
        event("watch.rejected", logging.WARNING, log, file=path.name, reason=reason, **fields)
        return 0

    def _move(self, path: Path, where: str, reason: str | None = None) -> None:
        target_dir = self.config.folder / where
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / path.name
        if target.exists():
            target = target_dir / f"{path.stem}-{int(time.time() * 1000)}{path.suffix}"
        if reason is not None:
            tmp = target_dir / f".{target.name}.reason.txt.tmp"
            tmp.write_text(reason + "\n", encoding="utf-8")
            os.replace(tmp, target_dir / f"{target.name}.reason.txt")
        os.replace(path, target)
