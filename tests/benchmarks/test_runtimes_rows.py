"""The runtime rows: ratios against fp32 TorchScript, and the best variant only among accurate ones."""

from __future__ import annotations

from lasan.benchmarks.runtimes import BASELINE, _best, _served_rows


def _measure(throughput: float, pss: float) -> dict:
    proc = [{"name": "tritonserver", "rss_mib": 60.0}, {"name": "encoder", "rss_mib": pss / 2}]
    return {"throughput": throughput, "p99_ms": 500.0, "idle": proc, "idle_pss_mib": pss - 10, "idle_rss_mib": pss,
            "load": proc, "load_pss_mib": pss, "load_rss_mib": pss + 50}


def test_ratios_are_against_fp32_torchscript_and_memory_rows_name_every_process():
    served = {BASELINE: _measure(10.0, 900.0), ("onnxruntime", "int8"): _measure(35.0, 300.0)}
    rows = _served_rows("LASAN", served, {BASELINE: 17.0, ("onnxruntime", "int8"): 4.5})
    throughput = {r.metric: r for r in rows if "served ensemble" in r.metric}
    assert throughput["LASAN served ensemble at concurrency 8, onnxruntime int8"].ratio == 3.5
    assert throughput["LASAN served ensemble at concurrency 8, torchscript fp32"].ratio == 1.0
    memory = [r for r in rows if "memory under load" in r.metric]
    assert [r.value for r in memory] == [900.0, 300.0]
    assert "tritonserver 60" in memory[0].note and "encoder 450" in memory[0].note
    assert [r.value for r in rows if "model files" in r.metric] == [17.0, 4.5]


def test_best_variant_is_the_fastest_that_kept_its_accuracy():
    served = {BASELINE: _measure(10.0, 900.0), ("onnxruntime", "int8"): _measure(35.0, 300.0),
              ("torchscript", "bf16"): _measure(20.0, 900.0)}
    assert _best(served, {BASELINE, ("onnxruntime", "int8"), ("torchscript", "bf16")}) == ("onnxruntime", "int8")
    assert _best(served, {BASELINE, ("torchscript", "bf16")}) == ("torchscript", "bf16")  # int8 failed its gate
    assert _best(served, set()) is None
