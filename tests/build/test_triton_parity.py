"""The served ensemble equals the in-process checkpoint (real Triton, real gRPC), batched or not.

In-process reference = lasan.preprocessing.preprocess_array + ``checkpoint.served_model()``
(calibration and occlusion importance included). Three servers: the session's tiny LASAN
(no calibration stored: an old checkpoint, served with T = 1), a calibrated tiny hybrid,
and a constructed LASAN whose decision depends on lead V2 only (calibrated, T = 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import make_single_lead_checkpoint, make_tiny_checkpoint, simple_ecg

from lasan.build.repository import write_repository
from lasan.build.serve import TritonServer, free_port
from lasan.checkpoint import load_checkpoint
from lasan.leads import STANDARD_LEADS
from lasan.preprocessing import preprocess_array
from lasan.tensor_names import (
    ENSEMBLE_MODEL,
    ENSEMBLE_OUTPUTS,
    INPUT_ECG,
    INPUT_SAMPLING_RATE,
    OUTPUT_AGGREGATOR_WEIGHTS,
    OUTPUT_ATTENTION,
    OUTPUT_CONFIRMATION,
    OUTPUT_LEAD_IMPORTANCE,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCREENING,
    PREPROCESS_MODEL,
)

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow
ATOL = 1e-4


def _canonical(signal: np.ndarray, leads: tuple[str, ...]) -> np.ndarray:
    return signal[[leads.index(lead) for lead in STANDARD_LEADS]]


def _ecgs() -> list[tuple[str, np.ndarray, float]]:
    rng = np.random.default_rng(42)
    cases = [
        ("simple-12@500Hz-10s", simple_ecg(rng, 12, 500.0, 10.0), 500.0),
        ("simple-8@250Hz-8s", simple_ecg(rng, 8, 250.0, 8.0), 250.0),
        ("simple-12@360Hz-3s", simple_ecg(rng, 12, 360.0, 3.0), 360.0),  # shorter than the window: padded
    ]
    try:
        from lasan.train.synth import synthesize_ecg
    except ImportError:
        pass
    else:
        for label in ("ARVC", "LQTS", "control"):
            rec, _ = synthesize_ecg(np.random.default_rng(7), label)
            cases.append((f"synth-{label}", _canonical(np.asarray(rec.signal, np.float32), rec.leads), rec.fs))
    cases.append(_mortara())
    return cases


def _mortara() -> tuple[str, np.ndarray, float]:
    from pydicom.data import get_testdata_file

    from lasan.formats import read_ecg

    rec = read_ecg(get_testdata_file("waveform_ecg.dcm"))
    return "mortara-dicom-12@1000Hz", _canonical(np.asarray(rec.signal, np.float32), rec.leads), rec.fs


ECGS = _ecgs()


def _reference(model: torch.nn.Module, spec, signal: np.ndarray, fs: float) -> dict[str, np.ndarray]:
    """In-process outputs of a :class:`lasan.models.ServedLASAN` for one ECG."""
    x = torch.from_numpy(preprocess_array(signal, fs, None, spec))[None]  # (1, 8, T)
    with torch.inference_mode():
        probs, importance, aggregator, attention = model(x)
    return {
        OUTPUT_PROBABILITIES: probs[0].numpy(),
        OUTPUT_LEAD_IMPORTANCE: importance[0].numpy(),
        OUTPUT_AGGREGATOR_WEIGHTS: aggregator[0].numpy(),
        OUTPUT_ATTENTION: attention[0].numpy(),
    }


def _inputs(batch: np.ndarray, rates: np.ndarray) -> list:
    ecg = grpcclient.InferInput(INPUT_ECG, list(batch.shape), "FP32")
    ecg.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    fs = grpcclient.InferInput(INPUT_SAMPLING_RATE, list(rates.shape), "FP32")
    fs.set_data_from_numpy(np.ascontiguousarray(rates, dtype=np.float32))
    return [ecg, fs]


OUTPUTS = ENSEMBLE_OUTPUTS
FLOAT_OUTPUTS = (OUTPUT_PROBABILITIES, OUTPUT_LEAD_IMPORTANCE, OUTPUT_AGGREGATOR_WEIGHTS, OUTPUT_ATTENTION)


def _infer(client, signal: np.ndarray, fs: float) -> dict[str, np.ndarray]:
    res = client.infer(ENSEMBLE_MODEL, _inputs(signal[None], np.array([[fs]])))
    return {name: res.as_numpy(name)[0] for name in OUTPUTS}


def _assert_parity(served: dict[str, np.ndarray], ref: dict[str, np.ndarray], thresholds: dict, classes, what: str):
    for name in FLOAT_OUTPUTS:
        np.testing.assert_allclose(served[name], ref[name], atol=ATOL, rtol=0, err_msg=f"{what}: {name}")
    probs = served[OUTPUT_PROBABILITIES]
    assert served[OUTPUT_SCREENING].dtype == np.bool_
    want_s = [probs[i] >= thresholds["screening"][c] for i, c in enumerate(classes)]
    want_c = [probs[i] >= thresholds["confirmation"][c] for i, c in enumerate(classes)]
    assert served[OUTPUT_SCREENING].tolist() == want_s, what
    assert served[OUTPUT_CONFIRMATION].tolist() == want_c, what


@pytest.fixture(scope="module")
def lasan_case(triton_server):
    ckpt = load_checkpoint(triton_server.checkpoint)
    assert not ckpt.info.calibration  # the session's checkpoint stands for one written before calibration
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client, ckpt, ckpt.served_model()
    client.close()


def _serve(checkpoint: Path, tmp_path_factory, name: str) -> Iterator[tuple]:
    repo = write_repository(checkpoint, tmp_path_factory.mktemp(name) / "repo", onnx=False).path
    server = TritonServer(
        repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        work_dir=tmp_path_factory.mktemp(f"{name}_triton"),
    )
    with server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        ckpt = load_checkpoint(checkpoint)
        yield client, ckpt, ckpt.served_model()
        client.close()


@pytest.fixture(scope="module")
def hybrid_case(tmp_path_factory) -> Iterator[tuple]:
    # Vector scaling (per-class scale and bias) exercises the general calibration path.
    calibration = {"method": "vector", "scale": [0.6, 1.4, 0.9], "bias": [0.2, -0.1, 0.0], "fitted_on": "test"}
    path = make_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "hybrid_cal.pt", "hybrid", seed=1, calibration=calibration
    )
    yield from _serve(path, tmp_path_factory, "hybrid")


@pytest.fixture(scope="module")
def single_lead_case(tmp_path_factory) -> Iterator[tuple]:
    path = make_single_lead_checkpoint(tmp_path_factory.mktemp("ckpt") / "v2_only.pt", "V2", temperature=2.0)
    yield from _serve(path, tmp_path_factory, "v2_only")


@pytest.mark.parametrize("name,signal,fs", ECGS, ids=[c[0] for c in ECGS])
def test_lasan_ensemble_matches_in_process(lasan_case, name, signal, fs):
    client, ckpt, model = lasan_case
    served = _infer(client, signal, fs)
    ref = _reference(model, ckpt.config.input, signal, fs)
    _assert_parity(served, ref, ckpt.info.thresholds, ckpt.config.classes, name)


def test_outputs_are_not_degenerate(lasan_case):
    # Parity would be hollow if every ECG gave the same numbers.
    client, _, _ = lasan_case
    served = [_infer(client, s, fs) for _, s, fs in ECGS[:3]]
    probs = np.stack([s[OUTPUT_PROBABILITIES] for s in served])
    assert np.ptp(probs, axis=0).max() > 1e-3
    for name in (OUTPUT_LEAD_IMPORTANCE, OUTPUT_AGGREGATOR_WEIGHTS):
        weights = np.stack([s[name] for s in served])
        assert np.ptp(weights, axis=1).min() > 1e-2, name  # not uniform
        assert (weights >= 0).all(), name
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("idx", [0, len(ECGS) - 1], ids=["synthetic", "mortara"])
def test_hybrid_ensemble_matches_in_process(hybrid_case, idx):
    client, ckpt, model = hybrid_case
    name, signal, fs = ECGS[idx]
    served = _infer(client, signal, fs)
    ref = _reference(model, ckpt.config.input, signal, fs)
    _assert_parity(served, ref, ckpt.info.thresholds, ckpt.config.classes, f"hybrid {name}")
    # The calibration is really applied: the plain softmax of the same logits differs.
    x = torch.from_numpy(preprocess_array(signal, fs, None, ckpt.config.input))[None]
    with torch.inference_mode():
        plain = torch.softmax(ckpt.model(x)[0], -1)[0].numpy()
    assert np.abs(plain - served[OUTPUT_PROBABILITIES]).max() > 1e-3


@pytest.mark.parametrize("idx", [0, 1, 3, len(ECGS) - 1], ids=lambda i: ECGS[i][0])
def test_importance_follows_the_one_lead_that_decides(single_lead_case, idx):
    # Served and in-process agree, and both put (nearly) all importance on V2, the only lead
    # whose removal changes the decision; zeroing another lead in mV changes no probability.
    client, ckpt, model = single_lead_case
    name, signal, fs = ECGS[idx]
    served = _infer(client, signal, fs)
    ref = _reference(model, ckpt.config.input, signal, fs)
    _assert_parity(served, ref, ckpt.info.thresholds, ckpt.config.classes, f"V2-only {name}")
    v2 = ckpt.config.input.leads.index("V2")
    for importance in (served[OUTPUT_LEAD_IMPORTANCE], ref[OUTPUT_LEAD_IMPORTANCE]):
        assert int(np.argmax(importance)) == v2
        assert importance[v2] > 0.95, importance
    canonical = list(STANDARD_LEADS if signal.shape[0] == 12 else ckpt.config.input.leads)
    for lead in ("I", "V5"):
        occluded = signal.copy()
        occluded[canonical.index(lead)] = 0.0
        np.testing.assert_allclose(
            _infer(client, occluded, fs)[OUTPUT_PROBABILITIES], served[OUTPUT_PROBABILITIES], atol=1e-4
        )
    occluded = signal.copy()
    occluded[canonical.index("V2")] = 0.0
    c = int(np.argmax(served[OUTPUT_PROBABILITIES]))
    assert _infer(client, occluded, fs)[OUTPUT_PROBABILITIES][c] < served[OUTPUT_PROBABILITIES][c] - 0.05


def test_batch_dimension_in_one_request_equals_single_requests(lasan_case):
    client, _, _ = lasan_case
    rng = np.random.default_rng(5)
    batch = np.stack([simple_ecg(rng, 12, 500.0, 6.0) for _ in range(3)])
    rates = np.full((3, 1), 500.0, dtype=np.float32)
    res = client.infer(ENSEMBLE_MODEL, _inputs(batch, rates))
    for i in range(3):
        single = _infer(client, batch[i], 500.0)
        for name in OUTPUTS:
            np.testing.assert_allclose(res.as_numpy(name)[i], single[name], atol=1e-5, rtol=0, err_msg=name)


def _preprocess_stats(client) -> tuple[int, int]:
    stats = client.get_inference_statistics(PREPROCESS_MODEL, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_requests_are_batched_and_equal_single_ones(lasan_case):
    client, _, _ = lasan_case
    rng = np.random.default_rng(11)
    signals = [simple_ecg(rng, 12, 500.0, 10.0) for _ in range(8)]
    singles = [_infer(client, s, 500.0) for s in signals]
    before = _preprocess_stats(client)
    results: dict[int, object] = {}
    done = threading.Semaphore(0)

    def callback(i):
        def _cb(result, error):
            results[i] = error if error is not None else result
            done.release()

        return _cb

    for _ in range(3):  # a few bursts: at least one of them meets the dynamic batcher
        results.clear()
        for i, s in enumerate(signals):
            client.async_infer(ENSEMBLE_MODEL, _inputs(s[None], np.array([[500.0]])), callback(i))
        for _ in signals:
            assert done.acquire(timeout=120)
        for i, single in enumerate(singles):
            res = results[i]
            assert not isinstance(res, Exception), res
            for name in OUTPUTS:
                np.testing.assert_allclose(res.as_numpy(name)[0], single[name], atol=1e-5, rtol=0, err_msg=name)
    inferences, executions = (a - b for a, b in zip(_preprocess_stats(client), before, strict=True))
    assert inferences == 3 * len(signals)
    assert executions < inferences, "dynamic batching never combined concurrent requests"


BAD_REQUESTS = [
    ("10 leads", lambda s: s[:10], 500.0, "must have 8 leads (I, II, V1-V6) or 12 leads"),
    (
        "NaN sample",
        lambda s: np.where(np.arange(s.shape[1]) == 100, np.nan, s).astype(np.float32),
        500.0,
        "contain NaN or infinite samples",
    ),
    ("rate 50 Hz", lambda s: s, 50.0, "sampling rate 50 Hz is outside the supported 100-20000 Hz range"),
    ("rate NaN", lambda s: s, float("nan"), "sampling rate nan Hz is outside the supported"),
    ("1 s long", lambda s: s[:, :500], 500.0, "the ECG is 1.00 s long; at least 2 s are needed"),
]


@pytest.mark.parametrize("what,make,fs,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(lasan_case, what, make, fs, message):
    client, ckpt, model = lasan_case
    good = ECGS[0][1]
    with pytest.raises(InferenceServerException) as err:
        client.infer(ENSEMBLE_MODEL, _inputs(make(good)[None], np.array([[fs]])))
    assert message in err.value.message(), err.value.message()
    assert client.is_model_ready(ENSEMBLE_MODEL)
    served = _infer(client, good, 500.0)
    _assert_parity(
        served,
        _reference(model, ckpt.config.input, good, 500.0),
        ckpt.info.thresholds,
        ckpt.config.classes,
        "after a bad request",
    )


def test_wrong_rank_is_refused_by_triton(lasan_case):
    client, _, _ = lasan_case
    flat = np.zeros((1, 5000), dtype=np.float32)  # [batch, samples]: no lead axis
    with pytest.raises(InferenceServerException) as err:
        client.infer(ENSEMBLE_MODEL, _inputs(flat, np.array([[500.0]])))
    assert INPUT_ECG in err.value.message()
    assert client.is_server_live()


def test_bad_request_in_a_batch_fails_only_its_own_request(lasan_case):
    client, _, _ = lasan_case
    good = ECGS[0][1]
    bad = good.copy()
    bad[0, 0] = np.nan
    results: dict[str, object] = {}
    done = threading.Semaphore(0)

    def cb(key):
        def _cb(result, error):
            results[key] = error if error is not None else result
            done.release()

        return _cb

    for key, sig in (("good1", good), ("bad", bad), ("good2", good)):
        client.async_infer(ENSEMBLE_MODEL, _inputs(sig[None], np.array([[500.0]])), cb(key))
    for _ in range(3):
        assert done.acquire(timeout=120)
    assert isinstance(results["bad"], InferenceServerException)
    assert "NaN" in results["bad"].message()
    for key in ("good1", "good2"):
        assert not isinstance(results[key], Exception), results[key]


def _perf_analyzer() -> tuple[str, dict[str, str]]:
    import sysconfig

    exe = shutil.which("perf_analyzer") or str(Path(sysconfig.get_paths()["scripts"]) / "perf_analyzer")
    if not Path(exe).exists():
        pytest.skip("perf_analyzer is not installed (it ships with tritonclient[all] / tritonclient 2.51 wheels)")
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime as cr  # perf_analyzer links libcudart.so.12 even for CPU servers

        libdir = str(Path(list(cr.__path__)[0]) / "lib")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
    except ImportError:
        pass
    missing = [
        line.split()[0]
        for line in subprocess.run(["ldd", exe], capture_output=True, text=True, env=env).stdout.splitlines()
        if "not found" in line
    ]
    if missing:
        pytest.skip(
            f"perf_analyzer cannot run: missing {', '.join(missing)} "
            "(apt-get install libb64-0d; pip install nvidia-cuda-runtime-cu12)"
        )
    return exe, env


def test_perf_analyzer_runs_against_the_ensemble(triton_server, tmp_path: Path):
    exe, env = _perf_analyzer()
    _, signal, fs = ECGS[-1]  # the real Mortara ECG, 12 x 10000 at 1000 Hz
    data = {
        "data": [
            {INPUT_ECG: {"content": signal.ravel().tolist(), "shape": list(signal.shape)}, INPUT_SAMPLING_RATE: [fs]}
        ]
    }
    (tmp_path / "ecg.json").write_text(json.dumps(data))
    cmd = [
        exe,
        "-m",
        ENSEMBLE_MODEL,
        "-i",
        "grpc",
        "-u",
        triton_server.grpc_url,
        "--shape",
        f"{INPUT_ECG}:{signal.shape[0]},{signal.shape[1]}",
        "--shape",
        f"{INPUT_SAMPLING_RATE}:1",
        "--input-data",
        str(tmp_path / "ecg.json"),
        "--concurrency-range",
        "2",
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        "10",
        "--max-trials",
        "3",
        "--stability-percentage",
        "100",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Throughput:" in proc.stdout and "infer/sec" in proc.stdout, proc.stdout


# --- the other cpu runtimes (lasan build --runtime): same parity, through a real Triton ----------------

RUNTIME_CASES = [("onnxruntime", "lasan"), ("onnxruntime", "hybrid"), ("torch-export", "lasan")]


def _stub_libraries(server_pid: int) -> dict[int, str]:
    """``{pid: mapped files}`` of the python-backend stubs the server started (one per model instance)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == server_pid and b"triton_python_backend_stub" in cmdline:
                out[int(stat.parent.name)] = (stat.parent / "maps").read_text() + cmdline.decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    return out


