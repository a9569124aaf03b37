"""Optimiser and learning-rate schedule shared by every method.

LARS and the schedule follow facebookresearch/barlowtwins ``main.py`` (the seed code's recipe
for BarlowTwins and VICReg): two parameter groups, weights and biases/norm parameters, each with
its own learning rate ``base * batch_size / 256``; the biases/norm group gets neither weight
decay nor the LARS trust ratio. The schedule is a linear warm-up followed by a cosine decay to
``final_lr_ratio`` times the base rate, evaluated at every optimiser step.

Group options are plain booleans (not the authors' filter functions), so an optimiser
``state_dict`` stays loadable with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio ``eta * ||w|| / ||g + wd * w||``.

    Per group: ``lr``, ``weight_decay``, ``momentum``, ``eta``, ``lars`` (apply weight decay
    and the trust ratio; False for biases and norm parameters).
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp, q = p.grad, None
                if g["lars"]:  # in place on the gradient (zeroed before the next backward): no full-size temporaries
                    dp = dp.add_(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0, torch.where(update_norm > 0, g["eta"] * param_norm / update_norm, one), one
                    )
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"])
                mu.add_(dp) if q is None else mu.addcmul_(dp, q)
                p.add_(mu, alpha=-g["lr"])
        return loss


def split_decay(modules: Iterable[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases_and_norm): 1-d parameters (biases, BatchNorm/LayerNorm) go to the second."""
    weights, others = [], []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                (others if p.ndim == 1 else weights).append(p)
    return weights, others


def build_optimizer(
    modules: Iterable[nn.Module],
    name: str,
    lr_weights: float,
    lr_biases: float,
    weight_decay: float,
    batch_size: int,
) -> torch.optim.Optimizer:
    """Two groups, each with ``base_lr = lr * batch_size / 256`` (stored in the group; the
    schedule sets ``lr = base_lr * factor``). ``batch_size`` is the global batch."""
    weights, others = split_decay(modules)
    scale = batch_size / 256
    groups = [
        {"params": weights, "base_lr": lr_weights * scale, "weight_decay": weight_decay, "lars": True},
        {"params": others, "base_lr": lr_biases * scale, "weight_decay": 0.0, "lars": False},
    ]
    for g in groups:
        g["lr"] = g["base_lr"]
    if name == "lars":
        return LARS(groups, lr=groups[0]["lr"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"])
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """Multiplier of the base rate at optimiser step ``step`` (0-based).

    ``step / warmup_steps`` during warm-up (as barlowtwins ``adjust_learning_rate``), then
    ``q + final_ratio * (1 - q)`` with ``q = (1 + cos(pi * t)) / 2``, ``t`` going 0 -> 1 over the
    remaining ``total_steps - warmup_steps`` steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    q = 0.5 * (1 + math.cos(math.pi * t))
    return q + final_ratio * (1 - q)
