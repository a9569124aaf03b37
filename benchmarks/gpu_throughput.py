"""GPU: SSL images/s against supervised images/s, same backbone, batch and resolution.

ResNet-50 at 256 px (the ``paper`` preset), bf16 autocast, channels_last model and inputs:

- ``supervised``: ``Encoder -> Linear(2048, 5)`` cross-entropy on one batch of ``--batch`` images;
- each SSL method (``--methods``, paper-preset heads): ``forward_loss`` on ``--batch`` pairs (or
  its views), backward, the method's optimiser, and the EMA of its momentum targets
  (``lightly.models.utils.update_momentum`` at a fixed 0.99; the schedule is host arithmetic).

Both use the method's optimiser class and groups (``build_optimizer``), so the ratio measures what
SSL adds on top of supervised training: the heads, the loss, the target network. Images/s
counts every view that goes through the backbone with a gradient (SSL: 2 x batch per step;
supervised: batch), so a ratio of 1 means the SSL step runs the backbone as fast as supervised
training does.

Loader-bound or model-bound (``--augment loader device``): with ``loader`` the views come from
the per-sample path on ``--cores`` CPU cores (its rate is measured here: ``ViewTransform`` on
uint8 frames of ``--frame-size`` px, one thread, CPU seconds, times the cores), and the step is
timed on ready views; with ``device`` the step itself makes the views from uint8 frames with
``BatchedViews`` on the device (timed inside the step) and the cores only stack uint8 frames.
A run is loader-bound when the cores supply fewer images/s than the step consumes.
With ``--compile on`` the encoder trunk is ``torch.compile``d in both (the heads
and losses stay eager). The host never waits inside the timed loop: one synchronisation before
and one after ``--steps`` steps. Target: SSL / supervised >= 0.85.

    python benchmarks/gpu_throughput.py [--methods barlowtwins byol] [--batch 128] [--size 256] [--compile off on]
        [--augment loader device] [--cores N] [--frame-size 256] [--json F]
    python benchmarks/gpu_throughput.py --device cpu --tiny      # smoke check without a GPU
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings

import torch
import torch.nn.functional as F
from lightly.models.utils import update_momentum
from torch import nn

from common import machine, median, write_json, preset_config
from sonossl.data.batched_views import BatchedViews
from sonossl.methods import get_method
from sonossl.methods.optim import build_optimizer
from sonossl.models.backbones import build_encoder

N_CLASSES = 5


class Supervised(nn.Module):
    def __init__(self, backbone: str):
        super().__init__()
        self.encoder = build_encoder(backbone)
        self.fc = nn.Linear(self.encoder.feature_dim, N_CLASSES)

    def forward_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.fc(self.encoder(x)).float(), y), {}

    def momentum_pairs(self):
        return []


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loader_supply(transforms, a) -> dict:
    """Images/s that ``a.cores`` CPU cores supply: ``loader`` = per-sample views of uint8 frames
    (``a.frame_size`` px); ``device`` = stacking uint8 frames into a batch. One thread, CPU seconds."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (a.batch, 1, a.frame_size, a.frame_size), dtype=torch.uint8, generator=g)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.process_time()
        for f in frames[: max(2, a.batch // 4)]:
            for v in transforms:
                v(f, g)
        per_sample = max(2, a.batch // 4) / (time.process_time() - t)
        t = time.process_time()
        for _ in range(20):
            torch.stack(list(frames))
        stacking = 20 * a.batch / (time.process_time() - t)
    finally:
        torch.set_num_threads(n)
    return {"loader": per_sample * len(transforms) * a.cores, "device": stacking * len(transforms) * a.cores}


def run(name: str, a, device: str, compiled: bool, augment: str = "loader") -> dict:
    """Median images/s over ``a.repeats`` blocks of ``a.steps`` steps, after ``a.warmup`` steps;
    ``augment="device"``: each step first makes its views from uint8 frames with BatchedViews."""
    overrides = dict(backbone=a.backbone, image_size=a.size, batch_size=a.batch, accelerator="cpu", precision="32")
    if a.tiny and name in ("barlowtwins", "vicreg"):  # the paper's 8192-wide projector takes minutes per step on a CPU
        overrides["method_options"] = {"projector": [64, 64]}
    cfg = preset_config("barlowtwins" if name == "supervised" else name, "paper", **overrides)
    torch.manual_seed(0)
    if name == "supervised":
        model = Supervised(a.backbone)
    else:
        model = get_method(name)(cfg)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    if compiled:
        model.encoder.trunk = torch.compile(model.encoder.trunk)
    pairs = model.momentum_pairs()
    targets = {id(t) for _, t in pairs}
    opt = build_optimizer([m for m in model.children() if id(m) not in targets], cfg.optimizer, cfg.lr_weights,
                          cfg.lr_biases, cfg.weight_decay, cfg.batch_size)
    g = torch.Generator().manual_seed(0)
    if name == "supervised":
        x = torch.rand(a.batch, 1, a.size, a.size, generator=g).to(device).contiguous(memory_format=torch.channels_last)
        batch = (x, torch.randint(0, N_CLASSES, (a.batch,), generator=g).to(device))
        images_per_step = a.batch
    else:
        sizes = [t.size for t in model.view_transforms()]
        batch = tuple(torch.rand(a.batch, 1, s, s, generator=g).to(device).contiguous(memory_format=torch.channels_last) for s in sizes)
        images_per_step = a.batch * len(sizes) if name != "moco" else a.batch  # moco: one view gets a gradient
    dtype = torch.bfloat16
    views = BatchedViews(model.view_transforms()) if augment == "device" and name != "supervised" else None
    frames = torch.randint(0, 256, (a.batch, 1, a.frame_size, a.frame_size), dtype=torch.uint8, generator=g).to(device)
    vg = torch.Generator(device=device).manual_seed(0)

    def step():
        opt.zero_grad(set_to_none=True)
        inputs = batch if views is None else tuple(v.contiguous(memory_format=torch.channels_last) for v in views(frames, vg))
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype):
            loss, _ = model.forward_loss(inputs)
        loss.backward()
        opt.step()
        for online, target in pairs:
            update_momentum(online, target, 0.99)

    t0 = time.perf_counter()
    for _ in range(a.warmup):
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    rates = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync(device)
        rates.append(images_per_step * a.steps / (time.perf_counter() - t))
    supply = loader_supply(model.view_transforms(), a) if name != "supervised" else {}
    del model, opt, batch
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"images_per_s": round(median(rates), 1), "raw": [round(r, 1) for r in rates], "warmup_s": round(warm_s, 1),
            "supply": supply}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="resnet18, 32 px, batch 4, 1 step x 2 repeats, 64-wide BarlowTwins/VICReg projectors: a CPU smoke check")
    ap.add_argument("--methods", nargs="+", default=["barlowtwins", "byol"])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", nargs="+", choices=["off", "on"], default=None, help="default: off on (GPU), off (--tiny)")
    ap.add_argument("--augment", nargs="+", choices=["loader", "device"], default=["loader", "device"],
                    help="where SSL views are made (default: both, see the docstring)")
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU cores feeding the device (default: all)")
    ap.add_argument("--frame-size", type=int, default=None, help="stored frame side in px (default: --size)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.tiny:
        a.backbone, a.size, a.batch, a.steps, a.warmup, a.repeats = "resnet18", 32, 4, 1, 1, 2
    a.frame_size = a.frame_size or a.size
    modes = a.compile or (["off"] if a.tiny or not a.device.startswith("cuda") else ["off", "on"])
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    if a.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"{a.backbone} {a.size} px, batch {a.batch}, bf16 autocast, channels_last, {a.device}", flush=True)
    rows = []
    for mode in modes:
        sup = run("supervised", a, a.device, mode == "on")
        sup.pop("supply")
        print(f"compile {mode:3s} supervised   {sup['images_per_s']:9.1f} images/s  (warm-up {sup['warmup_s']} s)", flush=True)
        rows.append({"compile": mode, "name": "supervised", **sup})
        for m, aug in [(m, aug) for m in a.methods for aug in a.augment]:
            r = run(m, a, a.device, mode == "on", aug)
            ratio = r["images_per_s"] / sup["images_per_s"]
            supply = r["supply_images_per_s"] = round(r.pop("supply")[aug], 1)
            bound = r["bound"] = "loader" if supply < r["images_per_s"] else "model"
            print(f"compile {mode:3s} {m:12s} views on {aug:6s} {r['images_per_s']:9.1f} images/s  SSL/supervised "
                  f"{ratio:.3f} (target >= 0.85; warm-up {r['warmup_s']} s); {a.cores} cores supply {supply:.0f} "
                  f"images/s: {bound}-bound", flush=True)
            rows.append({"compile": mode, "name": m, "augment": aug, **r, "ssl_over_supervised": round(ratio, 3)})
    write_json(a.json, {"figure": "gpu_throughput", "machine": machine(), "device": a.device, "backbone": a.backbone,
                        "size": a.size, "batch": a.batch, "steps": a.steps, "cores": a.cores,
                        "frame_size": a.frame_size, "rows": rows})


if __name__ == "__main__":
    main()
