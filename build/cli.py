"""``lasan build CHECKPOINT --profile {cpu,gpu,jetson} --out DIR``: write a Triton model repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from lasan.build.spec import PRECISIONS, PROFILES, RUNTIMES

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
    parser.add_argument(
        "--trtexec",
        action="store_true",
        help="gpu/jetson: write tensorrt_plan configs, the ONNX parts and build_engines.sh (trtexec command lines) "
        "to build the engines on the target GPU (scripts/gpu-check.sh does it and checks parity)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torchscript",
        help="cpu profile: what the python backend runs for encoder and fusion: torchscript (default), "
        "onnxruntime (model.onnx, no torch in the stubs) or torch-export (ExportedProgram model.pt2)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="cpu profile, opt-in: bf16 (torchscript/torch-export) or int8 (onnxruntime, static quantisation) "
        "for the encoder; refused unless validation AUROC per class stays within 0.005 and probabilities "
        "within 0.02 of fp32 (needs --data)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="manifest of the cohort the checkpoint was trained on: int8 calibration (training split) and the "
        "accuracy gate (validation split) of a bf16/int8 build",
    )
    parser.add_argument("--cache", type=Path, help="preprocessed-ECG cache folder for --data (e.g. work/cache)")


def run(args: argparse.Namespace) -> int:
    from lasan.build.repository import write_repository

    precision_data = None
    if args.precision != "fp32" and args.data is not None:
        from lasan.build.precision import load_precision_data
        from lasan.checkpoint import load_checkpoint

        precision_data = load_precision_data(args.data, load_checkpoint(args.checkpoint), args.cache)
    report = write_repository(
        args.checkpoint,
        args.out,
        args.profile,
        max_batch_size=args.max_batch,
        instances=args.instances,
        fp16=args.fp16,
        engines=args.engines,
        onnx=not args.no_onnx,
        runtime=args.runtime,
        precision=args.precision,
        precision_data=precision_data,
        trtexec=args.trtexec,
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
