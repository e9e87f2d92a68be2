"""TensorRT engines from the ONNX parts with ``trtexec`` (NGC TensorRT container), and a GPU parity check.

``lasan build --profile gpu|jetson --trtexec`` writes a repository whose ``encoder`` and
``fusion`` configs are ``tensorrt_plan`` and whose version folders hold ``model.onnx`` plus
``build_engines.sh``: the ``trtexec`` command lines, with the dynamic batch profile
1 / min(8, N) / N read from the generated configs and ``--fp16`` for jetson or ``--fp16``.
On the GPU machine the script turns each ``model.onnx`` into the ``model.plan`` Triton loads
(``scripts/gpu-check.sh`` does that, starts Triton, runs :func:`served_parity` and perf_analyzer).

Everything here runs without a GPU except the engines themselves: the commands, the shapes
and the configs are tested on CPU; TensorRT itself is unverified until a GPU runs the script.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lasan.build.spec import validate_pbtxt
from lasan.errors import ModelRepositoryError
from lasan.tensor_names import ENCODER_MODEL, FUSION_MODEL

__all__ = ["EngineBuild", "engine_builds", "trtexec_command", "write_engine_script", "served_parity", "main"]

ENGINE_PARTS = (ENCODER_MODEL, FUSION_MODEL)


@dataclass(frozen=True)
class EngineBuild:
    """One part's engine: its ONNX, its plan, the input shapes of the optimisation profile and the precision."""

    model: str
    onnx: Path
    plan: Path
    inputs: tuple[tuple[str, tuple[int, ...]], ...]  # (name, dims without the batch axis)
    batches: tuple[int, int, int]  # min / opt / max
    fp16: bool


def engine_builds(repo: Path, fp16: bool) -> list[EngineBuild]:
    """The engines a ``--trtexec`` repository needs, from its generated ``config.pbtxt`` files.

    Raises:
        ModelRepositoryError: a part is not ``tensorrt_plan`` or its ``model.onnx`` is missing.
    """
    out = []
    for model in ENGINE_PARTS:
        cfg = validate_pbtxt((repo / model / "config.pbtxt").read_text(), f"{model}/config.pbtxt")
        if cfg.platform != "tensorrt_plan":
            raise ModelRepositoryError(
                f"{model}/config.pbtxt is {cfg.platform or cfg.backend}, not tensorrt_plan: build the repository "
                "with `lasan build --profile gpu --trtexec` (or jetson)"
            )
        onnx = repo / model / "1" / "model.onnx"
        if not onnx.is_file():
            raise ModelRepositoryError(f"{onnx} is missing: the engine is built from it")
        n = cfg.max_batch_size
        out.append(EngineBuild(
            model, onnx, repo / model / "1" / (cfg.default_model_filename or "model.plan"),
            tuple((t.name, tuple(int(d) for d in t.dims)) for t in cfg.input), (1, min(8, n), n), fp16,
        ))
    return out


def _shapes(build: EngineBuild, batch: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in (batch, *dims))}" for name, dims in build.inputs)


def trtexec_command(build: EngineBuild, trtexec: str = "trtexec") -> list[str]:
    """The ``trtexec`` command line that writes ``build.plan`` from ``build.onnx``."""
    lo, opt, hi = build.batches
    cmd = [
        trtexec,
        f"--onnx={build.onnx.name}",
        f"--saveEngine={build.plan.name}",
        f"--minShapes={_shapes(build, lo)}",
        f"--optShapes={_shapes(build, opt)}",
        f"--maxShapes={_shapes(build, hi)}",
        "--skipInference",
    ]
    return cmd + (["--fp16"] if build.fp16 else [])


