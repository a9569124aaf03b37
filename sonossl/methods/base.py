"""The loop every SSL method shares: encoder, optimiser, schedule, logging, data, checkpoints.

A method subclasses :class:`SSLMethod` and adds only what is its own (docs/methods.md, "Conventions"):

- ``Options``: a small pydantic model of its ``method_options`` (unknown keys are refused);
- ``__init__``: its heads and loss;
- ``forward_loss(batch) -> (loss, logs)``: batch is a tuple of view tensors
  ``(batch_size, 1, S, S)``;
- optionally ``default_views()`` (how many views and how each is augmented by default; the
  ``augment`` block of the config overrides the first two),
  ``momentum_pairs()`` ((online, target) modules updated by EMA at every step),
  ``optim_modules()`` (what the optimiser trains; default: every child module),
  ``check_config(cfg, options)`` (refuse impossible settings before a run starts),
  ``export_encoder()`` (whose trunk becomes ``backbone.pt``; default: ``encoder``) and
  ``lr_schedule(step, steps_per_epoch)`` (default: warm-up then cosine).

``cfg.batch_size`` is the global batch (as in barlowtwins ``main.py``); each of the
``num_nodes x devices`` processes gets ``batch_size / (num_nodes x devices)``. Learning rates scale with the global batch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from sonossl.config import PretrainConfig, validated
from sonossl.data.batched_views import BatchedViews, view_generator
from sonossl.data.pairs import EpochSampler, FramePairDataset, ResumableLoader
from sonossl.data.transforms import ViewTransform, asymmetric_pair
from sonossl.errors import DivergenceError, SonosslError
from sonossl.methods.optim import build_optimizer, lr_factor
from sonossl.models.backbones import build_encoder


class MethodOptions(BaseModel):
    """Base of a method's ``method_options``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def parse_options(cls: type[MethodOptions], method: str, options: dict[str, Any]) -> MethodOptions:
    return validated(cls, options, f"method_options ({method})")


