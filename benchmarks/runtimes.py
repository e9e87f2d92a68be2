"""Runtime rows: each cpu runtime and precision against fp32 TorchScript, measured in one run.

For every (runtime, precision) of :data:`VARIANTS`, on the paper architecture (random
weights: speed does not depend on them):

* the encoder in process, as the python-backend adapter runs it (one thread, batch 8 and 1),
  against fp32 TorchScript = 1.0;
* the whole served ensemble at concurrency 8 (perf_analyzer, a real Triton per variant,
  one single-threaded instance per core as in the Triton section), against fp32 TorchScript;
* the deployment's resident memory (tritonserver and every stub) idle and at the peak of the
  concurrency-8 run, and the model files' sizes;
* the hybrid (builtin encoder, paper width) for fp32 TorchScript, fp32 ONNX Runtime and the
  best lower precision: throughput and memory.

Accuracy cannot be judged on random weights, so the lower-precision speed builds skip the
gate (their metadata says so). The AUROC rows come from a trained checkpoint instead (the
demo's, or ``--checkpoint`` with ``--data``): each variant is built from it and run on its
validation split against the fp32 checkpoint, exactly as ``lasan build`` gates it.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lasan.benchmarks.memory import MemorySampler, deployment_processes, read_memory
from lasan.benchmarks.table import Row, not_run
from lasan.errors import LasanError, ServerError

__all__ = ["VARIANTS", "RuntimeBenchResult", "run_runtime_benchmark", "variant_label", "SERVED_RATIO_TARGET"]

log = logging.getLogger(__name__)

SECTION = "runtimes"
VARIANTS: tuple[tuple[str, str], ...] = (
    ("torchscript", "fp32"),
    ("onnxruntime", "fp32"),
    ("torch-export", "fp32"),
    ("torchscript", "bf16"),
    ("torch-export", "bf16"),
    ("onnxruntime", "int8"),
)
BASELINE = ("torchscript", "fp32")
SERVED_RATIO_TARGET = 2.0  # served ensemble at concurrency 8, best variant / fp32 TorchScript (issue 13)
AUROC_DROP_TARGET = 0.005
MEMORY_TARGET_MIB = 500.0  # whole deployment, paper-width LASAN, best runtime
DEMO_CHECKPOINT = Path("work/runs/demo/checkpoint.pt")
DEMO_MANIFEST = Path("work/cohort/manifest.csv")


@dataclass(frozen=True)
class RuntimeBenchResult:
    rows: tuple[Row, ...]
    details: dict[str, Any] = field(default_factory=dict)


def variant_label(variant: tuple[str, str]) -> str:
    return f"{variant[0]} {variant[1]}"


def _synthetic_inputs(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 8, 2500)`` model inputs from synthetic 12-lead ECGs (int8 calibration for random weights)."""
    from lasan.formats.sample import sample_ecg
    from lasan.preprocessing import preprocess

    return np.stack([preprocess(sample_ecg(500.0, 10.0, seed=seed + i, heart_rate_bpm=55 + 3 * i)) for i in range(n)])


def _build(ckpt: Path, out: Path, variant: tuple[str, str], instances: int, data: Any, gate: bool) -> Path:
    from lasan.build.repository import write_repository

    runtime, precision = variant
    return write_repository(
        ckpt, out, "cpu", instances=instances, onnx=False, runtime=runtime, precision=precision,
        precision_data=data if precision != "fp32" else None, accuracy_gate=gate,
    ).path


def _artefact(repo: Path, model: str, runtime: str) -> Path:
    from lasan.build.spec import RUNTIME_ARTEFACTS

    return repo / model / "1" / RUNTIME_ARTEFACTS[runtime]


def _rate(fn: Callable[[np.ndarray], object], x: np.ndarray, budget_s: float) -> float:
    fn(x)
    fn(x)  # TorchScript's profiling executor specialises on its first calls
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget_s and len(times) < 15):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return len(x) / statistics.median(times)


