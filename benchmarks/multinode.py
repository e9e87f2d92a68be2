"""Multinode rows: two ``lasan listen`` nodes on one PostgreSQL queue, one Triton each, at 50 messages/s.

The same open-loop generator, downstream sink and listener processes as the feed rows
(:mod:`lasan.benchmarks.feed`), everything real and on loopback: a throwaway PostgreSQL
cluster (``initdb`` of Debian's ``postgresql``, fsync and synchronous commit on), two Triton
servers on the benchmark repository, and two listener processes whose configs differ only
in ports, node name and Triton. The baseline is measured in the same run at the same rate:
one listener on its SQLite queue with one Triton. Half of the messages go to each node, on
its own connections; a message is *lost* when its result has not reached the sink within
the drain time after the last send.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lasan.benchmarks.feed import (
    RateResult,
    _messages,
    _reuse_or_build,
    _send_load,
    _Sink,
    _wait_port,
    _write_config,
    percentile,
    stop_process,
)
from lasan.benchmarks.table import Row
from lasan.errors import ServerError

__all__ = ["MultinodeBenchResult", "run_multinode_benchmark", "RATE"]

SECTION = "multinode"
RATE = 50.0  # messages/s in total, over both nodes (issue 11)


@dataclass(frozen=True)
class MultinodeBenchResult:
    rows: tuple[Row, ...]
    details: dict[str, Any]


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields the URL of an empty database.

    Raises:
        ServerError: the PostgreSQL server binaries are missing or the server does not start.
    """
    from lasan.build.serve import free_port

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True) or \
        [p for p in (shutil.which("initdb"),) if p]
    if not found:
        raise ServerError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): install Debian's "
                          "postgresql package (make install does, as root)")
    bin_dir = Path(found[0]).parent
    # In the system temp folder, not under ``work``: the cluster runs as the postgres user, who may not
    # be able to enter the work folder (and initdb/pg_ctl need absolute paths: they run with cwd=root).
    root = Path(tempfile.mkdtemp(prefix="lasan-bench-pg-")).resolve()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), root / "data"

    def run(*args: str) -> None:
        proc = subprocess.run([*as_user, *args], capture_output=True, text=True, cwd=root, timeout=120)
        if proc.returncode != 0:
            raise ServerError(f"{Path(args[0]).name} failed: {proc.stderr.strip()[-500:]}")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "lasan", "--auth=trust", "-E", "UTF8", "--locale=C",
            "--no-sync")
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"
                       "fsync = on\nsynchronous_commit = on\n")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "start")
        try:
            run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "lasan", "lasan_bench")
            yield f"postgresql://lasan@127.0.0.1:{port}/lasan_bench"
        finally:
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, cwd=root, timeout=120)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _config(work: Path, name: str, triton_url: str, sink_port: int, queue_url: str | None) -> tuple[Path, int]:
    """The feed rows' listener config, plus the node name and (for the nodes) the shared queue."""
    from lasan.build.serve import free_port

    var = (work / name).resolve()
    var.mkdir(parents=True, exist_ok=True)
    for old in var.glob("queue.sqlite*"):
        old.unlink()
    shutil.rmtree(var / "outbox", ignore_errors=True)
    port = free_port()
    path = _write_config(work / f"{name}.yaml", port, triton_url, sink_port, var)
    config = yaml.safe_load(path.read_text())
    config["metrics"]["node"] = name
    if queue_url:
        config["storage"]["queue_url"] = queue_url
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, port


