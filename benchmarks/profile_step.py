"""Where a step's time goes: the profiles behind the targets that are not met.

- ``--method VARIANT``: ``torch.profiler`` over ``--steps`` training steps of a method at the cpu
  preset's settings (``forward_loss``, backward, the method's optimiser), after a warm-up step;
  prints the top ops by self CPU time and the share of the optimiser step
  (``Optimizer.step#...``) and of the backward pass.
- ``--data``: ``cProfile`` of the pair dataset's ``__getitem__`` (store read + two augmentations),
  top functions by cumulative time.

    python benchmarks/profile_step.py --method ae [--steps 2] [--threads 2] [--top 12]
    python benchmarks/profile_step.py --data
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from common import preset_config
from sonossl.data.framestore import FrameStore, FrameStoreWriter
from sonossl.data.pairs import FramePairDataset
from sonossl.methods import get_method


def profile_method(variant: str, steps: int, top: int) -> None:
    cfg = preset_config(variant, accelerator="cpu", precision="32")
    torch.manual_seed(0)
    model = get_method(cfg.method)(cfg).train()
    opt = model.configure_optimizers()
    views = tuple(torch.rand(cfg.batch_size, 1, t.size, t.size) for t in model.view_transforms())

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = model.forward_loss(views)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    print(f"== {variant}: {steps} steps, {total / 1e3 / steps:.0f} ms/step of op self time")
    for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"  {e.key[:48]:48s} {e.self_cpu_time_total / 1e3 / steps:8.1f} ms/step {100 * e.self_cpu_time_total / total:5.1f} %")
    opt_ev = [e for e in ev if e.key.startswith("Optimizer.step#")]
    bwd = sum(e.self_cpu_time_total for e in ev if "Backward" in e.key or e.key.startswith("autograd::"))
    for e in opt_ev:
        print(f"  [{e.key}] total {e.cpu_time_total / 1e3 / steps:.1f} ms/step ({100 * e.cpu_time_total / total:.1f} % of step)")
    print(f"  [backward ops, self] {bwd / 1e3 / steps:.1f} ms/step ({100 * bwd / total:.1f} %)")


def profile_data(top: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        rng = np.random.default_rng(0)
        with FrameStoreWriter(path) as w:
            for v in range(4):
                w.add_video(f"v{v}", rng.integers(0, 256, (32, 64, 64), dtype=np.uint8), video_id=f"v{v}", group_id=f"v{v}")
        cfg = preset_config("barlowtwins")
        ds = FramePairDataset(FrameStore(path), "train", get_method("barlowtwins")(cfg).view_transforms())
        ds[0]
        pr = cProfile.Profile()
        pr.enable()
        for i in range(256):
            ds[(i % len(ds), 1)]
        pr.disable()
        print("== pair dataset, 256 items (barlowtwins views, 64 px store)")
        pstats.Stats(pr).sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", nargs="*", default=[])
    ap.add_argument("--data", action="store_true")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for m in a.method:
        profile_method(m, a.steps, a.top)
    if a.data:
        torch.set_num_threads(1)
        profile_data(a.top)


if __name__ == "__main__":
    main()
