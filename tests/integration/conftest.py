"""Fixtures for the integration tests (helpers live in feedkit.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from feedkit import PHI_STRINGS, Downstream, ListenerProcess, free_port


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    d = Downstream()
    yield d
    d.close()


@pytest.fixture
def listener_process(tmp_path: Path) -> Iterator[Callable[..., ListenerProcess]]:
    started: list[ListenerProcess] = []

    def make(triton_url: str, downstream_port: int | None, **overrides) -> ListenerProcess:
        config = {
            "listener": {"port": free_port(), "message_timeout_s": 20, "idle_timeout_s": 60,
                         "max_message_bytes": 4 * 1024 * 1024},
            "triton": {"url": triton_url, "timeout_s": 10},
            "storage": {"queue_db": str(tmp_path / "queue.sqlite"), "outbox": str(tmp_path / "outbox")},
            "retry": {"initial_s": 0.2, "max_s": 1.0},
            "metrics": {"port": free_port()},
            "logging": {"format": "kv", "level": "INFO"},
            "scoring": {"concurrency": 8},
        }
        if downstream_port is not None:
            config["downstream"] = {"host": "127.0.0.1", "port": downstream_port, "timeout_s": 5}
        for section, values in overrides.items():
            config.setdefault(section, {}).update(values)
        lp = ListenerProcess(config, tmp_path)
        started.append(lp)
        return lp

    yield make
    for lp in started:
        lp.kill()


@pytest.fixture
def assert_no_phi() -> Callable[[str], None]:
    def check(text: str) -> None:
        leaked = [s for s in PHI_STRINGS if s in text]
        assert not leaked, f"patient identifiers {leaked} appear in the log"

    return check
