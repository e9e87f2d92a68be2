"""The experiment grid: config validation, the verdict rule, the table, and (slow) every row end to end."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lasan.errors import ConfigError
from lasan.models import CLASSES, EncoderSpec
from lasan.preprocessing import InputSpec
from lasan.train.dataset import ECGArrays
from lasan.train.experiment_config import EXPERIMENTS, GridConfig, load_grid_config
from lasan.train.experiment_table import (
    NOT_COMPARABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    analyse,
    direction_verdict,
    level_verdict,
    table_lines,
)
from lasan.train.experiments import FoundationClassifier, FoundationProbeConfig
from lasan.train.train_config import TrainingConfig
from lasan.train.trainer import train_model

ROOT = Path(__file__).resolve().parents[2]
FULL = ROOT / "configs" / "experiments.yaml"
SMOKE = ROOT / "configs" / "experiments_smoke.yaml"


def test_shipped_configs_load_and_name_every_row():
    full = load_grid_config(FULL)
    assert full.runs() == ("lasan", "plain_cnn", "clinical_lr", "fm_linear_probe", "fm_finetune", "fm_lp_ft",
                           "hybrid_finetune")
    assert full.hubert_ecg_path is None and full.label is None  # no HuBERT-ECG weights here: no hubert_* rows
    assert full.masking_groups == ("V1-V3", "lateral (I, V5, V6)", "limb (I, II)", "precordial (V1-V6)")
    smoke = load_grid_config(SMOKE)  # the smoke run exercises every row the code knows (HuBERT aside)
    assert set(smoke.runs()) == {e for e in EXPERIMENTS if not e.startswith("hubert_")}
    assert "SMOKE" in (smoke.label or "")
    # Each hybrid row is a lasan-train config whose encoder carries the row's strategy.
    tcfg = full.train_config("hybrid_lp_ft", Path("m.csv"))
    assert tcfg.model.encoder.strategy == "lp_ft" and tcfg.model.encoder.lp_epochs == 3
    assert tcfg.training.encoder_lr == pytest.approx(3e-4) and tcfg.training.epochs == full.training.epochs
    assert full.encoder_for("fm_linear_probe").strategy == "linear_probe"


@pytest.mark.parametrize(
    "patch, word",
    [
        ({"experiments": ["lasan", "resnet"]}, "resnet"),
        ({"masking": {"groups": ["V7"]}}, "V7"),
        ({"colour": "red"}, "colour"),
        ({"foundation": {"encoder": {"kind": "hubert_ecg"}}}, "hubert_ecg_path"),
        ({"experiments": ["plain_cnn"]}, "masking.model"),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(patch, word):
    raw = {"data": {"synth": {"patients": 30}}, **patch}
    with pytest.raises(ConfigError, match=word.replace(".", r"\.")):
        GridConfig.from_dict(raw)


def test_direction_verdict_follows_one_rule():
    ci = lambda est, lo, hi: {"estimate": est, "low": lo, "high": hi}  # noqa: E731
    assert direction_verdict(ci(0.05, 0.01, 0.09), 1)[0] == REPRODUCED
    verdict, why = direction_verdict(ci(0.05, -0.01, 0.09), 1)
    assert verdict == NOT_REPRODUCED and "includes 0" in why and "same direction" in why
    verdict, why = direction_verdict(ci(-0.05, -0.09, -0.01), 1)
    assert verdict == NOT_REPRODUCED and "opposite" in why and "excludes 0" in why
    assert direction_verdict(ci(-0.05, -0.09, -0.01), -1)[0] == REPRODUCED
    assert direction_verdict(ci(0.05, 0.01, 0.09), 0)[0] == NOT_COMPARABLE
    assert direction_verdict(ci(float("nan"), float("nan"), float("nan")), 1)[0] == NOT_COMPARABLE


def test_absolute_levels_are_never_comparable_but_say_where_the_paper_falls():
    verdict, why = level_verdict((0.911, 0.911), {"estimate": 0.95, "low": 0.92, "high": 0.98})
    assert verdict == NOT_COMPARABLE and "below our CI" in why and "synthetic" in why
    assert "overlaps" in level_verdict((0.932, 0.990), {"estimate": 0.95, "low": 0.92, "high": 0.98})[1]
    assert level_verdict(None, {"estimate": 0.9, "low": 0.8, "high": 0.95})[1].startswith("the paper reports no")


def _probs(y: np.ndarray, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class probabilities whose separation grows with ``signal`` (N,) plus noise."""
    logits = rng.normal(0, 1, (len(y), 3))
    logits[np.arange(len(y)), y] += signal
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_analyse_reproduces_a_planted_effect_and_the_masking_contrast():
    """Planted: the hybrid separates better than LASAN; zeroing V1-V3 destroys LASAN's ARVC signal only."""
    rng = np.random.default_rng(0)
    n = 240
    y = np.arange(n) % 3
    pids = tuple(f"p{i // 2}" for i in range(n))  # two ECGs per patient
    test = ECGArrays(np.zeros((n, 1, 1), np.float32), y, pids, CLASSES)
    lasan = _probs(y, np.full(n, 1.5), rng)
    hybrid = _probs(y, np.full(n, 4.0), rng)
    v1_v3 = lasan.copy()
    v1_v3[:, 0] = rng.uniform(0, 1, n)  # ARVC score is now noise; LQTS and control untouched
    cfg = replace(load_grid_config(SMOKE), experiments=("lasan", "hybrid_finetune"), masking_groups=("V1-V3",))
    res = analyse(cfg, {"test": test}, {"lasan": {"test": lasan}, "hybrid_finetune": {"test": hybrid}},
                  {"V1-V3": v1_v3}, {})
    (effect,) = res["effects"]
    assert (effect["a"], effect["b"]) == ("hybrid_finetune", "lasan") and effect["verdict"] == REPRODUCED
    group = res["masking"]["groups"]["V1-V3"]
    assert group["metrics"]["drop_ARVC"]["low"] > 0.1 and group["verdict"] == REPRODUCED
    assert group["metrics"]["drop_LQTS"]["estimate"] == pytest.approx(0.0)
    assert group["contrast"]["verdict"] == REPRODUCED
    assert res["models"]["lasan"]["paper"].startswith("0.911")
    text = "\n".join(table_lines(res))
    assert "HuBERT-ECG + LASAN hybrid (the paper's best) | not run" in text
    # header 2; section + 2 models + HuBERT 4; section + 1 effect 2; section + group + contrast 3
    assert text.count("\n") + 1 == 2 + 4 + 2 + 3


