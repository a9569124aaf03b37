"""Plane classifier, and the two ways to train it: linear probing and full fine-tuning.

docs/protocol.md: backbone -> dropout 0.5 -> linear layer; class-weighted cross-entropy with
weight = N / count per class; AdamW (lr 1e-3, wd 1e-6); model selection on validation balanced
accuracy; the test split is scored once, with the selected weights.

The two protocols differ in one place, what a training example is:

- ``linear``: the frozen backbone's features, computed once per split (no augmentation; the
  backbone never changes, so recomputing them every epoch would only burn time), and the model
  trained is the head alone;
- ``finetune``: augmented images, and the model trained is backbone + head.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torchvision.transforms import v2

from sonossl.models.backbones import Encoder


class Standardise(nn.Module):
    """Fixed per-feature standardisation ``(x - mean) / std``: identity until :meth:`fit`.

    A linear probe on raw pooled features trains badly when their scale is far from 1 (frozen
    random or SSL features differ by orders of magnitude); standardising with the training
    subset's statistics makes one learning rate right for every init, as the BatchNorm without
    affine of MAE's linear probe does. It changes what the optimiser sees, not what a linear
    layer can express.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, feats: torch.Tensor) -> "Standardise":
        """feats: ``(N, dim)``."""
        self.mean.copy_(feats.mean(0))
        std = feats.std(0, unbiased=False) if len(feats) > 1 else torch.ones_like(self.std)
        # a feature (nearly) constant on the training subset (a dead ReLU channel) keeps scale 1:
        # dividing by its ~0 spread would multiply any test-time value by up to 1e6
        self.std.copy_(torch.where(std > 1e-4 * std.max().clamp_min(1e-12), std, torch.ones_like(std)))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``(B, 1, S, S)`` uint8 or float [0, 1] -> logits ``(B, n_classes)``.

    ``encoder -> standardise -> dropout -> linear``; the standardisation is fitted for linear
    probing and stays the identity for fine-tuning.
    """

    def __init__(self, encoder: Encoder, n_classes: int, dropout: float = 0.5):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(Standardise(encoder.feature_dim), nn.Dropout(dropout), nn.Linear(encoder.feature_dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@dataclass
class FitSettings:
    lr: float = 1e-3
    lr_schedule: str = "constant"  # or "cosine": decay to 0 over the run's optimiser steps
    weight_decay: float = 1e-6
    epochs: int = 100
    batch_size: int = 128
    max_steps: int = -1
    min_steps: int = 0
    max_evals: int = 20  # validation passes per run, spread evenly over the epochs
    seed: int = 0
    device: str = "cpu"
    amp_dtype: torch.dtype | None = None
    head_lr_mult: float = 1.0  # the head's rate / the backbone's (a model with .encoder and .head)
    freeze_bn: bool = False  # batch-norm layers stay in eval mode: their running statistics never move


@dataclass
class FitResult:
    best_epoch: int
    best_val_balanced_accuracy: float
    epochs: int
    steps: int
    history: list[dict]


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``N / count`` per class (docs/protocol.md); a class absent from the subset gets weight 0."""
    counts = torch.bincount(labels, minlength=n_classes).float()
    return torch.where(counts > 0, len(labels) / counts.clamp(min=1), torch.zeros_like(counts))


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each mini-batch; a last batch of one sample joins the one before it, as
    batch norm cannot train on a single sample (25 images at batch 8 are 8, 8, 9)."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def plan_epochs(n: int, s: FitSettings) -> int:
    """Epochs to run: ``s.epochs``, cut to ``max_steps`` and raised to ``min_steps`` optimiser steps."""
    spe = math.ceil(n / s.batch_size)
    epochs = s.epochs
    if s.max_steps > 0:
        epochs = min(epochs, max(1, s.max_steps // spe))
    if s.min_steps > 0:
        epochs = max(epochs, math.ceil(s.min_steps / spe))
    return epochs


def finetune_augment(hflip: bool = False, rotate: float = 0.0, vflip: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """RandAugment(5, 5) + flips (docs/protocol.md), per image, on ``uint8 (1, S, S)``; with
    ``rotate`` > 0, first a rotation by an angle uniform in +- ``rotate`` degrees (black corners).

    Horizontal flips are off by default: a mirrored LVOT is an RVOT. Vertical flips keep sides,
    and so does a rotation.
    """
    ops = [v2.RandomRotation(rotate)] if rotate > 0 else []
    ops.append(v2.RandAugment(num_ops=5, magnitude=5))
    if vflip:
        ops.append(v2.RandomVerticalFlip())
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int, device: str, amp_dtype=None) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device, non_blocking=True)
        with torch.autocast(device_type=device.split(":")[0], dtype=amp_dtype, enabled=amp_dtype is not None):
            out.append(model(xb).float().cpu())
    return torch.cat(out)


def param_groups(model: nn.Module, lr: float, head_lr_mult: float = 1.0) -> list[dict]:
    """The optimiser's groups: the trainable parameters at ``lr``; with ``head_lr_mult`` != 1 and a
    model of ``.encoder`` and ``.head`` (a :class:`Classifier`), the head's at ``lr x head_lr_mult``."""
    trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    if head_lr_mult == 1.0 or not (hasattr(model, "encoder") and hasattr(model, "head")):
        return [{"params": trainable(model), "lr": lr}]
    return [{"params": trainable(model.encoder), "lr": lr, "name": "backbone"},
            {"params": trainable(model.head), "lr": lr * head_lr_mult, "name": "head"}]


def freeze_batch_norm(model: nn.Module) -> None:
    """Put every batch-norm layer of ``model`` in eval mode: it normalises with its running
    statistics and does not update them (its affine weight and bias still get gradients)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    n_classes: int,
    s: FitSettings,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
    on_eval: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``(x_train, y_train)``; leave it holding the best-validation weights.
    ``on_eval`` gets each validation pass's history row (epoch, step, lr, train_loss,
    val_balanced_accuracy) as it is made.

    x_*: ``(N, ...)`` inputs the model takes (features or images); y_*: ``(N,)`` int64.
    """
    g = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)  # dropout and RandAugment draw from the global generator
    model.to(s.device)
    # fused: one kernel for every parameter's update, half the time of the per-tensor loop on a CPU (benchmarks/README.md)
    opt = torch.optim.AdamW(param_groups(model, s.lr, s.head_lr_mult), lr=s.lr, weight_decay=s.weight_decay,
                            fused=torch.device(s.device).type in ("cpu", "cuda"))
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y_train, n_classes).to(s.device))
    n = len(x_train)
    epochs = plan_epochs(n, s)
    total = epochs * len(batch_bounds(n, s.batch_size))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if s.lr_schedule == "cosine"
             else None)
    eval_at = set(np.linspace(1, epochs, num=min(epochs, s.max_evals)).round().astype(int).tolist())
    best = (-1.0, 0, None)
    history, steps = [], 0
    for epoch in range(1, epochs + 1):
        model.train()
        if s.freeze_bn:
            freeze_batch_norm(model)
        order = torch.randperm(n, generator=g)
        for lo, hi in batch_bounds(n, s.batch_size):
            idx = order[lo:hi]
            xb = x_train[idx]
            if augment is not None:
                xb = torch.stack([augment(im) for im in xb])
            xb, yb = xb.to(s.device, non_blocking=True), y_train[idx].to(s.device, non_blocking=True)
            with torch.autocast(device_type=s.device.split(":")[0], dtype=s.amp_dtype, enabled=s.amp_dtype is not None):
                loss = loss_fn(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            steps += 1
        if epoch in eval_at:
            pred = predict_logits(model, x_val, 256, s.device, s.amp_dtype).argmax(1).numpy()
            bacc = float(balanced_accuracy_score(y_val.numpy(), pred))
            history.append({"epoch": epoch, "step": steps, "lr": opt.param_groups[0]["lr"], "train_loss": float(loss.detach()),
                            "val_balanced_accuracy": bacc})
            if on_eval:
                on_eval(history[-1])
            if bacc > best[0]:
                best = (bacc, epoch, copy.deepcopy(model.state_dict()))
        if on_epoch:
            on_epoch(epoch, epochs)
    model.load_state_dict(best[2])
    return FitResult(best_epoch=best[1], best_val_balanced_accuracy=best[0], epochs=epochs, steps=steps, history=history)
