"""Where a command runs: ``--device`` (predict, export, select) and ``--accelerator`` (evaluate), resolved once."""

from __future__ import annotations

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