def _in_process(repos: dict[tuple[str, str], Path], quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Encoder ECG/s in this process with one thread (what each adapter instance does)."""
    import torch

    from lasan.build.runtimes import load_part

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    rates: dict[tuple[str, str], dict[int, float]] = {}
    try:
        for variant, repo in repos.items():
            encoder = load_part(_artefact(repo, "encoder", variant[0]), threads=1)
            rates[variant] = {
                b: _rate(encoder, _synthetic_inputs(b, seed=100), 1.5 if quick else 4.0) for b in (8, 1)
            }
    finally:
        torch.set_num_threads(previous)
    rows = []
    base = rates.get(BASELINE)
    for variant, by_batch in rates.items():
        for b, rate in by_batch.items():
            ratio = rate / base[b] if base else None
            rows.append(Row(SECTION, f"encoder in process, {variant_label(variant)}, 1 thread, batch {b}", rate,
                            "ECG/s", baseline=f"torchscript fp32 {base[b]:.1f} ECG/s" if base else "", ratio=ratio))
    return rows, {variant_label(v): r for v, r in rates.items()}


def _sizes(repo: Path, runtime: str) -> float:
    return sum(_artefact(repo, m, runtime).stat().st_size for m in ("encoder", "fusion")) / 2**20


def _serve_and_measure(repo: Path, out: Path, window_ms: int) -> dict[str, Any]:
    """Start Triton on ``repo``; memory idle; perf_analyzer at concurrency 8 with memory sampled; stop."""
    from lasan.benchmarks.triton import _input_file, _run_perf, real_ecg
    from lasan.build.serve import TritonServer, free_port
    from lasan.tensor_names import ENSEMBLE_MODEL, INPUT_ECG, INPUT_SAMPLING_RATE

    out.mkdir(parents=True, exist_ok=True)
    ecg, fs, _ = real_ecg()
    data = _input_file(out / "input-lasan.json", {INPUT_ECG: ecg, INPUT_SAMPLING_RATE: np.array([fs], np.float32)})
    ports = [free_port() for _ in range(3)]
    with TritonServer(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], work_dir=out / "server") as s:
        assert s.pid is not None
        processes = deployment_processes(s.pid)
        idle = read_memory(processes)
        with MemorySampler(processes) as sampler:
            perf = _run_perf(ENSEMBLE_MODEL, s.grpc_url, data, 8, out, window_ms)
    return {
        "throughput": perf.throughput, "p99_ms": perf.p99_ms,
        "idle": [p.__dict__ for p in idle], "idle_pss_mib": sum(p.pss_mib for p in idle),
        "idle_rss_mib": sum(p.rss_mib for p in idle),
        "load": [p.__dict__ for p in sampler.peak.values()], "load_pss_mib": sampler.peak_total_pss_mib,
        "load_rss_mib": sum(p.rss_mib for p in sampler.peak.values()),
    }


def _per_process(samples: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['name']} {p['rss_mib']:.0f}" for p in sorted(samples, key=lambda p: p["name"]))


def _served_rows(kind: str, served: dict[tuple[str, str], dict[str, Any]], sizes: dict[tuple[str, str], float]) -> list[Row]:
    rows = []
    base = served.get(BASELINE)
    for variant, m in served.items():
        label = f"{kind} served ensemble at concurrency 8, {variant_label(variant)}"
        ratio = m["throughput"] / base["throughput"] if base else None
        rows.append(Row(SECTION, label, m["throughput"], "ECG/s", note=f"p99 {m['p99_ms']:.0f} ms",
                        baseline=f"torchscript fp32 {base['throughput']:.1f} ECG/s" if base else "", ratio=ratio))
        rows.append(Row(SECTION, f"{kind} deployment memory idle, {variant_label(variant)} (sum of PSS)",
                        m["idle_pss_mib"], "MiB",
                        note=f"RSS per process (MiB): {_per_process(m['idle'])}; RSS sum {m['idle_rss_mib']:.0f}"))
        rows.append(Row(SECTION, f"{kind} deployment memory under load (concurrency 8), {variant_label(variant)} "
                        "(peak sum of PSS)", m["load_pss_mib"], "MiB",
                        note=f"peak RSS per process (MiB): {_per_process(m['load'])}; RSS sum {m['load_rss_mib']:.0f}"))
        if variant in sizes:
            rows.append(Row(SECTION, f"{kind} model files (encoder + fusion), {variant_label(variant)}",
                            sizes[variant], "MiB"))
    return rows


def _auroc_rows(checkpoint: Path | None, manifest: Path | None, work: Path, cache: Path | None) -> tuple[list[Row], dict[str, Any]]:
    """Each variant built from a trained checkpoint, against fp32 eager on its validation split."""
    import torch

    from lasan.build.precision import compare_precision, load_precision_data
    from lasan.build.runtimes import load_part
    from lasan.checkpoint import load_checkpoint

    if checkpoint is None or manifest is None or not checkpoint.is_file() or not manifest.is_file():
        return [not_run(SECTION, "AUROC delta per runtime/precision", "no trained checkpoint and manifest "
                        f"(run `make demo`, or pass --checkpoint and --data); looked for {DEMO_CHECKPOINT}",
                        target=f"<= {AUROC_DROP_TARGET} per class")], {}
    ckpt = load_checkpoint(checkpoint)
    data = load_precision_data(manifest, ckpt, cache)
    served = ckpt.served_model().eval()
    with torch.inference_mode():
        fp32 = np.concatenate([served(torch.from_numpy(data.validation[i : i + 32]))[0].numpy()
                               for i in range(0, len(data.validation), 32)])
    rows: list[Row] = []
    details: dict[str, Any] = {"checkpoint": str(checkpoint), "data": data.source}
    for variant in VARIANTS:
        repo = _build(checkpoint, work / "auroc" / variant_label(variant).replace(" ", "-"), variant, 1, data, False)
        enc, fus = (load_part(_artefact(repo, m, variant[0])) for m in ("encoder", "fusion"))
        probs = np.concatenate([fus(*enc(data.validation[i : i + 16]))[0] for i in range(0, len(data.validation), 16)])
        result = compare_precision(fp32, probs, data.labels, ckpt.config.classes, variant[1])
        worst = max(result.auroc_drop.values())
        details[variant_label(variant)] = result.to_dict()
        rows.append(Row(
            SECTION, f"AUROC drop vs fp32 checkpoint, {variant_label(variant)} (worst class)", worst, "",
            target=f"<= {AUROC_DROP_TARGET}", met=worst <= AUROC_DROP_TARGET,
            note=f"largest probability change {result.max_probability_shift:.4f}; {result.n_validation} validation "
                 f"ECGs of {checkpoint.parent.name}; the build gate would "
                 + ("accept" if not result.problems() else "REFUSE") + " it",
        ))
    return rows, details


def _best(served: dict[tuple[str, str], dict[str, Any]], accurate: set[tuple[str, str]]) -> tuple[str, str] | None:
    candidates = [v for v in served if v in accurate]
    return max(candidates, key=lambda v: served[v]["throughput"]) if candidates else None


def run_runtime_benchmark(
    work: Path,
    *,
    quick: bool = False,
    trained_checkpoint: Path | None = DEMO_CHECKPOINT,
    manifest: Path | None = DEMO_MANIFEST,
    cache: Path | None = Path("work/cache"),
    variants: Sequence[tuple[str, str]] = VARIANTS,
) -> RuntimeBenchResult:
    """Build, time and serve each variant; rows with ratios to fp32 TorchScript and the issue's targets.

    Raises:
        ServerError: Triton did not start for the baseline.
    """
    from lasan.benchmarks.triton import benchmark_checkpoint
    from lasan.build.optimize import recommended_threads
    from lasan.build.precision import PrecisionData

    root = work / "runtimes"
    root.mkdir(parents=True, exist_ok=True)
    window_ms = 2000 if quick else 4000
    instances = recommended_threads()
    calib = _synthetic_inputs(16)
    speed_data = PrecisionData(calib, calib[:4], np.zeros(4, dtype=np.int64), "synthetic ECGs (speed build)")
    rows: list[Row] = []
    details: dict[str, Any] = {"instances_per_model": instances, "window_ms": window_ms, "build_s": {}}

    lasan_ckpt = benchmark_checkpoint(work, None)
    repos: dict[tuple[str, str], Path] = {}
    sizes: dict[tuple[str, str], float] = {}
    for variant in variants:
        t0 = time.monotonic()
        try:
            repos[variant] = _build(lasan_ckpt, root / "lasan" / variant_label(variant).replace(" ", "-"),
                                    variant, instances, speed_data, False)
            sizes[variant] = _sizes(repos[variant], variant[0])
        except LasanError as exc:
            rows.append(not_run(SECTION, f"build {variant_label(variant)}", str(exc)[:200]))
        details["build_s"][variant_label(variant)] = time.monotonic() - t0

    in_rows, details["encoder_in_process"] = _in_process(repos, quick)
    rows += in_rows

    served: dict[tuple[str, str], dict[str, Any]] = {}
    for variant, repo in repos.items():
        try:
            served[variant] = _serve_and_measure(repo, root / "serve" / variant_label(variant).replace(" ", "-"), window_ms)
        except (ServerError, subprocess.TimeoutExpired) as exc:
            rows.append(not_run(SECTION, f"served ensemble, {variant_label(variant)}", str(exc)[:200]))
    details["served"] = {variant_label(v): m for v, m in served.items()}
    rows += _served_rows("LASAN", served, sizes)

    try:
        auroc_rows, details["auroc"] = _auroc_rows(trained_checkpoint, manifest, root, cache)
    except LasanError as exc:
        auroc_rows = [not_run(SECTION, "AUROC delta per runtime/precision", str(exc)[:200])]
    rows += auroc_rows
    accurate = {v for v in variants if v[1] == "fp32"} | {
        v for v in variants if details.get("auroc", {}).get(variant_label(v), {}).get("passed")
    }
    best = _best(served, accurate)
    base = served.get(BASELINE)
    if best and base:
        ratio = served[best]["throughput"] / base["throughput"]
        rows.append(Row(SECTION, f"best served runtime within the AUROC limit: {variant_label(best)}, concurrency 8",
                        served[best]["throughput"], "ECG/s", baseline=f"torchscript fp32 {base['throughput']:.1f} ECG/s",
                        ratio=ratio, target=f">= {SERVED_RATIO_TARGET:g} x, AUROC within {AUROC_DROP_TARGET}",
                        met=ratio >= SERVED_RATIO_TARGET,
                        note="" if ratio >= SERVED_RATIO_TARGET else "see docs/performance.md (Runtimes)"))
        mem = served[best]["load_pss_mib"]
        rows.append(Row(SECTION, f"whole deployment under load, paper-width LASAN, {variant_label(best)}", mem, "MiB",
                        target=f"<= {MEMORY_TARGET_MIB:g} MiB", met=mem <= MEMORY_TARGET_MIB,
                        note="sum of PSS of tritonserver and every stub at the peak of the concurrency-8 run"))
    else:
        rows.append(not_run(SECTION, "best served runtime", "the fp32 TorchScript baseline or every variant failed",
                            target=f">= {SERVED_RATIO_TARGET:g} x"))
    details["best"] = variant_label(best) if best else None

    # The hybrid: the baseline, ONNX Runtime fp32 and the best LASAN variant, for throughput and memory.
    from lasan.checkpoint import CheckpointInfo, save_checkpoint
    from lasan.models import HybridConfig, build_model

    hybrid_ckpt = work / "paper-hybrid-random.pt"
    if not hybrid_ckpt.is_file():
        import torch

        torch.manual_seed(0)
        save_checkpoint(hybrid_ckpt, build_model(HybridConfig()).eval(),
                        CheckpointInfo(data_summary={"synthetic": True, "note": "random weights, speed only"}))
    hybrid_variants = list(dict.fromkeys([BASELINE, ("onnxruntime", "fp32"), *([best] if best else [])]))
    hybrid: dict[tuple[str, str], dict[str, Any]] = {}
    hybrid_sizes: dict[tuple[str, str], float] = {}
    for variant in hybrid_variants:
        try:
            repo = _build(hybrid_ckpt, root / "hybrid" / variant_label(variant).replace(" ", "-"), variant, instances,
                          speed_data, False)
            hybrid_sizes[variant] = _sizes(repo, variant[0])
            hybrid[variant] = _serve_and_measure(repo, root / "serve-hybrid" / variant_label(variant).replace(" ", "-"),
                                                 window_ms)
        except (LasanError, subprocess.TimeoutExpired) as exc:
            rows.append(not_run(SECTION, f"hybrid {variant_label(variant)}", str(exc)[:200]))
    details["hybrid"] = {variant_label(v): m for v, m in hybrid.items()}
    rows += _served_rows("hybrid", hybrid, hybrid_sizes)
    return RuntimeBenchResult(tuple(rows), details)
