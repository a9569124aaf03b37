"""Will one training step fit? A measured estimate, checked before the first step.

The memory a step needs beyond the model is what autograd keeps for the backward pass: every
tensor a forward saves. :func:`saved_bytes` counts them (by storage, parameters excluded) for a
real forward on a small batch, under the run's precision. Two small batches give a line,
``a + b x batch`` (the batch-independent part, e.g. BarlowTwins' D x D cross-correlation, is
``a``), and the line is read at the run's batch. The model's own share is its parameters,
their gradients and the optimiser's state per parameter. :func:`available_bytes` is what the
machine can still give this process: the least of the kernel's available memory, the cgroup's
limit and the address-space limit (``ulimit -v``).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

GiB = 1024 ** 3
HEADROOM = 1.4  # the backward's transient gradients, allocator slack, the loader: measured steps peaked at 1.03-1.28x the
# saved tensors + model (benchmarks/memory_estimate.py)


def saved_bytes(forward: Callable[[], torch.Tensor], exclude: nn.Module | None = None) -> int:
    """Bytes of the tensors autograd saves while ``forward()`` runs, each storage counted once,
    the parameters and buffers of ``exclude`` left out."""
    own = set() if exclude is None else {t.untyped_storage().data_ptr() for t in (*exclude.parameters(), *exclude.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in own:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


@dataclass(frozen=True)
class StepMemory:
    """One training step's memory: ``fixed + per_sample x batch`` activations, plus the model."""

    model_bytes: int  # parameters + gradients + optimiser state
    fixed_bytes: float  # saved tensors that do not grow with the batch
    per_sample_bytes: float  # saved tensors per sample of the batch

    def at(self, batch: int) -> float:
        """Bytes one process needs for a step at ``batch`` samples (headroom included)."""
        return HEADROOM * (self.model_bytes + max(0.0, self.fixed_bytes) + self.per_sample_bytes * batch)

    def largest_batch(self, budget: float) -> int:
        """The largest batch whose step fits in ``budget`` bytes (0 when none does)."""
        room = budget / HEADROOM - self.model_bytes - max(0.0, self.fixed_bytes)
        return max(0, int(room // self.per_sample_bytes)) if self.per_sample_bytes > 0 else 0


def step_memory(model: nn.Module, forward_at: Callable[[int], torch.Tensor], *, optimizer_states: int = 2,
                probes: tuple[int, int] = (2, 4)) -> StepMemory:
    """Measure :class:`StepMemory`: ``forward_at(n)`` runs the training forward on a batch of
    ``n`` samples; ``optimizer_states``: tensors the optimiser keeps per parameter (AdamW 2,
    LARS and SGD with momentum 1)."""
    n1, n2 = probes
    b1, b2 = (saved_bytes(lambda n=n: forward_at(n), exclude=model) for n in probes)
    per_sample = max(0.0, (b2 - b1) / (n2 - n1))
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return StepMemory(model_bytes=params * (2 + optimizer_states), fixed_bytes=b1 - per_sample * n1,
                      per_sample_bytes=per_sample)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def _proc_bytes(path: str, key: str) -> int | None:
    """``KEY:  N kB`` of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in bytes; None if absent."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes() -> tuple[float, str]:
    """What this process can still allocate, and what bounds it (for the message):
    ``MemAvailable``, the cgroup's ``memory.max`` less its use, and ``RLIMIT_AS`` less the
    address space already mapped. (inf, 'unknown') where none can be read."""
    limits: list[tuple[float, str]] = []
    avail = _proc_bytes("/proc/meminfo", "MemAvailable")
    if avail is not None:
        limits.append((float(avail), "available memory"))
    cg_max, cg_cur = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if cg_max is not None and cg_cur is not None:
        limits.append((float(cg_max - cg_cur), "the cgroup's memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append((float(soft - (_proc_bytes("/proc/self/status", "VmSize") or 0)), "the address-space limit (ulimit -v)"))
    return min(limits) if limits else (float("inf"), "unknown")


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"
