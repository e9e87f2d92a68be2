"""Soak the feed path: a long HL7 stream through ``lasan listen`` under faults; count what got lost.

    .venv/bin/python scripts/soak.py                                 # 10,000 messages, 100 listener SIGKILLs,
                                                                     # 10 Triton kills, 3 downstream outages
    .venv/bin/python scripts/soak.py --messages 600 --kills 10 --triton-kills 2 --downstream-outages 1   # smoke

Everything is real and on loopback: a Triton server (a tiny seeded LASAN unless ``--checkpoint``),
``lasan listen`` as its own process, a downstream MLLP system that records every result
(tests/integration/feedkit.py), and a sender that behaves like a hospital interface engine:
one message at a time, random pauses, a resend of the un-ACKed message after any connection
failure, and a later resend of a message answered AE (so every message is eventually ACKed AA).

Faults, spread at random over the stream (``--seed``):

- the listener SIGKILLed ``--kills`` times (sometimes mid-message) and restarted on the same queue;
- Triton's process group SIGKILLed ``--triton-kills`` times, restarted a few seconds later;
- the downstream system gone (connection refused) ``--downstream-outages`` times for ``--outage-s``;
- with root (a loop-mounted ext4 image holds the queue): a read-only and a full file system at start
  (``lasan listen`` must refuse to start, or answer AE, never AA) and mid-stream (AE, never AA).

The contract: every AA has exactly one distinct result downstream (lost = 0, duplicated = 0;
a result re-delivered after a kill is the same message again and counted apart). The figures
go to stdout and to a generated Markdown file (``--docs``, default docs/reliability-soak.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

from feedkit import Downstream, ListenerProcess, free_port, msh10, obx_values, oru, small_ecg  # noqa: E402

from lasan.hl7.ack import parse_ack  # noqa: E402
from lasan.integration.mllp import MLLPDecoder, frame  # noqa: E402


@dataclass
class Tally:
    sent: int = 0  # distinct messages
    attempts: int = 0  # frames written, resends included
    aa: set[str] = field(default_factory=set)
    not_aa: int = 0  # AE / AR answers (each resent later)
    not_aa_during_faults: int = 0
    aa_during_faults: list[str] = field(default_factory=list)  # AA while the queue's file system was full / read-only
    kills: int = 0
    triton_kills: int = 0
    outages: int = 0
    start_checks: dict[str, str] = field(default_factory=dict)


class Sender:
    """One persistent MLLP connection; reconnects (waiting for a restarted listener) on any failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None

    def send(self, message: bytes, timeout: float = 60.0) -> str:
        """The ACK code for ``message``; raises OSError / TimeoutError on a connection failure."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(frame(message))
            decoder = MLLPDecoder()
            while True:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionResetError("listener closed the connection")
                blocks = decoder.feed(data)
                if blocks:
                    return parse_ack(blocks[0].decode("latin-1")).code
        except BaseException:
            self.close()
            raise


class FaultFS:
    """The queue's file system: a loop-mounted ext4 image (root only), made full or read-only on demand.

    ext4 with ``errors=remount-ro`` is what a failing disk does to a running service: the kernel
    forces the file system read-only under open files (``trigger_fs_error``), which a plain
    ``mount -o remount,ro`` refuses while the queue has files open for writing. Afterwards an
    operator would unmount, fsck and mount it again: :meth:`repair` does that.
    """

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path, self.image = path, path.with_suffix(".img")
        path.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, capture_output=True)
        self._mount()
        self.filler = path / "filler.bin"

    def _mount(self) -> None:
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path)], check=True,
                       capture_output=True)
        os.chmod(self.path, 0o700)

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and all(
            subprocess.run(["which", tool], capture_output=True).returncode == 0 for tool in ("mount", "mkfs.ext4"))

    def _device(self) -> str:
        found = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.path)], capture_output=True, text=True)
        return Path(found.stdout.strip()).name

    def read_only(self, on: bool) -> None:
        """At start (nothing open): a plain remount. Mid-stream, use :meth:`fail` instead."""
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(self.path)], check=True,
                       capture_output=True)

    def fail(self) -> None:
        """Force the file system read-only under the running listener, as a disk error does."""
        Path(f"/sys/fs/ext4/{self._device()}/trigger_fs_error").write_text("soak: simulated disk error\n")

    def repair(self) -> None:
        """Unmount, fsck and mount again (the listener must be stopped: its files are open there)."""
        subprocess.run(["umount", str(self.path)], check=True, capture_output=True)
        subprocess.run(["e2fsck", "-f", "-y", str(self.image)], capture_output=True)
        self._mount()

    def fill(self) -> None:
        free = shutil.disk_usage(self.path).free
        with open(self.filler, "ab") as f, contextlib.suppress(OSError):
            os.posix_fallocate(f.fileno(), 0, max(0, free - (4 << 20)))  # most of it without writing zeros
        for block in (1 << 20, 4096):  # then the last bytes
            with open(self.filler, "ab", buffering=0) as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        self.image.unlink(missing_ok=True)


def _kill_triton(server) -> bool:  # type: ignore[no-untyped-def]
    if not server.running():
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # tritonserver and its python-backend stubs
    server._process.wait(30)
    server._process = None
    return True


def _check_port_reusable(host: str, port: int, what: str) -> None:
    """lasan.build.serve.check_port, except that a port whose old connections are in TIME_WAIT
    after the kill counts as free (Triton binds with SO_REUSEADDR); a live listener still fails it."""
    from lasan.errors import ServerError

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError as exc:
            raise ServerError(f"the {what} port {port} on {host} is in use ({exc.strerror})") from exc


def _start_triton(server, patience_s: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    """Start Triton again on the same ports (the listener's configuration names them)."""
    import lasan.build.serve as serve
    from lasan.errors import ServerError

    # Without this, a restart waits out TIME_WAIT (60 s) after every kill.
    serve.check_port = _check_port_reusable  # type: ignore[assignment]
    deadline = time.monotonic() + patience_s
    while True:
        try:
            server.start()
            return
        except ServerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _build_repository(work: Path, checkpoint: str | None) -> Path:
    from lasan.build.repository import write_repository

    repo = work / "model_repository"
    if (repo / "lasan" / "config.pbtxt").is_file():
        return repo
    if checkpoint is None:
        from testkit import make_tiny_checkpoint

        checkpoint = str(make_tiny_checkpoint(work / "tiny_lasan.pt", "lasan"))
    return write_repository(Path(checkpoint), repo, "cpu", max_batch_size=8).path


def _start_checks(tally: Tally, fs: FaultFS, config: dict, work: Path) -> None:
    """Read-only and full queue file system at start: refuse to start, or start and never AA."""
    for name, make, undo in (("read-only queue at start", lambda: fs.read_only(True), lambda: fs.read_only(False)),
                             ("full disk at start", fs.fill, fs.unfill)):
        make()
        folder = work / name.replace(" ", "-")
        folder.mkdir(exist_ok=True)
        lp = ListenerProcess(config, folder)
        try:
            lp.start(timeout=30)
        except AssertionError as exc:
            said = str(exc).splitlines()
            reason = next((line for line in said if "error" in line), said[0])
            tally.start_checks[name] = f"refused to start ({reason.strip()[:200]})"
            undo()
            continue
        try:  # it started: then it must not answer AA
            code = Sender(lp.hl7_port).send(oru(small_ecg(seed=0, fs=100.0), f"START-{len(tally.start_checks)}"))
            tally.start_checks[name] = f"started, answered {code}" + ("" if code != "AA" else " (VIOLATION)")
        except OSError as exc:
            tally.start_checks[name] = f"started, closed the connection ({type(exc).__name__})"
        finally:
            lp.kill()
            undo()


def run(args: argparse.Namespace) -> tuple[Tally, dict[str, int], float]:
    from lasan.build.serve import TritonServer

    rng = random.Random(args.seed)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    repo = _build_repository(work, args.checkpoint)
    fs = FaultFS(work / "queuefs", args.queue_fs_mb) if (args.disk_faults and FaultFS.available()) else None
    var = (fs.path if fs else work) / "var"
    tally = Tally()
    ports = [free_port() for _ in range(3)]
    triton = TritonServer(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                          work_dir=work / "triton", startup_timeout=300)
    downstreams = [Downstream(port=free_port())]
    down_port = downstreams[0].port
    config = {
        "listener": {"port": free_port(), "message_timeout_s": 20, "idle_timeout_s": 120},
        "triton": {"url": triton.grpc_url, "timeout_s": 10},
        "downstream": {"host": "127.0.0.1", "port": down_port, "timeout_s": 5},
        "storage": {"queue_db": str(var / "queue.sqlite"), "outbox": str(var / "outbox")},
        "retry": {"initial_s": 0.2, "max_s": 2.0},
        "metrics": {"enabled": False},
        "dicom": {"min_free_disk_mb": 0},
        "logging": {"format": "kv", "level": "WARNING"},
    }
    started = time.monotonic()
    lp = None
    try:
        triton.start()
        if fs is not None:
            _start_checks(tally, fs, config, work)
        lp = ListenerProcess(config, work).start()
        sender = Sender(lp.hl7_port)
        m = args.messages
        kill_at = set(rng.sample(range(1, m), min(args.kills, m - 1)))
        triton_at = sorted(rng.sample(range(1, m), min(args.triton_kills, m - 1)))
        outage_at = sorted(rng.sample(range(1, m), min(args.downstream_outages, m - 1)))
        disk_full_at = rng.randrange(m // 3, m // 2) if fs else -1
        read_only_at = rng.randrange(m // 2, 2 * m // 3) if fs else -1
        records = [small_ecg(seed=s, fs=100.0) for s in range(8)]
        retry_later: list[tuple[str, bytes]] = []
        fault_until = 0  # messages up to this index are sent while the queue's disk misbehaves
        read_only_until = -1
        outage = threading.Event()

        triton_restart_at = -1  # restarted by this (main) thread: Triton is started with PR_SET_PDEATHSIG,
        # so a helper thread that started it would take it down again when the thread ends.

        def deliver(cid: str, message: bytes, during_fault: bool) -> str:
            """Send until the listener answers (restarting it if it is gone); the ACK code."""
            while True:
                tally.attempts += 1
                try:
                    code = sender.send(message)
                except OSError:
                    if lp is not None and not lp.alive():
                        lp.start()
                    time.sleep(0.05)
                    continue
                if code == "AA":
                    tally.aa.add(cid)
                    if during_fault:
                        tally.aa_during_faults.append(cid)
                else:
                    tally.not_aa += 1
                    tally.not_aa_during_faults += during_fault
                return code

        for i in range(m):
            cid = f"SOAK{i:06d}"
            message = oru(records[i % len(records)], cid)
            tally.sent += 1
            if i in kill_at:
                tally.kills += 1
                # Sometimes mid-message (a Timer fires while this message is in flight), sometimes between.
                threading.Timer(rng.uniform(0.0, 0.02), lp.kill).start() if rng.random() < 0.5 else lp.kill()
            if i == triton_restart_at:
                _start_triton(triton)  # the stream pauses while it loads; what came meanwhile is queued
                triton_restart_at = -1
            # A kill due while Triton is still down from the last one waits for the restart.
            if triton_at and i >= triton_at[0] and triton_restart_at < 0:
                triton_at.pop(0)
                tally.triton_kills += _kill_triton(triton)
                triton_restart_at = i + rng.randint(5, 40)  # down for that many messages
            if outage_at and i >= outage_at[0] and not outage.is_set():
                outage_at.pop(0)
                tally.outages += 1
                outage.set()
                downstreams[-1].close()  # connection refused from now on

                def back() -> None:
                    downstreams.append(Downstream(port=down_port))
                    outage.clear()

                threading.Timer(args.outage_s, back).start()
            if i == disk_full_at and fs is not None:
                fs.fill()
                fault_until = i + 5
                tally.start_checks["full disk mid-stream"] = "queue file system filled for 5 messages"
            if i == read_only_at and fs is not None:
                fs.fail()
                read_only_until = i + 5
                fault_until = i + 5
                tally.start_checks["read-only queue mid-stream"] = (
                    "ext4 forced read-only (disk error) for 5 messages, then listener stopped, fsck, restarted")
            code = deliver(cid, message, during_fault=i < fault_until)
            if code != "AA":
                retry_later.append((cid, message))
            if fs is not None and i == fault_until - 1:
                fs.unfill()
                if i == read_only_until - 1:
                    lp.kill()
                    fs.repair()
                    lp.start()
                fault_until = 0
            if not lp.alive():
                lp.start()
            if (i + 1) % 1000 == 0:
                print(f"{i + 1} messages sent, {len(tally.aa)} AA, {tally.kills} listener kills, "
                      f"{tally.triton_kills} Triton kills, {tally.outages} outages", flush=True)
            if rng.random() < args.pause_probability:
                time.sleep(rng.uniform(0, args.max_pause_s))
        for _ in range(20):  # messages answered AE: the sender tries again until AA
            pending, retry_later = retry_later, []
            for cid, message in pending:
                if deliver(cid, message, during_fault=False) != "AA":
                    retry_later.append((cid, message))
            if not retry_later:
                break
            time.sleep(1.0)
        if not triton.running():
            _start_triton(triton)
        # Drain: every AA'd message must reach the downstream system. The backlog can be long
        # (the stream outruns scoring on a small machine): wait while results keep arriving,
        # give up after --drain-s without a new one.
        seen, progress_at, said = 0, time.monotonic(), time.monotonic()
        while True:
            got = len(set(_results(downstreams)) & tally.aa)
            if got >= len(tally.aa):
                break
            if got != seen:
                seen, progress_at = got, time.monotonic()
            elif time.monotonic() - progress_at > args.drain_s:
                break
            if time.monotonic() - said > 30:
                print(f"draining: {got} of {len(tally.aa)} results downstream", flush=True)
                said = time.monotonic()
            time.sleep(1.0)
        results = _results(downstreams)
    finally:
        if lp is not None:
            lp.kill()
        with contextlib.suppress(Exception):
            triton.stop()
        for d in downstreams[-1:]:  # the earlier ones were closed by their outage
            with contextlib.suppress(Exception):
                d.close()
        if fs is not None:
            fs.close()
    return tally, {k: len(v) for k, v in results.items()} | {"__distinct__": _distinct(results)}, \
        time.monotonic() - started


def _results(downstreams: list[Downstream]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in downstreams:
        for text in list(d.received):
            out.setdefault(obx_values(text)["ORIG-MSH10"], []).append(msh10(text))
    return out


def _distinct(results: dict[str, list[str]]) -> int:
    return sum(1 for ids in results.values() if len(set(ids)) > 1)


def figures(tally: Tally, results: dict[str, int]) -> dict[str, int]:
    duplicated = results.pop("__distinct__")
    got = set(results)
    return {
        "messages sent": tally.sent,
        "frames written (resends included)": tally.attempts,
        "ACKed AA": len(tally.aa),
        "AE/AR answers (resent later)": tally.not_aa,
        "AE/AR while the queue's disk was full or read-only": tally.not_aa_during_faults,
        "AA while the queue's disk was full or read-only": len(tally.aa_during_faults),
        "results downstream (distinct messages)": len(got & tally.aa),
        "result deliveries in all (re-deliveries included)": sum(results.values()),
        "lost (AA without a result)": len(tally.aa - got),
        "duplicated (a message with two different results)": duplicated,
        "not ACKed AA in the end": tally.sent - len(tally.aa),
        "listener SIGKILLs survived": tally.kills,
        "Triton kills survived": tally.triton_kills,
        "downstream outages survived": tally.outages,
    }


def render(args: argparse.Namespace, fig: dict[str, int], tally: Tally, wall: float, command: str) -> str:
    ok = fig["lost (AA without a result)"] == 0 and fig["duplicated (a message with two different results)"] == 0
    lines = [
        "# Soak figures (generated)",
        "",
        f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"({platform.machine()}, {os.cpu_count()} CPUs), {wall / 60:.1f} min wall. Do not edit by hand: run it again.",
        "",
        f"Contract {'held' if ok else '**BROKEN**'}: every AA has exactly one distinct result downstream.",
        "",
        "| figure | value |",
        "|---|---:|",
        *[f"| {k} | {v:,} |" for k, v in fig.items()],
        "",
        "Disk faults (queue on a loop-mounted ext4 image):" if tally.start_checks else
        "Disk faults not run (needs root to mount a loop-mounted ext4 image for the queue).",
        "",
        *[f"- {k}: {v}" for k, v in tally.start_checks.items()],
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--kills", type=int, default=100, help="listener SIGKILLs")
    p.add_argument("--triton-kills", type=int, default=10)
    p.add_argument("--downstream-outages", type=int, default=3)
    p.add_argument("--outage-s", type=float, default=10.0, help="how long each downstream outage lasts")
    p.add_argument("--pause-probability", type=float, default=0.05)
    p.add_argument("--max-pause-s", type=float, default=0.5)
    p.add_argument("--drain-s", type=float, default=180.0,
                   help="after the stream, give up when no new result arrived for this long")
    p.add_argument("--no-disk-faults", dest="disk_faults", action="store_false")
    p.add_argument("--queue-fs-mb", type=int, default=1024, help="size of the queue's ext4 image (disk faults)")
    p.add_argument("--checkpoint", help="serve this checkpoint (default: a tiny seeded LASAN)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=ROOT / "work" / "soak")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "reliability-soak.md")
    args = p.parse_args(argv)
    command = " ".join(["scripts/soak.py", *(argv if argv is not None else sys.argv[1:])])
    tally, results, wall = run(args)
    fig = figures(tally, results)
    for k, v in fig.items():
        print(f"{k:<55} {v:>8}")
    for k, v in tally.start_checks.items():
        print(f"{k}: {v}")
    args.docs.write_text(render(args, fig, tally, wall, command), encoding="utf-8")
    print(f"wrote {args.docs}")
    broken = fig["lost (AA without a result)"] or fig["duplicated (a message with two different results)"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
