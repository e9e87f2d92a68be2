"""Export the two model parts: TorchScript, ONNX, and TensorRT engines where CUDA is present.

Every export is checked against the eager module on the same example batch; an export
that does not reproduce it is not written (ONNX, TensorRT) or replaced by the plain
scripted module (a frozen TorchScript that drifts beyond 1e-5).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from lasan.errors import ModelRepositoryError

__all__ = [
    "ExportResult",
    "export_torchscript",
    "export_onnx",
    "cuda_available",
    "tensorrt_environment",
    "export_tensorrt",
    "FREEZE_TOLERANCE",
]

log = logging.getLogger(__name__)

FREEZE_TOLERANCE = 1e-5  # a frozen/optimised graph must match eager this closely, else we keep the plain script


@dataclass(frozen=True)
class ExportResult:
    """What one export wrote (``path`` None when it was skipped or failed; ``note`` says why)."""

    kind: str  # torchscript | onnx | tensorrt
    path: Path | None
    note: str = ""
    max_abs_diff: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _max_diff(a: Any, b: Any) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(_as_tuple(a), _as_tuple(b), strict=True))


def _torchscript_converter(module: nn.Module, example: tuple[torch.Tensor, ...]) -> tuple[Any, str]:
    """How to turn ``module`` into TorchScript: scripting, else tracing checked at another batch size.

    Scripting keeps control flow and is preferred; some foundation encoders (transformers'
    HubertModel) only trace. A trace is accepted only if it also matches eager on a batch
    of a different size, since the served model has a dynamic batch dimension.

    Raises:
        ModelRepositoryError: neither works.
    """
    try:
        torch.jit.script(module)
        return (lambda: torch.jit.script(module)), "scripted"
    except Exception as script_error:  # TorchScript raises its own frontend errors
        def trace() -> torch.jit.ScriptModule:
            return torch.jit.trace(module, example, check_trace=False)

        try:
            traced = trace()
            other = tuple(torch.cat([t, t[:1]]) for t in example)  # batch + 1
            with torch.inference_mode():
                diff = _max_diff(traced(*other), module(*other))
        except Exception as trace_error:
            raise ModelRepositoryError(
                f"cannot TorchScript {type(module).__name__}: scripting failed ({script_error}); "
                f"tracing failed ({trace_error})"
            ) from trace_error
        if diff > FREEZE_TOLERANCE:
            raise ModelRepositoryError(
                f"cannot TorchScript {type(module).__name__}: scripting failed ({script_error}) and the trace "
                f"does not generalise to another batch size (differs from eager by {diff:.2e})"
            ) from script_error
        log.info("%s cannot be scripted (%s); using a trace checked at two batch sizes", type(module).__name__,
                 str(script_error).splitlines()[0] if str(script_error) else type(script_error).__name__)
        return trace, "traced"


def export_torchscript(
    module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, *, cpu_optimize: bool = False
) -> ExportResult:
    """Script (or trace) ``module`` in eval mode, freeze it if that keeps the numbers, save it to ``path``.

    ``cpu_optimize`` also runs :func:`lasan.build.optimize.optimize_for_cpu` (oneDNN prepacking:
    the result runs on CPU only, so it is for the ``cpu`` profile), kept only within 1e-5 of eager.

    Raises:
        ModelRepositoryError: the module can neither be scripted nor traced, or disagrees with eager.
    """
    module = module.eval()
    with torch.inference_mode():
        reference = module(*example)
    to_script, how = _torchscript_converter(module, example)
    scripted = to_script()
    with torch.inference_mode():
        diff = _max_diff(scripted(*example), reference)
    if diff > FREEZE_TOLERANCE:
        raise ModelRepositoryError(f"the TorchScript {type(module).__name__} differs from eager by {diff:.2e}")
    chosen, note = scripted, how
    if cpu_optimize:
        from lasan.build.optimize import optimize_for_cpu

        try:
            optimised = optimize_for_cpu(to_script(), example, atol=FREEZE_TOLERANCE)
            with torch.inference_mode():
                opt_diff = _max_diff(optimised(*example), reference)
            if opt_diff <= FREEZE_TOLERANCE:
                chosen, note, diff = optimised, f"{how}, frozen and optimised for CPU", opt_diff
        except Exception as exc:  # an optimisation only; fall back to freezing
            log.info("CPU optimisation of %s not used: %s", type(module).__name__, exc)
    if chosen is scripted:
        try:
            frozen = torch.jit.freeze(to_script().eval())
            with torch.inference_mode():
                frozen_diff = _max_diff(frozen(*example), reference)
            if frozen_diff <= FREEZE_TOLERANCE:
                chosen, note, diff = frozen, f"{how} and frozen", frozen_diff
            else:
                note = f"{how} (freezing changed outputs by {frozen_diff:.2e}, so it was not used)"
        except Exception as exc:  # freezing is an optimisation; the plain script is still valid
            note = f"{how} (freezing failed: {type(exc).__name__})"
    path.parent.mkdir(parents=True, exist_ok=True)
    chosen.save(str(path))
    return ExportResult("torchscript", path, note, diff)


def export_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
) -> ExportResult:
    """Export ``module`` to ONNX with named tensors and a dynamic batch axis; never raises.

    ONNX is for inspection and ``trtexec`` users, so a failure is reported in the result
    (and the build log) rather than stopping the build.
    """
    try:
        import onnx
    except ImportError:
        return ExportResult("onnx", None, "onnx is not installed (pip install 'lasan[export]')")
    axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    buf = io.BytesIO()
    try:
        kwargs: dict[str, Any] = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
        torch.onnx.export(
            module.eval(),
            example,
            cast(Any, buf),  # BytesIO is accepted at runtime; the stub only lists paths
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=17,
            **kwargs,
        )
        from lasan.build.runtimes import fix_onnx_for_ort

        model = fix_onnx_for_ort(onnx.load_from_string(buf.getvalue()))  # runnable by ONNX Runtime too
        onnx.checker.check_model(model)
    except Exception as exc:  # exporter errors come from many layers (tracer, symbolic, checker)
        msg = f"ONNX export of {type(module).__name__} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        log.warning(msg)
        return ExportResult("onnx", None, msg)
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return ExportResult("onnx", path, "opset 17, dynamic batch axis", details={"inputs": names[0], "outputs": names[1]})


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


def tensorrt_environment() -> dict[str, Any]:
    """GPU name, compute capability and TensorRT / torch-tensorrt versions (what an engine is tied to).

    Raises:
        ModelRepositoryError: no CUDA device, or torch-tensorrt is not installed.
    """
    if not cuda_available():
        raise ModelRepositoryError("no CUDA device: TensorRT engines must be built on the target GPU")
    try:
        import tensorrt
        import torch_tensorrt
    except ImportError as exc:
        raise ModelRepositoryError(
            f"TensorRT engines need torch-tensorrt matching this torch ({torch.__version__}): {exc}; "
            "install lasan[tensorrt] on the target, or build with --no-engines to serve TorchScript"
        ) from exc
    major, minor = torch.cuda.get_device_capability()
    return {
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
        "tensorrt": tensorrt.__version__,
        "torch_tensorrt": torch_tensorrt.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def export_tensorrt(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    max_batch_size: int,
    fp16: bool,
    tolerance: float,
) -> ExportResult:
    """Build a serialized TensorRT engine (``model.plan``) with a dynamic batch profile 1 / min(8, N) / N.

    The engine's tensor names are read back from the engine and returned in
    ``details`` (``inputs``/``outputs``) so that config.pbtxt uses exactly those.

    Raises:
        ModelRepositoryError: no CUDA / torch-tensorrt, or the engine disagrees with eager beyond ``tolerance``.
    """
    env = tensorrt_environment()
    import tensorrt as trt
    import torch_tensorrt

    module = module.eval().cuda()
    opt = min(8, max_batch_size)
    inputs = [
        torch_tensorrt.Input(
            min_shape=(1, *x.shape[1:]),
            opt_shape=(opt, *x.shape[1:]),
            max_shape=(max_batch_size, *x.shape[1:]),
            dtype=torch.float32,
        )
        for x in example
    ]
    precisions = {torch.float16, torch.float32} if fp16 else {torch.float32}
    try:
        engine = torch_tensorrt.convert_method_to_trt_engine(
            module, "forward", inputs=inputs, ir="dynamo", enabled_precisions=precisions
        )
    except Exception as exc:  # torch-tensorrt surfaces converter and builder errors
        raise ModelRepositoryError(f"TensorRT conversion of {type(module).__name__} failed: {exc}") from exc
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    cuda_engine = runtime.deserialize_cuda_engine(engine)
    names = [cuda_engine.get_tensor_name(i) for i in range(cuda_engine.num_io_tensors)]
    ins = [n for n in names if cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outs = [n for n in names if cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    diff = _check_engine(cuda_engine, module, example, ins, outs)
    if diff > tolerance:
        raise ModelRepositoryError(
            f"the TensorRT engine for {type(module).__name__} differs from eager by {diff:.2e} (> {tolerance:g})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(engine))
    details = {**env, "inputs": ins, "outputs": outs, "fp16": fp16, "profile": [1, opt, max_batch_size]}
    return ExportResult("tensorrt", path, "TensorRT engine", diff, details)


def _check_engine(
    engine: Any, module: nn.Module, example: tuple[torch.Tensor, ...], ins: list[str], outs: list[str]
) -> float:
    context = engine.create_execution_context()
    feeds = [x.cuda().contiguous() for x in example]
    for name, x in zip(ins, feeds, strict=True):
        context.set_input_shape(name, tuple(x.shape))
        context.set_tensor_address(name, x.data_ptr())
    with torch.inference_mode():
        reference = _as_tuple(module(*feeds))
    results = []
    for name, ref in zip(outs, reference, strict=True):
        out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=ref.dtype, device="cuda")
        context.set_tensor_address(name, out.data_ptr())
        results.append(out)
    stream = torch.cuda.current_stream()
    context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return _max_diff(tuple(results), reference)
