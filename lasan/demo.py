"""``lasan demo``: the whole product on one machine, with the commands a user would run.

1. ``lasan train --config configs/demo.yaml`` (synthesises the cohort first if needed)
2. ``lasan evaluate`` on the held-out test patients (report with baselines, calibration,
   lead-importance faithfulness, neurokit2 normals, lead masking); its headline is printed
   in one line: test macro-AUROC and ECE before/after calibration
3. ``lasan build --profile cpu`` (the Triton model repository)
4. start the embedded Triton server on free ports
5. ``lasan score`` pydicom's real Mortara ECG and synthetic test-split ECGs drawn AT RANDOM
   (seeded, per class; never chosen for being right) through the ``lasan`` ensemble, with a
   12-lead report PDF; the table shows file names and, for synthetic ECGs, the true label
6. ``lasan targets``: the trustworthiness targets (issue 10) measured on the served ensemble (MET / MISSED)
7. stop the server

Steps whose output already exists are reused (``--fresh`` redoes them), so a second
``make demo`` goes straight to serving and scoring. ``--docs DIR`` copies the evaluation
report and the targets table there (``make report`` writes docs/report/ this way).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import LasanError

__all__ = ["configure", "run", "ShowcaseECG", "showcase_ecgs", "score_table", "headline"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", default="work", help="folder for the cohort, runs, repository and reports")
    parser.add_argument("--config", default="configs/demo.yaml", help="training config (default: the demo's)")
    parser.add_argument("--fresh", action="store_true", help="retrain, re-evaluate and rebuild even if outputs exist")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the report's CIs")
    parser.add_argument("--per-class", type=int, default=2, help="synthetic test ECGs drawn at random per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random showcase draw")
    parser.add_argument(
        "--normals", type=int, default=40, help="neurokit2 normal ECGs for evaluation and targets (1-2 s each)"
    )
    parser.add_argument("--fresh-patients", type=int, default=150, help="fresh patients for the targets' ECE check (about 320 ECGs: fewer make the ECE mostly sampling noise)")
    parser.add_argument("--targets", action=argparse.BooleanOptionalAction, default=True, help="run lasan targets")
    parser.add_argument("--docs", default=None, help="also copy the report and targets table into this folder")


def _step(title: str, argv: list[str], capture: io.StringIO | None = None) -> None:
    """Run ``lasan ARGV`` in process; with ``capture`` its stdout goes there instead of the terminal."""
    from .cli import main as lasan_main

    print(f"\n=== {title}\n$ lasan {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with contextlib.redirect_stdout(capture) if capture is not None else contextlib.nullcontext():
        code = lasan_main(argv)
    if code != 0:
        raise LasanError(f"step '{title}' failed (lasan {argv[0]} exited with {code})")
    print(f"--- {title}: {time.monotonic() - started:.0f} s", flush=True)


@dataclass(frozen=True)
class ShowcaseECG:
    """One ECG the demo scores: its file, what it is, and its true label when known."""

    path: str
    about: str
    true_label: str | None = None


def showcase_ecgs(manifest: Path, split_seed: int, per_class: int, seed: int) -> list[ShowcaseECG]:
    """pydicom's real Mortara ECG plus ``per_class`` test-split ECGs of each class drawn at random.

    The draw is seeded (the same ECGs on every run) and looks only at the true label, never at
    the model's output, so the table shows the model as it is, misclassifications included.
    """
    import numpy as np
    from pydicom.data import get_testdata_file

    from .train.manifest import read_manifest
    from .train.split import patient_split

    test = patient_split(read_manifest(manifest), seed=split_seed).test
    out = [
        ShowcaseECG(
            str(get_testdata_file("waveform_ecg.dcm")), "real ECG (pydicom sample, Mortara, 1000 Hz); label unknown"
        )
    ]
    rng = np.random.default_rng(seed)
    for label in sorted({row.label for row in test}):
        rows = [row for row in test if row.label == label]
        for i in rng.choice(len(rows), size=min(per_class, len(rows)), replace=False):
            row = rows[int(i)]
            out.append(ShowcaseECG(str(row.path), f"synthetic test-split ECG ({row.format or 'file'})", row.label))
    return out


def score_table(items: list[ShowcaseECG], scores: list[dict[str, Any]]) -> str:
    """The demo's score table from ``lasan score --json`` lines: file names, truth beside prediction."""
    by_file = {Path(s["file"]).name: s for s in scores}
    classes = list(next((s["probabilities"] for s in scores if "probabilities" in s), {}))
    header = ["file", "true", "predicted", "", *[f"P({c})" for c in classes], "screening+", "top leads"]
    rows = []
    for item in items:
        name = Path(item.path).name
        s = by_file.get(name, {})
        if "probabilities" not in s:
            rows.append(
                [name, item.true_label or "?", "error: " + str(s.get("error", "not scored")), ""]
                + [""] * len(classes)
                + ["", ""]
            )
            continue
        pred = s["predicted_class"]
        mark = "" if item.true_label is None else ("ok" if pred == item.true_label else "WRONG")
        lead_imp = sorted(s["lead_importance"].items(), key=lambda kv: -kv[1])[:3]
        rows.append(
            [name, item.true_label or "unknown", pred, mark]
            + [f"{s['probabilities'][c]:.3f}" for c in classes]
            + [
                ",".join(c for c, v in s["screening"].items() if v) or "-",
                " ".join(f"{k}({w:.2f})" for k, w in lead_imp),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [header, *rows]]
    known = [r for r, item in zip(rows, items, strict=True) if item.true_label is not None and r[3] in ("ok", "WRONG")]
    right = sum(r[3] == "ok" for r in known)
    lines.append(f"{right} of {len(known)} synthetic test ECGs (drawn at random, not picked) predicted correctly")
    return "\n".join(lines)


def headline(report_json: Path) -> str:
    """One line: the test split's macro-AUROC and ECE before/after calibration, from ``report.json``."""
    report = json.loads(report_json.read_text())
    auc = report["models"]["LASAN"]["metrics"]["macro_auroc"]
    line = f"test split ({report['data']['n_ecgs']} ECGs): macro-AUROC {auc['estimate']:.3f} ({auc['low']:.3f}-{auc['high']:.3f})"
    cal = (report.get("calibration") or {}).get("test")
    if cal:
        before, after = cal["before"], cal["after"]
        line += (
            f"; ECE {before['estimate']:.3f} before, {after['estimate']:.3f} after calibration "
            f"({_calibration_name(report['calibration'])}; 95% CI {after['low']:.3f}-{after['high']:.3f})"
        )
    return line


def _calibration_name(calibration: dict) -> str:
    """``T = 0.84`` for temperature scaling, the method's name otherwise (vector scaling has no single T)."""
    temperature = calibration.get("temperature")
    if temperature is not None:
        return f"T = {temperature:.2f}"
    return f"{(calibration.get('stored') or {}).get('method', 'no')} scaling"


def _rel(path: str | Path) -> str:
    """A path as short as it can be written from here (relative when under the current folder)."""
    text = os.path.relpath(path)
    return text if not text.startswith("..") else str(path)


def run(args: argparse.Namespace) -> int:
    from .build.serve import TritonServer, free_port
    from .train.train_config import load_train_config

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_train_config(args.config)
    # Keep every output of the demo under --work, whatever the config says.
    synth = {**(cfg.data.synth or {}), "out": str(work / "cohort")}
    cfg = replace(
        cfg, output=str(work / "runs" / "demo"), data=replace(cfg.data, synth=synth, cache_dir=str(work / "cache"))
    )
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
            [
                "evaluate",
                _rel(checkpoint),
                "--data",
                _rel(manifest),
                "--out",
                _rel(report_dir),
                "--bootstrap",
                str(args.bootstrap),
                "--normals",
                str(args.normals),
                "--seed",
                str(args.seed),
                "--cache-dir",  # the training cache: arrays and the neurokit2 normals the targets reuse
                _rel(work / "cache"),
            ],
        )
    else:
        print(f"\n=== evaluate: reusing {report_dir / 'report.md'}")
    _step(
        "build the Triton model repository (cpu profile)",
        ["build", str(checkpoint), "--profile", "cpu", "--out", str(repo)],
    )

    ports: dict[str, Any] = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    summary = headline(report_dir / "report.json")
    print(f"\n{summary}")

    from .checkpoint import load_checkpoint
    from .train.evaluate_cli import split_seed_of

    items = showcase_ecgs(manifest, split_seed_of(load_checkpoint(checkpoint)), args.per_class, args.seed)
    targets_md = report_dir / "targets.md"
    print(f"\n=== start Triton ({repo})", flush=True)
    with TritonServer(repo, log_file=work / "tritonserver.log", **ports) as server:
        print(f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
        print("\nECGs to score:")
        for item in items:
            print(
                f"  {Path(item.path).name}: {item.about}"
                + (f", true label {item.true_label}" if item.true_label else "")
            )
        argv = [
            "score",
            "--url",
            server.grpc_url,
            "--no-progress",
            "--json",
            "--report",
            _rel(work / "demo_report.pdf"),
        ]
        buffer = io.StringIO()  # JSON lines in, the demo's own table out
        _step("score real and synthetic ECGs through the ensemble", [*argv, *(_rel(i.path) for i in items)], buffer)
        scores = [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]
        print(score_table(items, scores))
        print(summary)
        if args.targets:
            _step(
                "measure the trustworthiness targets on the served ensemble",
                [
                    "targets",
                    "--url",
                    server.grpc_url,
                    "--checkpoint",
                    _rel(checkpoint),
                    "--data",
                    _rel(manifest),
                    "--out",
                    _rel(targets_md),
                    "--work",
                    _rel(work / "targets"),
                    "--normals",
                    str(args.normals),
                    "--normals-cache",
                    _rel(work / "cache"),
                    "--fresh-patients",
                    str(args.fresh_patients),
                    "--bootstrap",
                    str(args.bootstrap),
                ],
            )
    print("\nTriton stopped.")
    print(f"Evaluation report: {report_dir / 'report.md'}")
    if args.targets:
        print(f"Targets:           {targets_md}")
    print(f"12-lead reports:   {work / 'demo_report.pdf'}")
    print(f"Model repository:  {repo} (serve it again with: lasan serve --repo {repo})")
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        for f in sorted(report_dir.iterdir()):
            if f.is_file() and f.suffix in (".md", ".json", ".png"):
                shutil.copy2(f, docs / f.name)
        print(f"Report copied to:  {docs}")
    return 0
