"""Feed rows under model load: 20 msg/s HL7 while perf_analyzer keeps the Triton ensemble saturated.

The listener and Triton share the same cores. With Triton at the default priority its
encoder instances (one single-threaded stub per core) compete with the listener's event
loop on equal terms, and the ACK waits for a time slice. With ``lasan serve --nice 10``
(:class:`lasan.build.serve.TritonServer` ``nice=``, inherited by every stub) the scheduler
gives the listener's short bursts precedence and Triton keeps the rest. Each setting runs
with a fresh server and listener, the same messages and the same background load. The
background load stands for other clients, which in a deployment run on other machines; in the
priority settings it runs at Triton's niceness, so that only the listener keeps full priority.
The third setting also pins Triton (and its stubs) to the last CPU (``lasan serve --cpus``),
leaving the first to the listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lasan.benchmarks.table import Row

__all__ = ["run_loaded_feed", "PRIORITY_NICE", "SETTINGS"]

log = logging.getLogger(__name__)

SECTION = "feed"
PRIORITY_NICE = 10  # what docs/performance.md recommends for tritonserver beside a listener
# (Triton's niceness, pin Triton to the last usable CPU?)
SETTINGS: tuple[tuple[int, bool], ...] = ((0, False), (PRIORITY_NICE, False), (PRIORITY_NICE, True))


def _background_load(url: str, out: Path, seconds: float, nice: int) -> subprocess.Popen[bytes]:
    """perf_analyzer at concurrency 8 on the ensemble for about ``seconds``: Triton saturated."""
    from lasan.benchmarks.triton import _input_file, perf_analyzer_command, perf_analyzer_environment, real_ecg
    from lasan.tensor_names import ENSEMBLE_MODEL, INPUT_ECG, INPUT_SAMPLING_RATE

    ecg, fs, _ = real_ecg()
    data = _input_file(out / "load-input.json", {INPUT_ECG: ecg, INPUT_SAMPLING_RATE: np.array([fs], np.float32)})
    cmd = perf_analyzer_command(ENSEMBLE_MODEL, url, data, 8, out / "load.csv", int(seconds * 1000))
    log_file = open(out / "load.log", "wb")  # noqa: SIM115 - owned by the process
    try:
        return subprocess.Popen(cmd, env=perf_analyzer_environment(), stdout=log_file, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)
    finally:
        log_file.close()


def run_loaded_feed(
    work: Path, repo: Path, *, quick: bool, settings: Sequence[tuple[int, bool]] = SETTINGS, rate: float = 20.0
) -> tuple[list[Row], dict[str, Any]]:
    """ACK and result latency at ``rate`` msg/s with Triton saturated, once per (niceness, pinned) setting."""
    from lasan.benchmarks.feed import ACK_P99_TARGET_MS, _run_feed, percentile, stop_process
    from lasan.build.serve import TritonServer, free_port

    duration_s = 5.0 if quick else 20.0
    drain_s = 30.0 if quick else 90.0
    rows: list[Row] = []
    details: dict[str, Any] = {}
    last_cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    for nice, pinned in settings:
        where = work / f"feed-loaded-nice{nice}{'-pinned' if pinned else ''}"
        where.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(3)]
        server = TritonServer(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                              work_dir=where / "triton", nice=nice, cpus=frozenset({last_cpu}) if pinned else None)
        with server:
            load = _background_load(server.grpc_url, where, duration_s + 40.0, nice)
            try:
                results, _ = asyncio.run(_run_feed(where, server.grpc_url, [rate], duration_s, drain_s))
            finally:
                stop_process(load, signal.SIGINT, wait_s=15)
        r = results[0]
        setting = f"Triton and the load at nice {nice}" if nice else "Triton at default priority"
        if pinned:
            setting += f", Triton pinned to CPU {last_cpu}"
        at = f"{rate:g} msg/s for {duration_s:g} s, Triton saturated (perf_analyzer concurrency 8), {setting}"
        ack99 = percentile(r.ack_ms, 99)
        rows.append(Row(SECTION, f"{at}: MLLP ACK latency p99", ack99, "ms",
                        note=f"p50 {percentile(r.ack_ms, 50):.1f} ms; {r.acked} of {r.sent} ACKed",
                        target=f"<= {ACK_P99_TARGET_MS:g} ms", met=ack99 <= ACK_P99_TARGET_MS))
        e2e = percentile(r.e2e_ms, 99) if r.e2e_ms else None
        rows.append(Row(SECTION, f"{at}: HL7 in -> result out latency p99", e2e, "ms",
                        note=f"{r.results} of {r.sent} results within {drain_s:g} s (the model is shared with "
                             "the background load)"))
        details[f"nice{nice}{'-pinned' if pinned else ''}"] = {"ack_ms": list(r.ack_ms), "e2e_ms": list(r.e2e_ms), "sent": r.sent}
    return rows, details
