"""The cpu profile's runtimes beside TorchScript: ONNX Runtime and torch.export, at fp32, bf16 or int8.

Each export is checked against the eager fp32 module it came from before it is written:

* ``onnxruntime`` fp32: the ONNX file is run by ``onnxruntime.InferenceSession`` at two batch
  sizes and must match eager within 1e-4 (the served contract; observed 3e-8 for the encoder,
  up to 2e-5 for the hybrid's fusion with its softmaxes);
* ``torch-export`` fp32: ``torch.export.export`` with a dynamic batch dimension, saved as an
  ExportedProgram (``model.pt2``), loaded back with ``torch.export.load`` and compared the same way;
* lower precision (the encoder only; the fusion, about 3 % of the time and where the softmaxes
  and the occlusion importance are, stays fp32): ``bf16`` is the encoder cast to bfloat16
  (weights and activations; oneDNN runs it with AMX / AVX512-BF16 where the CPU has them),
  ``int8`` is ONNX Runtime's static QDQ quantisation calibrated on training-split ECGs
  (per-channel int8 weights, uint8 activations; VNNI / AMX-INT8 kernels). Their numbers move
  by design; what they may move is decided on the validation split by
  :mod:`lasan.build.precision`, not here.
"""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lasan.build.export import ExportResult
from lasan.errors import ModelRepositoryError

__all__ = [
    "RUNTIME_TOLERANCE",
    "BFloat16Part",
    "onnx_bytes",
    "fix_onnx_for_ort",
    "ort_session",
    "export_ort",
    "export_torch_export",
    "quantize_int8",
    "export_torchscript_bf16",
    "load_part",
]

log = logging.getLogger(__name__)

RUNTIME_TOLERANCE = 1e-4  # fp32 runtime vs eager: the contract the served model keeps


