"""``lasan build``: the repository layout, exports, metadata and the copied preprocessing kernel."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import TINY_THRESHOLDS, make_tiny_checkpoint

from lasan.build.export import cuda_available
from lasan.build.repository import DEFAULT_THRESHOLDS, SYNTHETIC_NOTICE, write_repository
from lasan.build.spec import validate_pbtxt
from lasan.checkpoint import load_checkpoint
from lasan.cli import main
from lasan.errors import ConfigError, ModelRepositoryError
from lasan.preprocessing import KERNEL_MODULES, preprocess_array
from lasan.tensor_names import (
    ENCODER_MODEL,
    ENSEMBLE_MODEL,
    ENSEMBLE_OUTPUTS,
    FUSION_MODEL,
    OUTPUTS_MODEL,
    PREPROCESS_MODEL,
)

MODELS = (PREPROCESS_MODEL, ENCODER_MODEL, FUSION_MODEL, OUTPUTS_MODEL, ENSEMBLE_MODEL)
CORE = Path(__file__).resolve().parents[2] / "lasan"


def test_cpu_repository_layout(cpu_repository: Path):
    for name in MODELS:
        cfg = validate_pbtxt((cpu_repository / name / "config.pbtxt").read_text(), name)
        assert cfg.name == name
        assert (cpu_repository / name / "1" / "metadata.json").is_file()
    for name in (PREPROCESS_MODEL, ENCODER_MODEL, FUSION_MODEL, OUTPUTS_MODEL):
        assert (cpu_repository / name / "1" / "model.py").is_file()
    for name in (ENCODER_MODEL, FUSION_MODEL):
        assert (cpu_repository / name / "1" / "model.pt").is_file()
    warm = np.frombuffer((cpu_repository / PREPROCESS_MODEL / "warmup" / "sampling_rate_hz").read_bytes(), np.float32)
    assert warm.tolist() == [500.0]


def test_kernel_is_a_verbatim_copy_of_the_core(cpu_repository: Path):
    kernel = cpu_repository / PREPROCESS_MODEL / "1" / "lasan_kernel"
    for module in KERNEL_MODULES:
        assert filecmp.cmp(kernel / f"{module}.py", CORE / f"{module}.py", shallow=False), module


def test_kernel_runs_without_lasan_and_matches_core(cpu_repository: Path, tmp_path: Path):
    rng = np.random.default_rng(3)
    ecg = rng.normal(0, 0.3, (12, 7300)).astype(np.float32)
    np.save(tmp_path / "ecg.npy", ecg)
    version = cpu_repository / PREPROCESS_MODEL / "1"
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(version)!r})\n"
        "from lasan_kernel.preprocessing import preprocess_array\n"
        "assert not any(m == 'lasan' or m.startswith('lasan.') for m in sys.modules), 'imported lasan'\n"
        "assert 'torch' not in sys.modules\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, preprocess_array(np.load({str(tmp_path / 'ecg.npy')!r}), 730.0))\n"
    )
    # -S: no site hooks, so an editable install of lasan cannot leak in; numpy comes from the path we give.
    numpy_root = str(Path(np.__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.append({numpy_root!r})\n" + code], check=True)
    assert np.array_equal(np.load(tmp_path / "out.npy"), preprocess_array(ecg, 730.0))


def test_metadata_describes_the_model(cpu_repository: Path, tiny_lasan_checkpoint: Path):
    ckpt = load_checkpoint(tiny_lasan_checkpoint)
    for name in MODELS:
        meta = json.loads((cpu_repository / name / "1" / "metadata.json").read_text())
        assert meta["triton_model"] == name
        assert meta["lead_order"] == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
        assert meta["sampling_rate_hz"] == 500.0
        assert meta["classes"] == ["ARVC", "LQTS", "control"]
        assert meta["thresholds"] == TINY_THRESHOLDS
        assert meta["thresholds_source"] == "checkpoint"
        assert meta["checkpoint_sha256"] == ckpt.sha256
        assert meta["notice"] == SYNTHETIC_NOTICE == "not a medical device; synthetic-data demo model"
        assert meta["training_data"]["synthetic"] is True
        assert {"modality", "value_range", "intended_use"} <= set(meta)
        # The session checkpoint predates calibration: served with T = 1, and the metadata says so.
        assert meta["calibration"]["method"] == "none" and meta["calibration"]["temperature"] == 1.0
        assert "occlusion" in meta["lead_importance"]
    cfg = validate_pbtxt((cpu_repository / ENSEMBLE_MODEL / "config.pbtxt").read_text())
    assert cfg.parameters["checkpoint_sha256"].string_value == ckpt.sha256
    assert json.loads(cfg.parameters["thresholds"].string_value) == TINY_THRESHOLDS


def test_metadata_records_a_stored_calibration(tmp_path: Path):
    calibration = {"method": "temperature", "temperature": 1.8, "fitted_on": "val"}
    path = make_tiny_checkpoint(tmp_path / "cal.pt", calibration=calibration)
    report = write_repository(path, tmp_path / "repo", onnx=False)
    meta = json.loads((report.path / ENSEMBLE_MODEL / "1" / "metadata.json").read_text())
    assert meta["calibration"] == calibration
    cfg = validate_pbtxt((report.path / ENSEMBLE_MODEL / "config.pbtxt").read_text())
    assert json.loads(cfg.parameters["calibration"].string_value) == calibration
    assert [t.name for t in cfg.output] == list(ENSEMBLE_OUTPUTS)


def test_exported_torchscript_matches_eager(cpu_repository: Path, tiny_lasan_checkpoint: Path):
    model = load_checkpoint(tiny_lasan_checkpoint).served_model()
    x = torch.randn(3, 8, 2500)
    encoder = torch.jit.load(str(cpu_repository / ENCODER_MODEL / "1" / "model.pt"))
    fusion = torch.jit.load(str(cpu_repository / FUSION_MODEL / "1" / "model.pt"))
    with torch.inference_mode():
        want = model(x)
        got = fusion(encoder(x))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_onnx_exports_have_named_tensors_and_dynamic_batch(cpu_repository: Path):
    onnx = pytest.importorskip("onnx")
    for name, ins, outs in (
        (ENCODER_MODEL, ["model_input"], ["lead_features"]),
        (
            FUSION_MODEL,
            ["lead_features"],
            ["calibrated_probabilities", "occlusion_importance", "aggregator_softmax", "attention"],
        ),
    ):
        graph = onnx.load(str(cpu_repository / name / "1" / "model.onnx")).graph
        assert [i.name for i in graph.input] == ins
        assert [o.name for o in graph.output] == outs
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_hybrid_repository_has_foundation_features(tiny_hybrid_checkpoint: Path, tmp_path: Path):
    report = write_repository(tiny_hybrid_checkpoint, tmp_path / "repo")
    enc = validate_pbtxt((report.path / ENCODER_MODEL / "config.pbtxt").read_text())
    assert [t.name for t in enc.output] == ["lead_features", "foundation_features"]
    assert list(enc.output[1].dims) == [16]
    fusion = validate_pbtxt((report.path / FUSION_MODEL / "config.pbtxt").read_text())
    assert [t.name for t in fusion.input] == ["lead_features", "foundation_features"]
    onnx_exports = [e for e in report.exports if e.kind == "onnx"]
    assert [e.path is not None for e in onnx_exports] == [True, True], [e.note for e in onnx_exports]
    assert onnx_exports[1].details["inputs"] == ["lead_features", "foundation_features"]
    meta = json.loads((report.path / FUSION_MODEL / "1" / "metadata.json").read_text())
    assert meta["model_kind"] == "hybrid"


def test_no_onnx_option(tiny_lasan_checkpoint: Path, tmp_path: Path):
    report = write_repository(tiny_lasan_checkpoint, tmp_path / "repo", onnx=False)
    assert not list(report.path.rglob("*.onnx"))
    assert {e.kind for e in report.exports} == {"torchscript"}


def test_missing_thresholds_use_documented_defaults(tmp_path: Path):
    ckpt = make_tiny_checkpoint(tmp_path / "nothr.pt", thresholds=False)
    report = write_repository(ckpt, tmp_path / "repo", onnx=False)
    meta = json.loads((report.path / OUTPUTS_MODEL / "1" / "metadata.json").read_text())
    assert meta["thresholds_source"] == "default"
    assert meta["thresholds"]["screening"] == {c: DEFAULT_THRESHOLDS["screening"] for c in meta["classes"]}
    assert meta["thresholds"]["confirmation"] == {c: DEFAULT_THRESHOLDS["confirmation"] for c in meta["classes"]}
    assert "defaults used" in meta["thresholds_note"]


@pytest.mark.skipif(cuda_available(), reason="checks the behaviour without CUDA")
def test_gpu_profile_without_cuda_writes_torchscript_and_says_so(tiny_lasan_checkpoint: Path, tmp_path: Path, capsys):
    rc = main(["build", str(tiny_lasan_checkpoint), "--profile", "gpu", "--out", str(tmp_path / "gpu"), "--no-onnx"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "TensorRT engines were NOT built" in out
    enc = validate_pbtxt((tmp_path / "gpu" / ENCODER_MODEL / "config.pbtxt").read_text())
    assert enc.platform == "pytorch_libtorch" and enc.default_model_filename == "model.pt"
    assert (tmp_path / "gpu" / ENCODER_MODEL / "1" / "model.pt").is_file()
    assert not (tmp_path / "gpu" / ENCODER_MODEL / "1" / "model.py").exists()


@pytest.mark.skipif(cuda_available(), reason="checks the behaviour without CUDA")
def test_jetson_without_cuda_is_refused(tiny_lasan_checkpoint: Path, tmp_path: Path, capsys):
    with pytest.raises(ConfigError, match="must be built on the Jetson itself"):
        write_repository(tiny_lasan_checkpoint, tmp_path / "j", "jetson")
    assert main(["build", str(tiny_lasan_checkpoint), "--profile", "jetson", "--out", str(tmp_path / "j")]) == 1
    assert "must be built on the Jetson itself" in capsys.readouterr().err
    assert not (tmp_path / "j").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_repository(tiny_lasan_checkpoint: Path, tmp_path: Path):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "ecg.dcm").write_bytes(b"x")
    with pytest.raises(ModelRepositoryError, match="is not a LASAN repository; refusing to replace it"):
        write_repository(tiny_lasan_checkpoint, precious)
    assert (precious / "ecg.dcm").exists()
    first = write_repository(tiny_lasan_checkpoint, tmp_path / "repo", onnx=False).path
    again = write_repository(tiny_lasan_checkpoint, first, onnx=False).path  # a LASAN repository is replaced
    assert again == first and (first / "lasan_build.json").is_file()


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="TensorRT engines need a CUDA GPU")
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_engines(tiny_lasan_checkpoint: Path, tmp_path: Path, fp16: bool):
    pytest.importorskip("torch_tensorrt")
    report = write_repository(tiny_lasan_checkpoint, tmp_path / "trt", "gpu", engines=True, fp16=fp16, max_batch_size=8)
    assert report.engines_built
    for name in (ENCODER_MODEL, FUSION_MODEL):
        cfg = validate_pbtxt((report.path / name / "config.pbtxt").read_text())
        assert cfg.platform == "tensorrt_plan"
        assert (report.path / name / "1" / "model.plan").stat().st_size > 0
    meta = json.loads((report.path / ENCODER_MODEL / "1" / "metadata.json").read_text())
    trt = meta["export"]["tensorrt"]
    assert trt["compute_capability"] and trt["tensorrt"] and trt["profile"] == [1, 8, 8] and trt["fp16"] is fp16
    for e in report.exports:
        if e.kind == "tensorrt":
            print(f"{e.path.parent.parent.name} fp16={fp16}: max |engine - eager| = {e.max_abs_diff:.2e}")
