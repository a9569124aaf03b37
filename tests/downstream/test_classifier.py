"""Classifier training details: mini-batches batch norm can train on."""

from __future__ import annotations

import math

import pytest
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


def test_head_multiplier_puts_the_groups_at_their_rates():
    from sonossl.downstream.classifier import param_groups

    model = Classifier(build_encoder("resnet18"), 5)
    groups = param_groups(model, 1e-3, 100.0)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(0.1)]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0] == {id(p) for p in model.encoder.parameters()} and ids[1] == {id(p) for p in model.head.parameters()}
    opt = torch.optim.AdamW(groups, lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    opt.step()
    sched.step()
    assert opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"] == pytest.approx(100.0)
    assert len(param_groups(model, 1e-3)) == 1 and len(param_groups(model.head, 1e-3, 100.0)) == 1


def test_frozen_batch_norm_statistics_do_not_move_in_fine_tuning():
    torch.manual_seed(0)
    x, y = torch.randint(0, 255, (16, 1, 32, 32), dtype=torch.uint8), torch.arange(16) % 5
    for freeze in (True, False):
        model = Classifier(build_encoder("resnet18"), 5)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
        weight = bns[0].weight.detach().clone()
        fit(model, x, y, x, y, 5, FitSettings(epochs=2, batch_size=8, freeze_bn=freeze, max_evals=1))
        moved = any(not torch.equal(m.running_mean, b[0]) or not torch.equal(m.running_var, b[1])
                    for m, b in zip(bns, before))
        assert moved != freeze
        assert not torch.equal(bns[0].weight, weight)  # the affine weights still train
