"""``lasan queue --config FILE.yaml COMMAND``: look at and repair the listener's durable queue.

* ``list [--state S] [--limit N] [--json]``: one line per item, newest first: id, key
  (sender|facility|control ID), source, state, outcome, attempts, last error, times. No
  patient data: control IDs and errors never hold any.
* ``show ID [--phi] [--json]``: one item; with ``--phi`` also the message as received and the
  result sent back (both name the patient: ask for them only when you need them).
* ``requeue ID``: a failed or not-scored item goes back to ``received`` (attempts 0) to be
  scored again, e.g. after the model or Triton was fixed; its new result has the same MSH-10.
* ``purge [--older-than DAYS]``: what :func:`lasan.integration.retention.purge_expired`
  deletes, now (default: ``storage.retention_days``).

It opens the queue the listener uses (SQLite file or PostgreSQL, ``storage``), so it works
while the listener runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from lasan.integration.config import load_config
from lasan.integration.queue import STATES, QueueItem, open_queue

__all__ = ["configure", "run", "item_summary"]


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def item_summary(item: QueueItem) -> dict[str, Any]:
    """What ``list`` shows of an item: no patient data (no message, no result, no ACK text)."""
    return {
        "id": item.id,
        "key": str(item.key),
        "source": item.source,
        "kind": item.kind,
        "state": item.state,
        "outcome": item.outcome,
        "attempts": item.attempts,
        "last_error": item.last_error,
        "received_at": _iso(item.received_at),
        "next_attempt_at": _iso(item.next_attempt_at) if item.state in ("received", "scored") else None,
        "result_control_id": item.result_control_id,
        "leased_by": item.leased_by,
    }


def _raw_text(item: QueueItem) -> str:
    if item.kind == "hl7":
        from lasan.errors import LasanError
        from lasan.hl7.encoding import read_header

        try:
            codec = read_header(item.raw).codec or "utf-8"
        except LasanError:
            codec = "utf-8"
        return item.raw.decode(codec, errors="replace").replace("\r", "\n").rstrip("\n")
    return f"({item.kind} object, {len(item.raw)} bytes; read it with: lasan inspect)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.yaml", help="the listener configuration")
    sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="list items, newest first (no patient data)")
    p.add_argument("--state", choices=STATES, help="only items in this state")
    p.add_argument("--limit", type=int, default=100, help="at most this many items (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = sub.add_parser("show", help="one item; --phi adds the message and result, which name the patient")
    p.add_argument("id", type=int)
    p.add_argument("--phi", action="store_true", help="also print the message as received and the result")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p = sub.add_parser("requeue", help="score a failed or not-scored item again")
    p.add_argument("id", type=int)
    p = sub.add_parser("purge", help="delete finished items and files older than the retention now")
    p.add_argument("--older-than", type=float, metavar="DAYS", dest="older_than",
                   help="age in days (default: storage.retention_days)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    queue = open_queue(config.storage)
    try:
        return _ACTIONS[args.action](queue, config, args)
    finally:
        queue.close()


def _list(queue: Any, config: Any, args: argparse.Namespace) -> int:
    items = queue.items(args.state, limit=max(1, args.limit))
    if args.json:
        for item in items:
            print(json.dumps(item_summary(item)))
        return 0
    print(f"{'ID':>6}  {'STATE':<8} {'OUTCOME':<10} {'TRIES':>5}  {'RECEIVED':<20}  KEY  LAST ERROR")
    for item in items:
        s = item_summary(item)
        error = (s["last_error"] or "").replace("\n", " ")
        print(f"{s['id']:>6}  {s['state']:<8} {s['outcome'] or '-':<10} {s['attempts']:>5}  {s['received_at']:<20}  "
              f"{s['key']}  {error[:100]}")
    if not items:
        print("(no items)", file=sys.stderr)
    return 0


def _show(queue: Any, config: Any, args: argparse.Namespace) -> int:
    item = queue.get(args.id)
    data = item_summary(item)
    if args.phi:
        data["message"] = _raw_text(item)
        data["result"] = item.result.replace("\r", "\n").rstrip("\n") if item.result else None
    if args.json:
        print(json.dumps(data))
        return 0
    for name, value in data.items():
        if name in ("message", "result") and value:
            print(f"{name}:\n  " + "\n  ".join(str(value).split("\n")))
        else:
            print(f"{name}: {value if value is not None else '-'}")
    if not args.phi:
        print("(message and result not shown: they name the patient; add --phi to see them)")
    return 0


def _requeue(queue: Any, config: Any, args: argparse.Namespace) -> int:
    queue.requeue(args.id)
    print(f"item {args.id} re-queued: the listener scores it again on its next pass")
    return 0


def _purge(queue: Any, config: Any, args: argparse.Namespace) -> int:
    from lasan.integration.retention import purge_expired

    days = config.storage.retention_days if args.older_than is None else args.older_than
    if args.older_than is None and days <= 0:
        print("storage.retention_days is 0 (keep forever): nothing purged; give --older-than DAYS to purge anyway",
              file=sys.stderr)
        return 2
    purged = purge_expired(queue, config, older_than_days=days)
    print(f"purged {purged.items} item(s), {purged.outbox_files} outbox file(s) and {purged.watch_files} watch-folder "
          f"file(s) finished more than {days:g} day(s) ago")
    return 0


_ACTIONS = {"list": _list, "show": _show, "requeue": _requeue, "purge": _purge}
