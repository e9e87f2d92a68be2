"""The tensor spec: generated configs are valid ModelConfig protobufs and the ensemble lines up."""

from __future__ import annotations

import dataclasses

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from lasan.build.spec import (
    FOUNDATION_FEATURES,
    LEAD_FEATURES,
    MODEL_INPUT,
    BuildOptions,
    ModelShape,
    TensorSpec,
    check_ensemble,
    check_repository_spec,
    repository_spec,
    to_config,
    to_pbtxt,
    validate_pbtxt,
)
from lasan.errors import ConfigError, ModelRepositoryError
from lasan.tensor_names import (
    ENCODER_MODEL,
    ENSEMBLE_MODEL,
    ENSEMBLE_OUTPUTS,
    FUSION_MODEL,
    INPUT_ECG,
    INPUT_SAMPLING_RATE,
    OUTPUTS_MODEL,
    PREPROCESS_MODEL,
)

LASAN_SHAPE = ModelShape(n_leads=8, n_samples=2500, d_model=32, n_classes=3, n_layers=2, n_heads=4)
HYBRID_SHAPE = dataclasses.replace(LASAN_SHAPE, foundation_dim=16)


def _by_name(specs):
    return {s.name: s for s in specs}


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
@pytest.mark.parametrize("shape", [LASAN_SHAPE, HYBRID_SHAPE], ids=["lasan", "hybrid"])
def test_every_generated_config_parses_as_model_config(profile, shape):
    specs = repository_spec(shape, BuildOptions(profile=profile, max_batch_size=8), {"lead_order": "[]"})
    texts = check_repository_spec(specs)
    assert set(texts) == {PREPROCESS_MODEL, ENCODER_MODEL, FUSION_MODEL, OUTPUTS_MODEL, ENSEMBLE_MODEL}
    for name, text in texts.items():
        cfg = validate_pbtxt(text, name)
        assert cfg.name == name
        assert cfg.max_batch_size == 8
        assert cfg.parameters["lead_order"].string_value == "[]"


def test_ensemble_interface_and_steps():
    specs = _by_name(repository_spec(LASAN_SHAPE, BuildOptions()))
    ens = to_config(specs[ENSEMBLE_MODEL])
    assert ens.platform == "ensemble"
    assert [(t.name, list(t.dims)) for t in ens.input] == [(INPUT_ECG, [-1, -1]), (INPUT_SAMPLING_RATE, [1])]
    assert tuple(t.name for t in ens.output) == ENSEMBLE_OUTPUTS
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [
        PREPROCESS_MODEL,
        ENCODER_MODEL,
        FUSION_MODEL,
        OUTPUTS_MODEL,
    ]
    bools = [t.name for t in ens.output if t.data_type == pb.TYPE_BOOL]
    assert bools == ["screening_positive", "confirmation_positive"]


def test_cpu_models_are_python_backend_with_batching_warmup_and_version_policy():
    for spec in repository_spec(LASAN_SHAPE, BuildOptions(instances=2)):
        cfg = to_config(spec)
        if spec.name == ENSEMBLE_MODEL:
            continue
        assert cfg.backend == "python"
        assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        assert cfg.instance_group[0].count == 2
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
        assert cfg.version_policy.latest.num_versions == 1
        assert len(cfg.model_warmup) == 1
        assert set(cfg.model_warmup[0].inputs) == {t.name for t in cfg.input}


def test_gpu_profile_uses_libtorch_names_on_kind_gpu():
    specs = _by_name(repository_spec(HYBRID_SHAPE, BuildOptions(profile="gpu")))
    enc, fusion = to_config(specs[ENCODER_MODEL]), to_config(specs[FUSION_MODEL])
    assert enc.platform == fusion.platform == "pytorch_libtorch"
    assert enc.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert [t.name for t in enc.input] == [f"{MODEL_INPUT}__0"]
    assert [t.name for t in enc.output] == [f"{LEAD_FEATURES}__0", f"{FOUNDATION_FEATURES}__1"]
    assert [t.name for t in fusion.input] == [f"{LEAD_FEATURES}__0", f"{FOUNDATION_FEATURES}__1"]
    step = specs[ENSEMBLE_MODEL].steps[1]
    assert step.output_map == {f"{LEAD_FEATURES}__0": LEAD_FEATURES, f"{FOUNDATION_FEATURES}__1": FOUNDATION_FEATURES}
    # Python-backend models stay on the CPU even on a GPU server.
    assert to_config(specs[PREPROCESS_MODEL]).backend == "python"


def _replace_model(specs, name, **changes):
    return tuple(dataclasses.replace(s, **changes) if s.name == name else s for s in specs)


def test_broken_dtype_between_steps_fails_precisely():
    specs = repository_spec(LASAN_SHAPE, BuildOptions())
    enc = _by_name(specs)[ENCODER_MODEL]
    broken = _replace_model(specs, ENCODER_MODEL, inputs=(TensorSpec(MODEL_INPUT, "TYPE_FP16", (8, 2500)),))
    with pytest.raises(ModelRepositoryError) as err:
        check_ensemble(broken)
    assert str(err.value) == (
        "ensemble 'lasan' step 2 (encoder): 'model_input' is TYPE_FP16 but output 'model_input' of "
        "'preprocess' is TYPE_FP32"
    )
    assert enc.inputs[0].dtype == "TYPE_FP32"  # the original spec is untouched (frozen)


