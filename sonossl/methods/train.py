"""``sonossl pretrain``: one SSL run in one self-describing folder.

Layout of ``cfg.out``::

    config.yaml          resolved config
    stats.jsonl          one JSON line per log interval and per epoch
    checkpoints/last.ckpt  Lightning checkpoint (every epoch and every checkpoint_every_s seconds)
    backbone.pt          encoder trunk state_dict (plain torchvision, no fc), written at the end
    summary.json         method, backbone, steps, epochs, images seen, wall time, final loss

Every file is written to a temporary name beside its target and renamed into place, so a crash
never leaves a truncated checkpoint or backbone (the callbacks that write the folder:
:mod:`sonossl.methods.runfolder`).
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, RichProgressBar

from sonossl.config import AugmentConfig, PretrainConfig, ViewAugment, dump_config, resolve_image_size
from sonossl.data.batched_views import BatchedViews, FrameDataset
from sonossl.data.framestore import FrameStore
from sonossl.data.pairs import FramePairDataset
from sonossl.diskspace import spawned_error
from sonossl.errors import SonosslError
from sonossl.methods import get_method, validate_method
from sonossl.methods.base import SSLMethod
from sonossl.methods.health import Health
from sonossl.methods.memcheck import check_step_memory, oom_error, out_of_memory
from sonossl.methods.monitors import Monitors
from sonossl.methods.runfolder import (CKPT_NAME, AtomicCheckpointIO, FinalOutputs, RunCheckpoint, StatsWriter,
                                      check_checkpoint, trim_stats)
from sonossl.methods.tune import tune_then_run
from sonossl.models.devices import loader_workers
from sonossl.models.fastpath import FastPath
from sonossl.models.fastpath import choose as choose_fast_path
from sonossl.models.memory import StepMemory
from sonossl.outlock import check_apart, release
from sonossl.outputs import claim_output_dir
from sonossl.runlog import make_logger

def check_image_size(image_size: int | None, store: FrameStore) -> int:
    """The pretraining's image size (:func:`~sonossl.data.framestore.resolve_image_size`: the
    store's frame size unless ``image_size`` says otherwise); a size above the store's frames is
    refused (it would invent detail by upsampling)."""
    size = resolve_image_size(image_size, stored=store.frame_size)
    if size > store.frame_size:
        raise SonosslError(f"image_size: {size} px is larger than the {store.frame_size} px frames of {store.path}; "
                           f"pass --image-size {store.frame_size} or less, or ingest again with --size {size}")
    return size


def _launcher_rank_zero() -> bool:
    """False in processes started by a DDP launcher for ranks > 0 (they must not touch the folder)."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def pretrain_inputs(cfg: PretrainConfig) -> list[tuple[str, Path | None]]:
    """What a pretraining reads, which its run folder must stay apart from."""
    return [("--frames", cfg.frames), ("--monitor-labels", cfg.monitor_labels)]


def _prepare_folder(out: Path, cfg: PretrainConfig, resume: bool, overwrite: bool) -> Path | None:
    """Create/clear ``out``; return the checkpoint to resume from, if any."""
    ckpt = out / "checkpoints" / CKPT_NAME
    claim_output_dir(out, command="pretrain", inputs=pretrain_inputs(cfg), resume=resume, overwrite=overwrite)
    if resume and not ckpt.is_file():  # nothing to continue: a fresh start, without stale files
        for name in ("stats.jsonl", "backbone.pt", "summary.json"):
            (out / name).unlink(missing_ok=True)
    dump_config(cfg, out / "config.yaml")
    return ckpt if resume and ckpt.is_file() else None


