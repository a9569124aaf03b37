"""LARS and the warm-up/cosine schedule, against facebookresearch/barlowtwins main.py."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from sonossl.methods.optim import LARS, build_optimizer, lr_factor


def authors_lr(step, epochs, steps_per_epoch, warmup_epochs, batch_size):
    """barlowtwins main.py adjust_learning_rate (multiplier of the per-group learning rate)."""
    max_steps, warmup_steps, base_lr = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch, batch_size / 256
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    step -= warmup_steps
    max_steps -= warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
    return base_lr * q + base_lr * 0.001 * (1 - q)


@pytest.mark.parametrize("step", [0, 5, 49, 50, 51, 300, 999])
def test_schedule_matches_authors(step):
    ours = (512 / 256) * lr_factor(step, total_steps=1000, warmup_steps=50, final_ratio=0.001)
    assert ours == pytest.approx(authors_lr(step, 20, 50, 1, 512))


def test_schedule_ends_at_final_ratio_and_handles_no_warmup():
    assert lr_factor(1000, 1000, 10, 0.001) == pytest.approx(0.001)
    assert lr_factor(0, 10, 0, 0.0) == 1.0


def test_groups_split_biases_and_norms_with_scaled_lrs():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2, bias=False))
    opt = build_optimizer([model], "lars", 0.2, 0.0048, 1e-6, batch_size=512)
    w, b = opt.param_groups
    assert [p.ndim for p in w["params"]] == [2, 2] and all(p.ndim == 1 for p in b["params"])
    assert w["base_lr"] == pytest.approx(0.4) and b["base_lr"] == pytest.approx(0.0096)
    assert (w["weight_decay"], w["lars"], b["weight_decay"], b["lars"]) == (1e-6, True, 0.0, False)


def test_lars_step_matches_authors_update_and_state_loads_weights_only():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 3))
    bias = nn.Parameter(torch.randn(5))
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars": True}, {"params": [bias], "weight_decay": 0.0, "lars": False}],
               lr=0.5, momentum=0.9, eta=0.001)
    w0, b0 = w.detach().clone(), bias.detach().clone()
    gw, gb = torch.randn(5, 3), torch.randn(5)
    w.grad, bias.grad = gw.clone(), gb.clone()
    opt.step()
    dp = gw + 0.1 * w0
    q = 0.001 * w0.norm() / dp.norm()
    assert torch.allclose(w.detach(), w0 - 0.5 * dp * q)
    assert torch.allclose(bias.detach(), b0 - 0.5 * gb)  # no decay, no trust ratio
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["param_groups"][0]["lars"] is True
