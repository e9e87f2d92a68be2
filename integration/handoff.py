"""Hand what the intake already parsed to the worker, so a message is parsed once.

The intake must parse the waveform before it answers ``AA`` (to refuse what cannot be
scored); the worker then needs the same record and the order the result goes back to.
Parsing a 12-lead message costs several ms of CPU with the GIL held (numpy converting the
OBX-5 text), so parsing it a second time in the worker delays the next ACK by as much.
:class:`ParsedRecords` keeps the intake's :class:`Handoff` for the worker, keyed by queue
item ID.

It is only a shortcut: the durable queue stays the truth. An entry is taken once; a
retry, a restart, or an entry pushed out by the size bound simply re-reads the stored
message (:func:`lasan.integration.intake.read_stored`), which yields the same record
(same bytes, same reader).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from lasan.hl7.oru import OrderContext
from lasan.record import ECGRecord

__all__ = ["Handoff", "ParsedRecords"]


@dataclass(frozen=True)
class Handoff:
    """One stored item, read: the record to score and the order its result goes back to."""

    record: ECGRecord
    order: OrderContext


class ParsedRecords:
    """A bounded, thread-safe map from queue item ID to its :class:`Handoff`.

    Args:
        max_items: how many to hold; the oldest is dropped first. A 12-lead 10 s 500 Hz
            record is about 0.5 MB, so the default bounds this at about 32 MB.
    """

    def __init__(self, max_items: int = 64) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        self._max = max_items
        self._items: OrderedDict[int, Handoff] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item_id: int, handoff: Handoff) -> None:
        """Keep ``handoff`` for ``item_id`` (dropping the oldest entry when full)."""
        with self._lock:
            self._items[item_id] = handoff
            self._items.move_to_end(item_id)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def take(self, item_id: int) -> Handoff | None:
        """The hand-off kept for ``item_id``, removed from the map; None when there is none."""
        with self._lock:
            return self._items.pop(item_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
