"""Write a self-contained Triton model repository from a checkpoint.

Layout (``cpu`` profile)::

    OUT/
      lasan/config.pbtxt  lasan/1/metadata.json                 ensemble
      preprocess/config.pbtxt  preprocess/warmup/sampling_rate_hz
      preprocess/1/model.py  preprocess/1/lasan_kernel/*.py  preprocess/1/metadata.json
      encoder/1/model.py  encoder/1/model.pt  encoder/1/model.onnx  ...   (python backend + TorchScript)
      fusion/...                                                          (same)
      attention_outputs/1/model.py ...
      lasan_build.json                                                    build summary (ignored by Triton)

``--runtime onnxruntime`` puts ``model.onnx`` there (adapter ``model_repository/onnxruntime``, no
torch in its stub), ``--runtime torch-export`` an ExportedProgram ``model.pt2``
(``model_repository/torch_export``); ``--precision bf16|int8`` lowers the encoder's precision
and is written only if :mod:`lasan.build.precision`'s accuracy gate passes on the validation split.

``gpu`` writes ``encoder``/``fusion`` as ``pytorch_libtorch`` (``model.pt``) or, when
engines were built, ``tensorrt_plan`` (``model.plan``); ``jetson`` requires engines.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from lasan import __version__
from lasan import errors as lasan_core
from lasan.build.export import ExportResult, cuda_available, export_onnx, export_tensorrt, export_torchscript
from lasan.build.precision import GateResult, PrecisionData, check_precision, isa_features
from lasan.build.spec import (
    RUNTIME_ARTEFACTS,
    BuildOptions,
    ModelShape,
    ModelSpec,
    check_repository_spec,
    metadata_parameters,
    repository_spec,
)
from lasan.checkpoint import LoadedCheckpoint, load_checkpoint
from lasan.errors import ConfigError, ModelRepositoryError
from lasan.preprocessing import KERNEL_MODULES
from lasan.tensor_names import (
    ENCODER_MODEL,
    ENSEMBLE_MODEL,
    FUSION_MODEL,
    INPUT_SAMPLING_RATE,
    OUTPUTS_MODEL,
    PREPROCESS_MODEL,
)

if TYPE_CHECKING:
    from lasan.models.config import LASANConfig

__all__ = [
    "DEFAULT_THRESHOLDS",
    "SYNTHETIC_NOTICE",
    "TEMPLATES",
    "BuildReport",
    "write_repository",
    "model_shape",
    "served_thresholds",
]

log = logging.getLogger(__name__)

# Used when a checkpoint carries no thresholds (e.g. trained without a validation split):
# a low bar to flag for review, a high bar to call it. The metadata says they are defaults.
DEFAULT_THRESHOLDS: dict[str, float] = {"screening": 0.3, "confirmation": 0.7}
SYNTHETIC_NOTICE = "not a medical device; synthetic-data demo model"
TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
KERNEL_PACKAGE = "lasan_kernel"
TENSORRT_TOLERANCE = {False: 1e-3, True: 3e-2}  # FP32 / FP16 engines vs eager
_OCCLUSION = (
    "occlusion importance: each lead's share of the drop in the predicted class's calibrated probability "
    "when that lead is zeroed (lasan.models.served)"
)
IMPORTANCE_NOTE = {
    "lasan": _OCCLUSION + "; aggregator_weights is the paper's lead-aggregator softmax",
    "hybrid": _OCCLUSION + ", in the lead-aware branch with the foundation features of the full ECG kept; "
    "aggregator_weights is the paper's lead-aggregator softmax",
}


@dataclass(frozen=True)
class BuildReport:
    """What :func:`write_repository` produced."""

    path: Path
    profile: str
    exports: tuple[ExportResult, ...]
    engines_built: bool
    notes: tuple[str, ...]


def model_shape(ckpt: LoadedCheckpoint) -> ModelShape:
    cfg = ckpt.config
    lc = cast("LASANConfig", getattr(cfg, "lasan", cfg))  # a hybrid's own LASAN config, else cfg itself
    foundation = getattr(ckpt.model, "foundation_dim", None)
    return ModelShape(
        n_leads=lc.n_leads,
        n_samples=lc.input.n_samples,
        d_model=lc.d_model,
        n_classes=len(lc.classes),
        n_layers=lc.n_layers,
        n_heads=lc.n_heads,
        foundation_dim=int(foundation) if foundation is not None else None,
    )


def served_thresholds(ckpt: LoadedCheckpoint) -> tuple[dict[str, dict[str, float]], str]:
    """Per-class screening/confirmation thresholds and where they came from ("checkpoint" / "default")."""
    classes = ckpt.config.classes
    stored = ckpt.info.thresholds or {}
    out: dict[str, dict[str, float]] = {}
    defaulted = False
    for level, default in DEFAULT_THRESHOLDS.items():
        given = stored.get(level, {}) or {}
        out[level] = {}
        for c in classes:
            if c in given:
                out[level][c] = float(given[c])
            else:
                out[level][c] = default
                defaulted = True
    if not defaulted:
        return out, "checkpoint"
    return out, "default" if not stored else "checkpoint, with defaults for missing classes"


def _calibration_meta(ckpt: LoadedCheckpoint) -> dict[str, Any]:
    """What the served probabilities are calibrated with (identity, said plainly, for old checkpoints)."""
    if not ckpt.info.calibration:
        return {"method": "none", "temperature": 1.0, "note": "the checkpoint has no calibration; softmax as trained"}
    return dict(ckpt.info.calibration)


def _metadata(ckpt: LoadedCheckpoint, profile: str, thresholds: dict[str, Any], source: str) -> dict[str, Any]:
    spec = ckpt.config.input
    meta: dict[str, Any] = {
        "name": "LASAN",
        "model_kind": ckpt.config.kind,
        "modality": "ECG (resting 12-lead; 8 independent leads used)",
        "lead_order": list(spec.leads),
        "input_leads_accepted": "8 (I, II, V1-V6) or 12 (I, II, III, aVR, aVL, aVF, V1-V6), canonical order",
        "sampling_rate_hz": spec.fs,
        "input_spec": spec.to_dict(),
        "value_range": "input in mV at any rate 100-20000 Hz; model input per-lead z-scored, float32",
        "classes": list(ckpt.config.classes),
        "thresholds": thresholds,
        "thresholds_source": source,
        "calibration": _calibration_meta(ckpt),
        "lead_importance": IMPORTANCE_NOTE[ckpt.config.kind],
        "intended_use": (
            "research and engineering demonstration of ECG screening for ARVC and LQTS; "
            "outputs are not a diagnosis and need review by a cardiologist"
        ),
        "training_data": ckpt.info.data_summary,
        "metrics": ckpt.info.metrics,
        "checkpoint_sha256": ckpt.sha256,
        "checkpoint_created_at": ckpt.info.created_at,
        "lasan_version": __version__,
        "profile": profile,
    }
    if source != "checkpoint":
        meta["thresholds_note"] = (
            f"the checkpoint has no thresholds for some classes; defaults used: screening "
            f"{DEFAULT_THRESHOLDS['screening']}, confirmation {DEFAULT_THRESHOLDS['confirmation']}"
        )
    if ckpt.info.synthetic:
        meta["notice"] = SYNTHETIC_NOTICE
    return meta


def write_repository(
    checkpoint: str | Path | LoadedCheckpoint,
    out_dir: str | Path,
    profile: str = "cpu",
    *,
    max_batch_size: int = 16,
    instances: int = 1,
    fp16: bool = False,
    engines: bool | None = None,
    onnx: bool = True,
    overwrite: bool = True,
    runtime: str = "torchscript",
    precision: str = "fp32",
    precision_data: PrecisionData | None = None,
    accuracy_gate: bool = True,
    trtexec: bool = False,
) -> BuildReport:
    """Export ``checkpoint`` and write the five-model repository for ``profile`` into ``out_dir``.

    Args:
        runtime: cpu profile: ``torchscript`` (default), ``onnxruntime`` or ``torch-export``.
        precision: cpu profile: ``fp32`` (default), ``bf16`` (torchscript/torch-export) or ``int8`` (onnxruntime).
        precision_data: training-split calibration and validation ECGs; required for bf16/int8.
        trtexec: gpu/jetson: write tensorrt_plan configs, the ONNX parts and ``build_engines.sh`` (trtexec
            command lines) instead of building engines here; the GPU builds them (scripts/gpu-check.sh).
        accuracy_gate: False only for speed measurements of random-weight models (``lasan bench``), where
            AUROC means nothing; the metadata then says the repository was not gated. ``lasan build``
            always gates.
        engines: build TensorRT engines (gpu/jetson). None: when CUDA is present. Jetson requires them.
        onnx: also write ``model.onnx`` beside each part (for inspection and trtexec).
        overwrite: replace an existing repository at ``out_dir``.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ConfigError: bad options (unknown profile, jetson without CUDA, ...).
        ModelRepositoryError: an export or a generated config is invalid.
        PrecisionGateError: a bf16/int8 build lost accuracy against fp32 (nothing is written).
    """
    ckpt = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)
    notes: list[str] = []
    if trtexec:
        if profile == "cpu":
            raise ConfigError("--trtexec builds TensorRT engines for --profile gpu or jetson, not cpu")
        engines, onnx = True, True
    if engines is None:
        engines = profile != "cpu" and cuda_available()
    if profile == "gpu" and not engines:
        notes.append(
            "TensorRT engines were NOT built (no CUDA device here, or --no-engines): encoder and fusion are "
            "TorchScript for pytorch_libtorch. Build on the target GPU to get model.plan engines."
        )
    if profile == "jetson" and not engines:
        raise ConfigError(
            "the jetson profile serves TensorRT FP16 engines, which must be built on the Jetson itself "
            "(run `lasan build --profile jetson` there); use --profile gpu or cpu on this machine"
        )
    if profile == "cpu" and engines:
        raise ConfigError("the cpu profile runs TorchScript in the python backend; engines need --profile gpu/jetson")
    options = BuildOptions(
        profile=profile,
        max_batch_size=max_batch_size,
        instances=instances,
        fp16=fp16 or profile == "jetson",
        engines=bool(engines),
        runtime=runtime,
        precision=precision,
        trtexec=trtexec,
    )
    if precision != "fp32" and precision_data is None:
        raise ConfigError(
            f"a {precision} build must be checked against fp32 on the validation split and int8 calibrated on the "
            "training split: pass --data MANIFEST (the cohort the checkpoint was trained on)"
        )
    if not TEMPLATES.is_dir():
        raise ModelRepositoryError(f"the model_repository templates are missing at {TEMPLATES}; reinstall LASAN")
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise ModelRepositoryError(f"{out} already exists; remove it or allow overwriting")
        if not (out / "lasan_build.json").is_file() and any(out.iterdir()):
            raise ModelRepositoryError(f"{out} exists and is not a LASAN repository; refusing to replace it")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        exports = _write_staging(ckpt, staging, options, onnx, notes, precision_data, accuracy_gate)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the previous repository, if any, stays as it was
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)
    for note in notes:
        log.info(note)
    moved = tuple(
        ExportResult(e.kind, out / e.path.relative_to(staging) if e.path else None, e.note, e.max_abs_diff, e.details)
        for e in exports
    )
    return BuildReport(out, profile, moved, bool(engines), tuple(notes))


def _write_staging(
    ckpt: LoadedCheckpoint,
    staging: Path,
    options: BuildOptions,
    onnx: bool,
    notes: list[str],
    precision_data: PrecisionData | None = None,
    accuracy_gate: bool = True,
) -> list[ExportResult]:
    profile = options.profile
    thresholds, source = served_thresholds(ckpt)
    meta = _metadata(ckpt, profile, thresholds, source)
    shape = model_shape(ckpt)
    calibration = precision_data.calibration if precision_data is not None and options.precision == "int8" else None
    exports, engine_names, export_meta = _export_parts(ckpt, shape, staging, options, onnx, calibration)
    meta["export"] = export_meta
    meta["runtime"] = {"runtime": options.runtime, "precision": options.precision, "isa": isa_features()}
    if options.precision != "fp32" and not accuracy_gate:
        meta["runtime"]["accuracy_gate"] = "NOT CHECKED: a benchmark build of random weights, for speed only"
        notes.append(f"{options.precision} build written WITHOUT the accuracy gate (speed measurement only)")
    elif options.precision != "fp32":
        assert precision_data is not None  # write_repository refuses a lower precision without data
        gate = _precision_gate(ckpt, staging, options, precision_data)
        meta["runtime"]["accuracy_gate"] = {**gate.to_dict(), "data": precision_data.source}
        notes.append(
            f"{options.precision} accuracy gate passed on {gate.n_validation} validation ECGs: largest AUROC drop "
            f"{max(gate.auroc_drop.values()):.4f}, largest probability change {gate.max_probability_shift:.4f}"
        )
    params = metadata_parameters(
        {
            "lead_order": meta["lead_order"],
            "sampling_rate_hz": str(meta["sampling_rate_hz"]),
            "classes": meta["classes"],
            "thresholds": thresholds,
            "thresholds_source": source,
            "calibration": meta["calibration"],
            "checkpoint_sha256": ckpt.sha256,
            "input_spec": meta["input_spec"],
            "model_kind": ckpt.config.kind,
            "intended_use": meta["intended_use"],
            **({"notice": SYNTHETIC_NOTICE} if ckpt.info.synthetic else {}),
        }
    )
    specs = repository_spec(shape, options, params, engine_names)
    texts = check_repository_spec(specs)
    for spec in specs:
        _write_model(staging, spec, texts[spec.name], meta, options, ckpt)
    if options.trtexec:
        from lasan.build.tensorrt import write_engine_script

        write_engine_script(staging, options.fp16)
        notes.append("TensorRT engines are NOT built yet: run build_engines.sh on the target GPU (TensorRT "
                     "container), or scripts/gpu-check.sh, before serving this repository")
    (staging / "lasan_build.json").write_text(
        json.dumps(
            {
                "profile": profile,
                "options": options.__dict__,
                "notes": notes,
                "metadata": meta,
                "exports": [
                    {
                        "kind": e.kind,
                        "path": str(e.path.relative_to(staging)) if e.path else None,
                        "note": e.note,
                        "max_abs_diff": e.max_abs_diff,
                    }
                    for e in exports
                ],
            },
            indent=2,
            default=str,
        )
    )
    return exports


def _precision_gate(ckpt: LoadedCheckpoint, root: Path, options: BuildOptions, data: PrecisionData) -> GateResult:
    """The built parts, run as the adapters run them, against the fp32 checkpoint on the validation split."""
    from lasan.build.runtimes import load_part

    artefact = RUNTIME_ARTEFACTS[options.runtime]
    encoder, fusion = (load_part(root / name / "1" / artefact) for name in (ENCODER_MODEL, FUSION_MODEL))
    served = ckpt.served_model().eval()

    def fp32(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return served(torch.from_numpy(x))[0].numpy()

    def candidate(x: np.ndarray) -> np.ndarray:
        return fusion(*encoder(x))[0]

    return check_precision(fp32, candidate, data, ckpt.config.classes, options.precision)


def _export_part(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    version: Path,
    names: tuple[tuple[str, ...], tuple[str, ...]],
    options: BuildOptions,
    lower: bool,
    calibration: np.ndarray | None,
) -> ExportResult:
    """One part for the cpu profile's runtime; ``lower``: this part gets the build's lower precision."""
    from lasan.build import runtimes

    precision = options.precision if lower else "fp32"
    path = version / RUNTIME_ARTEFACTS[options.runtime]
    if options.runtime == "onnxruntime":
        return runtimes.export_ort(module, example, path, *names, int8_calibration=calibration if lower else None)
    if options.runtime == "torch-export":
        return runtimes.export_torch_export(
            module, example, path, max_batch_size=options.max_batch_size, bf16=precision == "bf16"
        )
    if precision == "bf16":
        return runtimes.export_torchscript_bf16(module, example, path)
    return export_torchscript(module, example, path, cpu_optimize=options.profile == "cpu")


def _export_parts(
    ckpt: LoadedCheckpoint,
    shape: ModelShape,
    root: Path,
    options: BuildOptions,
    onnx: bool,
    calibration: np.ndarray | None = None,
) -> tuple[list[ExportResult], dict[str, tuple[tuple[str, ...], tuple[str, ...]]], dict[str, Any]]:
    from lasan.build.spec import FOUNDATION_FEATURES, FUSION_OUTPUTS, LEAD_FEATURES, MODEL_INPUT

    model = ckpt.served_model()  # calibration and occlusion importance are part of the exported fusion
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, shape.n_leads, shape.n_samples, generator=gen)  # (B, leads, T)
    with torch.no_grad():  # not inference_mode: these tensors feed the ONNX tracer as examples
        enc_out = model.encoder_part()(x)
    enc_example = tuple(enc_out) if isinstance(enc_out, (tuple, list)) else (enc_out,)
    enc_names = (LEAD_FEATURES, FOUNDATION_FEATURES)[: len(enc_example)]
    parts = (
        (ENCODER_MODEL, model.encoder_part(), (x,), (MODEL_INPUT,), enc_names),
        (FUSION_MODEL, model.fusion_part(), enc_example, enc_names, FUSION_OUTPUTS),
    )
    results: list[ExportResult] = []
    engine_names: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    export_meta: dict[str, Any] = {"torch": torch.__version__, "engines": options.engines}
    if options.runtime == "onnxruntime":
        import onnxruntime

        export_meta["onnxruntime"] = onnxruntime.__version__
    for name, module, example, in_names, out_names in parts:
        version = root / name / "1"
        # Only the encoder (about 97 % of the time) is lowered; the fusion's softmaxes and occlusion stay fp32.
        lower = name == ENCODER_MODEL and options.precision != "fp32"
        results.append(_export_part(module, example, version, (in_names, out_names), options, lower, calibration))
        if onnx and options.runtime != "onnxruntime":
            results.append(export_onnx(module, example, version / "model.onnx", in_names, out_names))
        if options.engines and not options.trtexec:
            res = export_tensorrt(
                module,
                example,
                version / "model.plan",
                max_batch_size=options.max_batch_size,
                fp16=options.fp16,
                tolerance=TENSORRT_TOLERANCE[options.fp16],
            )
            results.append(res)
            engine_names[name] = (tuple(res.details["inputs"]), tuple(res.details["outputs"]))
            export_meta["tensorrt"] = {k: v for k, v in res.details.items() if k not in ("inputs", "outputs")}
            model.cpu()
    return results, engine_names, export_meta


def _write_model(
    root: Path, spec: ModelSpec, text: str, meta: dict[str, Any], options: BuildOptions, ckpt: LoadedCheckpoint
) -> None:
    model_dir = root / spec.name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text)
    (version / "metadata.json").write_text(
        json.dumps(
            {**meta, "triton_model": spec.name, "inputs": _tensors(spec.inputs), "outputs": _tensors(spec.outputs)},
            indent=2,
            default=str,
        )
    )
    if spec.name == ENSEMBLE_MODEL:
        return
    if spec.name == PREPROCESS_MODEL:
        shutil.copy2(TEMPLATES / "preprocess" / "model.py", version / "model.py")
        kernel = version / KERNEL_PACKAGE
        kernel.mkdir()
        core = Path(lasan_core.__file__).resolve().parent
        for module in KERNEL_MODULES:
            shutil.copy2(core / f"{module}.py", kernel / f"{module}.py")
        (kernel / "__init__.py").write_text(
            '"""A copy of lasan\'s numpy-only preprocessing made by `lasan build`; do not edit."""\n'
        )
        warmup = model_dir / "warmup"
        warmup.mkdir()
        (warmup / INPUT_SAMPLING_RATE).write_bytes(np.array([ckpt.config.input.fs], dtype=np.float32).tobytes())
    elif spec.name == OUTPUTS_MODEL:
        shutil.copy2(TEMPLATES / "attention_outputs" / "model.py", version / "model.py")
    elif spec.backend == "python":  # encoder / fusion on the cpu profile
        adapter = {"torchscript": "torchscript", "onnxruntime": "onnxruntime", "torch-export": "torch_export"}
        shutil.copy2(TEMPLATES / adapter[options.runtime] / "model.py", version / "model.py")
    elif spec.platform == "tensorrt_plan":
        (version / "model.pt").unlink(missing_ok=True)  # the plan is what Triton loads


def _tensors(tensors: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "dtype": t.dtype, "dims": list(t.dims)} for t in tensors]