def _checked(cfg: PretrainConfig, resume: bool, overwrite: bool) -> tuple[PretrainConfig, FrameStore, str, FastPath]:
    """Every check that needs no output folder: the config with its image size, precision and
    layout resolved, the store, the accelerator and the fast path's choice (with its reason)."""
    if cfg.frames is None:
        raise SonosslError("frames: required (a frame store written by `sonossl ingest`)")
    if cfg.out is None:
        raise SonosslError("out: required (the run folder to create)")
    if resume and overwrite:
        raise SonosslError("resume and overwrite exclude each other")
    check_apart(cfg.out, pretrain_inputs(cfg))
    options = validate_method(cfg)  # what does not depend on the store, before it is opened
    store = FrameStore(cfg.frames)
    size = check_image_size(cfg.image_size, store)
    if size != cfg.image_size:  # the store's size: the checks that need the size run again
        cfg = cfg.model_copy(update={"image_size": size})
        options = validate_method(cfg)
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise SonosslError("accelerator: gpu requested but no CUDA device is visible")
    fast = choose_fast_path(cfg.backbone, cfg.image_size, "cuda" if accelerator == "gpu" else "cpu", cfg.precision,
                            min_side=get_method(cfg.method).smallest_view(cfg, options))
    # the choice is recorded in config.yaml: a resumed run reads it back and trains as it started
    channels_last = fast.channels_last if cfg.channels_last is None else cfg.channels_last
    cfg = cfg.model_copy(update={"precision": fast.precision, "channels_last": channels_last,
                                 "num_workers": loader_workers(cfg.num_workers)})  # recorded in config.yaml too
    return cfg, store, accelerator, fast


def build_model(cfg: PretrainConfig, store: FrameStore, accelerator: str = "cpu") -> SSLMethod:
    """The method of ``cfg`` with its training set: frames of the store's ``train`` split, viewed
    through :meth:`~sonossl.methods.base.SSLMethod.view_transforms` (the ``augment`` block applied).

    ``augment_on`` loader: views made per sample in the loader (:class:`FramePairDataset`);
    device (``auto`` on a GPU): the loader yields uint8 frames (:class:`FrameDataset`) and the
    model makes the views batched on its device (:class:`BatchedViews`)."""
    model = get_method(cfg.method)(cfg)
    on_device = cfg.augment_on == "device" or (cfg.augment_on == "auto" and accelerator == "gpu")
    dataset = FrameDataset if on_device else FramePairDataset
    model.train_set = dataset(store, "train", model.view_transforms(), pairs=cfg.pairs, max_gap=cfg.max_gap,
                              frame_stride=cfg.frame_stride, seed=cfg.seed)
    model.device_views = BatchedViews(model.view_transforms()) if on_device else None
    return model


def resolved_config(model: SSLMethod) -> PretrainConfig:
    """``model.cfg`` with every augmentation value its views use (written as ``config.yaml``)."""
    views = model.train_set.transforms if model.train_set is not None else model.view_transforms()
    augment = AugmentConfig(**{f"view{i + 1}": ViewAugment.of(v) for i, v in enumerate(views[:2])})
    return model.cfg.model_copy(update={"augment": augment})


def _folder(out: Path, model: SSLMethod, resume: bool, overwrite: bool) -> tuple[Path | None, int | None]:
    """Claim ``out`` (rank 0); returns the checkpoint to resume from and its step, if any."""
    last = out / "checkpoints" / CKPT_NAME
    resume_step = check_checkpoint(last) if resume and last.is_file() else None
    if not _launcher_rank_zero():
        return (last, resume_step) if resume and last.is_file() else (None, None)
    ckpt = _prepare_folder(out, resolved_config(model), resume, overwrite)
    if ckpt is not None and resume_step is not None:
        trim_stats(out / "stats.jsonl", resume_step)
    return ckpt, resume_step if ckpt is not None else None