class BFloat16Part(nn.Module):
    """A part run in bfloat16: inputs cast down, outputs cast back to float32 (the tensors Triton sees)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(module).eval().to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> Any:
        out = self.module(x.to(torch.bfloat16))
        if isinstance(out, (tuple, list)):
            return tuple(o.float() for o in out)
        return out.float()


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _max_diff(a: Any, b: Any) -> float:
    return max(
        float(np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)).max())
        for x, y in zip(_as_tuple(a), _as_tuple(b), strict=True)
    )


def _bigger(example: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat([t, t[:1]]) for t in example)  # batch + 1: the batch axis really is dynamic


def fix_onnx_for_ort(model: Any) -> Any:
    """Rewrite what torch's exporter writes but ONNX Runtime's CPU provider cannot run; same numbers.

    ``torch.eye(n, dtype=bool)`` (the occlusion mask of the served fusion) becomes an
    ``EyeLike`` on a bool tensor, for which ONNX Runtime has no kernel: it is replaced by
    Cast(float) -> EyeLike(float) -> Cast(bool).
    """
    import onnx
    from onnx import TensorProto, helper

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    nodes = []
    changed = False
    for node in model.graph.node:
        bool_eye = node.op_type == "EyeLike" and TensorProto.BOOL in (types.get(node.input[0]), types.get(node.output[0]))
        if not bool_eye:
            nodes.append(node)
            continue
        changed = True
        src, out = node.input[0], node.output[0]
        k = {a.name: a.i for a in node.attribute if a.name == "k"}
        nodes += [
            helper.make_node("Cast", [src], [f"{src}_as_float"], to=TensorProto.FLOAT),
            helper.make_node("EyeLike", [f"{src}_as_float"], [f"{out}_float"], dtype=TensorProto.FLOAT, **k),
            helper.make_node("Cast", [f"{out}_float"], [out], to=TensorProto.BOOL),
        ]
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return model


def onnx_bytes(
    module: nn.Module, example: tuple[torch.Tensor, ...], input_names: tuple[str, ...], output_names: tuple[str, ...]
) -> bytes:
    """``module`` as ONNX (opset 17, dynamic batch axis, named tensors) that ONNX Runtime can load.

    Raises:
        ModelRepositoryError: the exporter or the checker failed.
    """
    import onnx

    axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    buf = io.BytesIO()
    try:
        kwargs: dict[str, Any] = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
        torch.onnx.export(
            module.eval(), example, buf, input_names=list(input_names), output_names=list(output_names),  # type: ignore[arg-type]
            dynamic_axes=axes, opset_version=17, **kwargs,
        )
        model = fix_onnx_for_ort(onnx.load_from_string(buf.getvalue()))
        onnx.checker.check_model(model)
    except Exception as exc:  # exporter errors come from many layers (tracer, symbolic, checker)
        raise ModelRepositoryError(
            f"ONNX export of {type(module).__name__} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from exc
    return bytes(model.SerializeToString())


def ort_session(model: bytes | str | Path, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session configured as the served adapter configures it.

    Raises:
        ConfigError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        from lasan.errors import ConfigError

        raise ConfigError(
            "--runtime onnxruntime and --precision int8 need onnxruntime: pip install 'lasan[export]' "
            "(make install does)"
        ) from exc

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run_ort(session: Any, names: tuple[str, ...], example: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    return list(session.run(None, {n: t.detach().numpy() for n, t in zip(names, example, strict=True)}))


def export_ort(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    *,
    int8_calibration: np.ndarray | None = None,
) -> ExportResult:
    """Write ``model.onnx`` for the ONNX Runtime adapter; fp32 checked against eager, or int8-quantised.

    Raises:
        ModelRepositoryError: export failed, or the fp32 session differs from eager beyond 1e-4.
    """
    module = module.eval()
    data = onnx_bytes(module, example, input_names, output_names)
    with torch.inference_mode():
        references = [(ex, module(*ex)) for ex in (example, _bigger(example))]
    diff = max(_max_diff(_run_ort(ort_session(data), input_names, ex), ref) for ex, ref in references)
    if diff > RUNTIME_TOLERANCE:
        raise ModelRepositoryError(
            f"ONNX Runtime runs {type(module).__name__} {diff:.2e} away from eager (> {RUNTIME_TOLERANCE:g}); "
            "build with --runtime torchscript"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    note = "ONNX Runtime, fp32, opset 17, dynamic batch axis"
    if int8_calibration is not None:
        data = quantize_int8(data, input_names[0], int8_calibration)
        int8_diff = max(_max_diff(_run_ort(ort_session(data), input_names, ex), ref) for ex, ref in references)
        path.write_bytes(data)
        return ExportResult("onnxruntime", path, "ONNX Runtime, int8 static QDQ (per-channel weights), "
                            f"{len(int8_calibration)} training-split ECGs to calibrate; fp32 ONNX matched eager "
                            f"within {diff:.1e}", int8_diff, {"precision": "int8"})
    path.write_bytes(data)
    return ExportResult("onnxruntime", path, note, diff, {"precision": "fp32"})


def quantize_int8(model: bytes, input_name: str, calibration: np.ndarray) -> bytes:
    """Static int8 quantisation (QDQ, per-channel int8 weights, uint8 activations) of an ONNX model.

    ``calibration`` ``(N, ...)`` are model inputs drawn from the training split; the activation
    ranges are their min/max. Raises :class:`ModelRepositoryError` if ONNX Runtime's quantiser fails.
    """
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items = iter(calibration[i : i + 1].astype(np.float32) for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {input_name: item}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        try:
            quantize_static(
                str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, per_channel=True,
            )
        except Exception as exc:  # the quantiser raises from many layers
            raise ModelRepositoryError(f"ONNX Runtime int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
        return dst.read_bytes()


def export_torch_export(
    module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, *, max_batch_size: int, bf16: bool = False
) -> ExportResult:
    """``torch.export`` ``module`` (dynamic batch 1..max_batch_size) and save the ExportedProgram as ``.pt2``.

    The saved file is loaded back with ``torch.export.load`` (what the adapter does) and compared
    with eager at two batch sizes; fp32 must match within 1e-4, bf16 is reported (the gate judges it).

    Raises:
        ModelRepositoryError: torch.export failed, or the fp32 program differs from eager.
    """
    module = module.eval()
    target = BFloat16Part(module).eval() if bf16 else module
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch_size))
    try:
        program = torch.export.export(target, example, dynamic_shapes=tuple({0: batch} for _ in example))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
        loaded = torch.export.load(str(path)).module()
    except Exception as exc:  # torch.export raises guard, dynamo and serialisation errors
        raise ModelRepositoryError(
            f"torch.export of {type(module).__name__} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
            "build with --runtime torchscript"
        ) from exc
    with torch.inference_mode():
        diff = max(_max_diff(loaded(*ex), module(*ex)) for ex in (example, _bigger(example)))
    if not bf16 and diff > RUNTIME_TOLERANCE:
        path.unlink(missing_ok=True)
        raise ModelRepositoryError(f"the torch.export program of {type(module).__name__} differs from eager by {diff:.2e}")
    precision = "bf16" if bf16 else "fp32"
    return ExportResult("torch-export", path, f"torch.export ExportedProgram, {precision}, dynamic batch 1-{max_batch_size}",
                        diff, {"precision": precision})


def export_torchscript_bf16(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> ExportResult:
    """The part in bfloat16 as frozen, CPU-optimised TorchScript (traced: the casts are the only new ops).

    Raises:
        ModelRepositoryError: tracing or freezing failed.
    """
    part = BFloat16Part(module).eval()
    try:
        traced = torch.jit.trace(part, example, check_trace=False)
        optimised = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    except Exception as exc:  # TorchScript raises its own frontend errors
        raise ModelRepositoryError(f"bf16 TorchScript of {type(module).__name__} failed: {exc}") from exc
    with torch.inference_mode():
        optimised(*example)  # the profiling executor specialises on its first calls
        diff = max(_max_diff(optimised(*ex), module(*ex)) for ex in (example, _bigger(example)))
    path.parent.mkdir(parents=True, exist_ok=True)
    optimised.save(str(path))
    return ExportResult("torchscript", path, "traced in bf16, frozen and optimised for CPU", diff, {"precision": "bf16"})


def load_part(path: Path, threads: int = 1) -> Any:
    """A built part as the served adapter loads it: numpy arrays in, a tuple of numpy arrays out.

    ``.pt`` TorchScript (``torch.jit.load``), ``.onnx`` ONNX Runtime, ``.pt2`` ``torch.export.load``.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        session = ort_session(path, threads)
        names = [i.name for i in session.get_inputs()]
        return lambda *xs: tuple(session.run(None, dict(zip(names, xs, strict=True))))
    module = torch.jit.load(str(path), map_location="cpu").eval() if path.suffix == ".pt" else torch.export.load(
        str(path)
    ).module()

    def run(*xs: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            return tuple(o.numpy() for o in _as_tuple(module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in xs))))

    return run
