"""Where a command runs: ``--device`` (predict, export, select) and ``--accelerator`` (evaluate), resolved once."""

from __future__ import annotations

import os

import torch

from sonossl.errors import SonosslError


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cpu``/``cuda``/``cuda:N`` as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SonosslError(f"--device {device}: no CUDA device is visible")
    if device != "cpu" and not device.startswith("cuda"):
        raise SonosslError(f"--device: expected auto, cpu or cuda[:N], got {device!r}")
    return device


def accelerator_device(accelerator: str) -> str:
    """``--accelerator auto|gpu|cpu`` -> the torch device string; ``gpu`` with no GPU visible is an error."""
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise SonosslError("--accelerator gpu: no CUDA device is visible")
    return "cuda" if accelerator in ("auto", "gpu") and torch.cuda.is_available() else "cpu"


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask: a SLURM allocation or ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_workers(requested: int | None) -> int:
    """Data-loader processes: ``requested`` when given, else one per usable core less one for the
    training process, at most 8 (0 on one core: the loader then runs in the training process)."""
    return requested if requested is not None else min(8, max(0, usable_cpus() - 1))
