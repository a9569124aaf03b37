"""Classifier training details: mini-batches batch norm can train on."""

from __future__ import annotations

import math

import torch

from sonossl.downstream.classifier import Classifier, FitSettings, batch_bounds, finetune_augment, fit
from sonossl.models.backbones import build_encoder


def test_batch_bounds_never_leave_a_single_sample_batch():
    assert batch_bounds(25, 8) == [(0, 8), (8, 16), (16, 25)]
    assert batch_bounds(24, 8) == [(0, 8), (8, 16), (16, 24)]
    assert batch_bounds(1, 8) == [(0, 1)]
    for n in range(2, 40):
        b = batch_bounds(n, 8)
        assert b[0][0] == 0 and b[-1][1] == n and all(hi - lo >= 2 for lo, hi in b)
        assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))


def test_finetune_with_n_one_more_than_a_multiple_of_the_batch_trains():
    torch.manual_seed(0)
    model = Classifier(build_encoder("resnet18", "random"), 3, 0.5)
    x = torch.randint(0, 255, (9, 1, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2] * 3)
    result = fit(model, x, y, x, y, 3, FitSettings(epochs=1, batch_size=8))
    assert result.steps == 1  # one batch of 9, not 8 + a batch of 1 that batch norm refuses


def test_cosine_schedule_decays_to_zero_over_the_run_and_constant_stays():
    from torch import nn

    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.arange(40) % 2
    lrs = {}
    for schedule in ("constant", "cosine"):
        head = nn.Linear(6, 2)
        s = FitSettings(lr=1e-2, lr_schedule=schedule, epochs=8, batch_size=10, max_evals=8)
        lrs[schedule] = [h["lr"] for h in fit(head, x, y, x, y, 2, s).history]
    assert lrs["constant"] == [1e-2] * 8
    assert lrs["cosine"][-1] < 1e-8 and all(a > b for a, b in zip(lrs["cosine"], lrs["cosine"][1:]))
    assert abs(lrs["cosine"][3] - 1e-2 * 0.5 * (1 + math.cos(math.pi * 16 / 32))) < 1e-9  # after 4 of 8 epochs


def test_vertical_flips_are_the_only_augmentation_that_puts_the_bright_half_at_the_bottom():
    """A bright top half over a dark bottom: RandAugment's shears, shifts and <= 15 degree
    rotations keep the order, a vertical flip swaps it half the time. (Autocontrast then solarize
    can invert the bright half: a few per cent without flips.)"""
    img = torch.full((1, 32, 32), 20, dtype=torch.uint8)
    img[:, :16] = 180
    torch.manual_seed(0)

    def flipped_share(vflip: bool) -> float:
        aug = finetune_augment(vflip=vflip)
        outs = [aug(img).float() for _ in range(300)]
        return sum(bool(o[:, 16:].mean() > o[:, :16].mean()) for o in outs) / len(outs)

    assert 0.35 < flipped_share(True) < 0.65
    assert flipped_share(False) < 0.06
