"""Reading an ECG file whose size is checked before its bytes are loaded.

The export readers (vendor XML/binary, FHIR JSON) refuse oversized files before reading
them, and turn an unreadable path into the reader contract's typed error instead of a bare
``OSError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import MalformedECGError

__all__ = ["read_bounded"]


def read_bounded(path: Path, what: str, check_size: Callable[[int], None]) -> bytes:
    """The bytes of ``path`` after ``check_size(size)`` accepted its size.

    Raises:
        MalformedECGError: the file cannot be read (``what`` names it), or whatever
            ``check_size`` raises for a file that is too large.
    """
    try:
        check_size(path.stat().st_size)
        return path.read_bytes()
    except OSError as exc:
        raise MalformedECGError(f"{what} cannot be read ({exc.strerror or exc})") from exc
