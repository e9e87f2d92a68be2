"""Lower-precision builds: the accuracy gate refuses a damaged model, accepts a good one, and says by how much."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import make_single_lead_checkpoint, simple_ecg

from lasan.build.precision import PrecisionData, check_precision, compare_precision, isa_features
from lasan.build.repository import write_repository
from lasan.build.spec import BuildOptions
from lasan.checkpoint import load_checkpoint
from lasan.errors import ConfigError, PrecisionGateError
from lasan.preprocessing import preprocess_array

CLASSES = ("ARVC", "LQTS", "control")


@pytest.fixture(scope="module")
def gate_case(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The V2-only model (a clear margin, like a trained model) and validation ECGs labelled so AUROC is defined."""
    ckpt = make_single_lead_checkpoint(tmp_path_factory.mktemp("ckpt") / "v2.pt")
    rng = np.random.default_rng(3)
    x = np.stack([preprocess_array(simple_ecg(rng, 12, 500.0, 10.0), 500.0) for _ in range(40)])
    with torch.inference_mode():
        p = load_checkpoint(ckpt).served_model()(torch.from_numpy(x[16:]))[0].numpy()
    labels = np.where(p[:, 0] >= np.median(p[:, 0]), 0, 1)  # ARVC for the upper half of its probability
    return ckpt, x, labels


def test_gate_refuses_a_damaged_candidate_and_says_by_how_much():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=60).astype(np.float32)
    labels = probs.argmax(1)
    data = PrecisionData(np.zeros((1, 1)), probs, labels)
    noisy = probs + rng.normal(0, 0.2, probs.shape).astype(np.float32)
    with pytest.raises(PrecisionGateError) as err:
        check_precision(lambda x: x, lambda x: noisy[: len(x)] if len(x) == len(noisy) else x, data, CLASSES, "int8",
                        batch=len(probs))
    message = str(err.value)
    assert "int8 build was not written" in message and "dropped by" in message and "limit 0.005" in message
    assert "moved by" in message and "limit 0.02" in message
    # A candidate within the limits passes, and the result carries the numbers.
    result = check_precision(lambda x: x, lambda x: x + 1e-3, data, CLASSES, "bf16", batch=len(probs))
    assert result.max_probability_shift == pytest.approx(1e-3, abs=1e-5)
    assert all(abs(d) < 1e-9 for d in result.auroc_drop.values())
    assert result.to_dict()["passed"] is True


def test_gate_counts_a_single_swapped_pair_as_an_auroc_drop():
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0]])
    labels = np.array([0, 0, 1, 1])
    swapped = probs.copy()
    swapped[1, 0] = 0.15  # now below ECG 2 (not ARVC): one of the four ARVC pairs is ranked wrongly
    result = compare_precision(probs, swapped, labels, CLASSES, "int8")
    assert result.auroc_drop["ARVC"] == pytest.approx(0.25)
    assert any("ARVC dropped by 0.2500" in p for p in result.problems())


def test_int8_build_with_good_calibration_is_written_with_gate_and_isa(gate_case, tmp_path):
    ckpt, x, labels = gate_case
    data = PrecisionData(x[:16], x[16:], labels, "synthetic test ECGs")
    report = write_repository(ckpt, tmp_path / "repo", runtime="onnxruntime", precision="int8", precision_data=data,
                              onnx=False)
    meta = json.loads((report.path / "encoder" / "1" / "metadata.json").read_text())["runtime"]
    assert (meta["runtime"], meta["precision"]) == ("onnxruntime", "int8")
    gate = meta["accuracy_gate"]
    assert gate["passed"] and gate["n_validation"] == len(labels)
    assert 0 < gate["max_probability_shift"] <= 0.02  # int8 really moved the numbers, within the limit
    assert set(meta["isa"]) >= {"cpu_model", "flags"} and isinstance(meta["isa"]["flags"], list)
    int8 = (report.path / "encoder" / "1" / "model.onnx").read_bytes()
    assert b"QuantizeLinear" in int8 and b"DequantizeLinear" in int8


def test_int8_build_with_damaged_calibration_is_refused_and_not_written(gate_case, tmp_path):
    # Calibration ECGs scaled by 1e-3: the activation ranges are far too narrow, so int8 clips.
    ckpt, x, labels = gate_case
    data = PrecisionData(x[:16] * 1e-3, x[16:], labels, "damaged calibration")
    out = tmp_path / "repo"
    with pytest.raises(PrecisionGateError, match=r"int8 build was not written: on 24 validation ECGs .* by \d"):
        write_repository(ckpt, out, runtime="onnxruntime", precision="int8", precision_data=data, onnx=False)
    assert not out.exists() and not out.with_name("repo.partial").exists()


def test_lower_precision_needs_validation_data(gate_case, tmp_path):
    ckpt, _, _ = gate_case
    with pytest.raises(ConfigError, match="--data MANIFEST"):
        write_repository(ckpt, tmp_path / "repo", runtime="torch-export", precision="bf16")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"runtime": "onnxruntime", "precision": "bf16"}, "no bf16 path"),
        ({"runtime": "torchscript", "precision": "int8"}, "use --runtime onnxruntime for int8"),
        ({"profile": "gpu", "runtime": "onnxruntime"}, "cpu profile"),
        ({"runtime": "tensorflow"}, "runtime must be one of"),
    ],
)
def test_build_options_refuse_combinations_that_do_not_exist(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BuildOptions(**kwargs)


def test_isa_features_read_the_flags_that_matter():
    cpuinfo = "model name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_int8 avx_vnni\n"
    isa = isa_features(cpuinfo)
    assert isa["cpu_model"] == "Test CPU"
    assert isa["flags"] == ["avx2", "avx512f", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8"]
