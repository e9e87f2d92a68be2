"""Triton rows: perf_analyzer over gRPC against the ``lasan`` ensemble and each composing model.

The input is a real ECG (pydicom's Mortara 12-lead, 10 s at 1000 Hz) for the ensemble;
each composing model gets the real tensor its predecessor produces for that ECG, fetched
from the running server, so every step is timed on the data it sees in production.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lasan.benchmarks.table import Row, not_run
from lasan.errors import ServerError
from lasan.tensor_names import (
    ENCODER_MODEL,
    ENSEMBLE_MODEL,
    FUSION_MODEL,
    INPUT_ECG,
    INPUT_SAMPLING_RATE,
    OUTPUTS_MODEL,
    PREPROCESS_MODEL,
)

__all__ = [
    "TritonBenchResult",
    "PerfResult",
    "run_triton_benchmark",
    "benchmark_checkpoint",
    "real_ecg",
    "perf_analyzer_command",
    "perf_analyzer_environment",
    "parse_perf_csv",
    "parse_composing",
    "ENSEMBLE_RATIO_TARGET",
]

log = logging.getLogger(__name__)

SECTION = "triton"
ENSEMBLE_RATIO_TARGET = 0.9  # ensemble throughput at concurrency 8 / in-process TorchScript best (issue 6)
CONCURRENCIES = (1, 4, 8, 16)
PART_CONCURRENCIES = (1, 8)
COMPOSING = (PREPROCESS_MODEL, ENCODER_MODEL, FUSION_MODEL, OUTPUTS_MODEL)


@dataclass(frozen=True)
class PerfResult:
    """One perf_analyzer measurement (latencies in ms)."""

    model: str
    concurrency: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    server_queue_ms: float | None = None
    server_compute_ms: float | None = None


@dataclass(frozen=True)
class TritonBenchResult:
    rows: tuple[Row, ...]
    details: dict[str, Any] = field(default_factory=dict)


def real_ecg() -> tuple[np.ndarray, float, str]:
    """A real 12-lead ECG in mV (canonical lead order), its rate, and where it came from."""
    import pydicom.data

    from lasan.formats.dicom import read_dicom

    path = pydicom.data.get_testdata_file("waveform_ecg.dcm")
    assert isinstance(path, str), "pydicom's test data is not installed"
    record = read_dicom(path)
    return np.ascontiguousarray(record.signal, dtype=np.float32), float(record.fs), "pydicom waveform_ecg.dcm (Mortara)"


def benchmark_checkpoint(work: Path, checkpoint: str | None) -> Path:
    """``checkpoint`` if given, else the paper architecture with random weights (speed does not depend on weights)."""
    if checkpoint:
        return Path(checkpoint)
    import torch

    from lasan.checkpoint import CheckpointInfo, save_checkpoint
    from lasan.models import LASANConfig, build_model

    path = work / "paper-architecture-random.pt"
    if not path.is_file():
        torch.manual_seed(0)
        info = CheckpointInfo(data_summary={"synthetic": True, "note": "random weights, for speed measurements only"})
        save_checkpoint(path, build_model(LASANConfig()).eval(), info)
    return path


def perf_analyzer_binary() -> Path:
    """The perf_analyzer that the tritonclient wheel installs beside this Python."""
    candidate = Path(sys.executable).parent / "perf_analyzer"
    if candidate.is_file():
        return candidate
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    raise ServerError("perf_analyzer is not installed; run `make install` (it comes with tritonclient[all] 2.51)")


def perf_analyzer_environment() -> dict[str, str]:
    """perf_analyzer links libcudart.so.12 even on CPU; the nvidia-cuda-runtime-cu12 wheel provides it."""
    import sysconfig

    env = dict(os.environ)
    lib = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cuda_runtime" / "lib"
    if lib.is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def perf_analyzer_command(
    model: str, url: str, input_data: Path, concurrency: int, csv_path: Path, window_ms: int
) -> list[str]:
    """The perf_analyzer command line for one model and concurrency (gRPC, batch 1, real input data)."""
    return [
        str(perf_analyzer_binary()),
        "-m", model,
        "-u", url,
        "-i", "grpc",
        "-b", "1",
        "--input-data", str(input_data),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(window_ms),
        # Stability is not required (max/min of the last 3 windows within 1000 %): on a shared
        # machine it rarely holds, and the result is then the mean of 3 full windows anyway.
        "--stability-percentage", "1000",
        "--max-trials", "4",
        "-f", str(csv_path),
    ]


def parse_perf_csv(path: Path, model: str) -> list[PerfResult]:
    """Rows of perf_analyzer's ``-f`` CSV (latencies there are microseconds)."""
    out = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            def us(key: str, rec: dict[str, str] = rec) -> float | None:
                value = rec.get(key)
                return float(value) / 1000.0 if value not in (None, "") else None

            queue = us("Server Queue")
            compute = [us(k) for k in ("Server Compute Input", "Server Compute Infer", "Server Compute Output")]
            out.append(PerfResult(
                model=model,
                concurrency=int(rec["Concurrency"]),
                throughput=float(rec["Inferences/Second"]),
                p50_ms=us("p50 latency") or 0.0,
                p95_ms=us("p95 latency") or 0.0,
                p99_ms=us("p99 latency") or 0.0,
                avg_ms=us("Avg latency") or 0.0,
                server_queue_ms=queue,
                server_compute_ms=sum(c for c in compute if c is not None) if any(c is not None for c in compute) else None,
            ))
    return out