def test_broken_dims_between_steps_fails_precisely():
    specs = repository_spec(LASAN_SHAPE, BuildOptions())
    broken = _replace_model(specs, FUSION_MODEL, inputs=(TensorSpec(LEAD_FEATURES, "TYPE_FP32", (8, 64)),))
    with pytest.raises(
        ModelRepositoryError,
        match=r"step 3 \(fusion\): 'lead_features' has dims \[8, 64\] but "
        r"output 'lead_features' of 'encoder' has \[8, 32\]",
    ):
        check_ensemble(broken)


def test_unfed_and_unknown_tensors_fail_precisely():
    specs = repository_spec(LASAN_SHAPE, BuildOptions())
    ens = _by_name(specs)[ENSEMBLE_MODEL]
    steps = list(ens.steps)
    steps[1] = dataclasses.replace(steps[1], input_map={"x": MODEL_INPUT})
    broken = _replace_model(specs, ENSEMBLE_MODEL, steps=tuple(steps))
    with pytest.raises(
        ModelRepositoryError, match=r"step 2 \(encoder\): model input\(s\) \['model_input'\] are not fed"
    ):
        check_ensemble(broken)
    steps[1] = dataclasses.replace(steps[1], input_map={MODEL_INPUT: "preprocessed"})
    broken = _replace_model(specs, ENSEMBLE_MODEL, steps=tuple(steps))
    with pytest.raises(ModelRepositoryError, match="reads ensemble tensor 'preprocessed', which no earlier step"):
        check_ensemble(broken)
    broken = tuple(s for s in specs if s.name != OUTPUTS_MODEL)
    with pytest.raises(ModelRepositoryError, match="no model named 'attention_outputs'"):
        check_ensemble(broken)


def test_unknown_dtype_fails_with_the_allowed_names():
    spec = _by_name(repository_spec(LASAN_SHAPE, BuildOptions()))[OUTPUTS_MODEL]
    broken = dataclasses.replace(spec, outputs=(TensorSpec("probabilities", "TYPE_FLOAT32", (3,)),))
    with pytest.raises(
        ModelRepositoryError,
        match="model 'attention_outputs': tensor 'probabilities' has data type "
        "'TYPE_FLOAT32', which Triton does not know .*TYPE_FP32",
    ):
        to_pbtxt(broken)


def test_pbtxt_validation_names_the_file_and_line():
    good = to_pbtxt(_by_name(repository_spec(LASAN_SHAPE, BuildOptions()))[PREPROCESS_MODEL])
    bad = good.replace("max_batch_size", "max_batch")
    with pytest.raises(
        ModelRepositoryError,
        match=r"preprocess/config.pbtxt is not a valid Triton model configuration: "
        r"\d+:\d+ : .*max_batch",
    ):
        validate_pbtxt(bad, "preprocess/config.pbtxt")
    with pytest.raises(ModelRepositoryError, match="output 'model_input' has invalid dims"):
        validate_pbtxt(good.replace("dims: 2500", "dims: 0"), "preprocess/config.pbtxt")
    with pytest.raises(ModelRepositoryError, match="names neither a backend nor a platform"):
        validate_pbtxt(good.replace('backend: "python"', ""), "preprocess/config.pbtxt")


def test_bad_build_options_are_config_errors():
    with pytest.raises(ConfigError, match="profile must be one of cpu, gpu, jetson"):
        BuildOptions(profile="tpu")
    with pytest.raises(ConfigError, match="at least 1"):
        BuildOptions(max_batch_size=0)


def test_tensorrt_profile_uses_the_engines_own_tensor_names():
    # Names as torch-tensorrt leaves them in the engines; the ensemble maps them to ours.
    engines = {
        ENCODER_MODEL: (("x",), ("output0",)),
        FUSION_MODEL: (("lead_features",), ("output0", "output1", "output2", "output3")),
    }
    specs = repository_spec(LASAN_SHAPE, BuildOptions(profile="jetson", engines=True, fp16=True), {}, engines)
    check_repository_spec(specs)
    by = _by_name(specs)
    enc = to_config(by[ENCODER_MODEL])
    assert enc.platform == "tensorrt_plan" and enc.default_model_filename == "model.plan"
    assert enc.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert [t.name for t in enc.input] == ["x"]
    steps = by[ENSEMBLE_MODEL].steps
    assert steps[1].input_map == {"x": MODEL_INPUT}
    assert steps[2].output_map == {
        "output0": "calibrated_probabilities",
        "output1": "occlusion_importance",
        "output2": "aggregator_softmax",
        "output3": "attention",
    }
    # The python-backend models stay on the CPU (python-backend GPU instances are not supported on Jetson).
    assert to_config(by[PREPROCESS_MODEL]).instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert to_config(by[OUTPUTS_MODEL]).instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize(
    "runtime,artefact", [("torchscript", "model.pt"), ("onnxruntime", "model.onnx"), ("torch-export", "model.pt2")]
)
def test_cpu_runtime_is_told_to_its_adapter_through_the_config(runtime, artefact):
    specs = _by_name(repository_spec(LASAN_SHAPE, BuildOptions(runtime=runtime, torch_threads=2)))
    for name in (ENCODER_MODEL, FUSION_MODEL):
        params = to_config(specs[name]).parameters
        assert params["runtime"].string_value == runtime and params["model_file"].string_value == artefact
        assert params["precision"].string_value == "fp32"
        if runtime == "onnxruntime":
            assert params["ort_intra_op_threads"].string_value == "2"
            assert params["ort_allow_spinning"].string_value == "0"
        else:
            assert "ort_intra_op_threads" not in params
