"""Helpers shared by the benchmark scripts: configs from the cpu preset, timing, medians, output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from sonossl.config import PretrainConfig, build_config, read_preset

METHOD_NAMES = ["ae", "simclr", "moco", "byol", "dino", "barlowtwins", "vicreg"]
WIDE = {"barlowtwins-8192": "barlowtwins", "vicreg-8192": "vicreg"}  # the paper's 8192x3 projector


def preset_config(variant: str, preset: str = "cpu", **overrides: Any) -> PretrainConfig:
    """``preset``'s config of ``variant`` (a method name, or ``barlowtwins-8192`` /
    ``vicreg-8192`` for the paper-width projector), with ``overrides`` on top."""
    method = WIDE.get(variant, variant)
    layer = read_preset(preset, method)
    layer["method"] = method
    if variant in WIDE:
        layer["method_options"] = {**layer.get("method_options", {}), "projector": [8192, 8192, 8192]}
    return build_config(PretrainConfig, layer, overrides, source=f"{preset} preset ({variant})")


def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], Any]) -> float:
    t = now()
    fn()
    return now() - t


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def write_json(path: str | Path | None, obj: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")
    print(f"wrote {path}")