@pytest.fixture(scope="module", params=RUNTIME_CASES, ids=[f"{r}-{k}" for r, k in RUNTIME_CASES])
def runtime_case(request, tiny_lasan_checkpoint, tmp_path_factory) -> Iterator[tuple]:
    runtime, kind = request.param
    if kind == "lasan":
        path = tiny_lasan_checkpoint
    else:
        calibration = {"method": "vector", "scale": [0.6, 1.4, 0.9], "bias": [0.2, -0.1, 0.0], "fitted_on": "test"}
        path = make_tiny_checkpoint(
            tmp_path_factory.mktemp("ckpt") / "hybrid_rt.pt", "hybrid", seed=1, calibration=calibration
        )
    name = f"{runtime}-{kind}"
    repo = write_repository(path, tmp_path_factory.mktemp(name) / "repo", runtime=runtime, onnx=False).path
    server = TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        work_dir=tmp_path_factory.mktemp(f"{name}_triton"),
    )
    with server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        ckpt = load_checkpoint(path)
        yield runtime, kind, repo, server, client, ckpt, ckpt.served_model()
        client.close()


def test_runtime_ensemble_matches_checkpoint(runtime_case):
    runtime, kind, repo, _, client, ckpt, model = runtime_case
    meta = json.loads((repo / "encoder" / "1" / "metadata.json").read_text())
    assert meta["runtime"]["runtime"] == runtime and meta["runtime"]["precision"] == "fp32"
    artefact = {"onnxruntime": "model.onnx", "torch-export": "model.pt2"}[runtime]
    assert (repo / "encoder" / "1" / artefact).is_file() and not (repo / "encoder" / "1" / "model.pt").exists()
    for name, signal, fs in ECGS:
        served = _infer(client, signal, fs)
        ref = _reference(model, ckpt.config.input, signal, fs)
        _assert_parity(served, ref, ckpt.info.thresholds, ckpt.config.classes, f"{runtime} {kind} {name}")