_COMPOSING_RE = re.compile(
    r"^\s{2}(?P<name>[\w.-]+), version: \S+\s*$.*?Inference count: (?P<inferences>\d+).*?"
    r"Execution count: (?P<executions>\d+).*?Avg request latency: (?P<latency>\d+) usec"
    r"(?:.*?queue (?P<queue>\d+) usec)?(?:.*?compute infer (?P<infer>\d+) usec)?",
    re.MULTILINE | re.DOTALL,
)


def parse_composing(log_text: str) -> dict[str, dict[str, float]]:
    """Server-side time per composing model from perf_analyzer's ensemble report (ms, and mean batch size)."""
    _, _, tail = log_text.partition("Composing models:")
    tail = tail.split("Inferences/Second vs.", 1)[0]
    out: dict[str, dict[str, float]] = {}
    for m in _COMPOSING_RE.finditer(tail):
        executions = int(m["executions"]) or 1
        out[m["name"]] = {
            "avg_request_ms": int(m["latency"]) / 1000.0,
            "queue_ms": int(m["queue"]) / 1000.0 if m["queue"] else float("nan"),
            "compute_infer_ms": int(m["infer"]) / 1000.0 if m["infer"] else float("nan"),
            "mean_batch": int(m["inferences"]) / executions,
        }
    return out


