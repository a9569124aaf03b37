"""Input pipeline: what the pretraining loader delivers against what the model consumes.

A frame store is made the way a user makes one (``synthesize`` -> ``ingest``, 64 px, frame skip 1).
Then, for one method at the ``cpu`` preset's settings (BarlowTwins by default; its
``num_workers``, persistent workers, batch 64):

1. **loader rate**: pairs/s that the method's own ``train_dataloader()`` (``ResumableLoader``
   over ``FramePairDataset``: HDF5 read, grey, two augmentations, collation, worker transfer)
   delivers with nothing consuming it, per epoch after a warm-up epoch; also in-process
   (0 workers), for the per-process cost;
2. **end-to-end vs step-only epochs**: one ``Trainer.fit`` whose epochs alternate between the
   real loader (even epochs) and the same number of pre-loaded batches taken from it (odd
   epochs), so both see the same machine load; epoch time is ``on_train_epoch_start`` ->
   ``on_train_epoch_end``. The ratio is the median over repeats of (end-to-end epoch / the
   step-only epoch right after it) (target <= 1.10). The per-epoch kNN monitor and checkpoint of ``sonossl pretrain``
   are not part of it (they are not input pipeline).

    python benchmarks/input_pipeline.py [--method barlowtwins] [--clips 12] [--frames 32] [--repeats 5] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from common import machine, median, now, preset_config, write_json
from sonossl.data.framestore import FrameStore
from sonossl.config import IngestConfig
from sonossl.data.ingest import ingest
from sonossl.data.pairs import EpochSampler, FramePairDataset, ResumableLoader
from sonossl.data.synthetic import synthesize
from sonossl.methods import get_method


def make_store(root: Path, clips: int, frames: int) -> Path:
    synthesize(root / "synth", videos=clips, frames=frames, size=96, seed=0, labelled_per_class=(1, 1, 1))
    out = root / "frames.h5"
    ingest(IngestConfig(sources=[root / "synth" / "videos"], out=out, frame_skip=1, size=64, val_fraction=0.0,
                        workers=1), progress=False)
    return out


class Alternating:
    """Even epochs: the real loader; odd epochs: ``cached`` batches (pre-loaded from it)."""

    def __init__(self, real: ResumableLoader, cached: list):
        self.real, self.cached, self.epoch = real, cached, 0

    def __len__(self) -> int:
        return len(self.cached)

    def __iter__(self):
        e, self.epoch = self.epoch, self.epoch + 1
        if e % 2 == 0:
            self.real.epoch_sampler.set_epoch(e)
            return iter(self.real)
        return iter(self.cached)


class EpochTimer(Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.t0 = now()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(now() - self.t0)


def loader_rate(ds: FramePairDataset, batch: int, workers: int, repeats: int) -> tuple[float, list[float]]:
    """Median pairs/s of whole epochs of a ResumableLoader (one warm-up epoch first)."""
    sampler = EpochSampler(len(ds), batch, seed=0)
    loader = ResumableLoader(ds, sampler, num_workers=workers, persistent_workers=workers > 0)
    rates = []
    for e in range(repeats + 1):
        sampler.set_epoch(e)
        t, n = now(), 0
        for views in loader:
            n += views[0].shape[0]
        if e:
            rates.append(n / (now() - t))
    return median(rates), rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="barlowtwins")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = make_store(Path(tmp), a.clips, a.frames)
        cfg = preset_config(a.method, frames=path, accelerator="cpu", precision="32")
        pl.seed_everything(0, verbose=False)
        model = get_method(cfg.method)(cfg)
        ds = FramePairDataset(FrameStore(path), "train", model.view_transforms(), seed=cfg.seed)
        model.train_set = ds
        print(f"store: {len(ds)} frames, batch {cfg.batch_size}, {a.method}, loader workers {cfg.num_workers}", flush=True)
        rate0, raw0 = loader_rate(ds, cfg.batch_size, 0, a.repeats)
        rate_w, raw_w = loader_rate(ds, cfg.batch_size, cfg.num_workers, a.repeats)
        print(f"loader, 0 workers (in process):      {rate0:8.1f} pairs/s", flush=True)
        print(f"loader, {cfg.num_workers} worker(s) (cpu preset):    {rate_w:8.1f} pairs/s", flush=True)

        timer = EpochTimer()
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, precision="32-true", max_epochs=2 * (a.repeats + 1), logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer], use_distributed_sampler=False,
            reload_dataloaders_every_n_epochs=0,
        )
        # the real loader, built by the module as in `sonossl pretrain` (needs the trainer attached)
        model.trainer = trainer
        real = model.train_dataloader()
        cached = [tuple(v.clone() for v in b) for b in real]  # epoch 0's batches, pre-loaded
        alt = Alternating(real, cached)
        trainer.fit(model, train_dataloaders=alt)
        e2e, step_only = timer.times[2::2], timer.times[3::2]  # first pair of epochs: warm-up
        n = len(cached) * cfg.batch_size
        ratio = median([a / b for a, b in zip(e2e, step_only)])  # paired: adjacent epochs
        step_rate = n / median(step_only)
        print(f"model consumption (step-only epochs): {step_rate:8.1f} pairs/s  -> loader / model = {rate_w / step_rate:.1f}x")
        print(f"epoch of {len(cached)} batches: end-to-end {median(e2e):.2f} s, step-only {median(step_only):.2f} s, "
              f"ratio {ratio:.3f} (target <= 1.10)", flush=True)
        write_json(a.json, {
            "figure": "input_pipeline", "machine": machine(), "method": a.method, "frames": len(ds),
            "batch": cfg.batch_size, "num_workers": cfg.num_workers,
            "loader_pairs_per_s": {"0_workers": round(rate0, 1), f"{cfg.num_workers}_workers": round(rate_w, 1)},
            "loader_raw": {"0": raw0, str(cfg.num_workers): raw_w},
            "model_pairs_per_s": round(step_rate, 1), "loader_over_model": round(rate_w / step_rate, 2),
            "epoch_s": {"end_to_end": round(median(e2e), 3), "step_only": round(median(step_only), 3)},
            "end_to_end_over_step_only": round(ratio, 3), "raw_epoch_s": {"end_to_end": e2e, "step_only": step_only},
        })


if __name__ == "__main__":
    main()
