"""The diagnostic classes, written once (pure Python: the client and manifest import it without torch)."""

from __future__ import annotations

__all__ = ["CLASSES", "CONTROL", "disease_classes"]

CONTROL = "control"
CLASSES: tuple[str, ...] = ("ARVC", "LQTS", CONTROL)


def disease_classes(classes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The classes that are diseases: every class except the control class (any case)."""
    return tuple(c for c in classes if c.lower() != CONTROL)
