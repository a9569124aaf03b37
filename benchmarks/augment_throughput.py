"""Views per CPU core: the per-sample loader against batched views made from uint8 frames.

A frame store of 256 px frames is made the way a user makes one (``synthesize`` -> ``ingest
--size 256``). For each view size (64, 128, 256 px) and each view set (the ``paper`` preset's
asymmetric BarlowTwins pair; DINO's multi-crop, 2 global + 8 local views), in one process with
one torch thread, measured in CPU seconds of this process (so other jobs on the machine slow
the figures less than wall time would):

- ``per-sample``: the loader of ``augment_on: loader`` (``ResumableLoader`` over
  ``FramePairDataset``, 0 workers: HDF5 read, grey, every view cut per sample, collation);
- ``uint8 loader``: the loader of ``augment_on: device`` (``FrameDataset``: read, grey,
  collation of uint8 frames), i.e. all the CPU does per item when the views are made on a GPU;
- ``batched views``: :class:`BatchedViews` on those uint8 batches, on the CPU;
- ``batched total``: both, as ``augment_on: device`` costs on a CPU-only machine.

Items/s (pairs/s for the pair; for multi-crop one item is its 10 views) are medians over
``--repeats`` epochs. Cores per GPU = the GPU's consumption in items/s / items/s per core, at
``--gpu-rate`` images/s for ResNet-50 at 224 px (default 2470: NVIDIA DeepLearningExamples,
PyTorch ResNet50 v1.5 README, "Training performance: NVIDIA DGX A100 (8x A100 80GB)", 1 GPU,
mixed precision), scaled by (224 / size)^2 (compute grows with pixels; an upper bound at small
sizes, where a GPU is less efficient); a pair is 2 images, a multi-crop item 2 global images
plus 8 local ones at (local / global)^2 the cost.

    python benchmarks/augment_throughput.py [--sizes 64 128 256] [--clips 4] [--frames 16] [--repeats 3] [--json F]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from common import machine, median, preset_config, write_json
from sonossl.data.batched_views import BatchedViews, FrameDataset
from sonossl.data.framestore import FrameStore
from sonossl.config import IngestConfig
from sonossl.data.ingest import ingest
from sonossl.data.pairs import EpochSampler, FramePairDataset, ResumableLoader
from sonossl.data.synthetic import synthesize
from sonossl.methods import get_method

BATCH = 64


def make_store(root: Path, clips: int, frames: int) -> Path:
    synthesize(root / "synth", videos=clips, frames=frames, size=256, seed=0, labelled_per_class=(1, 1, 1))
    out = root / "frames.h5"
    ingest(IngestConfig(sources=[root / "synth" / "videos"], out=out, frame_skip=1, size=256, val_fraction=0.0,
                        workers=1), progress=False)
    return out


def epochs(ds, repeats: int, consume=None) -> tuple[float, list[float]]:
    """Median items per CPU second over ``repeats`` epochs of a 0-worker loader (after one
    warm-up epoch); ``consume(batch)`` runs on every batch inside the timing."""
    sampler = EpochSampler(len(ds), BATCH, seed=0)
    loader = ResumableLoader(ds, sampler, num_workers=0)
    rates = []
    for e in range(repeats + 1):
        sampler.set_epoch(e)
        t, n = time.process_time(), 0
        for batch in loader:
            if consume is not None:
                consume(batch)
            n += batch[0].shape[0]
        if e:
            rates.append(n / (time.process_time() - t))
    return median(rates), [round(r, 1) for r in rates]


def view_sets(size: int) -> dict[str, list]:
    """The paper preset's views at ``size``: BarlowTwins' pair and DINO's multi-crop."""
    out = {}
    for name, label in (("barlowtwins", "pair"), ("dino", "multicrop")):
        cfg = preset_config(name, "paper", image_size=size, backbone="resnet18", accelerator="cpu", precision="32",
                            method_options={"out_dim": 256, "hidden_dim": 64, "bottleneck_dim": 32} if name == "dino"
                            else {"projector": [64, 64]})
        out[label] = get_method(name)(cfg).view_transforms()
    return out


def measure(store: FrameStore, size: int, label: str, transforms, repeats: int, gpu_rate: float) -> dict:
    per_sample, raw_ps = epochs(FramePairDataset(store, "train", transforms), repeats)
    frames = FrameDataset(store, "train", transforms)
    loader, raw_l = epochs(frames, repeats)
    views, g = BatchedViews(transforms), torch.Generator().manual_seed(0)
    batches = [b for _, b in zip(range(4), ResumableLoader(frames, EpochSampler(len(frames), BATCH, seed=0)))]
    rates = []
    for _ in range(repeats + 1):
        t = time.process_time()
        for b in batches:
            views(b, g)
        rates.append(len(batches) * BATCH / (time.process_time() - t))
    batched = median(rates[1:])
    total = 1 / (1 / loader + 1 / batched)
    gpu_images = gpu_rate * (224 / size) ** 2
    image_cost = sum((t.size / size) ** 2 for t in transforms)  # an item's images, in global-view units
    gpu_items = gpu_images / image_cost
    return {"size": size, "views": label, "n_views": len(transforms), "per_sample": round(per_sample, 1),
            "uint8_loader": round(loader, 1), "batched_views": round(batched, 1), "batched_total": round(total, 1),
            "batched_total_over_per_sample": round(total / per_sample, 2), "gpu_items_per_s": round(gpu_items, 1),
            "cores_per_gpu_per_sample": round(gpu_items / per_sample, 2),
            "cores_per_gpu_device": round(gpu_items / loader, 2),
            "raw": {"per_sample": raw_ps, "uint8_loader": raw_l, "batched_views": [round(r, 1) for r in rates[1:]]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="view sizes in px (default 64 128 256)")
    ap.add_argument("--clips", type=int, default=4, help="synthetic clips in the store (default 4)")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per figure (default 3)")
    ap.add_argument("--gpu-rate", type=float, default=2470.0,
                    help="GPU training rate, ResNet-50 images/s at 224 px (default 2470: 1x A100, mixed precision, NVIDIA)")
    ap.add_argument("--json", default=None, help="write the figures to this file (default: none)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = FrameStore(make_store(Path(tmp), a.clips, a.frames))
        print(f"{store.n_frames} stored frames of 256 px, batch {BATCH}, 1 thread, items per CPU second "
              f"(GPU: {a.gpu_rate:.0f} ResNet-50 images/s at 224 px)", flush=True)
        print("size views      per-sample  uint8-loader  batched-views  batched-total  total/per-sample  "
              "GPU items/s  cores/GPU per-sample  cores/GPU device", flush=True)
        for size in a.sizes:
            for label, transforms in view_sets(size).items():
                r = measure(store, size, label, transforms, a.repeats, a.gpu_rate)
                rows.append(r)
                print(f"{size:4d} {label:9s} {r['per_sample']:11.1f} {r['uint8_loader']:13.1f} {r['batched_views']:14.1f} "
                      f"{r['batched_total']:14.1f} {r['batched_total_over_per_sample']:17.2f} {r['gpu_items_per_s']:12.1f} "
                      f"{r['cores_per_gpu_per_sample']:21.2f} {r['cores_per_gpu_device']:17.2f}", flush=True)
    write_json(a.json, {"figure": "augment_throughput", "machine": machine(), "batch": BATCH,
                        "gpu_rate_224": a.gpu_rate, "rows": rows})


if __name__ == "__main__":
    main()