@contextlib.contextmanager
def _listener(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    stdout = open(log, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([sys.executable, "-m", "lasan.cli", "listen", "--config", str(config)],
                            stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
    stdout.close()
    try:
        yield proc
    finally:
        stop_process(proc)


def _merge(parts: list[RateResult], rate: float) -> RateResult:
    return RateResult(
        rate, parts[0].duration_s, sum(p.sent for p in parts), sum(p.acked for p in parts),
        sum(p.ack_errors for p in parts), sum(p.results for p in parts),
        tuple(x for p in parts for x in p.ack_ms), tuple(x for p in parts for x in p.e2e_ms),
        max(p.max_send_lag_ms for p in parts),
    )


async def _single(work: Path, triton_url: str, duration_s: float, drain_s: float) -> RateResult:
    sink = _Sink()
    await sink.start()
    config, port = _config(work, "single", triton_url, sink.port, None)
    templates = _messages(4)
    try:
        with _listener(config, work / "single.stdout") as proc:
            await _wait_port(port, proc, 120)
            await _send_load("127.0.0.1", port, templates, 2.0, 2.0, "WARM-S", sink, 2, 60)
            return await _send_load("127.0.0.1", port, templates, RATE, duration_s, "S-", sink, 8, drain_s)
    finally:
        await sink.stop()


async def _nodes(work: Path, triton_urls: list[str], queue_url: str, duration_s: float,
                 drain_s: float) -> tuple[RateResult, dict[str, int]]:
    sink = _Sink()
    await sink.start()
    names = [f"node-{c}" for c in "ab"[: len(triton_urls)]]
    setups = [_config(work, n, t, sink.port, queue_url) for n, t in zip(names, triton_urls, strict=True)]
    templates = _messages(4)
    try:
        with contextlib.ExitStack() as stack:
            procs = [stack.enter_context(_listener(c, work / f"{n}.stdout")) for n, (c, _) in zip(names, setups, strict=True)]
            for (_, port), proc in zip(setups, procs, strict=True):
                await _wait_port(port, proc, 120)
            await asyncio.gather(*(_send_load("127.0.0.1", port, templates, 1.0, 2.0, f"WARM-{n}", sink, 2, 60)
                                   for n, (_, port) in zip(names, setups, strict=True)))
            share = RATE / len(names)
            parts = await asyncio.gather(*(
                _send_load("127.0.0.1", port, templates, share, duration_s, f"M{n[-1].upper()}-", sink, 4, drain_s)
                for n, (_, port) in zip(names, setups, strict=True)))
        # Which node delivered what: each node writes every result it delivers to its own outbox.
        delivered = {n: len(list((work / n / "outbox").glob("*.hl7"))) for n in names}
        return _merge(list(parts), RATE), delivered
    finally:
        await sink.stop()


def run_multinode_benchmark(work: Path, *, quick: bool = False, checkpoint: str | None = None) -> MultinodeBenchResult:
    """Two nodes on PostgreSQL vs one node on SQLite, both at :data:`RATE` messages/s.

    Raises:
        ServerError: PostgreSQL, a Triton server or a listener did not start.
    """
    from lasan.build.serve import TritonServer, free_port

    duration_s = 5.0 if quick else 20.0
    drain_s = 30.0 if quick else 120.0
    out = work / "multinode"
    out.mkdir(parents=True, exist_ok=True)
    repo = _reuse_or_build(work, checkpoint)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tritons = [stack.enter_context(TritonServer(repo, http_port=free_port(), grpc_port=free_port(),
                                                    metrics_port=free_port(), work_dir=out / f"triton-{i}"))
                   for i in range(2)]
        single = asyncio.run(_single(out, tritons[0].grpc_url, duration_s, drain_s))
        queue_url = stack.enter_context(_postgres())
        multi, delivered = asyncio.run(_nodes(out, [t.grpc_url for t in tritons], queue_url, duration_s, drain_s))
    at = f"{RATE:g} msg/s for {duration_s:g} s"
    rows: list[Row] = []
    for label, r in (("1 listener, SQLite queue, 1 Triton", single),
                     ("2 listeners, one PostgreSQL queue, 1 Triton each", multi)):
        lost = r.sent - r.results
        rows.append(Row(SECTION, f"{at}, {label}: messages lost", float(lost), "messages",
                        target="0", met=lost == 0,
                        note=f"{r.sent} sent, {r.acked} ACKed ({r.ack_errors} not AA), {r.results} results within "
                             f"{drain_s:g} s of the last send; max generator lag {r.max_send_lag_ms:.1f} ms"
                             + (f"; results each node delivered (warm-up included): {', '.join(f'{k} {v}' for k, v in delivered.items())}"
                                if r is multi else "")))
    for what, values in (("MLLP ACK latency p99", lambda r: r.ack_ms), ("HL7 in -> result out latency p99",
                                                                          lambda r: r.e2e_ms)):
        base, got = percentile(values(single), 99), percentile(values(multi), 99)
        rows.append(Row(SECTION, f"{at}, 2 listeners on PostgreSQL: {what}", got, "ms",
                        baseline=f"1 listener on SQLite, same run: {base:.1f} ms",
                        ratio=got / base if base and base == base and got == got else None,
                        note=f"p50 {percentile(values(multi), 50):.1f} ms (1 listener: {percentile(values(single), 50):.1f} ms)"))
    details = {
        "rate": RATE, "duration_s": duration_s, "drain_s": drain_s, "total_s": time.monotonic() - started,
        "delivered_per_node": delivered,
        "single": {"sent": single.sent, "acked": single.acked, "results": single.results,
                   "ack_ms": list(single.ack_ms), "e2e_ms": list(single.e2e_ms)},
        "multi": {"sent": multi.sent, "acked": multi.acked, "results": multi.results,
                  "ack_ms": list(multi.ack_ms), "e2e_ms": list(multi.e2e_ms)},
    }
    return MultinodeBenchResult(tuple(rows), details)
