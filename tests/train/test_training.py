"""Training loop: loss goes down, transfer strategies freeze the right parameters,
resume continues identically, same seed -> same weights, SSL pretraining learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lasan.errors import CheckpointError, ConfigError
from lasan.models import CLASSES, EncoderSpec, HybridConfig, LASANConfig, build_model
from lasan.preprocessing import InputSpec
from lasan.train.dataset import Augment, ECGArrays
from lasan.train.pretrain import pretrain_encoder, segment_mask
from lasan.train.train_config import PretrainConfig, TrainConfig, TrainingConfig
from lasan.train.trainer import aggregator_entropy, drop_leads, foundation_frozen, train_model

T = 256
TINY = LASANConfig(
    input=InputSpec(n_samples=T), cnn_channels=(4, 8, 8, 16), d_model=16, n_heads=4, ff_dim=32, head_hidden=8
)


def hybrid(strategy: str, lp_epochs: int = 1) -> HybridConfig:
    enc = EncoderSpec(
        kind="builtin", strategy=strategy, lp_epochs=lp_epochs, options={"width": 4, "depth": 2, "out_dim": 8}
    )
    return HybridConfig(lasan=TINY, encoder=enc, fusion_dim=16)


def toy_split(n: int, seed: int) -> ECGArrays:
    """Class 0: a slow wave in V1-V3; class 1: a fast wave in V5-V6; class 2: noise only."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(0, 1.0, (n, 8, T)).astype(np.float32)
    t = np.arange(T) / 50.0
    x[y == 0, 2:5] += 1.5 * np.sin(2 * np.pi * 1.0 * t)
    x[y == 1, 6:8] += 1.5 * np.sin(2 * np.pi * 4.0 * t)
    return ECGArrays(x, y.astype(np.int64), tuple(f"p{i}" for i in range(n)), CLASSES)


TRAIN, VAL = toy_split(48, 0), toy_split(24, 1)
FAST = TrainingConfig(epochs=4, batch_size=16, lr=3e-3, patience=10, seed=0, augment=True)


def fresh(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


def test_short_training_reduces_the_loss_and_learns():
    result = train_model(
        fresh(TINY), TRAIN, VAL, TrainingConfig(epochs=6, batch_size=16, lr=3e-3, seed=0), progress=False
    )
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.best_val_auroc > 0.8
    assert not result.model.training


def test_same_seed_gives_the_same_weights():
    a = train_model(fresh(TINY), TRAIN, VAL, FAST, progress=False).model.state_dict()
    b = train_model(fresh(TINY), TRAIN, VAL, FAST, progress=False).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    c = train_model(fresh(TINY), TRAIN, VAL, TrainingConfig(**{**FAST.__dict__, "seed": 1}), progress=False)
    assert any(not torch.equal(a[k], c.model.state_dict()[k]) for k in a if a[k].is_floating_point())


def test_resume_continues_exactly(tmp_path):
    straight = train_model(fresh(TINY), TRAIN, VAL, FAST, state_path=tmp_path / "a.pt", progress=False)
    state = tmp_path / "b.pt"
    first = train_model(fresh(TINY), TRAIN, VAL, FAST, state_path=state, stop_after_epoch=2, progress=False)
    assert first.epochs_run == 2
    # A new process would rebuild the model from the config with another init: resume must not care.
    resumed = train_model(fresh(TINY, seed=123), TRAIN, VAL, FAST, state_path=state, resume=True, progress=False)
    assert resumed.history == straight.history
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="resume"):
        train_model(fresh(TINY), TRAIN, VAL, FAST, state_path=tmp_path / "none.pt", resume=True, progress=False)


def test_early_stopping_keeps_the_best_epoch():
    cfg = TrainingConfig(epochs=30, batch_size=16, lr=3e-3, patience=2, seed=0)
    result = train_model(fresh(TINY), TRAIN, VAL, cfg, progress=False)
    best = max(h["val_macro_auroc"] for h in result.history)
    assert result.best_val_auroc == best
    if result.stopped_early:
        assert result.epochs_run == result.best_epoch + 2


def _foundation_snapshot(model):
    return {k: v.clone() for k, v in model.foundation.state_dict().items()}


