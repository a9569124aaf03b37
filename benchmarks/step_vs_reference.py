"""SSL step throughput per method, against the physical limit and a plain-PyTorch reference.

For each method at the ``cpu`` preset's settings (ResNet-18, 64 px, batch 64; plus the paper's
8192x3 projector for BarlowTwins and VICReg) three steps run on the same fixed views, interleaved
step by step in one process (so a neighbour's load hits all three alike):

- ``sonossl``: the real training step, through ``pytorch_lightning.Trainer.fit`` on the method's
  module (``training_step``: EMA of the targets, lr schedule, ``forward_loss``, backward,
  Lightning's optimiser closure, gradient clipping hook, the method's optimiser), timed from
  ``on_train_batch_start`` to ``on_train_batch_end``; the batches are pre-loaded tensors, so no
  data loading is timed;
- ``reference``: the same method written as plain PyTorch from lightly's heads and losses
  (``BarlowTwinsLoss``, ``VICRegLoss``, ``NTXentLoss`` (with a memory bank for MoCo),
  ``DINOLoss``, ``NegativeCosineSimilarity``, lightly's projection heads, ``update_momentum``),
  a torchvision ResNet-18 fed the same normalised grey views, and the *same optimiser class and
  groups* (``sonossl.methods.optim.build_optimizer``); AE: torchvision trunk + the same decoder
  shape, MSE;
- ``bare``: the backbone passes the method needs and nothing else: forward + backward of the
  encoder on every view that gets a gradient, and a no-grad forward on every view a momentum
  target sees (BYOL, MoCo, DINO); no head, loss or optimiser. That is the physical limit.

Printed per method: median ms/step of each (``--repeats`` steps after ``--warmup``), and the
medians over repeats of the per-repeat ratios: ``bare time / sonossl time`` (step/bare in
pairs/s) and ``sonossl / reference`` time.

    python benchmarks/step_vs_reference.py [--methods ...] [--repeats 5] [--warmup 2] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from lightly.loss import BarlowTwinsLoss, DINOLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss
from lightly.models.modules import (
    BarlowTwinsProjectionHead,
    BYOLPredictionHead,
    BYOLProjectionHead,
    DINOProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.modules.heads import VICRegProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common import METHOD_NAMES, WIDE, machine, median, now, preset_config, timed, write_json
from sonossl.config import PretrainConfig
from sonossl.methods import get_method
from sonossl.methods.optim import build_optimizer
from sonossl.models.backbones import IMAGENET_MEAN, IMAGENET_STD


# ---- the plain-PyTorch reference ---------------------------------------------------------------
class Backbone(nn.Module):
    """torchvision trunk on grey views: (B, 1, S, S) in [0, 1] -> (B, 512)."""

    def __init__(self):
        super().__init__()
        self.trunk = torchvision.models.resnet18()
        self.trunk.fc = nn.Identity()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.prep(x))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(self.prep(x)))))
        return t.layer4(t.layer3(t.layer2(t.layer1(x))))


class Reference(nn.Module):
    """One method as lightly's examples write it. ``loss(views)`` -> scalar; ``after_step()``
    updates momentum targets (called after ``opt.step()``, as in lightly's examples)."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg, o, self.step_i = cfg, cfg.method_options, 0
        self.backbone = Backbone()
        m = cfg.method
        if m == "barlowtwins":
            p = o["projector"]
            self.head = BarlowTwinsProjectionHead(512, p[0], p[-1])
            self.crit = BarlowTwinsLoss(lambda_param=o["lambd"])
        elif m == "vicreg":
            p = o["projector"]
            self.head = VICRegProjectionHead(512, p[0], p[-1], num_layers=len(p))
            self.crit = VICRegLoss(o["sim_coeff"], o["std_coeff"], o["cov_coeff"])
        elif m == "simclr":
            p = o["projector"]
            self.head = SimCLRProjectionHead(512, p[0], p[-1])
            self.crit = NTXentLoss(temperature=o["temperature"])
        elif m == "moco":
            p = o["projector"]
            self.head = MoCoProjectionHead(512, p[0], p[-1])
            self.crit = NTXentLoss(temperature=o["temperature"], memory_bank_size=(o["queue_size"], p[-1]))
            self._targets()
        elif m == "byol":
            self.head = BYOLProjectionHead(512, o["projector"][0], o["projector"][1])
            self.predictor = BYOLPredictionHead(o["projector"][1], o["predictor"][0], o["predictor"][1])
            self.crit = NegativeCosineSimilarity()
            self._targets()
        elif m == "dino":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.head = DINOProjectionHead(512, o["hidden_dim"], o["bottleneck_dim"], o["out_dim"],
                                               freeze_last_layer=o["freeze_last_layer"])
            self.crit = DINOLoss(output_dim=o["out_dim"], warmup_teacher_temp=o["warmup_teacher_temp"],
                                 teacher_temp=o["teacher_temp"], warmup_teacher_temp_epochs=o["warmup_teacher_temp_epochs"])
            self._targets()
        elif m == "ae":
            layers, a = [], 512
            for b in o["decoder"]:
                layers += [nn.Upsample(scale_factor=2), nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
                a = b
            self.head = nn.Sequential(*layers, nn.Conv2d(a, 1, 3, padding=1), nn.Sigmoid())
        else:
            raise ValueError(m)

    def _targets(self) -> None:
        self.t_backbone = copy.deepcopy(self.backbone)
        if self.cfg.method == "dino":  # lightly's weight-normed last layer cannot be deep-copied
            o = self.cfg.method_options
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.t_head = DINOProjectionHead(512, o["hidden_dim"], o["bottleneck_dim"], o["out_dim"])
            self.t_head.load_state_dict(self.head.state_dict())
        else:
            self.t_head = copy.deepcopy(self.head)
        deactivate_requires_grad(self.t_backbone)
        deactivate_requires_grad(self.t_head)

    def trained(self) -> list[nn.Module]:
        return [m for n, m in self.named_children() if not n.startswith("t_")]

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        m, f, h = self.cfg.method, self.backbone, self.head
        if m == "ae":
            (x,) = views
            return F.mse_loss(h(f.feature_map(x)), x)
        if m in ("barlowtwins", "vicreg", "simclr"):
            return self.crit(h(f(views[0])), h(f(views[1])))
        if m == "moco":
            q = h(f(views[0]))
            with torch.no_grad():
                k = self.t_head(self.t_backbone(views[1]))
            return self.crit(q, k)
        if m == "byol":
            p0, p1 = (self.predictor(h(f(v))) for v in views)
            with torch.no_grad():
                z0, z1 = (self.t_head(self.t_backbone(v)) for v in views)
            return 0.5 * (self.crit(p0, z1) + self.crit(p1, z0))
        if m == "dino":
            with torch.no_grad():
                teacher = list(self.t_head(self.t_backbone(torch.cat(views[:2]))).chunk(2))
            feats = [f(torch.cat(views[:2])), f(torch.cat(views[2:]))]
            student = list(h(torch.cat(feats)).chunk(len(views)))
            return self.crit(teacher, student, epoch=0)
        raise ValueError(m)

    def before_step(self) -> None:
        """DINO: main_dino.py's per-parameter clipping and the frozen last layer."""
        if self.cfg.method == "dino":
            clip = self.cfg.method_options["clip_grad"]
            for p in self.parameters():
                if p.grad is not None:
                    coef = clip / (p.grad.norm(2) + 1e-6)
                    if coef < 1:
                        p.grad.mul_(coef)
            self.head.cancel_last_layer_gradients(0)

    def after_step(self) -> None:
        if hasattr(self, "t_backbone"):
            mom = self.cfg.method_options["momentum"]
            if self.cfg.method in ("byol", "dino"):
                mom = cosine_schedule(self.step_i, 1000, mom, 1.0)
            update_momentum(self.backbone, self.t_backbone, mom)
            update_momentum(self.head, self.t_head, mom)
        self.step_i += 1


def reference_step(ref: Reference, opt: torch.optim.Optimizer, views: list[torch.Tensor]) -> None:
    opt.zero_grad(set_to_none=True)
    loss = ref.loss(views)
    loss.backward()
    ref.before_step()
    opt.step()
    ref.after_step()


# ---- the bare backbone -----------------------------------------------------------------------
def bare_step(enc: nn.Module, method: str, views: list[torch.Tensor]) -> None:
    """Only the backbone passes ``method`` needs (see the module docstring)."""
    enc.zero_grad(set_to_none=True)
    if method == "moco":
        grad_views, target_views = views[:1], views[1:]
    elif method == "byol":
        grad_views, target_views = views, views
    elif method == "dino":
        grad_views, target_views = [torch.cat(views[:2]), torch.cat(views[2:])], [torch.cat(views[:2])]
    else:
        grad_views, target_views = views, []
    sum(enc(v).sum() for v in grad_views).backward()
    with torch.no_grad():
        for v in target_views:
            enc(v)


# ---- the sonossl step, through Lightning -------------------------------------------------------
class FixedBatches(Dataset):
    def __init__(self, views: list[torch.Tensor], n: int):
        self.views, self.n = tuple(views), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.views


class Interleave(Callback):
    """Times each sonossl step; after it, runs one reference and one bare step (alternating order)."""

    def __init__(self, others: dict, warmup: int):
        self.others, self.warmup = others, warmup
        self.times: dict[str, list[float]] = {"sonossl": [], **{k: [] for k in others}}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.t0 = now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dt = now() - self.t0
        keep = batch_idx >= self.warmup
        if keep:
            self.times["sonossl"].append(dt)
        names = list(self.others)
        for name in names if batch_idx % 2 == 0 else names[::-1]:
            t = timed(self.others[name])
            if keep:
                self.times[name].append(t)


def measure(variant: str, repeats: int, warmup: int, batch: int) -> dict:
    cfg = preset_config(variant, batch_size=batch, num_workers=0, accelerator="cpu", precision="32")
    pl.seed_everything(0, verbose=False)
    model = get_method(cfg.method)(cfg)
    g = torch.Generator().manual_seed(0)
    views = [torch.rand(batch, 1, t.size, t.size, generator=g) for t in model.view_transforms()]
    ref = Reference(cfg)
    ref_opt = build_optimizer(ref.trained(), cfg.optimizer, cfg.lr_weights, cfg.lr_biases, cfg.weight_decay, cfg.batch_size)
    bare = copy.deepcopy(model.encoder).train()
    steps = warmup + repeats
    cb = Interleave({"reference": lambda: reference_step(ref, ref_opt, views), "bare": lambda: bare_step(bare, cfg.method, views)}, warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=steps, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[cb],
    )
    trainer.fit(model, train_dataloaders=DataLoader(FixedBatches(views, steps), batch_size=None))
    med = {k: median(v) for k, v in cb.times.items()}
    return {
        "variant": variant, "projector": cfg.method_options.get("projector"), "optimizer": cfg.optimizer,
        "views": [list(v.shape) for v in views], "ms": {k: round(v * 1000, 1) for k, v in med.items()},
        "pairs_per_s": {k: round(batch / v, 1) for k, v in med.items()},
        # ratios: medians of the per-repeat ratios (the three steps of a repeat ran back to back,
        # so a load spike on the shared machine hits both sides of a ratio)
        "step_over_bare": round(median([b / s for s, b in zip(cb.times["sonossl"], cb.times["bare"])]), 3),
        "sonossl_over_reference": round(median([s / r for s, r in zip(cb.times["sonossl"], cb.times["reference"])]), 3),
        "repeats": len(cb.times["sonossl"]),
        "raw_ms": {k: [round(t * 1000, 1) for t in v] for k, v in cb.times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=[*METHOD_NAMES, *WIDE])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    rows = []
    print(f"{'method':18s} {'bare ms':>8s} {'sonossl':>8s} {'ref ms':>8s} {'step/bare':>9s} {'sonossl/ref':>11s}", flush=True)
    for v in a.methods:
        r = measure(v, a.repeats, min(a.warmup, 1) if v in WIDE else a.warmup, a.batch)  # wide: slow, 1 warm-up step
        rows.append(r)
        ms = r["ms"]
        print(f"{v:18s} {ms['bare']:8.0f} {ms['sonossl']:8.0f} {ms['reference']:8.0f} "
              f"{r['step_over_bare']:9.3f} {r['sonossl_over_reference']:11.3f}", flush=True)
    write_json(a.json, {"figure": "step_vs_reference", "machine": machine(), "batch": a.batch, "rows": rows})


if __name__ == "__main__":
    main()
