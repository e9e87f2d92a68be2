"""The CPU optimisation keeps every output of every exported part within 1e-4 of eager."""

from __future__ import annotations

import io

import pytest
import torch

from lasan.build.optimize import DEFAULT_ATOL, optimize_for_cpu, recommended_threads
from lasan.errors import ModelRepositoryError
from lasan.models import EncoderSpec, HybridConfig, LASANConfig, build_model

SMALL = LASANConfig(cnn_channels=(8, 16, 32, 32), d_model=32, n_heads=4, ff_dim=64, head_hidden=16, n_layers=2)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them into the convolutions is exercised."""
    torch.manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-1.0, 1.0)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-1.0, 1.0)
    return model.eval()


def _parts(model: torch.nn.Module, x: torch.Tensor):
    encoder, fusion = model.encoder_part(), model.fusion_part()
    with torch.no_grad():  # not inference_mode: tracing needs ordinary tensors
        features = encoder(x)
    features = features if isinstance(features, tuple) else (features,)
    return [(encoder, (x,)), (fusion, features)]


@pytest.mark.parametrize(
    "cfg",
    [
        SMALL,
        HybridConfig(lasan=SMALL, encoder=EncoderSpec(options={"width": 8, "depth": 2, "out_dim": 16}), fusion_dim=32),
    ],
    ids=["lasan", "hybrid"],
)
@pytest.mark.parametrize("export", ["script", "trace"])
def test_optimised_parts_match_eager(cfg, export):
    torch.manual_seed(0)
    model = _randomised(build_model(cfg))
    x = torch.randn(3, 8, cfg.input.n_samples)
    for part, inputs in _parts(model, x):
        with torch.inference_mode():
            eager = part(*inputs)
        ts = torch.jit.script(part) if export == "script" else torch.jit.trace(part, inputs, check_trace=False)
        optimised = optimize_for_cpu(ts, inputs)
        # A different batch size than the example: the server batches dynamically.
        other = tuple(torch.cat([t, t[:1] * 0.5]) for t in inputs)
        with torch.inference_mode():
            eager_other = part(*other)
            got_other = optimised(*other)
            got = optimised(*inputs)
        for ref, out in ((eager, got), (eager_other, got_other)):
            refs = ref if isinstance(ref, tuple) else (ref,)
            outs = out if isinstance(out, tuple) else (out,)
            assert len(refs) == len(outs)
            for r, o in zip(refs, outs, strict=True):
                assert o.shape == r.shape
                assert torch.allclose(o, r, atol=DEFAULT_ATOL, rtol=0)
        # The optimised module survives the round trip that Triton's libtorch backend makes.
        buffer = io.BytesIO()
        torch.jit.save(optimised, buffer)
        buffer.seek(0)
        reloaded = torch.jit.load(buffer)
        with torch.inference_mode():
            again = reloaded(*inputs)
        again = again if isinstance(again, tuple) else (again,)
        got = got if isinstance(got, tuple) else (got,)
        for a, b in zip(again, got, strict=True):
            assert torch.equal(a, b)


def test_batchnorm_is_folded_into_the_convolutions():
    model = _randomised(build_model(SMALL))
    x = torch.randn(2, 8, SMALL.input.n_samples)
    optimised = optimize_for_cpu(torch.jit.script(model.encoder_part()), (x,))
    kinds = {node.kind() for node in optimised.graph.nodes()}
    assert "aten::batch_norm" not in kinds
    assert any("conv" in kind for kind in kinds)


def test_a_tolerance_the_optimisation_cannot_meet_is_refused():
    model = _randomised(build_model(SMALL))
    x = torch.randn(2, 8, SMALL.input.n_samples)
    # Folding BatchNorm reorders float arithmetic, so the outputs are not bit-identical.
    with pytest.raises(ModelRepositoryError, match="export it unoptimised"):
        optimize_for_cpu(torch.jit.script(model.encoder_part()), (x,), atol=0.0)


def test_recommended_threads_is_the_usable_cpu_count():
    import os

    assert recommended_threads() == len(os.sched_getaffinity(0))
