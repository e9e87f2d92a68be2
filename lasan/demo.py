"""``lasan demo``: the whole product on one machine, with the commands a user would run.

1. ``lasan train --config configs/demo.yaml`` (synthesises the cohort first if needed)
2. ``lasan evaluate`` on the held-out test patients (report with baselines and lead masking)
3. ``lasan build --profile cpu`` (the Triton model repository)
4. start the embedded Triton server on free ports
5. ``lasan score`` pydicom's real Mortara ECG and one synthetic test ECG per class through
   the ``lasan`` ensemble, with a 12-lead report PDF
6. stop the server

Steps whose output already exists are reused (``--fresh`` redoes them), so a second
``make demo`` goes straight to serving and scoring.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from .errors import LasanError

__all__ = ["configure", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", default="work", help="folder for the cohort, runs, repository and reports")
    parser.add_argument("--config", default="configs/demo.yaml", help="training config (default: the demo's)")
    parser.add_argument("--fresh", action="store_true", help="retrain, re-evaluate and rebuild even if outputs exist")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the report's CIs")


def _step(title: str, argv: list[str]) -> None:
    from .cli import main as lasan_main

    print(f"\n=== {title}\n$ lasan {' '.join(argv)}", flush=True)
    started = time.monotonic()
    code = lasan_main(argv)
    if code != 0:
        raise LasanError(f"step '{title}' failed (lasan {argv[0]} exited with {code})")
    print(f"--- {title}: {time.monotonic() - started:.0f} s", flush=True)


def _demo_ecgs(manifest: Path, checkpoint: Path) -> dict[str, str]:
    """pydicom's real Mortara ECG plus one test-split ECG per class (never seen in training),
    each with what is known about it."""
    from pydicom.data import get_testdata_file

    from .checkpoint import load_checkpoint
    from .train.manifest import read_manifest
    from .train.split import patient_split

    ckpt = load_checkpoint(checkpoint)
    seed = int(ckpt.info.data_summary.get("split_seed", 0))
    test = patient_split(read_manifest(manifest), seed=seed).test
    files = {str(get_testdata_file("waveform_ecg.dcm")): "real ECG (pydicom sample, Mortara, 1000 Hz); label unknown"}
    seen: set[str] = set()
    for row in test:
        if row.label not in seen:
            seen.add(row.label)
            files[str(row.path)] = f"synthetic test-split ECG, true label {row.label} ({row.format or 'file'})"
    return files


def run(args: argparse.Namespace) -> int:
    from .build.serve import TritonServer, free_port
    from .train.train_config import load_train_config

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_train_config(args.config)
    # Keep every output of the demo under --work, whatever the config says.
    synth = {**(cfg.data.synth or {}), "out": str(work / "cohort")}
    cfg = replace(cfg, output=str(work / "runs" / "demo"), data=replace(cfg.data, synth=synth, cache_dir=str(work / "cache")))
    checkpoint = Path(cfg.output) / "checkpoint.pt"
    manifest = work / "cohort" / "manifest.csv"
    report_dir = work / "report"
    repo = work / "model_repository"

    if args.fresh or not checkpoint.is_file():
        from .train.cli import train_from_config

        print(f"\n=== train (config {args.config}, output {cfg.output})", flush=True)
        started = time.monotonic()
        train_from_config(cfg)
        print(f"--- train: {time.monotonic() - started:.0f} s", flush=True)
    else:
        print(f"\n=== train: reusing {checkpoint} (--fresh retrains)")
    if args.fresh or not (report_dir / "report.md").is_file():
        _step(
            "evaluate on held-out test patients",
            ["evaluate", str(checkpoint), "--data", str(manifest), "--out", str(report_dir),
             "--bootstrap", str(args.bootstrap)],
        )
    else:
        print(f"\n=== evaluate: reusing {report_dir / 'report.md'}")
    _step("build the Triton model repository (cpu profile)",
          ["build", str(checkpoint), "--profile", "cpu", "--out", str(repo)])

    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    print(f"\n=== start Triton ({repo})", flush=True)
    with TritonServer(repo, log_file=work / "tritonserver.log", **ports) as server:
        print(f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
        files = _demo_ecgs(manifest, checkpoint)
        print("\nECGs to score:")
        for path, about in files.items():
            print(f"  {Path(path).name}: {about}")
        _step("score real and synthetic ECGs through the ensemble",
              ["score", "--url", server.grpc_url, "--no-progress", "--report", str(work / "demo_report.pdf"), *files])
    print("\nTriton stopped.")
    print(f"Evaluation report: {report_dir / 'report.md'}")
    print(f"12-lead reports:   {work / 'demo_report.pdf'}")
    print(f"Model repository:  {repo} (serve it again with: lasan serve --repo {repo})")
    return 0
