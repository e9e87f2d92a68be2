"""The one Python description of the served tensors, and every ``config.pbtxt`` made from it.

:func:`repository_spec` describes the five models (``preprocess``, ``encoder``,
``fusion``, ``attention_outputs`` and the ``lasan`` ensemble) as :class:`ModelSpec`
objects; :func:`to_config` turns one into Triton's ``ModelConfig`` protobuf and
:func:`to_pbtxt` into text. Nothing else writes tensor names, dtypes or dims.

:func:`check_ensemble` proves that every ensemble step's tensors line up (names,
dtypes, dims) and :func:`validate_pbtxt` parses a written file against the protobuf
schema; both raise :class:`~lasan.errors.ModelRepositoryError` with a precise message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from lasan.errors import ModelRepositoryError
from lasan.tensor_names import (
    ENCODER_MODEL,
    ENSEMBLE_MODEL,
    FUSION_MODEL,
    INPUT_ECG,
    INPUT_SAMPLING_RATE,
    OUTPUT_AGGREGATOR_WEIGHTS,
    OUTPUT_ATTENTION,
    OUTPUT_CONFIRMATION,
    OUTPUT_LEAD_IMPORTANCE,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCREENING,
    OUTPUTS_MODEL,
    PREPROCESS_MODEL,
)

__all__ = [
    "MODEL_INPUT",
    "LEAD_FEATURES",
    "FOUNDATION_FEATURES",
    "PROBABILITIES",
    "IMPORTANCE",
    "AGGREGATOR",
    "ATTENTION",
    "FUSION_OUTPUTS",
    "PROFILES",
    "RUNTIMES",
    "PRECISIONS",
    "RUNTIME_ARTEFACTS",
    "SUPPORTED_PRECISIONS",
    "TensorSpec",
    "EnsembleStep",
    "ModelSpec",
    "ModelShape",
    "BuildOptions",
    "repository_spec",
    "to_config",
    "to_pbtxt",
    "validate_pbtxt",
    "check_ensemble",
    "check_repository_spec",
]

# Intermediate tensors between the ensemble steps (the served inputs/outputs are in lasan.tensor_names).
MODEL_INPUT = "model_input"  # FP32 [leads, samples]: preprocess_array output
LEAD_FEATURES = "lead_features"  # FP32 [leads, d_model]: per-lead CNN features
FOUNDATION_FEATURES = "foundation_features"  # FP32 [F]: hybrid only, foundation encoder features
# The fusion part is lasan.models.ServedLASAN's: calibration and occlusion importance run
# inside it (one TorchScript), so the served numbers are the in-process ones.
PROBABILITIES = "calibrated_probabilities"  # FP32 [classes]: softmax(scale * logits + bias)
IMPORTANCE = "occlusion_importance"  # FP32 [leads]: faithful lead importance, sums to 1
AGGREGATOR = "aggregator_softmax"  # FP32 [leads]: the paper's lead-aggregator weights
ATTENTION = "attention"  # FP32 [layers, heads, leads, leads]
FUSION_OUTPUTS: tuple[str, ...] = (PROBABILITIES, IMPORTANCE, AGGREGATOR, ATTENTION)  # ServedLASAN's order

PROFILES: tuple[str, ...] = ("cpu", "gpu", "jetson")
# How the cpu profile's python backend runs encoder and fusion (docs/performance.md, "Runtimes").
RUNTIMES: tuple[str, ...] = ("torchscript", "onnxruntime", "torch-export")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
# The file each runtime's python-backend adapter loads from the version folder.
RUNTIME_ARTEFACTS: dict[str, str] = {"torchscript": "model.pt", "onnxruntime": "model.onnx", "torch-export": "model.pt2"}
# Which (runtime, precision) pairs exist: bf16 runs through torch (oneDNN uses AMX/AVX512-BF16 where
# the CPU has them); ONNX Runtime's CPU provider has no bf16 convolutions, so it offers int8 instead.
SUPPORTED_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torchscript": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "torch-export": ("fp32", "bf16"),
}

_DTYPES = {name: value for name, value in pb.DataType.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as Triton sees it (dims exclude the batch dimension; -1 = any length)."""

    name: str
    dtype: str  # a Triton DataType name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class EnsembleStep:
    """One ensemble step: ``input_map``/``output_map`` go from the step model's tensor to the ensemble tensor."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]


@dataclass(frozen=True)
class ModelSpec:
    """Everything one ``config.pbtxt`` says."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    backend: str = ""  # "python" or "" when platform is set
    platform: str = ""  # "ensemble", "pytorch_libtorch", "tensorrt_plan"
    instance_kind: str = "KIND_CPU"  # KIND_CPU / KIND_GPU; ignored for ensembles
    instance_count: int = 1
    dynamic_batching: bool = True
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    warmup: tuple[tuple[str, dict[str, str]], ...] = ()  # (input name, {"zero_data"|"input_data_file": ...})
    steps: tuple[EnsembleStep, ...] = ()
    default_model_filename: str = ""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a checkpoint that fix tensor dims."""

    n_leads: int
    n_samples: int
    d_model: int
    n_classes: int
    n_layers: int
    n_heads: int
    foundation_dim: int | None = None  # hybrid only


@dataclass(frozen=True)
class BuildOptions:
    """Deployment choices that do not change the numbers."""

    profile: str = "cpu"
    max_batch_size: int = 16
    instances: int = 1
    fp16: bool = False
    engines: bool = False  # gpu/jetson: TensorRT engines were built, so encoder/fusion are tensorrt_plan
    torch_threads: int = 1  # per python-backend instance: several instances share few cores
    runtime: str = "torchscript"  # cpu profile: what the python backend runs (RUNTIMES)
    precision: str = "fp32"  # cpu profile: fp32, or an opt-in lower precision checked by the accuracy gate
    trtexec: bool = False  # gpu/jetson: engines are built later from model.onnx by trtexec (build_engines.sh)

    def __post_init__(self) -> None:
        from lasan.errors import ConfigError

        if self.profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.profile != "cpu" and (self.runtime != "torchscript" or self.precision != "fp32"):
            raise ConfigError(
                f"--runtime/--precision choose how the cpu profile's python backend runs the model; the "
                f"{self.profile} profile serves TorchScript (pytorch_libtorch) or TensorRT engines (use --fp16 there)"
            )
        if self.precision not in SUPPORTED_PRECISIONS[self.runtime]:
            others = [r for r, p in SUPPORTED_PRECISIONS.items() if self.precision in p]
            raise ConfigError(
                f"the {self.runtime} runtime has no {self.precision} path on CPU; use --runtime "
                f"{' or '.join(others)} for {self.precision}"
            )
        if self.max_batch_size < 1 or self.instances < 1 or self.torch_threads < 1:
            raise ConfigError("max batch size, instances and torch threads must be at least 1")


def _fp32(name: str, *dims: int) -> TensorSpec:
    return TensorSpec(name, "TYPE_FP32", tuple(dims))


def _part_names(tensors: tuple[TensorSpec, ...], platform: str) -> tuple[str, ...]:
    """Names a backend gives the tensors of an exported part.

    The libtorch backend takes inputs by forward-argument name but can only name outputs
    ``<name>__<index>``; we use that form on both sides so the mapping is explicit.
    """
    if platform == "pytorch_libtorch":
        return tuple(f"{t.name}__{i}" for i, t in enumerate(tensors))
    return tuple(t.name for t in tensors)


def repository_spec(
    shape: ModelShape,
    options: BuildOptions,
    parameters: dict[str, str] | None = None,
    engine_names: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None = None,
) -> tuple[ModelSpec, ...]:
    """The five models of a LASAN repository.

    Args:
        shape: dims from the checkpoint.
        options: profile, batching and instances.
        parameters: metadata strings (lead order, rate, classes, thresholds, checksum) put in every config.
        engine_names: for ``tensorrt_plan`` parts, ``{model: (input names, output names)}`` read from the engines.
    """
    s = shape
    params = dict(parameters or {})
    hybrid = s.foundation_dim is not None
    model_input = _fp32(MODEL_INPUT, s.n_leads, s.n_samples)
    enc_out = [_fp32(LEAD_FEATURES, s.n_leads, s.d_model)]
    if hybrid:
        assert s.foundation_dim is not None  # hybrid is defined by it
        enc_out.append(_fp32(FOUNDATION_FEATURES, s.foundation_dim))
    fusion_out = (
        _fp32(PROBABILITIES, s.n_classes),
        _fp32(IMPORTANCE, s.n_leads),
        _fp32(AGGREGATOR, s.n_leads),
        _fp32(ATTENTION, s.n_layers, s.n_heads, s.n_leads, s.n_leads),
    )
    ecg = _fp32(INPUT_ECG, -1, -1)
    rate = _fp32(INPUT_SAMPLING_RATE, 1)
    final = (
        _fp32(OUTPUT_PROBABILITIES, s.n_classes),
        _fp32(OUTPUT_LEAD_IMPORTANCE, s.n_leads),
        _fp32(OUTPUT_AGGREGATOR_WEIGHTS, s.n_leads),
        _fp32(OUTPUT_ATTENTION, s.n_layers, s.n_heads, s.n_leads, s.n_leads),
        TensorSpec(OUTPUT_SCREENING, "TYPE_BOOL", (s.n_classes,)),
        TensorSpec(OUTPUT_CONFIRMATION, "TYPE_BOOL", (s.n_classes,)),
    )
    n = options.max_batch_size
    gpu = options.profile in ("gpu", "jetson")
    common: dict[str, Any] = dict(max_batch_size=n, instance_count=options.instances, preferred_batch_sizes=_preferred(n))

    preprocess = ModelSpec(
        PREPROCESS_MODEL,
        (ecg, rate),
        (model_input,),
        backend="python",
        parameters={**params, "kernel_package": "lasan_kernel"},
        # A flat 8-lead record of the model's own length at its own rate: cheap and valid.
        warmup=(
            (INPUT_ECG, {"zero_data": "true", "dims": f"{s.n_leads},{s.n_samples}"}),
            (INPUT_SAMPLING_RATE, {"input_data_file": INPUT_SAMPLING_RATE}),
        ),
        **common,
    )
    part_platform = "python"
    if gpu:
        part_platform = "tensorrt_plan" if options.engines else "pytorch_libtorch"
    parts = []
    for name, ins, outs in (
        (ENCODER_MODEL, (model_input,), tuple(enc_out)),
        (FUSION_MODEL, tuple(enc_out), fusion_out),
    ):
        if part_platform == "tensorrt_plan" and engine_names and name in engine_names:
            in_names, out_names = engine_names[name]
        else:
            in_names = _part_names(ins, part_platform)
            out_names = _part_names(outs, part_platform)
        own_ins = tuple(TensorSpec(n_, t.dtype, t.dims) for n_, t in zip(in_names, ins, strict=True))
        own_outs = tuple(TensorSpec(n_, t.dtype, t.dims) for n_, t in zip(out_names, outs, strict=True))
        part_params = {**params, "tensor_inputs": ",".join(in_names), "tensor_outputs": ",".join(out_names)}
        if part_platform == "python":
            part_params["torch_threads"] = str(options.torch_threads)
            part_params["runtime"] = options.runtime
            part_params["precision"] = options.precision
            part_params["model_file"] = RUNTIME_ARTEFACTS[options.runtime]
            if options.runtime == "onnxruntime":  # read by model_repository/onnxruntime/model.py
                part_params["ort_intra_op_threads"] = str(options.torch_threads)
                part_params["ort_allow_spinning"] = "0"
        parts.append(
            ModelSpec(
                name,
                own_ins,
                own_outs,
                backend="python" if part_platform == "python" else "",
                platform="" if part_platform == "python" else part_platform,
                instance_kind="KIND_GPU" if gpu else "KIND_CPU",
                parameters=part_params,
                warmup=tuple((t.name, {"zero_data": "true"}) for t in own_ins),
                default_model_filename=(
                    "model.plan" if part_platform == "tensorrt_plan" else "model.pt" if gpu else ""
                ),
                **common,
            )
        )
    encoder, fusion = parts
    outputs = ModelSpec(
        OUTPUTS_MODEL,
        fusion_out,
        final,
        backend="python",
        parameters=params,
        warmup=tuple((t.name, {"zero_data": "true"}) for t in fusion_out),
        **common,
    )
    ensemble = ModelSpec(
        ENSEMBLE_MODEL,
        (ecg, rate),
        final,
        max_batch_size=n,
        platform="ensemble",
        dynamic_batching=False,
        parameters=params,
        steps=(
            EnsembleStep(
                PREPROCESS_MODEL,
                {INPUT_ECG: INPUT_ECG, INPUT_SAMPLING_RATE: INPUT_SAMPLING_RATE},
                {MODEL_INPUT: MODEL_INPUT},
            ),
            EnsembleStep(
                ENCODER_MODEL,
                {encoder.inputs[0].name: MODEL_INPUT},
                {own.name: t.name for own, t in zip(encoder.outputs, enc_out, strict=True)},
            ),
            EnsembleStep(
                FUSION_MODEL,
                {own.name: t.name for own, t in zip(fusion.inputs, enc_out, strict=True)},
                {own.name: t.name for own, t in zip(fusion.outputs, fusion_out, strict=True)},
            ),
            EnsembleStep(
                OUTPUTS_MODEL,
                {t.name: t.name for t in fusion_out},
                {t.name: t.name for t in final},
            ),
        ),
    )
    return (preprocess, encoder, fusion, outputs, ensemble)


def _preferred(n: int) -> tuple[int, ...]:
    return tuple(b for b in (4, 8, 16, 32) if b <= n)


def to_config(spec: ModelSpec) -> pb.ModelConfig:
    """The ``ModelConfig`` protobuf for ``spec``.

    Raises:
        ModelRepositoryError: a dtype, instance kind or field value the schema does not accept.
    """
    where = f"model '{spec.name}'"
    try:
        cfg = pb.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
        if spec.backend:
            cfg.backend = spec.backend
        if spec.platform:
            cfg.platform = spec.platform
        if spec.default_model_filename:
            cfg.default_model_filename = spec.default_model_filename
        for tensors, add in ((spec.inputs, cfg.input.add), (spec.outputs, cfg.output.add)):
            for t in tensors:
                if t.dtype not in _DTYPES:
                    raise ModelRepositoryError(
                        f"{where}: tensor '{t.name}' has data type {t.dtype!r}, which Triton does not know "
                        f"(use one of {', '.join(k for k in _DTYPES if k != 'TYPE_INVALID')})"
                    )
                add(name=t.name, data_type=_DTYPES[t.dtype], dims=list(t.dims))
        for key, value in sorted(spec.parameters.items()):
            cfg.parameters[key].string_value = value
        if spec.platform == "ensemble":
            for step in spec.steps:
                st = cfg.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
                st.input_map.update(step.input_map)
                st.output_map.update(step.output_map)
            return cfg
        cfg.version_policy.latest.num_versions = 1
        cfg.instance_group.add(count=spec.instance_count, kind=pb.ModelInstanceGroup.Kind.Value(spec.instance_kind))
        if spec.dynamic_batching:
            cfg.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
            cfg.dynamic_batching.preferred_batch_size.extend(spec.preferred_batch_sizes)
        if spec.warmup:
            w = cfg.model_warmup.add(name=f"{spec.name}_warmup", batch_size=1, count=1)
            by_name = {t.name: t for t in spec.inputs}
            for name, how in spec.warmup:
                t = by_name[name]
                dims = [int(d) for d in how["dims"].split(",")] if "dims" in how else list(t.dims)
                wi = w.inputs[name]
                wi.data_type = _DTYPES[t.dtype]
                wi.dims.extend(dims)
                if "input_data_file" in how:
                    wi.input_data_file = how["input_data_file"]
                else:
                    wi.zero_data = True
        return cfg
    except ModelRepositoryError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelRepositoryError(f"{where}: cannot be expressed as a Triton ModelConfig: {exc}") from exc


def to_pbtxt(spec: ModelSpec) -> str:
    """``config.pbtxt`` text for ``spec`` (checked by parsing it back)."""
    text = text_format.MessageToString(to_config(spec))
    validate_pbtxt(text, f"{spec.name}/config.pbtxt")
    return text


def validate_pbtxt(text: str, source: str = "config.pbtxt") -> pb.ModelConfig:
    """Parse ``text`` against Triton's ModelConfig schema and check the fields Triton requires.

    Raises:
        ModelRepositoryError: naming ``source`` and the line/field that is wrong.
    """
    cfg = pb.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise ModelRepositoryError(f"{source} is not a valid Triton model configuration: {exc}") from exc
    if not cfg.name:
        raise ModelRepositoryError(f"{source}: 'name' is missing")
    if not (cfg.backend or cfg.platform):
        raise ModelRepositoryError(f"{source}: model '{cfg.name}' names neither a backend nor a platform")
    for kind, tensors in (("input", cfg.input), ("output", cfg.output)):
        if not tensors:
            raise ModelRepositoryError(f"{source}: model '{cfg.name}' declares no {kind}s")
        for t in tensors:
            if t.data_type == pb.TYPE_INVALID:
                raise ModelRepositoryError(f"{source}: {kind} '{t.name}' has no data_type")
            if not t.dims or any(d == 0 or d < -1 for d in t.dims):
                raise ModelRepositoryError(f"{source}: {kind} '{t.name}' has invalid dims {list(t.dims)}")
    return cfg


def check_ensemble(specs: tuple[ModelSpec, ...] | list[ModelSpec], ensemble: str = ENSEMBLE_MODEL) -> None:
    """Check that every step of ``ensemble`` maps existing tensors with equal dtypes and dims.

    Raises:
        ModelRepositoryError: which step, which tensor, and what disagrees.
    """
    by_name = {s.name: s for s in specs}
    if ensemble not in by_name:
        raise ModelRepositoryError(f"the repository has no ensemble model '{ensemble}'")
    ens = by_name[ensemble]
    # Ensemble tensors known so far: its inputs, then each step's outputs in order.
    known: dict[str, tuple[str, tuple[int, ...], str]] = {
        t.name: (t.dtype, t.dims, f"ensemble input '{t.name}'") for t in ens.inputs
    }
    for i, step in enumerate(ens.steps, 1):
        where = f"ensemble '{ensemble}' step {i} ({step.model})"
        model = by_name.get(step.model)
        if model is None:
            raise ModelRepositoryError(f"{where}: no model named '{step.model}' in the repository")
        if model.max_batch_size != ens.max_batch_size:
            raise ModelRepositoryError(
                f"{where}: max_batch_size {model.max_batch_size} differs from the ensemble's {ens.max_batch_size}"
            )
        own_in = {t.name: t for t in model.inputs}
        missing = sorted(set(own_in) - set(step.input_map))
        if missing:
            raise ModelRepositoryError(f"{where}: model input(s) {missing} are not fed by the ensemble")
        for own, ens_name in step.input_map.items():
            if own not in own_in:
                raise ModelRepositoryError(
                    f"{where}: input_map names '{own}', but '{step.model}' has inputs {sorted(own_in)}"
                )
            if ens_name not in known:
                raise ModelRepositoryError(
                    f"{where}: input '{own}' reads ensemble tensor '{ens_name}', which no earlier step produces "
                    f"(available: {sorted(known)})"
                )
            _same(where, own_in[own], known[ens_name])
        own_out = {t.name: t for t in model.outputs}
        for own, ens_name in step.output_map.items():
            if own not in own_out:
                raise ModelRepositoryError(
                    f"{where}: output_map names '{own}', but '{step.model}' has outputs {sorted(own_out)}"
                )
            t = own_out[own]
            known[ens_name] = (t.dtype, t.dims, f"output '{own}' of '{step.model}'")
    for t in ens.outputs:
        if t.name not in known:
            raise ModelRepositoryError(f"ensemble '{ensemble}': output '{t.name}' is produced by no step")
        _same(f"ensemble '{ensemble}' output", t, known[t.name])


def _same(where: str, t: TensorSpec, source: tuple[str, tuple[int, ...], str]) -> None:
    dtype, dims, what = source
    if t.dtype != dtype:
        raise ModelRepositoryError(f"{where}: '{t.name}' is {t.dtype} but {what} is {dtype}")
    if len(t.dims) != len(dims) or any(a != b and -1 not in (a, b) for a, b in zip(t.dims, dims, strict=True)):
        raise ModelRepositoryError(f"{where}: '{t.name}' has dims {list(t.dims)} but {what} has {list(dims)}")


def check_repository_spec(specs: tuple[ModelSpec, ...]) -> dict[str, str]:
    """Render, validate and cross-check every model; returns ``{model: pbtxt}``.

    Raises:
        ModelRepositoryError: the first problem found.
    """
    check_ensemble(specs)
    return {s.name: to_pbtxt(s) for s in specs}


def metadata_parameters(meta: dict[str, Any]) -> dict[str, str]:
    """Metadata as config ``parameters``: strings only (Triton's parameter values are strings)."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}