def _input_file(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    """perf_analyzer's --input-data JSON: one request, each tensor flat with its shape (no batch dim)."""
    entry = {
        name: {"content": arr.reshape(-1).astype(np.float32).tolist(), "shape": list(arr.shape)}
        for name, arr in tensors.items()
    }
    path.write_text(json.dumps({"data": [entry]}))
    return path


def _chain_inputs(url: str, ecg: np.ndarray, fs: float) -> dict[str, dict[str, np.ndarray]]:
    """Each composing model's real inputs for this ECG, obtained by running the chain on the server."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        inputs: dict[str, dict[str, np.ndarray]] = {
            PREPROCESS_MODEL: {INPUT_ECG: ecg, INPUT_SAMPLING_RATE: np.array([fs], dtype=np.float32)}
        }
        for model, following in zip(COMPOSING, (*COMPOSING[1:], None), strict=True):
            meta = client.get_model_metadata(model)
            request = []
            for spec in meta.inputs:
                arr = inputs[model][spec.name][None].astype(np.float32)  # add the batch dimension
                tensor = grpcclient.InferInput(spec.name, list(arr.shape), spec.datatype)
                tensor.set_data_from_numpy(arr)
                request.append(tensor)
            result = client.infer(model, request)
            produced = {spec.name: result.as_numpy(spec.name)[0] for spec in meta.outputs}
            if following is None:
                break
            next_meta = client.get_model_metadata(following)
            # Composing models' input names are the predecessor's output names, or in the same order.
            names = [s.name for s in next_meta.inputs]
            if all(n in produced for n in names):
                inputs[following] = {n: produced[n] for n in names}
            else:
                inputs[following] = dict(zip(names, produced.values(), strict=False))
        return inputs
    finally:
        client.close()


def _run_perf(model: str, url: str, data: Path, concurrency: int, out: Path, window_ms: int) -> PerfResult:
    csv_path = out / f"perf-{model}-c{concurrency}.csv"
    cmd = perf_analyzer_command(model, url, data, concurrency, csv_path, window_ms)
    proc = subprocess.run(cmd, env=perf_analyzer_environment(), capture_output=True, text=True, timeout=300)
    (out / f"perf-{model}-c{concurrency}.log").write_text(proc.stdout + proc.stderr)
    if not csv_path.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise ServerError(f"perf_analyzer on {model} at concurrency {concurrency} failed: {' / '.join(tail)}")
    rows = parse_perf_csv(csv_path, model)
    if not rows:
        raise ServerError(f"perf_analyzer wrote no measurement for {model} at concurrency {concurrency}")
    return rows[0]


def _composing_from_log(out: Path, concurrency: int) -> dict[str, dict[str, float]]:
    try:
        return parse_composing((out / f"perf-{ENSEMBLE_MODEL}-c{concurrency}.log").read_text())
    except OSError:
        return {}


def _latency_row(label: str, r: PerfResult) -> Row:
    return Row(SECTION, f"{label} latency p50 (p95, p99)", r.p50_ms, "ms",
               note=f"p95 {r.p95_ms:.1f} ms, p99 {r.p99_ms:.1f} ms")


def _in_process_model(checkpoint: Path):
    """The checkpoint's model as in-process CPU-optimised TorchScript, and its input shape."""
    from lasan.benchmarks.model import optimised_torchscript
    from lasan.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.config.input
    return optimised_torchscript(ckpt.model.eval(), len(spec.leads), spec.n_samples), len(spec.leads), spec.n_samples


def run_triton_benchmark(
    work: Path,
    *,
    quick: bool = False,
    checkpoint: str | None = None,
    in_process_best: float | None = None,
    in_process_batch: int | None = None,
    concurrencies: Sequence[int] = CONCURRENCIES,
) -> TritonBenchResult:
    """Build a CPU repository, start Triton on free ports, and run perf_analyzer on the ensemble and its parts.

    Raises:
        ServerError: Triton did not start or perf_analyzer could not run.
    """
    from lasan.build.optimize import recommended_threads
    from lasan.build.repository import write_repository
    from lasan.build.serve import TritonServer, free_port

    work.mkdir(parents=True, exist_ok=True)
    out = work / "triton"
    out.mkdir(exist_ok=True)
    window_ms = 2000 if quick else 4000
    ckpt_path = benchmark_checkpoint(work, checkpoint)
    # One single-threaded instance per usable core: the python backend runs each part's
    # TorchScript with one torch thread, so two cores need two instances to be used.
    instances = recommended_threads()
    repo = write_repository(ckpt_path, work / "model_repository", "cpu", instances=instances, onnx=False).path
    ecg, fs, source = real_ecg()
    details: dict[str, Any] = {
        "checkpoint": str(ckpt_path), "repository": str(repo), "instances_per_model": instances,
        "input": {"source": source, "shape": list(ecg.shape), "fs": fs}, "window_ms": window_ms,
    }
    rows: list[Row] = []
    ports = [free_port() for _ in range(3)]
    server = TritonServer(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], work_dir=out / "server")
    results: dict[str, list[PerfResult]] = {}
    with server:
        chain = _chain_inputs(server.grpc_url, ecg, fs)
        data_files = {ENSEMBLE_MODEL: _input_file(out / "input-lasan.json", chain[PREPROCESS_MODEL])}
        for model in COMPOSING:
            data_files[model] = _input_file(out / f"input-{model}.json", chain[model])
        details["perf_analyzer_example"] = " ".join(
            perf_analyzer_command(ENSEMBLE_MODEL, server.grpc_url, data_files[ENSEMBLE_MODEL], 8,
                                  out / "perf-lasan-c8.csv", window_ms)
        )
        # The baseline is measured right before the concurrency-8 run (Triton idle meanwhile),
        # so that both sides of the ratio see the same neighbours on a shared machine.
        from lasan.benchmarks.model import _throughput

        scripted, n_leads, n_samples = _in_process_model(ckpt_path)
        baseline_batch = in_process_batch or 8
        for c in concurrencies:
            if c == 8:
                adjacent = _throughput(scripted, baseline_batch, n_leads, n_samples, 5, budget_s=6.0)
                details["in_process_adjacent"] = {"batch": baseline_batch, "ecg_per_s": adjacent}
            try:
                results.setdefault(ENSEMBLE_MODEL, []).append(
                    _run_perf(ENSEMBLE_MODEL, server.grpc_url, data_files[ENSEMBLE_MODEL], c, out, window_ms)
                )
            except (ServerError, subprocess.TimeoutExpired) as exc:
                target = f">= {ENSEMBLE_RATIO_TARGET} x in-process TorchScript" if c == 8 else ""
                rows.append(not_run(SECTION, f"ensemble '{ENSEMBLE_MODEL}' at concurrency {c}", str(exc), target=target))
        for model in COMPOSING:
            for c in PART_CONCURRENCIES:
                try:
                    results.setdefault(model, []).append(
                        _run_perf(model, server.grpc_url, data_files[model], c, out, window_ms)
                    )
                except (ServerError, subprocess.TimeoutExpired) as exc:
                    rows.append(not_run(SECTION, f"{model} at concurrency {c}", str(exc)))
    details["perf"] = {m: [r.__dict__ for r in rs] for m, rs in results.items()}

    adjacent = details.get("in_process_adjacent", {}).get("ecg_per_s")
    for r in results.get(ENSEMBLE_MODEL, []):
        label = f"ensemble '{ENSEMBLE_MODEL}', concurrency {r.concurrency}"
        if r.concurrency == 8 and adjacent:
            ratio = r.throughput / adjacent
            met = ratio >= ENSEMBLE_RATIO_TARGET
            notes = [] if met else ["see docs/performance.md"]
            if in_process_best:
                notes.append(f"model section's best: {in_process_best:.1f} ECG/s")
            rows.append(Row(
                SECTION, f"{label}: throughput", r.throughput, "ECG/s",
                baseline=f"in-process TorchScript {adjacent:.1f} ECG/s (batch {baseline_batch}, measured just before)",
                ratio=ratio, target=f">= {ENSEMBLE_RATIO_TARGET}", met=met,
                note="; ".join(notes),
            ))
        else:
            rows.append(Row(SECTION, f"{label}: throughput", r.throughput, "ECG/s"))
        rows.append(_latency_row(label, r))
    inside = _composing_from_log(out, 8)
    details["ensemble_c8_composing"] = inside
    if inside:
        total = sum(v["avg_request_ms"] for v in inside.values()) or 1.0
        for model in COMPOSING:
            v = inside.get(model)
            if v is None:
                rows.append(not_run(SECTION, f"inside the ensemble at concurrency 8: '{model}'",
                                    "perf_analyzer reported no server statistics for it"))
                continue
            rows.append(Row(SECTION, f"inside the ensemble at concurrency 8: '{model}' server time per request",
                            v["avg_request_ms"], "ms",
                            note=f"{v['avg_request_ms'] / total:.0%} of the ensemble's server time; queue "
                                 f"{v['queue_ms']:.1f} ms, mean dynamic batch {v['mean_batch']:.1f}"))
    ensemble_c1 = next((r for r in results.get(ENSEMBLE_MODEL, []) if r.concurrency == 1), None)
    for model in COMPOSING:
        for r in results.get(model, []):
            label = f"part '{model}', concurrency {r.concurrency}"
            share = ""
            if r.concurrency == 1 and ensemble_c1 and ensemble_c1.p50_ms:
                share = f"{r.p50_ms / ensemble_c1.p50_ms:.0%} of the ensemble's p50 at concurrency 1"
            rows.append(Row(SECTION, f"{label}: throughput", r.throughput, "inferences/s"))
            rows.append(Row(SECTION, f"{label} latency p50 (p95, p99)", r.p50_ms, "ms",
                            note=f"p95 {r.p95_ms:.1f} ms, p99 {r.p99_ms:.1f} ms" + (f"; {share}" if share else "")))
    return TritonBenchResult(tuple(rows), details)
