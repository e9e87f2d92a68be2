"""Structured logs for the listener: ``key=value`` or JSON lines, never patient data.

Callers pass facts as ``extra={"fields": {...}}`` through :func:`event`; only those
fields and the event name are written. The rule that keeps PHI out is structural: the
integration code logs control IDs, sender application/facility, states, codes and error
texts, and never a record, a PID segment or a DICOM dataset. The exception messages it
logs come from LASAN's own errors, which name fields, not their values.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["StructuredFormatter", "configure_logging", "event"]

_LOGGER = logging.getLogger("lasan.integration")


class StructuredFormatter(logging.Formatter):
    """Formats ``event(...)`` records as ``ts=.. level=.. event=.. key=value ..`` or one JSON object."""

    def __init__(self, fmt: str = "kv") -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}) or {})
        if record.exc_info and record.exc_info[0] is not None:
            # Type and message only: a traceback's locals are never printed, but its
            # source lines could quote a value, so keep it to the exception itself.
            exc = record.exc_info[1]
            fields["exc_type"] = type(exc).__name__
            fields["exc"] = str(exc)
        if self.fmt == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_kv(v)}" for k, v in fields.items())


def _kv(value: Any) -> str:
    text = "" if value is None else str(value)
    if text and not any(c in text for c in ' "=\n\r\t'):
        return text
    return json.dumps(text)


def configure_logging(fmt: str = "kv", level: str = "INFO", file: Path | None = None) -> None:
    """Send the ``lasan`` loggers to stderr (or ``file``) in the structured format.

    Replaces the plain handler ``lasan.cli`` installs, so every line is structured.
    """
    handler: logging.Handler
    if file is not None:
        from lasan.integration.private import private_dir, private_file

        private_file(private_dir(file.parent) / file.name)  # 0600 before FileHandler opens it with the umask
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom logs dataset contents (patient name) at DEBUG; keep it at WARNING.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # A library's warning may quote a value it was given (highdicom quotes a person name it dislikes):
    # warnings become structured events with their kind and origin, never their text.
    warnings.showwarning = _warning_event


def _warning_event(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: Any = None, line: str | None = None) -> None:
    event("python.warning", logging.WARNING, _LOGGER, category=category.__name__,
          origin=f"{Path(filename).name}:{lineno}", text="withheld (may quote patient data)")


def event(name: str, level: int = logging.INFO, logger: logging.Logger | None = None, exc_info: bool = False,
          **fields: Any) -> None:
    """Log one structured event. Pass only non-identifying facts as ``fields``."""
    (logger or _LOGGER).log(level, name, extra={"fields": fields}, exc_info=exc_info)
