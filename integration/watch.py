"""The watch folder: DICOM and HL7 files that ECG carts export into a shared folder.

Polling (portable to network shares where inotify does not see remote writes). A file
is taken only after its size and modification time have not changed for ``stable_s``
(a cart may still be writing it). It is then validated and stored in the durable queue
exactly like a message from the network, and only then moved to ``processed/``. A file
that is not a readable ECG goes to ``rejected/`` with ``<name>.reason.txt`` beside it.
A crash between storing and moving is harmless: the idempotency key (HL7 MSH-3/4/10,
DICOM SOP Instance UID) makes the second intake a no-op.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from lasan.errors import ECGFormatError, LasanError, QueueStorageError
from lasan.integration.config import WatchConfig
from lasan.integration.hl7_ack import read_msh
from lasan.integration.listener import validate_record
from lasan.integration.logs import event
from lasan.integration.metrics import Health, Metrics
from lasan.integration.mllp import decode_hl7
from lasan.integration.queue import DurableQueue, IdempotencyKey

__all__ = ["WatchFolder", "PROCESSED", "REJECTED"]

log = logging.getLogger("lasan.integration.watch")

PROCESSED, REJECTED = "processed", "rejected"


class WatchFolder:
    """Polls ``config.folder``; :meth:`scan_once` is the whole algorithm, :meth:`run` repeats it."""

    def __init__(
        self,
        config: WatchConfig,
        queue: DurableQueue,
        metrics: Metrics,
        health: Health,
        *,
        default_charset: str = "utf-8",
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.config, self.queue, self.metrics, self.health = config, queue, metrics, health
        self._charset = default_charset
        self._on_stored = on_stored
        self._seen: dict[Path, tuple[int, float, float]] = {}  # path -> (size, mtime, first seen unchanged)
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
                stored = await asyncio.to_thread(self.scan_once)
                if stored and self._on_stored is not None:
                    self._on_stored()
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
            stored += self._take(path)
        for gone in set(self._seen) - present:
            self._seen.pop(gone, None)
        return stored

    def _take(self, path: Path) -> int:
        self.metrics.received.labels("watch").inc()
        try:
            raw = path.read_bytes()
            key, kind, payload = self._validate(raw, path)
            outcome = self.queue.enqueue(key, payload, source="watch", kind=kind)
        except QueueStorageError as exc:
            # Leave the file where it is: the next scan tries again.
            self.health.error(str(exc))
            event("watch.store_failed", logging.ERROR, log, file=path.name, reason=str(exc))
            return 0
        except (LasanError, OSError) as exc:
            self._move(path, REJECTED, reason=str(exc))
            self.metrics.acks.labels("watch_rejected").inc()
            event("watch.rejected", logging.WARNING, log, file=path.name, reason=str(exc))
            return 0
        self._move(path, PROCESSED)
        self.metrics.acks.labels("watch_stored").inc()
        event("watch.stored", logging.INFO, log, file=path.name, kind=kind, control_id=key.control_id,
              item=outcome.item_id, duplicate=outcome.duplicate)
        return 0 if outcome.duplicate else 1

    def _validate(self, raw: bytes, path: Path) -> tuple[IdempotencyKey, str, bytes]:
        if len(raw) >= 132 and raw[128:132] == b"DICM":
            from lasan.formats.dicom import read_dicom

            record = read_dicom(raw)
            validate_record(record)
            import io

            import pydicom

            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            uid = str(ds.get("SOPInstanceUID", "") or "") or hashlib.sha256(raw).hexdigest()[:40]
            return IdempotencyKey("WATCH", "DICOM", uid), "dicom", raw
        body = raw.lstrip(b"\x0b")
        if body.startswith(b"MSH"):
            from lasan.formats.hl7 import parse_oru

            end = body.rfind(b"\x1c")
            body = body[:end] if end >= 0 else body
            text, _ = decode_hl7(body, self._charset)
            header = read_msh(text)
            record = parse_oru(text).record
            validate_record(record)
            key = IdempotencyKey(header.sending_application, header.sending_facility, header.control_id)
            return key, "hl7", body
        raise ECGFormatError(f"{path.name} is neither a DICOM file (no DICM marker) nor an HL7 message (no MSH)")

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
