"""Retention: patient data is kept only as long as ``storage.retention_days`` says.

:func:`purge_expired` deletes what finished longer ago than the retention (docs/privacy.md
lists what holds patient data and where):

* queue items delivered (``sent``, results and "not scored" results alike) or ``failed``, with
  their stored message, ACK and result, once every extra delivery (PACS, FHIR) is sent too
  (:meth:`lasan.integration.queue.Queue.purge`); an item still waiting is never purged;
* outbox files (``<result MSH-10>.hl7``, ``.fhir.json``) not written for that long;
* watch-folder ``processed/`` and ``rejected/`` files (with their reason files) moved there
  that long ago.

:class:`RetentionJob` runs it in the listener, once at start and then periodically, on a
thread (a purge must not hold up ACKs). ``lasan queue purge`` runs the same function.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lasan.integration.config import AppConfig
from lasan.integration.logs import event
from lasan.integration.queue import Queue

__all__ = ["DAY_S", "Purged", "purge_expired", "purge_interval_s", "RetentionJob"]

log = logging.getLogger("lasan.integration.retention")

DAY_S = 86400.0


@dataclass(frozen=True)
class Purged:
    """What one purge deleted."""

    items: int
    outbox_files: int
    watch_files: int


def _old_files(folder: Path, cutoff: float) -> int:
    """Delete the regular files directly in ``folder`` last changed before ``cutoff``; returns how many.

    "Changed" is the later of mtime and ctime: a watch-folder file copied with its old mtime
    kept (``cp -p``, rsync) gets a new ctime when it is moved to processed/ or rejected/.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if entry.is_file(follow_symlinks=False) and max(st.st_mtime, st.st_ctime) < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # taken by someone else meanwhile
            continue
    return removed


def purge_expired(queue: Queue, config: AppConfig, *, older_than_days: float | None = None,
                  now: float | None = None) -> Purged:
    """Delete patient data older than the retention (``older_than_days``, default ``storage.retention_days``).

    Raises:
        QueueStorageError: the queue could not be purged (files are then left alone too).
        ConfigError: ``older_than_days`` is negative.
    """
    from lasan.errors import ConfigError

    days = config.storage.retention_days if older_than_days is None else older_than_days
    if days < 0:
        raise ConfigError(f"the retention must be >= 0 days, got {days:g}")
    now = time.time() if now is None else now
    older_than_s = days * DAY_S
    items = queue.purge(older_than_s, now=now)
    cutoff = now - older_than_s
    outbox = _old_files(config.storage.outbox, cutoff)
    watch = 0
    if config.watch.enabled:
        from lasan.integration.watch import PROCESSED, REJECTED

        watch = sum(_old_files(config.watch.folder / sub, cutoff) for sub in (PROCESSED, REJECTED))
    return Purged(items, outbox, watch)


def purge_interval_s(retention_days: float) -> float:
    """How often the listener purges: hourly, or a quarter of a short retention (tests)."""
    return min(3600.0, max(0.5, retention_days * DAY_S / 4))


class RetentionJob:
    """Runs :func:`purge_expired` at start and every :func:`purge_interval_s` until :meth:`stop`.

    A failure is logged and reported to health, and the next run tries again.
    """

    def __init__(self, config: AppConfig, queue: Queue, on_error: Callable[[str], None] | None = None) -> None:
        self.config, self.queue = config, queue
        self._on_error = on_error
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        days = self.config.storage.retention_days
        if days <= 0:
            event("retention.disabled", logging.WARNING, log,
                  reason="storage.retention_days is 0: delivered items and their patient data are kept forever")
            return
        interval = purge_interval_s(days)
        event("retention.started", logging.INFO, log, retention_days=days, interval_s=interval)
        while not self._stop.is_set():
            try:
                purged = await asyncio.to_thread(purge_expired, self.queue, self.config)
                if purged.items or purged.outbox_files or purged.watch_files:
                    event("retention.purged", logging.INFO, log, items=purged.items, outbox_files=purged.outbox_files,
                          watch_files=purged.watch_files, retention_days=days)
            except Exception as exc:  # noqa: BLE001 - a failed purge is retried next time, never fatal
                event("retention.failed", logging.ERROR, log, exc_type=type(exc).__name__, exc=str(exc))
                if self._on_error is not None:
                    self._on_error(f"retention: {exc}")
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
