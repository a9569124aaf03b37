"""A clear answer on the wrong hardware: a pretraining that cannot fit is refused before its
first step, and an out-of-memory error during training becomes the same one line.

The estimate (:mod:`sonossl.models.memory`) runs the method's own training forward on two small
batches of real views from the run's frame store, under the run's precision, and scales it to
the batch each process trains on. It leaves the model as it found it (weights, batch-norm
statistics, queues and the random generators).
"""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from sonossl.config import PretrainConfig
from sonossl.data.batched_views import view_generator
from sonossl.errors import SonosslError
from sonossl.methods.base import SSLMethod
from sonossl.models.memory import StepMemory, available_bytes, gib, step_memory

OPTIMIZER_STATES = {"adamw": 2, "lars": 1, "sgd": 1}  # tensors kept per parameter


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None


def measure(model: SSLMethod, device: str = "cpu") -> StepMemory:
    """:class:`StepMemory` of one step of ``model``, before training, probed on ``device`` (the
    run's own: a GPU's bf16 is fast where a CPU's may not be); the model is back on the CPU after."""
    cfg, data = model.cfg, model.train_set
    dtype = _autocast_dtype(cfg.precision)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def forward_at(n: int):
        batch = default_collate([data[i % len(data)] for i in range(n)])
        batch = [b.to(device) if isinstance(b, torch.Tensor) else b for b in batch]
        if model.device_views is not None:  # the loader yields frames; the views are made batched
            batch = model.device_views(batch, view_generator(cfg.seed, 0, 0, torch.device(device)))
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            return model.forward_loss(tuple(batch))[0]

    was_training = model.training
    with torch.random.fork_rng(devices=[] if device == "cpu" else [torch.cuda.current_device()]):
        model.to(device).train()
        try:
            return step_memory(model, forward_at, optimizer_states=OPTIMIZER_STATES.get(cfg.optimizer, 2))
        finally:
            model.to("cpu").load_state_dict(state)
            model.train(was_training)
            if device != "cpu":
                torch.cuda.empty_cache()  # the probe's blocks back to the device before training


def _budget(cfg: PretrainConfig, accelerator: str) -> tuple[float, str, int]:
    """(bytes one process may use, what bounds it, processes sharing that memory)."""
    if accelerator == "gpu":
        free, _ = torch.cuda.mem_get_info()
        return float(free), "free GPU memory", 1
    avail, bound = available_bytes()
    return avail, bound, cfg.devices  # CPU processes of one node share its memory


def advice(cfg: PretrainConfig, largest: int) -> str:
    if largest >= 2:
        per = cfg.world_size
        return f"lower --batch-size to at most {largest * per}" + (f" ({largest} per process)" if per > 1 else "") + \
            (", or use --preset cpu" if cfg.backbone != "resnet18" else "")
    return "use a smaller --backbone or --image-size, or --preset cpu"


def check_step_memory(model: SSLMethod, accelerator: str) -> StepMemory:
    """Refuse (exit 2, one line) a run whose step does not fit; returns the estimate."""
    cfg = model.cfg
    budget, bound, sharing = _budget(cfg, accelerator)
    try:
        est = measure(model, "cuda" if accelerator == "gpu" else "cpu")
    except Exception as exc:  # the probe of 2 and 4 pairs itself does not fit: neither will the run
        if not out_of_memory(exc):
            raise
        raise SonosslError(
            f"pretrain: even a probe step of 4 pairs runs out of memory ({cfg.backbone}, {cfg.image_size} px, "
            f"{cfg.precision}; {gib(budget)} is left, {bound}), so {cfg.batch_size // cfg.world_size} pairs per process "
            f"cannot fit; {advice(cfg, 0)}") from None
    batch = cfg.batch_size // cfg.world_size
    need = est.at(batch)
    if need * sharing > budget:
        largest = est.largest_batch(budget / sharing)
        raise SonosslError(
            f"pretrain: one training step needs about {gib(need * sharing)} ({cfg.backbone}, {cfg.image_size} px, "
            f"{batch} pairs per process{f' x {sharing} processes' if sharing > 1 else ''}, {cfg.precision}), but "
            f"{gib(budget)} is left ({bound}); {advice(cfg, largest)}")
    return est


def out_of_memory(exc: BaseException) -> bool:
    """A CPU allocator or CUDA out-of-memory error (torch raises both as RuntimeError kinds)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


def oom_error(cfg: PretrainConfig, exc: BaseException, est: StepMemory | None, step: int) -> SonosslError:
    """The one line for an out-of-memory error at ``step``."""
    batch = cfg.batch_size // cfg.world_size
    need = f"; a step was estimated at {gib(est.at(batch))}" if est is not None else ""
    largest = est.largest_batch(available_bytes()[0]) if est is not None else 0
    what = advice(cfg, largest) if largest >= 2 else "lower --batch-size or --image-size, or use --preset cpu"
    return SonosslError(f"pretrain: out of memory at step {step} ({cfg.backbone}, {cfg.image_size} px, {batch} pairs per "
                        f"process, {cfg.precision}{need}); {what}")
