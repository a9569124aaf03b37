"""``--init``, resolved: which backbone an evaluation or a selection starts from, and how to build it.

One reader for every command that takes ``--init`` (``evaluate``, ``select``, ``study``): random
initialisation, torchvision's ImageNet weights (from its cache or a local file, never downloaded),
a pretrain run folder, or a ``backbone.pt`` file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sonossl.config import BASELINE_INITS, DEFAULT_BACKBONE
from sonossl.errors import SonosslError
from sonossl.models.backbones import Encoder, build_encoder, get_spec, imagenet_available, imagenet_cache_path


@dataclass
class InitSpec:
    """A resolved ``--init``: its label in results, its backbone name and how to build it."""

    label: str
    backbone: str
    source: str  # random | imagenet | path of backbone.pt
    image_size: int | None = None  # the pretraining resolution, when known
    health: str | None = None  # one line when the pretraining was flagged as diverged or collapsed (health_line)

    def build(self, imagenet_weights: Path | None) -> Encoder:
        return build_encoder(self.backbone, self.source, imagenet_weights)


def resolve_init(init: str, backbone: str | None, imagenet_weights: Path | None = None) -> InitSpec:
    """``random`` | ``imagenet`` | a pretrain run folder | a ``backbone.pt`` file."""
    if init in BASELINE_INITS:
        name = backbone or DEFAULT_BACKBONE
        get_spec(name)
        if init == "imagenet" and not imagenet_available(name, imagenet_weights):
            where = imagenet_weights or imagenet_cache_path(name)
            raise SonosslError(
                f"ImageNet weights for {name} not found at {where}; put torchvision's "
                f"{get_spec(name).weights.url.rsplit('/', 1)[-1]} in its cache or pass --imagenet-weights FILE"
            )
        return InitSpec(init, name, init)
    path = Path(init)
    if not path.exists():
        raise SonosslError(f"{path}: init not found; expected random, imagenet, a pretrain run folder or a backbone.pt file")
    run_dir = path if path.is_dir() else path.parent
    ckpt = path / "backbone.pt" if path.is_dir() else path
    if not ckpt.is_file():
        raise SonosslError(f"{ckpt}: backbone checkpoint not found; has the pretraining in {run_dir} finished?")
    run_cfg = {}
    if (run_dir / "config.yaml").is_file():
        run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    name = backbone or run_cfg.get("backbone")
    if name is None:
        raise SonosslError(f"{ckpt}: cannot tell its backbone (no config.yaml beside it); pass --backbone")
    get_spec(name)
    label = run_cfg.get("method") or run_dir.name
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    return InitSpec(str(label), name, str(ckpt), run_cfg.get("image_size"), health_line(str(run_dir.name), summary))


def flagged(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The warnings of a pretraining's ``summary.json`` (``health.flags``, written by
    :mod:`sonossl.methods.health`) that make its backbone suspect (a recovery
    alone is not one; ``loss_rising`` after the last recovery is)."""
    flags = (summary.get("health") or {}).get("flags", [])
    last = max((i for i, f in enumerate(flags) if f.get("kind") == "recovered"), default=-1)
    return [f for i, f in enumerate(flags) if f.get("kind") in ("collapsed", "knn_below_random")
            or (f.get("kind") == "loss_rising" and i > last)]


def health_line(name: str, summary: dict[str, Any]) -> str | None:
    """One line naming what is wrong with the pretraining ``name``, or None when nothing is."""
    bad = flagged(summary)
    if not bad:
        return None
    kinds = ", ".join(sorted({f["kind"].replace("_", " ") for f in bad}))
    return f"warning: the pretraining {name} was flagged ({kinds}): {bad[0]['message']}"
