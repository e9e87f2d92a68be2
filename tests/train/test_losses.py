from __future__ import annotations

import math

import pytest
import torch

from lasan.errors import ConfigError
from lasan.train.losses import FocalLoss


def test_focal_loss_matches_hand_computed_value():
    # logits [0, 0, ln 2] -> softmax [1/4, 1/4, 1/2]
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]])
    target = torch.tensor([2, 0])
    loss = FocalLoss(gamma=2.0, alpha=[2.0, 1.0, 1.0])(logits, target)
    # sample 0: alpha 1, p 1/2 -> 1 * (1/2)^2 * ln 2;  sample 1: alpha 2, p 1/4 -> 2 * (3/4)^2 * ln 4
    expected = (0.25 * math.log(2.0) + 2.0 * 0.5625 * math.log(4.0)) / 3.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gamma_zero_is_weighted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 3, generator=g)
    target = torch.randint(0, 3, (16,), generator=g)
    alpha = [0.5, 2.0, 1.0]
    ce = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor(alpha))
    assert FocalLoss(gamma=0.0, alpha=alpha)(logits, target).item() == pytest.approx(ce.item(), rel=1e-6)


def test_focusing_down_weights_easy_examples():
    logits = torch.tensor([[5.0, 0.0, 0.0]])
    target = torch.tensor([0])
    assert FocalLoss(gamma=2.0)(logits, target) < FocalLoss(gamma=0.0)(logits, target) / 100


@pytest.mark.parametrize("kwargs", [{"gamma": -1.0}, {"alpha": [1.0, 0.0, 1.0]}])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        FocalLoss(**kwargs)