def write_engine_script(repo: Path, fp16: bool) -> Path:
    """``repo/build_engines.sh``: one ``trtexec`` per part, run in each part's version folder."""
    lines = ["#!/bin/sh", "# Written by `lasan build --trtexec`: run on the target GPU (TensorRT container).", "set -e",
             'TRTEXEC="${TRTEXEC:-trtexec}"', 'cd "$(dirname "$0")"']
    for build in engine_builds(repo, fp16):
        cmd = " ".join(shlex.quote(a) for a in trtexec_command(build, "TRTEXEC_PLACEHOLDER"))
        lines.append(f'(cd {shlex.quote(str(build.onnx.parent.relative_to(repo)))} && '
                     f'{cmd.replace("TRTEXEC_PLACEHOLDER", chr(36) + "TRTEXEC")})')
    script = repo / "build_engines.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def served_parity(url: str, checkpoint: str | Path, atol: float, model: str = "lasan") -> dict[str, Any]:
    """Largest difference between a served ensemble and the in-process checkpoint on real and synthetic ECGs.

    Raises:
        ModelRepositoryError: an output differs by more than ``atol``.
    """
    import torch
    import tritonclient.grpc as grpcclient

    from lasan.benchmarks.triton import real_ecg
    from lasan.checkpoint import load_checkpoint
    from lasan.formats.sample import sample_ecg
    from lasan.preprocessing import preprocess_array
    from lasan.tensor_names import INPUT_ECG, INPUT_SAMPLING_RATE, OUTPUT_LEAD_IMPORTANCE, OUTPUT_PROBABILITIES

    ckpt = load_checkpoint(checkpoint)
    served = ckpt.served_model().eval()
    ecg, fs, _ = real_ecg()
    cases = [(ecg, fs)] + [(np.asarray(sample_ecg(500.0, 10.0, seed=s).signal, np.float32), 500.0) for s in range(3)]
    client = grpcclient.InferenceServerClient(url)
    worst = 0.0
    try:
        for signal, rate in cases:
            inputs = [grpcclient.InferInput(INPUT_ECG, [1, *signal.shape], "FP32"),
                      grpcclient.InferInput(INPUT_SAMPLING_RATE, [1, 1], "FP32")]
            inputs[0].set_data_from_numpy(signal[None].astype(np.float32))
            inputs[1].set_data_from_numpy(np.array([[rate]], np.float32))
            result = client.infer(model, inputs)
            x = torch.from_numpy(preprocess_array(signal, rate, None, ckpt.config.input))[None]
            with torch.inference_mode():
                probs, importance, _, _ = served(x)
            for name, ref in ((OUTPUT_PROBABILITIES, probs), (OUTPUT_LEAD_IMPORTANCE, importance)):
                worst = max(worst, float(np.abs(result.as_numpy(name) - ref.numpy()).max()))
    finally:
        client.close()
    if worst > atol:
        raise ModelRepositoryError(f"the served ensemble differs from the checkpoint by {worst:.2e} (> {atol:g})")
    return {"ecgs": len(cases), "max_abs_diff": worst, "atol": atol}


def main(argv: list[str] | None = None) -> int:
    """``python -m lasan.build.tensorrt commands REPO [--fp16]`` / ``parity URL CHECKPOINT --atol X``."""
    parser = argparse.ArgumentParser(prog="python -m lasan.build.tensorrt")
    sub = parser.add_subparsers(dest="command", required=True)
    cmds = sub.add_parser("commands", help="print the trtexec command lines of a --trtexec repository")
    cmds.add_argument("repo", type=Path)
    cmds.add_argument("--fp16", action="store_true")
    par = sub.add_parser("parity", help="served ensemble vs checkpoint; exit 1 beyond --atol")
    par.add_argument("url")
    par.add_argument("checkpoint", type=Path)
    par.add_argument("--atol", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.command == "commands":
        for build in engine_builds(args.repo, args.fp16):
            print(f"cd {build.onnx.parent} && {shlex.join(trtexec_command(build))}")
        return 0
    try:
        report = served_parity(args.url, args.checkpoint, args.atol)
    except ModelRepositoryError as exc:
        print(f"PARITY FAILED: {exc}")
        return 1
    print(f"parity ok: {report['ecgs']} ECGs, max |diff| {report['max_abs_diff']:.2e} (<= {report['atol']:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
