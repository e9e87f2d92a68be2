"""``lasan queue``: list, show (no patient data unless --phi), requeue and purge, through the
CLI entry point on a real queue file filled by the real intake."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from feedkit import PHI_STRINGS, REPO_ROOT, oru, small_ecg

from lasan.cli import main
from lasan.hl7.oru import OrderContext
from lasan.hl7.result import build_not_scored_result
from lasan.integration.intake import Accepted, Intake
from lasan.integration.listener import MLLP_SOURCE
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import DurableQueue


@pytest.fixture
def filled(tmp_path):
    """A config file and its queue with one item in each state: received, not scored, failed, sent."""
    config = tmp_path / "listen.yaml"
    config.write_text(yaml.safe_dump({"listener": {"port": 0}, "metrics": {"enabled": False},
                                      "storage": {"queue_db": "q.sqlite", "outbox": "outbox"}}))
    queue = DurableQueue(tmp_path / "q.sqlite")
    intake = Intake(queue, Metrics(), Health())
    ids = {}
    for name in ("waiting", "unscorable", "failed", "sent"):
        outcome = intake.accept(oru(small_ecg(seed=len(name)), f"Q-{name}"), MLLP_SOURCE)
        assert isinstance(outcome, Accepted)
        ids[name] = outcome.item_id
    result = build_not_scored_result(OrderContext("Q-unscorable", "CART", "WARD7"), "the model refused it",
                                     control_id="LSNNOTSCORED")
    queue.mark_unscorable(ids["unscorable"], "the model refused it", result, "LSNNOTSCORED")
    queue.mark_failed(ids["failed"], "stored message does not read")
    queue.mark_scored(ids["sent"], "MSH|^~\\&|LASAN\rPID|1||MRN7730419\r", "LSNSENT")
    queue.mark_sent(ids["sent"])
    queue.close()
    return config, ids


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["queue", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _no_phi(text: str) -> None:
    leaked = [s for s in PHI_STRINGS if s in text]
    assert not leaked, f"patient identifiers {leaked} shown without --phi"


def test_list_shows_every_item_without_patient_data(filled, capsys):
    config, ids = filled
    code, out, _ = _run(capsys, "--config", str(config), "list")
    assert code == 0
    _no_phi(out)
    for name, item_id in ids.items():
        line = next(line for line in out.splitlines() if f"CART|WARD7|Q-{name}" in line)
        assert line.split()[0] == str(item_id)
    assert "the model refused it" in out and "not_scored" in out


def test_list_filters_by_state_as_json(filled, capsys):
    config, ids = filled
    code, out, _ = _run(capsys, "--config", str(config), "list", "--state", "failed", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["id"] for r in rows] == [ids["failed"]]
    assert rows[0]["state"] == "failed" and rows[0]["last_error"] == "stored message does not read"
    assert rows[0]["key"] == "CART|WARD7|Q-failed" and rows[0]["attempts"] == 1


def test_show_hides_the_message_unless_asked(filled, capsys):
    config, ids = filled
    code, out, _ = _run(capsys, "--config", str(config), "show", str(ids["sent"]))
    assert code == 0 and "state: sent" in out and "--phi" in out
    _no_phi(out)
    code, out, _ = _run(capsys, "--config", str(config), "show", str(ids["sent"]), "--phi", "--json")
    data = json.loads(out)
    assert "MRN7730419" in data["message"] and "Quillfeather" in data["message"]  # the message as received
    assert data["result"].startswith("MSH|") and data["result_control_id"] == "LSNSENT"


def test_requeue_sends_a_failed_or_not_scored_item_back_and_refuses_others(filled, capsys):
    config, ids = filled
    for name in ("failed", "unscorable"):
        code, out, _ = _run(capsys, "--config", str(config), "requeue", str(ids[name]))
        assert code == 0 and "re-queued" in out
    code, _, err = _run(capsys, "--config", str(config), "requeue", str(ids["sent"]))
    assert code == 1 and "only failed or not-scored items" in err
    code, _, err = _run(capsys, "--config", str(config), "show", "999")
    assert code == 1 and "999 does not exist" in err
    with DurableQueue(config.parent / "q.sqlite") as queue:
        for name in ("failed", "unscorable"):
            item = queue.get(ids[name])
            assert item.state == "received" and item.attempts == 0 and item.result is None
        assert queue.get(ids["sent"]).state == "sent"


def test_purge_deletes_finished_items_and_keeps_waiting_ones(filled, capsys):
    config, ids = filled
    code, out, _ = _run(capsys, "--config", str(config), "purge")  # default retention: 30 days, nothing that old
    assert code == 0 and "purged 0 item(s)" in out
    code, out, _ = _run(capsys, "--config", str(config), "purge", "--older-than", "0")
    assert code == 0 and "purged 2 item(s)" in out  # sent and failed; the not-scored one is not delivered yet
    with DurableQueue(config.parent / "q.sqlite") as queue:
        assert {i.id for i in queue.items()} == {ids["waiting"], ids["unscorable"]}


def test_the_lasan_command_runs_it(filled):
    config, ids = filled
    proc = subprocess.run([sys.executable, "-m", "lasan.cli", "queue", "--config", str(config), "list", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert {json.loads(line)["id"] for line in proc.stdout.splitlines()} == set(ids.values())
    _no_phi(proc.stdout + proc.stderr)
