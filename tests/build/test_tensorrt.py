"""The GPU path, everything that can be checked without a GPU: trtexec commands, configs, shapes, precision flags.

TensorRT itself is unverified here (no GPU); scripts/gpu-check.sh runs these commands on one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lasan.build.repository import write_repository
from lasan.build.spec import validate_pbtxt
from lasan.build.tensorrt import engine_builds, served_parity, trtexec_command
from lasan.errors import ConfigError, ModelRepositoryError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=[("gpu", False), ("gpu", True), ("jetson", True)], ids=["gpu-fp32", "gpu-fp16", "jetson"])
def trt_repo(request, tiny_hybrid_checkpoint, tmp_path_factory):
    profile, fp16 = request.param
    repo = write_repository(tiny_hybrid_checkpoint, tmp_path_factory.mktemp(profile) / "repo", profile,
                            trtexec=True, fp16=fp16, max_batch_size=16).path
    return profile, fp16, repo


def test_configs_are_tensorrt_plans_on_gpu_with_onnx_and_no_engine_yet(trt_repo):
    _, _, repo = trt_repo
    for model in ("encoder", "fusion"):
        cfg = validate_pbtxt((repo / model / "config.pbtxt").read_text())
        assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
        assert [g.kind for g in cfg.instance_group] == [1]  # KIND_GPU
        assert (repo / model / "1" / "model.onnx").is_file()
        assert not (repo / model / "1" / "model.plan").exists() and not (repo / model / "1" / "model.pt").exists()
    ens = validate_pbtxt((repo / "lasan" / "config.pbtxt").read_text())
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["preprocess", "encoder", "fusion", "attention_outputs"]


def test_engine_commands_carry_the_dynamic_batch_profile_and_precision(trt_repo):
    profile, fp16, repo = trt_repo
    builds = {b.model: b for b in engine_builds(repo, fp16 or profile == "jetson")}
    enc = trtexec_command(builds["encoder"])
    assert enc[:3] == ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan"]
    assert "--minShapes=model_input:1x8x2500" in enc
    assert "--optShapes=model_input:8x8x2500" in enc and "--maxShapes=model_input:16x8x2500" in enc
    fus = trtexec_command(builds["fusion"])  # the hybrid's fusion takes both feature tensors
    assert "--maxShapes=lead_features:16x8x32,foundation_features:16x16" in fus
    assert ("--fp16" in enc) == (fp16 or profile == "jetson") and ("--fp16" in fus) == ("--fp16" in enc)
    script = (repo / "build_engines.sh").read_text()
    assert script.count("$TRTEXEC --onnx=model.onnx") == 2 and ("--fp16" in script) == (fp16 or profile == "jetson")


def test_onnx_parts_have_the_config_tensor_names(trt_repo):
    # trtexec keeps the ONNX tensor names, and Triton matches engine tensors to the config by name.
    onnx = pytest.importorskip("onnx")
    _, _, repo = trt_repo
    for model in ("encoder", "fusion"):
        cfg = validate_pbtxt((repo / model / "config.pbtxt").read_text())
        graph = onnx.load(str(repo / model / "1" / "model.onnx")).graph
        assert [i.name for i in graph.input] == [t.name for t in cfg.input]
        assert [o.name for o in graph.output] == [t.name for t in cfg.output]


def test_engine_script_fails_clearly_without_trtexec(trt_repo, tmp_path):
    _, _, repo = trt_repo
    proc = subprocess.run(["sh", str(repo / "build_engines.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TRTEXEC": str(tmp_path / "no-trtexec")})
    assert proc.returncode != 0 and "no-trtexec" in proc.stderr


def test_trtexec_is_refused_for_the_cpu_profile_and_a_cpu_repository_has_no_engines(tiny_lasan_checkpoint, cpu_repository, tmp_path):
    with pytest.raises(ConfigError, match="--profile gpu or jetson"):
        write_repository(tiny_lasan_checkpoint, tmp_path / "repo", "cpu", trtexec=True)
    with pytest.raises(ModelRepositoryError, match="not tensorrt_plan"):
        engine_builds(cpu_repository, False)


def test_gpu_check_script_is_valid_shell_and_names_its_steps():
    script = ROOT / "scripts" / "gpu-check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for step in ("--trtexec", "build_engines.sh", "tritonserver", "lasan.build.tensorrt parity", "perf_analyzer"):
        assert step in text, step


@pytest.mark.slow
def test_parity_step_of_the_gpu_script_passes_and_fails_on_a_real_server(triton_server, tiny_hybrid_checkpoint):
    # The same check the GPU script runs, here against the CPU server: the right checkpoint passes,
    # another model's checkpoint is caught.
    report = served_parity(triton_server.grpc_url, triton_server.checkpoint, atol=1e-4)
    assert report["ecgs"] == 4 and report["max_abs_diff"] <= 1e-4
    with pytest.raises(ModelRepositoryError, match="differs from the checkpoint by"):
        served_parity(triton_server.grpc_url, tiny_hybrid_checkpoint, atol=1e-4)