class _NoAdverts(logging.Filter):
    """Lightning's tips for its cloud products tell a user nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("Tip:" in text or "litlogger" in text or "litmodels" in text)


def _quiet_lightning(progress: bool) -> None:
    # Lightning 2.6 calls a deprecated torch pytree API on every fit; nothing for a user to act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # the loader's workers are sized to the machine (loader_workers); a user's own choice is theirs
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        log = logging.getLogger(name)
        # on the handlers Lightning adds: they see the records of every child logger (rank_zero_info's too)
        for sink in (log, *log.handlers):
            if not any(isinstance(f, _NoAdverts) for f in sink.filters):
                sink.addFilter(_NoAdverts())
        if not progress:  # quiet: no "GPU available" banners either, warnings still shown
            log.setLevel(logging.WARNING)


def run_pretrain(cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
                 callbacks: list[Callback] | None = None) -> Path:
    """Pretrain ``cfg.method`` on the ``train`` split of ``cfg.frames``; returns the run folder.

    ``resume``: continue from ``out/checkpoints/last.ckpt`` (a fresh start when there is none);
    ``overwrite``: wipe an existing ``out`` first. Without either, an existing non-empty ``out``
    is refused. ``callbacks``: extra Lightning callbacks (e.g. snapshots), run after the run's own.
    With ``cfg.tune``, the learning-rate sweep runs first and its winner goes on to the full run
    (:mod:`sonossl.methods.tune`). Raises :class:`SonosslError` on bad input and when the loss
    diverges.
    """
    if cfg.tune:
        if resume and overwrite:
            raise SonosslError("resume and overwrite exclude each other")
        validate_method(cfg)
        return tune_then_run(cfg, run_single, pretrain_inputs(cfg), resume=resume, overwrite=overwrite,
                             progress=progress, callbacks=callbacks)
    return run_single(cfg, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks)


def run_single(cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
               callbacks: list[Callback] | None = None, first: tuple[Callback, ...] = ()) -> Path:
    """One pretraining as configured (no sweep); ``first``: callbacks before the run's own."""
    cfg, store, accelerator, fast = _checked(cfg, resume, overwrite)
    precision = fast.precision
    if progress and fast.reason != "given":
        print(f"precision: {fast}", flush=True)
    _quiet_lightning(progress)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg, store, accelerator)
    monitors = Monitors(store, cfg.image_size, cfg.monitor_labels)  # reads (and checks) the monitor's labelled set
    memory = check_step_memory(model, accelerator)  # a step that cannot fit: one line, before anything is written
    out = Path(cfg.out)
    # the folder is touched only once the input has passed every check above (nothing half-written)
    ckpt, resume_step = _folder(out, model, resume, overwrite)
    logger = make_logger(cfg.logger, out, purge_step=None if resume_step is None else resume_step + 1)
    trainer = _trainer(cfg, out, accelerator, precision, monitors, progress, callbacks or [], logger, first)
    _fit(trainer, model, ckpt, out, memory)
    return out


def _trainer(cfg: PretrainConfig, out: Path, accelerator: str, precision: str, monitors: Monitors,
             progress: bool, extra: list[Callback], logger=None, first: tuple[Callback, ...] = ()) -> pl.Trainer:
    """The Lightning trainer: checkpoints, monitors, the health check, stats.jsonl (and the same
    scalars to ``logger``, :mod:`sonossl.runlog`), final outputs, DDP when devices > 1. ``first``:
    callbacks that run before the run's own (a stop that the checkpoint must see)."""
    health = Health(monitors, recover=cfg.on_divergence == "recover")
    callbacks: list[Callback] = [*first,
        RunCheckpoint(
            dirpath=out / "checkpoints", filename="last", save_top_k=0, save_last=True,
            train_time_interval=timedelta(seconds=cfg.checkpoint_every_s), save_on_train_epoch_end=True,
        ),
        monitors,  # before StatsWriter: it writes their figures, and before Health: it reads them
        health,
        StatsWriter(out / "stats.jsonl", monitors),
        FinalOutputs(out, health),
    ]
    callbacks += extra
    if progress:
        callbacks.append(RichProgressBar())
    world = cfg.world_size
    strategy: Any = "auto"
    if world > 1:
        from pytorch_lightning.strategies import DDPStrategy

        # CPU: gloo, in processes spawned here (any caller, tests included) or started per node;
        # GPU: nccl, Lightning's default launcher (re-runs the command per device). Processes
        # started by SLURM or per node (LOCAL_RANK set) are not launched again: Lightning's
        # cluster environment (SLURM, or MASTER_ADDR/MASTER_PORT/NODE_RANK) joins them.
        strategy = DDPStrategy(
            process_group_backend="gloo" if accelerator == "cpu" else "nccl",
            start_method="spawn" if accelerator == "cpu" else "popen",
            checkpoint_io=AtomicCheckpointIO(),
        )
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_time=timedelta(seconds=cfg.max_time_s) if cfg.max_time_s else None,
        # SyncBatchNorm exists on GPU only; on CPU each process normalises its own share
        sync_batchnorm=world > 1 and accelerator == "gpu",
        use_distributed_sampler=False,  # EpochSampler shards, and resumes, by itself
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=cfg.log_every_n_steps,
        default_root_dir=out,
        plugins=_plugins(world),
        benchmark=accelerator == "gpu",
    )
    return trainer