def gather_batch(z: torch.Tensor) -> torch.Tensor:
    """Concatenate ``z`` (local_batch, dim) from every DDP process, keeping gradients
    (lightly's ``GatherLayer``): (global_batch, dim). Identity outside DDP."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return z
    if torch.distributed.get_world_size() == 1:
        return z
    from lightly.utils.dist import gather

    return torch.cat(gather(z), 0)


class SSLMethod(pl.LightningModule):
    """Shared training loop. Subclasses set ``name``, ``Options`` and implement ``forward_loss``."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    # the loss is a fixed function of the weights, so a sustained rise means divergence (the health
    # check's loss_rising, sonossl.methods.health); False where it is measured against a moving target
    loss_is_objective: ClassVar[bool] = True

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg = cfg
        self.options = self.validate(cfg)
        if cfg.image_size is None:
            raise SonosslError("image_size: not resolved; run_pretrain sets it from the frame store (or give image_size)")
        self.encoder = build_encoder(cfg.backbone)
        self.train_set: FramePairDataset | None = None  # set by run_pretrain
        self.device_views: BatchedViews | None = None  # set by run_pretrain when augment_on is device
        self.images_seen = 0
        self.train_time_s = 0.0
        self.last_logs: dict[str, float] = {}  # host copies, refreshed every log interval
        self._loss_sum: torch.Tensor | None = None  # device accumulators: no per-step host sync
        self._loss_n = 0
        self._nonfinite: torch.Tensor | None = None
        self._interval_t0 = time.perf_counter()
        self._interval_images = 0
        self._fit_t0 = time.perf_counter()
        self._time_at_start = 0.0

    # ---- what a method provides -------------------------------------------------------------
    def forward_loss(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """batch: views, each (batch_size, 1, S, S) -> (scalar loss, {name: scalar tensor})."""
        raise NotImplementedError

    def default_views(self) -> list[ViewTransform]:
        """The method's own views (one transform per view); default: the seed's asymmetric
        BarlowTwins/VICReg pair."""
        return asymmetric_pair(self.cfg.image_size)

    def view_transforms(self) -> list[ViewTransform]:
        """The views the data loader draws: :meth:`default_views` with the settings of
        ``cfg.augment`` (``view1``, ``view2``) applied to the first two."""
        views = self.default_views()
        for i, aug in enumerate(self.cfg.augment.views()[:len(views)]):
            views[i] = dataclasses.replace(views[i], **aug.transform_kwargs())
        return views

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) modules; target <- m * target + (1 - m) * online once per optimiser
        step (applied at the start of the next step, see ``_update_targets``)."""
        return []

    def momentum(self) -> float:
        """EMA coefficient at the current step (BYOL's cosine 0.99 -> 1 by default)."""
        from lightly.utils.scheduler import cosine_schedule

        return cosine_schedule(self.global_step, max(1, self._total_steps), 0.99, 1.0)

    def optim_modules(self) -> list[nn.Module]:
        """Modules the optimiser trains (default: all children; exclude momentum targets)."""
        targets = {id(t) for _, t in self.momentum_pairs()}
        return [m for m in self.children() if id(m) not in targets]

    @classmethod
    def check_config(cls, cfg: PretrainConfig, options: MethodOptions) -> None:
        """Refuse, with one :class:`SonosslError` line, settings this method cannot run with
        (e.g. a MoCo queue smaller than the batch, AE with temporal pairs). Every refusal of a
        method lives here, so it is found wherever a config is built (``sonossl pretrain``
        before it writes anything, ``sonossl study`` before any run starts). ``cfg.image_size``
        may still be ``None`` (the frame store's size, resolved when the run starts): checks
        that need it are then made at the run's start. A subclass calls ``super()``."""
        if cfg.batch_size % cfg.world_size or cfg.batch_size // cfg.world_size < 2:
            raise SonosslError(f"batch_size: {cfg.batch_size} must be a multiple of num_nodes x devices "
                               f"({cfg.world_size}), >= 2 per device")

    @classmethod
    def smallest_view(cls, cfg: PretrainConfig, options: MethodOptions) -> int:
        """The side in pixels of the smallest view the encoder sees (default ``image_size``; DINO's
        local crops are smaller): the fast path keeps small inputs out of CPU bf16."""
        return cfg.image_size

    @classmethod
    def validate(cls, cfg: PretrainConfig) -> MethodOptions:
        """``cfg.method_options`` parsed by this method's ``Options`` and ``cfg`` checked by
        :meth:`check_config`; returns the options."""
        options = parse_options(cls.Options, cls.name, cfg.method_options)
        cls.check_config(cfg, options)
        return options

    def export_encoder(self) -> nn.Module:
        """The encoder whose trunk becomes ``backbone.pt`` (default: the trained one; DINO: its teacher)."""
        return self.encoder

    # ---- data -------------------------------------------------------------------------------
    @property
    def per_device_batch(self) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        return self.cfg.batch_size // world

    def train_dataloader(self) -> ResumableLoader:
        if self.train_set is None:
            raise RuntimeError("train_set not set: build the dataset before fitting")
        sampler = EpochSampler(
            len(self.train_set),
            self.per_device_batch,
            seed=self.cfg.seed,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
        )
        workers = self.cfg.num_workers
        loader = ResumableLoader(
            self.train_set,
            sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator",
        )
        loader.progress = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return loader

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With views made on the device (``augment_on: device``): the loader's uint8 frames,
        each (batch_size, 1, H, W), become the method's views, each (batch_size, 1, S, S), here
        on the model's device. The generator is seeded by (seed, global step, rank), so a resumed
        run makes the same views as a straight one."""
        if self.device_views is not None and self.training:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            batch = self.device_views(batch, view_generator(self.cfg.seed, self.global_step, rank, self.device))
        if self.cfg.channels_last and isinstance(batch, (tuple, list)):
            batch = type(batch)(v.contiguous(memory_format=torch.channels_last)
                                if isinstance(v, torch.Tensor) and v.dim() == 4 else v for v in batch)
        return batch

    def on_fit_start(self) -> None:
        if self.cfg.channels_last:  # the layout the fast path chose (sonossl.models.fastpath)
            self.to(memory_format=torch.channels_last)

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        c = self.cfg
        return build_optimizer(self.optim_modules(), c.optimizer, c.lr_weights, c.lr_biases, c.weight_decay, c.batch_size)

    @property
    def _total_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    def lr_schedule(self, step: int, steps_per_epoch: int) -> float:
        """Multiplier of the base learning rates at optimiser step ``step`` (0-based): linear
        warm-up, then cosine to ``final_lr_ratio``. A method with another schedule overrides it."""
        warmup = round(self.cfg.warmup_epochs * steps_per_epoch)
        return lr_factor(step, self._total_steps, warmup, self.cfg.final_lr_ratio)

    def _set_lr(self) -> float:
        f = self.lr_schedule(self.global_step, max(1, int(self.trainer.num_training_batches)))
        opt = self.optimizers(use_pl_optimizer=False)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        return opt.param_groups[0]["lr"]

    # ---- the step ---------------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._interval_t0 = time.perf_counter()
        self._interval_images = 0
        self._fit_t0 = time.perf_counter()
        self._time_at_start = self.train_time_s

    def on_train_epoch_start(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_n = 0

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        self._update_targets()
        lr = self._set_lr()
        loss, logs = self.forward_loss(batch)
        detached = loss.detach().float()
        self._nonfinite |= ~torch.isfinite(detached)
        if self._loss_sum is None:  # resumed mid-epoch: on_train_epoch_start was not called
            self.on_train_epoch_start()
        self._loss_sum = self._loss_sum + detached
        self._loss_n += 1
        n_images = batch[0].shape[0] * self.trainer.world_size
        self.images_seen += n_images
        self._interval_images += n_images
        if (self.global_step + 1) % self.cfg.log_every_n_steps == 0:
            self._flush_logs(detached, lr, logs)
        return loss

    def _update_targets(self) -> None:
        """EMA of every momentum pair from the previous optimiser step's weights, at the start
        of a step (as facebookresearch/moco does), not at the end of the previous one: Lightning
        saves a step's checkpoint in the callbacks' ``on_train_batch_end``, which runs *before*
        the module's, so an update there would be missing from the checkpoint and a resumed run
        would differ. ``momentum()`` sees the same ``global_step`` either way; at step 0 the
        targets equal their online copies."""
        pairs = self.momentum_pairs()
        if pairs:
            from lightly.models.utils import update_momentum

            m = self.momentum()
            for online, target in pairs:
                update_momentum(online, target, m)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.train_time_s = self.elapsed()

    def elapsed(self) -> float:
        """Training seconds so far, summed over resumed sessions."""
        return self._time_at_start + time.perf_counter() - self._fit_t0

    def _flush_logs(self, loss: torch.Tensor, lr: float, logs: dict[str, torch.Tensor]) -> None:
        """One host sync per log interval: check finiteness, copy scalars, log them."""
        self.check_finite()
        now = time.perf_counter()
        ips = self._interval_images / max(now - self._interval_t0, 1e-9)
        self._interval_t0, self._interval_images = now, 0
        values = {"loss": float(loss), "lr": lr, "images_per_s": ips, **{k: float(v) for k, v in logs.items()}}
        self.last_logs = {"step": self.global_step + 1, **values}  # step after this update
        self.log_dict({f"train/{k}": v for k, v in values.items()}, prog_bar=False, logger=False)
        self.log("loss", values["loss"], prog_bar=True, logger=False)

    def epoch_loss(self) -> float:
        """Mean loss of the epoch so far (one host sync)."""
        return float(self._loss_sum / max(1, self._loss_n)) if self._loss_sum is not None else float("nan")

    def check_finite(self) -> None:
        if self._nonfinite is not None and bool(self._nonfinite):
            raise DivergenceError(
                f"{self.name}: loss became NaN/inf by step {self.global_step}; stopped, the last checkpoint "
                f"(before the divergence) is kept; lower lr_weights/lr_biases or check the frames"
            )

    # ---- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()  # never save diverged weights (one host sync per checkpoint)
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.parameters()]).all()):
            self._nonfinite = torch.ones((), dtype=torch.bool, device=self.device)
            self.check_finite()
        checkpoint["sonossl"] = {
            "config": self.cfg.model_dump(mode="json"),
            "images_seen": int(self.images_seen),
            "train_time_s": float(self.elapsed()),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("sonossl", {})
        self.images_seen = int(extra.get("images_seen", 0))
        self.train_time_s = float(extra.get("train_time_s", 0.0))
