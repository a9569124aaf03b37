"""Typed configs, validated once at the edge.

Each sub-command has one pydantic model. Values come from (lowest to highest precedence) the
model's defaults, a preset (``sonossl/presets/<name>.yaml``, for ``pretrain``), ``--config FILE``
(YAML or JSON) and command-line flags. Unknown keys and wrong types are refused with a
:class:`SonosslError` naming the key, so a misspelt option can never silently read as a default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sonossl.errors import SonosslError

PRESET_DIR = Path(__file__).parent / "presets"


class Config(BaseModel):
    """Base: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


C = TypeVar("C", bound=Config)
M = TypeVar("M", bound=BaseModel)


def read_config_file(path: Path | str) -> dict[str, Any]:
    """A YAML or JSON mapping from ``path``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise SonosslError(f"{path}: config file not found")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SonosslError(f"{path}: not valid YAML/JSON ({exc})".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SonosslError(f"{path}: expected a mapping of option: value at the top level")
    return data


def read_preset(name: str, method: str | None = None) -> dict[str, Any]:
    """The preset's common keys, overlaid with its ``methods: {method: {key: value}}`` entry.

    Methods differ in their recipes (SimCLR's batch 160 and lr 0.3, BarlowTwins' projector
    8192x3, ...): a preset keeps each method's own settings under its name.
    """
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise SonosslError(f"unknown preset {name!r}; expected one of: {', '.join(names)}")
    layer = read_config_file(path)
    per_method = layer.pop("methods", {}) or {}
    if method is not None:
        layer.update(per_method.get(method, {}))
    return layer


def build_config(cls: type[C], *layers: dict[str, Any] | None, source: str = "config") -> C:
    """Merge ``layers`` (later wins; ``None`` values in a layer are ignored) and validate."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in (layer or {}).items() if v is not None})
    return validated(cls, merged, source)


def validated(cls: type[M], values: dict[str, Any], source: str) -> M:
    """``cls(**values)``, with the first validation problem as one :class:`SonosslError` line
    naming ``source`` and the key (and, for an unknown key, the valid ones)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            valid = ", ".join(sorted(cls.model_fields)) or "none"
            raise SonosslError(f"{source}: unknown key {key!r}; valid keys: {valid}") from None
        raise SonosslError(f"{source}: {key}: {err['msg']} (got {err.get('input')!r})") from None


def dump_config(cfg: Config, path: Path) -> None:
    """Write the resolved config beside a run's outputs (YAML, paths as strings)."""
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))


Method = Literal["ae", "simclr", "moco", "byol", "dino", "barlowtwins", "vicreg"]


class PretrainConfig(Config):
    """``sonossl pretrain``. Defaults are the ``cpu`` preset's; ``paper`` overrides them."""

    method: str = "barlowtwins"
    frames: Path | None = None
    val_frames: Path | None = None
    out: Path | None = None
    backbone: str = "resnet18"
    image_size: int = Field(64, gt=0)
    batch_size: int = Field(64, gt=1)
    epochs: int = Field(10, gt=0)
    max_steps: int = Field(-1, ge=-1)  # -1: no limit beyond epochs
    max_time_s: float | None = Field(None, gt=0)  # wall-clock budget; stops cleanly, writes backbone.pt
    pairs: Literal["augment", "temporal"] = "augment"
    max_gap: int = Field(4, ge=1)
    frame_stride: int = Field(1, ge=1)  # use every k-th stored frame as an anchor
    monitor_labels: Path | None = None  # labelled set (train/valid) for the per-epoch kNN monitor
    hflip: bool = False  # horizontal flips turn LVOT into RVOT-like views: off by default
    devices: int = Field(1, ge=1)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32 on CPU
    num_workers: int = Field(2, ge=0)
    seed: int = 0
    # optimiser (LARS, the seed's BarlowTwins/VICReg recipe): lr = base * batch / 256
    optimizer: Literal["lars", "adamw", "sgd"] = "lars"
    lr_weights: float = Field(0.2, gt=0)
    lr_biases: float = Field(0.0048, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(10, ge=0)
    final_lr_ratio: float = Field(0.001, ge=0)
    # method-specific options, validated by the method's own config class
    method_options: dict[str, Any] = Field(default_factory=dict)
    checkpoint_every_s: float = Field(300, gt=0)
    log_every_n_steps: int = Field(10, ge=1)

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        allowed = {"auto", "32", "32-true", "16-mixed", "bf16-mixed", "bf16-true"}
        if v not in allowed:
            raise ValueError(f"expected one of {sorted(allowed)}")
        return v


class EvaluateConfig(Config):
    """``sonossl evaluate``: the limited-label protocol of PROTOCOL.md."""

    labels: Path | None = None
    train_csv: Path | None = None
    val_csv: Path | None = None
    test_csv: Path | None = None
    allow_outside_root: bool = False  # CSV image paths may leave the CSV's folder (../, absolute, symlinks out)
    init: str = "random"  # random | imagenet | pretrain run folder | backbone.pt
    imagenet_weights: Path | None = None
    backbone: str | None = None  # taken from the pretrain run when init is one
    protocol: list[Literal["linear", "finetune"]] = Field(default_factory=lambda: ["linear", "finetune"])
    fractions: list[float] = Field(default_factory=lambda: [1.0, 10.0, 100.0])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    out: Path | None = None
    image_size: int = Field(64, gt=0)
    # classifier training (PROTOCOL.md: AdamW lr 1e-3 wd 1e-6, dropout 0.5, batch 128, 100 epochs)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    dropout: float = Field(0.5, ge=0, lt=1)
    batch_size: int = Field(128, gt=0)
    epochs: int = Field(100, gt=0)
    linear_epochs: int = Field(100, gt=0)
    max_steps: int = Field(-1, ge=-1)  # cap on optimiser steps per fine-tuning run; -1: epochs only
    min_steps: int = Field(0, ge=0)  # floor on fine-tuning steps, so 1 % runs are not a handful of updates
    augment: bool = True
    hflip: bool = False  # LVOT/RVOT mirror each other: flips off by default
    num_workers: int = Field(0, ge=0)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    precision: str = "auto"
    # which images of a fraction are labelled: random = the stratified draw; else a strategy of
    # sonossl.select on backbone features, blind to the labels (docs/selection.md)
    selection: str = "random"
    selection_init: str | None = None  # features the strategy sees; None: the init's own
    selection_fractions: list[float] | None = None  # the ladder the selected subsets nest along; None: fractions

    @field_validator("fractions", "selection_fractions")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else check_fractions(v)

    @field_validator("selection")
    @classmethod
    def _selection(cls, v: str) -> str:
        from sonossl.select.strategies import STRATEGIES

        if v not in STRATEGIES:
            raise ValueError(f"expected one of {', '.join(STRATEGIES)}")
        return v


def check_fractions(v: list[float]) -> list[float]:
    """Label fractions in percent, each in (0, 100]; sorted, without repeats."""
    for f in v:
        if not 0 < f <= 100:
            raise ValueError(f"fraction {f:g} outside (0, 100] (percent of the labelled train split)")
    return sorted(set(v))