def _plugins(world: int) -> list:
    """Atomic checkpoints (one process; with DDP the strategy carries them), and under SLURM its
    cluster environment without Lightning's own requeue: submitit's job requeues itself."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    plugins: list = [AtomicCheckpointIO()] if world == 1 else []
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def _fit(trainer: pl.Trainer, model: SSLMethod, ckpt: Path | None, out: Path, memory: StepMemory | None = None) -> None:
    try:
        trainer.fit(model, ckpt_path=ckpt, weights_only=True)
    except SonosslError:
        raise
    except Exception as exc:
        if out_of_memory(exc):
            raise oom_error(model.cfg, exc, memory, trainer.global_step) from None
        own = spawned_error(exc, out)
        if own is not None:
            raise own from None
        raise


# ------------------------------------------------------------------- a job on a cluster
def pretrain_job(cfg: PretrainConfig) -> str:
    """The payload of ``pretrain --launcher slurm``, run by every task of the job (Lightning's
    SLURM environment joins them into one DDP run): :func:`run_pretrain` with ``resume``, so a
    requeued job continues from ``checkpoints/last.ckpt`` (at most ``checkpoint_every_s`` lost).
    The job trains; it never submits again."""
    return str(run_pretrain(cfg.model_copy(update={"launcher": "local"}), resume=True, progress=False))


def job_shape(cfg: PretrainConfig):
    """The one job of a pretraining: ``num_nodes`` nodes x ``devices`` tasks (a task per GPU)."""
    from sonossl.launch import JobShape

    gpus = 0 if cfg.accelerator == "cpu" else cfg.devices
    return JobShape(timeout_min=cfg.slurm_timeout_min, nodes=cfg.num_nodes, tasks_per_node=cfg.devices,
                    gpus_per_node=gpus, cpus_per_task=cfg.slurm_cpus, mem=cfg.slurm_mem, partition=cfg.slurm_partition,
                    name=f"sonossl-pretrain-{cfg.method}")


def submit_pretrain(cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False):
    """Check ``cfg`` here, claim ``cfg.out`` (``resume``/``overwrite`` as for a local run), then
    submit the run as one job through ``cfg.launcher``; returns the submitit job (job files in
    ``OUT/submitit/``). The job always resumes, so a requeued job continues where it stopped."""
    from dataclasses import replace

    from sonossl.launch import Requeueable, check_launcher, executor

    shape = job_shape(cfg)
    if cfg.launcher == "submitit-local":  # one local task; Lightning starts the devices' processes inside it
        shape = replace(shape, tasks_per_node=1)
    check_launcher(cfg.launcher, shape)
    # the accelerator is the job's; this machine (a login node) may have no GPU
    _checked(cfg.model_copy(update={"accelerator": "cpu"}) if cfg.accelerator == "gpu" else cfg, resume, overwrite)
    out = claim_output_dir(Path(cfg.out), command="pretrain", inputs=pretrain_inputs(cfg), resume=resume,
                           overwrite=overwrite)
    release(out)  # the job is the folder's writer: it takes the lock itself
    return executor(out / "submitit", cfg.launcher, shape).submit(Requeueable(pretrain_job, cfg))
