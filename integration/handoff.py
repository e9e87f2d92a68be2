"""Hand the record the listener already parsed to the worker, so a message is parsed once.

The listener must parse the waveform before it answers ``AA`` (to refuse what cannot be
scored); the worker then needs the same record. Parsing a 12-lead message costs about
8 ms of CPU with the GIL held (numpy converting the OBX-5 text), so parsing it a second
time in the worker delays the next ACK by as much. :class:`ParsedRecords` keeps the
listener's record for the worker, keyed by queue item ID.

It is only a shortcut: the durable queue stays the truth. An entry is taken once; a
retry, a restart, or an entry pushed out by the size bound simply re-reads the stored
message, which yields the same record (same bytes, same parser).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from lasan.record import ECGRecord

__all__ = ["ParsedRecords"]


class ParsedRecords:
    """A bounded, thread-safe map from queue item ID to its parsed :class:`ECGRecord`.

    Args:
        max_items: how many records to hold; the oldest is dropped first. A 12-lead 10 s
            500 Hz record is about 0.5 MB, so the default bounds this at about 32 MB.
    """

    def __init__(self, max_items: int = 64) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        self._max = max_items
        self._items: OrderedDict[int, ECGRecord] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item_id: int, record: ECGRecord) -> None:
        """Keep ``record`` for ``item_id`` (dropping the oldest entry when full)."""
        with self._lock:
            self._items[item_id] = record
            self._items.move_to_end(item_id)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def take(self, item_id: int) -> ECGRecord | None:
        """The record kept for ``item_id``, removed from the map; None when there is none."""
        with self._lock:
            return self._items.pop(item_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
