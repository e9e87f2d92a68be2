"""Per-process memory of a deployment, read from /proc (the bench's memory rows)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lasan.benchmarks.memory import MemorySampler, deployment_processes, model_of_stub, read_memory

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux /proc")


def test_stub_command_line_names_its_model():
    cmd = "/x/triton_python_backend_stub /repo/encoder/1/model.py triton_python_backend_shm_region_1 1048576 1 /x/backends"
    assert model_of_stub(cmd) == "encoder"
    assert model_of_stub("/usr/bin/sleep 5") is None


def test_children_are_found_and_their_memory_grows_with_what_they_hold():
    # A child that holds 64 MiB resident stands in for a stub that loaded a model.
    code = "import sys, time; b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        processes = deployment_processes(os.getpid())
        assert processes[os.getpid()] == "tritonserver"
        assert processes[child.pid].split("#")[0] == "child"  # "child#2" when the session has started other children
        with MemorySampler({child.pid: "child"}, interval_s=0.05) as sampler:
            time.sleep(0.3)
        (memory,) = read_memory({child.pid: "child"})
        assert memory.rss_mib > 60 and 0 < memory.pss_mib <= memory.rss_mib + 1
        assert sampler.peak[child.pid].rss_mib > 60 and sampler.peak_total_pss_mib > 60
    finally:
        child.kill()
        child.wait()
    assert read_memory({child.pid: "child"}) == []  # a process that ended is left out, not an error
