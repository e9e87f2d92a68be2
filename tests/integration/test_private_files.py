"""Patient data at rest: the queue database (with its WAL files), outbox results and log files are
created 0600 in 0700 folders whatever the umask (here the permissive 0o000 and the common 0o022)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from lasan.integration.fhir import write_bundle
from lasan.integration.logs import configure_logging
from lasan.integration.private import write_private
from lasan.integration.queue import DurableQueue, IdempotencyKey
from lasan.integration.stages import _write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_queue_database_and_its_wal_files_are_0600_in_a_0700_folder(tmp_path, umask):
    queue = DurableQueue(tmp_path / "var" / "q.sqlite")
    try:
        queue.enqueue(IdempotencyKey("APP", "FAC", "M1"), b"MSH|^~\\&|secret", source="hl7", kind="hl7")
        files = [p for p in (tmp_path / "var").iterdir() if p.name.startswith("q.sqlite")]
        assert {p.name for p in files} >= {"q.sqlite", "q.sqlite-wal"}
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert _mode(tmp_path / "var") == 0o700
    finally:
        queue.close()


def test_an_existing_world_readable_database_is_tightened(tmp_path, umask):
    (tmp_path / "q.sqlite").touch(mode=0o644)
    os.chmod(tmp_path / "q.sqlite", 0o644)
    DurableQueue(tmp_path / "q.sqlite").close()
    assert _mode(tmp_path / "q.sqlite") == 0o600


def test_outbox_results_are_0600_in_a_0700_outbox(tmp_path, umask):
    outbox = tmp_path / "out"
    outbox.mkdir(mode=0o755)
    os.chmod(outbox, 0o755)  # an outbox made by hand: LASAN owns it, so it is tightened
    hl7 = _write_atomic(outbox, "R1.hl7", "MSH|^~\\&|result")
    fhir = write_bundle({"resourceType": "Bundle"}, outbox, "R1")
    assert (_mode(hl7), _mode(fhir), _mode(outbox)) == (0o600, 0o600, 0o700)
    assert hl7.read_text() == "MSH|^~\\&|result"
    assert not list(outbox.glob(".*.tmp"))


def test_a_leftover_temporary_file_does_not_keep_its_mode(tmp_path, umask):
    leftover = tmp_path / ".R2.hl7.tmp"
    leftover.write_text("crash")
    os.chmod(leftover, 0o666)
    assert _mode(write_private(tmp_path / "R2.hl7", b"x")) == 0o600


def test_log_file_is_0600_in_a_0700_folder(tmp_path, umask):
    root = logging.getLogger()
    before = list(root.handlers), root.level
    log = tmp_path / "logs" / "lasan.log"
    try:
        configure_logging("kv", "INFO", log)
        logging.getLogger("lasan.test").info("one line")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in before[0]:
            root.addHandler(handler)
        root.setLevel(before[1])
    assert log.read_text() and (_mode(log), _mode(log.parent)) == (0o600, 0o700)