def _changed(before, model):
    after = model.foundation.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_linear_probe_keeps_the_encoder_and_its_statistics_fixed():
    model = fresh(hybrid("linear_probe"))
    before = _foundation_snapshot(model)  # includes BatchNorm running statistics
    lasan_before = model.encoder.lead_cnn.blocks[0].weight.clone()
    train_model(model, TRAIN, VAL, TrainingConfig(epochs=2, batch_size=16, seed=0), progress=False)
    assert not _changed(before, model)
    assert not torch.equal(lasan_before, model.encoder.lead_cnn.blocks[0].weight)


def test_finetune_trains_the_encoder():
    model = fresh(hybrid("finetune"))
    before = _foundation_snapshot(model)
    train_model(model, TRAIN, VAL, TrainingConfig(epochs=1, batch_size=16, seed=0), progress=False)
    assert _changed(before, model)


def test_lp_ft_freezes_then_unfreezes_with_a_lower_encoder_lr():
    cfg = hybrid("lp_ft", lp_epochs=2)
    model = fresh(cfg)
    assert [foundation_frozen(model, e) for e in range(4)] == [True, True, False, False]
    assert not foundation_frozen(fresh(TINY), 0)
    before = _foundation_snapshot(model)
    tcfg = TrainingConfig(epochs=2, batch_size=16, lr=1e-3, seed=0, patience=10)
    train_model(model, TRAIN, VAL, tcfg, progress=False)
    assert not _changed(before, model)  # only the probing phase ran
    model = fresh(cfg)
    before = _foundation_snapshot(model)
    result = train_model(
        model, TRAIN, VAL, TrainingConfig(epochs=3, batch_size=16, seed=0, patience=10), progress=False
    )
    assert [h["encoder_frozen"] for h in result.history] == [1.0, 1.0, 0.0]
    assert _changed(before, model)


def test_pretraining_lowers_the_masked_reconstruction_error():
    model = fresh(hybrid("finetune"))
    losses = pretrain_encoder(
        model.foundation, TRAIN.x, PretrainConfig(epochs=6, batch_size=16, lr=3e-3), progress=False
    )
    assert losses[-1] < losses[0]


def test_segment_mask_covers_about_the_requested_fraction():
    mask = segment_mask(64, 1000, 0.3, 5, torch.Generator().manual_seed(0))
    assert mask.shape == (64, 1, 1000)
    assert 0.2 < mask.float().mean().item() <= 0.3


def test_augmentation_keeps_shape_and_is_seeded():
    x = torch.from_numpy(TRAIN.x[:4])
    a = Augment()(x, torch.Generator().manual_seed(0))
    b = Augment()(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_config_errors_are_explained():
    base = {"output": "out", "data": {"synth": {"patients": 60}}, "model": {"kind": "lasan"}}
    cfg = TrainConfig.from_dict(base)
    assert isinstance(cfg.model, LASANConfig)
    with pytest.raises(ConfigError, match="exactly one"):
        TrainConfig.from_dict({**base, "data": {}})
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({**base, "training": {"epoch": 3}})
    with pytest.raises(ConfigError, match="builtin"):
        TrainConfig.from_dict({**base, "pretrain": {"epochs": 1}})
    with pytest.raises(ConfigError, match="d_model"):
        TrainConfig.from_dict({**base, "model": {"kind": "lasan", "d_model": 32}})


# --- the whole `lasan train` pipeline on a tiny synthetic cohort -------------------------


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    from lasan.train.synth import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("cohort"), 24, seed=3)


def test_dataset_preprocesses_with_the_shared_contract_and_caches(tiny_cohort, tmp_path):
    from lasan.formats import read_ecg
    from lasan.preprocessing import preprocess
    from lasan.train.dataset import load_arrays
    from lasan.train.manifest import read_manifest

    rows = list(read_manifest(tiny_cohort))[:4]
    spec = InputSpec()
    first = load_arrays(rows, spec, CLASSES, tmp_path / "cache", tiny_cohort.parent)
    assert first.x.shape == (4, 8, 2500) and len(list((tmp_path / "cache").glob("*.npy"))) == 4
    np.testing.assert_array_equal(first.x[0], preprocess(read_ecg(rows[0].path), spec))
    again = load_arrays(rows, spec, CLASSES, tmp_path / "cache", tiny_cohort.parent)
    np.testing.assert_array_equal(again.x, first.x)
    other = load_arrays(rows[:1], InputSpec(n_samples=1000), CLASSES, tmp_path / "cache", tiny_cohort.parent)
    assert other.x.shape == (1, 8, 1000)  # another InputSpec never reuses a cached array
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 5


