"""Foundation encoders: HuBERT-ECG from a local tiny model, TorchScript files, self-contained checkpoints."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from lasan.checkpoint import load_checkpoint, save_checkpoint
from lasan.errors import ConfigError
from lasan.models import EncoderSpec, HybridConfig, LASANConfig, build_model
from lasan.models.encoders import (
    TORCHSCRIPT_ASSET,
    HubertECGEncoder,
    build_foundation_encoder,
    self_contained_spec,
    twelve_from_eight,
)
from lasan.models.hybrid import HybridLASAN
from lasan.preprocessing import InputSpec

transformers = pytest.importorskip("transformers")

LASAN_TINY = LASANConfig(cnn_channels=(4, 8, 8, 16), d_model=16, n_heads=4, ff_dim=32, head_hidden=8)


@pytest.fixture()
def tiny_hubert_dir(tmp_path):
    """A randomly initialised, tiny HubertModel saved the way a downloaded HuBERT-ECG folder is."""
    torch.manual_seed(0)
    cfg = transformers.HubertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=4,
    )
    path = tmp_path / "hubert-ecg-tiny"
    transformers.HubertModel(cfg).save_pretrained(path)
    return path


def test_twelve_leads_follow_einthoven_and_goldberger():
    x = torch.randn(2, 8, 50)
    i, ii = x[:, 0], x[:, 1]
    x12 = twelve_from_eight(x)
    assert x12.shape == (2, 12, 50)
    torch.testing.assert_close(x12[:, 2], ii - i)  # III
    torch.testing.assert_close(x12[:, 3], -(i + ii) / 2)  # aVR
    torch.testing.assert_close(x12[:, 4], i - ii / 2)  # aVL
    torch.testing.assert_close(x12[:, 5], ii - i / 2)  # aVF
    torch.testing.assert_close(x12[:, 6:], x[:, 2:])
    # Kirchhoff: aVR + aVL + aVF = 0
    torch.testing.assert_close(x12[:, 3] + x12[:, 4] + x12[:, 5], torch.zeros(2, 50))


def test_hubert_ecg_loads_from_a_local_directory(tiny_hubert_dir, caplog):
    with caplog.at_level("INFO"):
        enc = build_foundation_encoder(EncoderSpec(kind="hubert_ecg", path=str(tiny_hubert_dir)), InputSpec())
    assert "CC BY-NC 4.0" in caplog.text
    assert isinstance(enc, HubertECGEncoder) and enc.out_dim == 16
    x = torch.randn(2, 8, 2500)
    seq = enc.to_hubert_input(x)
    assert seq.shape == (2, 12 * 500)  # 12 leads x 5 s at 100 Hz, lead after lead
    assert seq.min() >= -1.0 - 1e-5 and seq.max() <= 1.0 + 1e-5
    enc.eval()
    with torch.no_grad():
        y = enc(x)
        traced = torch.jit.trace(enc, x)
        torch.testing.assert_close(traced(x), y)
    assert y.shape == (2, 16)


def test_hubert_decimation_keeps_a_10hz_wave_and_removes_a_48hz_one(tiny_hubert_dir):
    enc = build_foundation_encoder(EncoderSpec(kind="hubert_ecg", path=str(tiny_hubert_dir)), InputSpec())
    t = torch.arange(2500) / 500.0
    low = torch.sin(2 * torch.pi * 10 * t)
    high = torch.sin(2 * torch.pi * 48 * t)
    y = nn.functional.conv1d(torch.stack([low, high])[:, None], enc.fir, stride=enc.factor, padding=enc.pad)
    core = y[:, 0, 50:-50]
    assert core[0].abs().max() > 0.9  # passband
    assert core[1].abs().max() < 0.05  # would alias to 2 Hz without the low-pass


def test_hubert_hybrid_checkpoint_rebuilds_without_the_directory(tiny_hubert_dir, tmp_path):
    spec = EncoderSpec(kind="hubert_ecg", path=str(tiny_hubert_dir), strategy="linear_probe", options={"out_dim": 12})
    cfg = HybridConfig(lasan=LASAN_TINY, encoder=spec, fusion_dim=16)
    model = build_model(cfg)
    stored_spec, assets = self_contained_spec(spec, model.foundation)
    assert stored_spec.path is None and "hf_config" in stored_spec.options
    model.config = HybridConfig(lasan=LASAN_TINY, encoder=stored_spec, fusion_dim=16)
    ckpt = save_checkpoint(tmp_path / "hubert.pt", model, assets=assets)
    shutil.rmtree(tiny_hubert_dir)
    loaded = load_checkpoint(ckpt)
    x = torch.randn(2, 8, 2500)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], model(x)[0])
    assert loaded.config.encoder.options["source"] == str(tiny_hubert_dir)


def test_hubert_without_config_json_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        build_foundation_encoder(EncoderSpec(kind="hubert_ecg", path=str(tmp_path)), InputSpec())


class _FileEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 6, 9, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=-1)


def test_torchscript_encoder_from_file_travels_in_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "enc.pt"
    torch.jit.script(_FileEncoder()).save(str(path))
    spec = EncoderSpec(kind="torchscript", path=str(path))
    enc = build_foundation_encoder(spec, InputSpec())
    assert enc.out_dim == 6  # found by a probe forward
    cfg = HybridConfig(lasan=LASAN_TINY, encoder=spec, fusion_dim=16)
    model = HybridLASAN(cfg, enc)
    stored_spec, assets = self_contained_spec(spec, enc)
    assert TORCHSCRIPT_ASSET in assets and stored_spec.options["out_dim"] == 6
    with torch.no_grad():  # change weights so the checkpoint must carry trained values, not the file's
        enc.module.conv.weight.add_(1.0)
    model.config = HybridConfig(lasan=LASAN_TINY, encoder=stored_spec, fusion_dim=16)
    ckpt = save_checkpoint(tmp_path / "ts.pt", model, assets=assets)
    path.unlink()
    loaded = load_checkpoint(ckpt)
    x = torch.randn(2, 8, 2500)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], model(x)[0])


def test_a_non_torchscript_file_is_refused(tmp_path):
    bad = tmp_path / "not-an-encoder.pt"
    bad.write_bytes(b"hello")
    with pytest.raises(ConfigError, match="TorchScript"):
        build_foundation_encoder(EncoderSpec(kind="torchscript", path=str(bad)), InputSpec())


def test_exportable_encoder_parts(tiny_hubert_dir, tmp_path):
    """build/ exports encoder parts: a TorchScript encoder scripts; HuBERT-ECG (transformers) is traced."""
    path = tmp_path / "enc.pt"
    torch.jit.script(_FileEncoder()).save(str(path))
    x = torch.randn(2, 8, 2500)
    ts = build_model(
        HybridConfig(lasan=LASAN_TINY, encoder=EncoderSpec(kind="torchscript", path=str(path)), fusion_dim=16)
    )
    part = ts.eval().encoder_part()
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(part)(x)[1], part(x)[1])
    from lasan.build.export import export_torchscript

    hub_spec = EncoderSpec(kind="hubert_ecg", path=str(tiny_hubert_dir))
    hub = build_model(HybridConfig(lasan=LASAN_TINY, encoder=hub_spec, fusion_dim=16)).eval()
    part = hub.encoder_part()
    result = export_torchscript(part, (x,), tmp_path / "hub" / "model.pt")  # what `lasan build` runs
    assert result.note.startswith("traced")
    exported = torch.jit.load(str(result.path))
    x3 = torch.randn(3, 8, 2500)  # another batch size than the trace's
    with torch.no_grad():
        for got, want in zip(exported(x3), part(x3), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
