"""The callbacks that keep a pretraining's run folder: atomic checkpoints, ``stats.jsonl`` and,
at a clean end, ``backbone.pt`` and ``summary.json`` (the layout: :mod:`sonossl.methods.train`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from sonossl.diskspace import room_for
from sonossl.errors import SonosslError
from sonossl.methods.base import SSLMethod
from sonossl.methods.monitors import Monitors
from sonossl.models.backbones import load_error
from sonossl.outputs import atomic_torch_save, atomic_write_text
from sonossl.runlog import flat_hparams, scalars

CKPT_NAME = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's own save goes through an fsspec transaction whose temp file lives in the
    system temp dir and is *moved* (a copy across file systems): not atomic. This one is."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, Path(path))


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at every epoch end, every ``train_time_interval``, and at the batch where
    the run stops (``max_steps``, ``max_time``). Lightning's own last save of a run stopped
    mid-epoch happens at epoch end, and resuming from it skips the rest of that epoch; a save at
    the batch end resumes mid-epoch (the loader's state then skips the batches already seen)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        stopping = trainer.should_stop or (0 < trainer.max_steps <= trainer.global_step)
        if stopping and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class StatsWriter(Callback):
    """Appends to ``stats.jsonl`` (global rank 0): a line per log interval and per epoch, the
    epoch's line with the figures of ``monitors`` (a callback that runs before this one). Every
    scalar of a line goes to the trainer's loggers too, under ``train/<key>`` or ``epoch/<key>``
    at the line's step (:mod:`sonossl.runlog`), and the run's config as hyperparameters."""

    def __init__(self, path: Path, monitors: Monitors | None = None):
        self.path = Path(path)
        self.monitors = monitors
        self._written_step = -1

    def _append(self, row: dict[str, Any], trainer=None) -> None:
        line = json.dumps(row) + "\n"
        with room_for(self.path, need=len(line)), open(self.path, "a") as f:  # a cut line is dropped on resume
            f.write(line)
        for logger in getattr(trainer, "loggers", ()):
            logger.log_metrics(scalars(row, "train" if row["kind"] == "step" else "epoch"), step=row["step"])

    def on_train_start(self, trainer, pl_module) -> None:  # also covers a mid-epoch resume
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams(flat_hparams(json.loads(pl_module.cfg.model_dump_json())))
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_t0, self._epoch_images = time.perf_counter(), pl_module.images_seen

    def on_train_batch_end(self, trainer, pl_module: SSLMethod, outputs, batch, batch_idx) -> None:
        logs = pl_module.last_logs
        if not trainer.is_global_zero or logs.get("step") != trainer.global_step or trainer.global_step == self._written_step:
            return
        self._written_step = trainer.global_step
        self._append({"kind": "step", "step": trainer.global_step, "epoch": trainer.current_epoch,
                      **{k: v for k, v in logs.items() if k != "step"}, "time_s": round(pl_module.elapsed(), 3)}, trainer)

    def on_train_epoch_end(self, trainer, pl_module: SSLMethod) -> None:
        loss = pl_module.epoch_loss()  # every rank: the sync is collective-free but keep ranks alike
        if not trainer.is_global_zero:
            return
        dt = max(time.perf_counter() - self._epoch_t0, 1e-9)
        self._append({"kind": "epoch", "step": trainer.global_step, "epoch": trainer.current_epoch, "loss": loss,
                      "lr": pl_module.optimizers(use_pl_optimizer=False).param_groups[0]["lr"],
                      "images_per_s": (pl_module.images_seen - self._epoch_images) / dt,
                      **(self.monitors.logs if self.monitors else {}), "time_s": round(pl_module.elapsed(), 3)}, trainer)


class FinalOutputs(Callback):
    """At a clean end of training (epochs, max_steps or max_time): backbone.pt and summary.json."""

    def __init__(self, out: Path, health=None):
        self.out = Path(out)
        self.health = health  # sonossl.methods.health.Health: its flags go into summary.json

    def on_train_end(self, trainer, pl_module: SSLMethod) -> None:
        pl_module.check_finite()
        loss = pl_module.epoch_loss()
        if not trainer.is_global_zero:
            return
        trunk = {k: v.detach().cpu().clone() for k, v in pl_module.export_encoder().trunk.state_dict().items()}
        atomic_torch_save(trunk, self.out / "backbone.pt")
        summary = {
            "method": pl_module.name,
            "backbone": pl_module.cfg.backbone,
            "steps": trainer.global_step,
            "epochs": round(trainer.global_step / max(1, trainer.num_training_batches), 3),  # fractional
            "images_seen": pl_module.images_seen,
            "wall_time_s": round(pl_module.elapsed(), 3),
            "final_loss": loss,
            "stopped_by": "max_time" if _timer_stopped(trainer) else "schedule",
            "precision": pl_module.cfg.precision,
            "channels_last": bool(pl_module.cfg.channels_last),
            "health": {"flags": list(self.health.flags) if self.health is not None else []},
        }
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")


def _timer_stopped(trainer: pl.Trainer) -> bool:
    from pytorch_lightning.callbacks import Timer

    return any(isinstance(c, Timer) and c.time_remaining() is not None and c.time_remaining() <= 0 for c in trainer.callbacks)


def check_checkpoint(path: Path) -> int:
    """Refuse a checkpoint that does not load with ``weights_only=True`` (pickled code, a
    truncated or foreign file) before Lightning meets it, with one line naming the file.
    Returns its ``global_step``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        return int(ckpt["global_step"])
    except Exception as exc:
        raise SonosslError(f"{path}: not a loadable weights-only checkpoint ({load_error(exc)}); "
                           "remove it to start afresh, or --overwrite") from None


def trim_stats(path: Path, step: int) -> None:
    """Drop the ``stats.jsonl`` lines written after the checkpoint being resumed (``step`` >
    its global step): the resumed run does those steps again and writes them once more."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):  # a line cut by the crash
            continue
    atomic_write_text(path, "".join(keep))