@pytest.mark.slow
def test_lasan_train_writes_a_self_contained_checkpoint_and_resumes(tiny_cohort, tmp_path):
    import yaml

    from lasan.checkpoint import load_checkpoint
    from lasan.cli import main

    config = {
        "output": str(tmp_path / "run"),
        "data": {"manifest": str(tiny_cohort), "cache_dir": str(tmp_path / "cache")},
        "model": {
            "kind": "hybrid",
            "fusion_dim": 16,
            "lasan": {"cnn_channels": [4, 8, 8, 16], "d_model": 16, "ff_dim": 32, "head_hidden": 8, "pool": 4},
            "encoder": {
                "kind": "builtin",
                "strategy": "lp_ft",
                "lp_epochs": 1,
                "options": {"width": 4, "depth": 2, "out_dim": 8},
            },
        },
        "pretrain": {"epochs": 1, "batch_size": 16},
        "training": {"epochs": 2, "batch_size": 16, "seed": 0, "num_threads": 1},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--device", "cpu", "--no-progress"]) == 0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt.info.synthetic
    assert set(ckpt.info.thresholds) == {"screening", "confirmation"}
    assert ckpt.info.training["data"]["manifest"] == str(tiny_cohort)
    assert ckpt.info.data_summary["splits"]["train"]["patients"] > 0
    assert len(ckpt.info.metrics["history"]) == 2 and len(ckpt.info.metrics["pretrain_loss"]) == 1
    assert ckpt.config.encoder.strategy == "lp_ft"
    # Calibration fitted on validation logits after training, stored, and what is served.
    assert ckpt.info.calibration["fitted_on"] == "val" and ckpt.info.calibration["method"] == "temperature"
    assert ckpt.info.temperature > 0 and ckpt.served_model().temperature == ckpt.info.temperature
    first = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    # --resume after the last epoch has nothing left to do and reproduces the same checkpoint weights
    assert main(["train", "--config", str(path), "--resume", "--device", "cpu", "--no-progress"]) == 0
    again = load_checkpoint(tmp_path / "run" / "checkpoint.pt").model.state_dict()
    for k, v in first.items():
        torch.testing.assert_close(again[k], v, rtol=0, atol=0)


def test_bad_config_file_is_reported_by_the_cli(tmp_path, capsys):
    from lasan.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("output: x\ndata: {manifest: nowhere.csv}\ntraining: {epochs: 0}\n")
    assert main(["train", "--config", str(path)]) == 1
    assert "training.epochs" in capsys.readouterr().err


# Beyond the paper: lead dropout and the aggregator entropy penalty (TrainingConfig).


def test_lead_dropout_zeroes_whole_leads_and_keeps_one():
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(200, 8, 16)
    out = drop_leads(x, 0.5, gen)
    per_lead = out.abs().sum(-1)  # (B, L)
    assert set(per_lead.unique().tolist()) <= {0.0, 16.0}  # a lead is either intact or all zero
    assert (per_lead > 0).any(dim=1).all()  # never every lead of an ECG
    share = float((per_lead == 0).float().mean())
    assert 0.35 < share < 0.5  # about p, less the kept lead
    almost_all = drop_leads(x, 0.999, gen).abs().sum(-1)
    assert ((almost_all > 0).sum(dim=1) >= 1).all()


def test_aggregator_entropy_is_one_for_uniform_and_zero_for_one_lead():
    assert float(aggregator_entropy(torch.full((2, 8), 0.125))) == pytest.approx(1.0)
    assert float(aggregator_entropy(torch.eye(8)[:2])) == pytest.approx(0.0, abs=1e-6)


def test_beyond_the_paper_options_are_validated():
    with pytest.raises(ConfigError, match="aggregator_entropy"):
        TrainingConfig(aggregator_entropy=-1.0)
    with pytest.raises(ConfigError, match="lead_dropout"):
        TrainingConfig(lead_dropout=1.0)
    with pytest.raises(ConfigError, match="calibration"):
        TrainingConfig(calibration="isotonic")
