"""Precision x memory layout on this machine: which is fastest for a training step.

Four settings, float32 or bf16 autocast, each in NCHW (torch's default) or channels_last, for
three steps on the same fixed batch, interleaved setting by setting in one process (so a
neighbour's load hits all alike):

- ``bare``: forward + backward of the backbone alone (ResNet-18, 64 px): the physical limit;
- ``barlowtwins`` and ``simclr``: the whole SSL step at the cpu preset (both views through the
  encoder, projector, loss in float32, backward, the method's optimiser step), from
  ``sonossl.methods``;
- ``finetune``: a supervised step of the fine-tuning classifier (backbone + linear head,
  cross-entropy, AdamW), from ``sonossl.downstream.classifier``.

Printed: median ms per step over ``--repeats`` after ``--warmup``, and each setting's speed-up
over float32 NCHW (median over repeats of the per-repeat ratio). Also what sonossl's own probe
(``sonossl.models.fastpath.choose``) picks here, and the CPU's bf16/AMX flags.

    python benchmarks/precision_layout.py [--batch 128] [--repeats 7] [--warmup 2] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from common import machine, median, now, preset_config, write_json
from sonossl.downstream.classifier import Classifier
from sonossl.methods import get_method
from sonossl.models import fastpath
from sonossl.models.backbones import build_encoder

SETTINGS = [("32", False), ("32", True), ("bf16", False), ("bf16", True)]


def _ctx(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _layout(model: torch.nn.Module, cl: bool) -> torch.nn.Module:
    return model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)


def _bare_step(cl: bool, precision: str, x: torch.Tensor):
    enc = _layout(build_encoder("resnet18"), cl)
    xin = x.contiguous(memory_format=torch.channels_last) if cl else x

    def step():
        with _ctx(precision):
            out = enc(xin)
        out.float().sum().backward()
    return step


def _ssl_step(method: str, cl: bool, precision: str, v1: torch.Tensor, v2: torch.Tensor):
    cfg = preset_config(method, image_size=v1.shape[-1], batch_size=v1.shape[0])
    module = _layout(get_method(method)(cfg), cl)
    opt = torch.optim.SGD(module.parameters(), lr=1e-3)  # the optimiser's cost is layout-free
    views = tuple(v.contiguous(memory_format=torch.channels_last) if cl else v for v in (v1, v2))

    def step():
        opt.zero_grad(set_to_none=True)
        with _ctx(precision):
            loss, _ = module.forward_loss(views)
        loss.float().backward()
        opt.step()
    return step


def _finetune_step(cl: bool, precision: str, x: torch.Tensor, y: torch.Tensor):
    model = _layout(Classifier(build_encoder("resnet18"), 5), cl)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xin = x.contiguous(memory_format=torch.channels_last) if cl else x

    def step():
        opt.zero_grad(set_to_none=True)
        with _ctx(precision):
            logits = model(xin)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="images per step (SSL: pairs per step) (default 128)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per setting (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per setting first (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--only", nargs="*", default=["bare", "barlowtwins", "simclr", "finetune"],
                   help="which steps to measure (default: all four)")
    p.add_argument("--settings", nargs="*", default=[f"{pr}-{'channels_last' if cl else 'nchw'}" for pr, cl in SETTINGS],
                   help="which of the four settings (default: all; float32 NCHW is always measured, as the baseline)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here (default: print only)")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, 1, a.size, a.size, generator=g)
    x2 = torch.rand(a.batch, 1, a.size, a.size, generator=g)
    y = torch.randint(0, 5, (a.batch,), generator=g)
    info = {**machine(), "flags": fastpath.cpu_flags(), "batch": a.batch, "size": a.size, "repeats": a.repeats}
    print(info, flush=True)
    results: dict[str, dict[str, float]] = {}
    for name in a.only:
        steps = {}
        for precision, cl in SETTINGS:
            key = f"{precision}-{'channels_last' if cl else 'nchw'}"
            if key != "32-nchw" and key not in a.settings:
                continue
            if name == "bare":
                steps[key] = _bare_step(cl, precision, x)
            elif name == "finetune":
                steps[key] = _finetune_step(cl, precision, x, y)
            else:
                steps[key] = _ssl_step(name, cl, precision, x, x2)
        for fn in steps.values():
            for _ in range(a.warmup):
                fn()
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(a.repeats):
            for k, fn in steps.items():  # interleaved: one step of each setting per round
                t = now()
                fn()
                times[k].append(now() - t)
        base = times["32-nchw"]
        results[name] = {}
        for k, ts in times.items():
            speedup = median([b / t for b, t in zip(base, ts)])
            results[name][k] = {"ms": 1000 * median(ts), "speedup": speedup}
            print(f"{name:12s} {k:18s} {1000 * median(ts):8.1f} ms/step  x{speedup:.2f} vs float32 NCHW", flush=True)
    choice = fastpath.choose("resnet18", a.size, device="cpu")
    print(f"sonossl's probe chooses: {choice}")
    write_json(a.json, {"machine": info, "results": results, "probe": choice.as_dict()})


if __name__ == "__main__":
    main()