def test_runtime_batch_in_one_request_equals_single_requests(runtime_case):
    _, _, _, _, client, _, _ = runtime_case
    rng = np.random.default_rng(5)
    batch = np.stack([simple_ecg(rng, 12, 500.0, 6.0) for _ in range(3)])
    res = client.infer(ENSEMBLE_MODEL, _inputs(batch, np.full((3, 1), 500.0, dtype=np.float32)))
    for i in range(3):
        single = _infer(client, batch[i], 500.0)
        for name in OUTPUTS:
            np.testing.assert_allclose(res.as_numpy(name)[i], single[name], atol=1e-5, rtol=0, err_msg=name)


def test_onnxruntime_stubs_do_not_load_torch(runtime_case):
    # The point of the ONNX Runtime path on a small box: no stub pays for torch (~250 MB each).
    runtime, _, _, server, _, _, _ = runtime_case
    if runtime != "onnxruntime":
        pytest.skip("only the onnxruntime build promises torch-free stubs")
    stubs = _stub_libraries(server.pid)
    assert len(stubs) >= 4, f"expected a stub per python-backend model, found {len(stubs)}"
    loaded_ort = [pid for pid, maps in stubs.items() if "onnxruntime" in maps]
    assert len(loaded_ort) >= 2, "encoder and fusion stubs should run ONNX Runtime"
    with_torch = {pid: maps[-200:] for pid, maps in stubs.items() if "libtorch" in maps}
    assert not with_torch, f"stubs that loaded torch: {with_torch}"
