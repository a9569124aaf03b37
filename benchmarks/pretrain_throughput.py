"""Pretraining throughput on CPU: BarlowTwins step vs the bare backbone, and the pair pipeline.

    python benchmarks/pretrain_throughput.py [--threads 1 2] [--steps 5] [--batch 64] [--size 64]

Reports pairs/s (one pair = one training sample = two 64 px views) for
- backbone: encoder forward + backward on both views (no head, no loss, no optimiser);
- barlowtwins: forward_loss + backward + LARS step, for several projector sizes;
- data: FramePairDataset.__getitem__ (read + two augmentations) in one process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sonossl.config import PretrainConfig
from sonossl.data.framestore import FrameStore, FrameStoreWriter
from sonossl.data.pairs import FramePairDataset
from sonossl.data.transforms import asymmetric_pair
from sonossl.methods.barlowtwins import BarlowTwins


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--projectors", default="512-512-512,1024-1024-1024,2048-2048-2048,8192-8192-8192")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(a.batch, 1, a.size, a.size, generator=g)
    x2 = torch.rand(a.batch, 1, a.size, a.size, generator=g)
    for threads in a.threads:
        torch.set_num_threads(threads)
        print(f"-- torch threads: {threads}, batch {a.batch}, {a.size} px, resnet18")
        m = BarlowTwins(PretrainConfig(image_size=a.size, method_options={"projector": [64]}))
        m.train()

        def bare():
            m.zero_grad(set_to_none=True)
            (m.encoder(x1).sum() + m.encoder(x2).sum()).backward()

        dt = timed(bare, a.steps)
        print(f"backbone fwd+bwd (2 views)       {a.batch / dt:7.1f} pairs/s  ({dt * 1000:.0f} ms/step)")
        for dims in a.projectors.split(","):
            cfg = PretrainConfig(image_size=a.size, batch_size=a.batch, method_options={"projector": [int(d) for d in dims.split("-")]})
            m = BarlowTwins(cfg)
            m.train()
            opt = m.configure_optimizers()

            def step():
                opt.zero_grad(set_to_none=True)
                loss, _ = m.forward_loss((x1, x2))
                loss.backward()
                opt.step()

            dt = timed(step, a.steps)
            print(f"barlowtwins step, projector {dims:>14}  {a.batch / dt:7.1f} pairs/s  ({dt * 1000:.0f} ms/step)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        rng = np.random.default_rng(0)
        with FrameStoreWriter(path) as w:
            for v in range(4):
                w.add_video(f"v{v}", rng.integers(0, 256, (32, 128, 128), dtype=np.uint8), video_id=f"v{v}", group_id=f"v{v}")
        ds = FramePairDataset(FrameStore(path), "train", asymmetric_pair(a.size))
        torch.set_num_threads(1)
        n = 100
        t = time.perf_counter()
        for i in range(n):
            ds[(i % len(ds), 0)]
        dt = (time.perf_counter() - t) / n
        print(f"data: read + 2 views of a 128 px frame, 1 process   {1 / dt:7.1f} pairs/s")


if __name__ == "__main__":
    main()
