"""``lasan build CHECKPOINT --profile {cpu,gpu,jetson} --out DIR``: write a Triton model repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from lasan.build.spec import PROFILES

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by `lasan train`")
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="cpu",
        help="cpu: python backend + TorchScript (embedded server); gpu: pytorch_libtorch or "
        "TensorRT on KIND_GPU; jetson: TensorRT FP16 engines built on the device",
    )
    parser.add_argument("--out", type=Path, required=True, help="repository folder to write (replaced if it exists)")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 in TensorRT engines (always on for jetson)")
    parser.add_argument("--max-batch", type=int, default=16, help="max_batch_size of every model (default 16)")
    parser.add_argument("--instances", type=int, default=1, help="instances per model (default 1)")
    engines = parser.add_mutually_exclusive_group()
    engines.add_argument(
        "--engines",
        dest="engines",
        action="store_true",
        default=None,
        help="require TensorRT engines (fails without CUDA and torch-tensorrt)",
    )
    engines.add_argument(
        "--no-engines",
        dest="engines",
        action="store_false",
        help="gpu profile: serve TorchScript with pytorch_libtorch even where CUDA is present",
    )
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX exports")


def run(args: argparse.Namespace) -> int:
    from lasan.build.repository import write_repository

    report = write_repository(
        args.checkpoint,
        args.out,
        args.profile,
        max_batch_size=args.max_batch,
        instances=args.instances,
        fp16=args.fp16,
        engines=args.engines,
        onnx=not args.no_onnx,
    )
    print(f"wrote {args.profile} repository {report.path}")
    for e in report.exports:
        where = e.path.relative_to(report.path) if e.path else "not written"
        diff = f", max |diff| vs eager {e.max_abs_diff:.1e}" if e.max_abs_diff is not None else ""
        print(f"  {e.kind:<11} {where}: {e.note}{diff}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"serve it with: lasan serve --repo {report.path}")
    return 0