def test_foundation_alone_linear_probe_trains_only_the_head():
    from lasan.models.encoders import BuiltinEncoder

    torch.manual_seed(0)
    t = 128
    rng = np.random.default_rng(0)
    y = np.arange(36) % 3
    x = rng.normal(0, 1, (36, 8, t)).astype(np.float32)
    x[y == 0, 2:5] += 1.0
    data = ECGArrays(x, y.astype(np.int64), tuple(f"p{i}" for i in range(36)), CLASSES)
    spec = EncoderSpec(kind="builtin", strategy="linear_probe", options={"width": 4, "depth": 2, "out_dim": 8})
    model = FoundationClassifier(FoundationProbeConfig(spec, InputSpec(n_samples=t), CLASSES), BuiltinEncoder(8, 4, 2, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_model(model, data, data, TrainingConfig(epochs=2, batch_size=12, seed=0, augment=False), progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("foundation."))  # BN stats too
    assert not torch.equal(before["head.weight"], after["head.weight"])


@pytest.mark.slow
def test_smoke_grid_runs_every_row_writes_the_table_and_resumes(tmp_path):
    """configs/experiments_smoke.yaml end to end through the CLI (tiny cohort, 1-2 epochs, 2 seeds): about a minute."""
    from lasan.cli import main

    out, docs = tmp_path / "grid", tmp_path / "docs" / "experiments.md"
    argv = ["experiments", "--config", str(SMOKE), "--out", str(out), "--docs", "--docs-path", str(docs),
            "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "experiments.json").read_text())
    runs = load_grid_config(SMOKE).runs()
    assert list(results["models"]) == list(runs)
    for m in results["models"].values():
        assert set(m["metrics"]) >= {"macro_auroc", "auroc_ARVC", "auroc_LQTS", "auroc_control"}
        assert m["metrics"]["macro_auroc"]["n_boot"] > 0 and m["verdict"] and m["why"]
    assert {(e["a"], e["b"]) for e in results["effects"]} >= {("lasan", "plain_cnn"), ("hybrid_finetune", "lasan"),
                                                             ("fm_finetune", "fm_linear_probe")}
    assert list(results["masking"]["groups"]) == list(load_grid_config(SMOKE).masking_groups)
    text = (out / "experiments.md").read_text()
    assert docs.read_text() == text and "SMOKE RUN" in text
    for m in results["models"].values():
        assert f"| {m['label']} |" in text
    assert "V1-V3 zeroed: ARVC drop minus LQTS drop" in text and "lateral (I, V5, V6) zeroed" in text

    # One pretrained encoder for every strategy: the frozen hybrid's encoder IS the FM rows' encoder.
    from lasan.checkpoint import load_checkpoint

    for seed in (0, 1):
        encoder = torch.load(out / "runs" / "foundation_pretrained" / f"seed{seed}" / "encoder.pt", weights_only=True)
        frozen = load_checkpoint(out / "runs" / "hybrid_linear_probe" / f"seed{seed}" / "checkpoint.pt")
        assert all(torch.equal(encoder[k], frozen.model.foundation.state_dict()[k]) for k in encoder)
    # Two training seeds per trained row, each reported; the deterministic clinical model is fitted once.
    assert len(results["models"]["lasan"]["single_seed"]) == 2 and len(results["models"]["clinical_lr"]["single_seed"]) == 1
    assert "single seeds" in text

    # Resume: a row whose result was lost is rescored from its checkpoint, not retrained; the rest is reused.
    ckpt = out / "runs" / "lasan" / "seed1" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    (out / "runs" / "lasan" / "seed1" / "result.json").unlink()
    assert main(argv) == 0
    again = json.loads((out / "experiments.json").read_text())
    assert ckpt.stat().st_mtime_ns == stamp
    assert again["models"] == results["models"] | {"lasan": again["models"]["lasan"]}
    # A cohort written by another version of the generator is regenerated, so the table describes today's cohort.
    stamp, manifest = out / "cohort" / "generator.json", out / "cohort" / "manifest.csv"
    stamp.write_text(json.dumps({"digest": "an older generator"}))
    written = manifest.stat().st_mtime_ns
    assert main(argv) == 0
    assert manifest.stat().st_mtime_ns != written and "older" not in stamp.read_text()
    for key in ("macro_auroc", "auroc_ARVC"):  # rescored from the same checkpoint: the same AUROCs
        assert again["models"]["lasan"]["metrics"][key]["estimate"] == pytest.approx(
            results["models"]["lasan"]["metrics"][key]["estimate"], abs=1e-9
        )


def test_cli_registers_the_subcommand():
    from lasan.cli import COMMANDS
    from lasan.train.experiments import configure

    assert COMMANDS["experiments"][0] == "lasan.train.experiments"
    parser = argparse.ArgumentParser()
    configure(parser)
    ns = parser.parse_args(["--config", "c.yaml", "--out", "d", "--docs"])
    assert ns.docs and ns.out == "d" and ns.docs_path.endswith("experiments.md")
