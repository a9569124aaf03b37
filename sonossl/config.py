"""Typed configs, validated once at the edge.

Each sub-command has one pydantic model. Values come from (lowest to highest precedence) the
model's defaults, a preset (``sonossl/presets/<name>.yaml``, for ``pretrain``), ``--config FILE``
(YAML or JSON) and command-line flags. Unknown keys and wrong types are refused with a
:class:`SonosslError` naming the key, so a misspelt option can never silently read as a default.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sonossl.errors import SonosslError
from sonossl.outputs import atomic_write_text
from sonossl.runlog import RunLogger
from sonossl.select.strategies import PROBCOVER_CLASSES, Strategy

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_IMAGE_SIZE = 64  # px: the frames ingest writes unless told; the last resort of resolve_image_size
Crop = Literal["auto", "dicom", "none"]  # the scan region ingest and predict keep (data/sector.py)
# The pixel budget (docs/data-safety.md): a file is refused *before* its pixels are decoded when
# one frame, or the whole source, declares more pixels than this, whatever its size on disk (a
# 13 KB JPEG 2000 file can declare 64 frames of 2048 x 2048); data/readers.py checks it. ingest's
# --max-frame-pixels and --max-source-pixels set it; every other image reader (labelled sets,
# predict, select) uses the frame limit.
MAX_FRAME_PIXELS = 8192 * 8192
MAX_SOURCE_PIXELS = 2**32  # ~4.3 G pixels: e.g. 1000 frames of 2048 x 2048
MODALITIES_DEFAULT = ("US",)  # DICOM Modality values ingested unless --modality says otherwise
PoolSplit = Literal["all", "train", "val"]  # the frames `select` chooses from: the whole store or one split
BASELINE_INITS = ("random", "imagenet")  # the inits every pretraining is compared against
DEFAULT_BACKBONE = "resnet18"  # pretraining's, and a baseline init's when none is named
# evaluate settings `select_on_valid` may choose per run on the valid split, and those a linear probe uses
SELECTABLE = ("lr", "weight_decay", "dropout", "batch_size", "epochs", "linear_epochs", "lr_schedule", "rotate",
              "head_lr_mult", "lp_ft", "freeze_bn")
LINEAR_SETTINGS = ("lr", "weight_decay", "dropout", "batch_size", "linear_epochs", "lr_schedule")


def resolve_image_size(asked: int | None, *, pretrained: int | None = None, stored: int | None = None) -> int:
    """The one rule for the side (pixels) a stage trains, scores or embeds at: ``asked`` when
    given; else the size its init was ``pretrained`` at; else the ``stored`` frames' size (a
    frame store's, or the size a study's ingestion will write); else :data:`DEFAULT_IMAGE_SIZE`.
    Callers add their own checks: pretraining refuses a size above the store's frames,
    evaluation notes one that differs from the pretraining's."""
    return asked or pretrained or stored or DEFAULT_IMAGE_SIZE


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (part I of N of a sharded ingestion); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if m is None or not int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"expected I/N with 0 <= I < N (part I of N, counted from 0), got {text!r}")
    return int(m.group(1)), int(m.group(2))


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
        layer = deep_merge(layer, per_method.get(method, {}))
    return layer


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` overlaid by ``b``; a mapping in both merges key by key, anything else (lists
    included) is replaced. So a config file's ``method_options: {lambd: 0.01}`` over a preset
    changes lambd and keeps the preset's projector."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(cls: type[C], *layers: dict[str, Any] | None, source: str = "config") -> C:
    """Merge ``layers`` (later wins, nested mappings key by key: :func:`deep_merge`; ``None``
    values in a layer are ignored) and validate."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, {k: v for k, v in (layer or {}).items() if v is not None})
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
            valid = ", ".join(sorted(_model_at(cls, err["loc"][:-1]).model_fields)) or "none"
            raise SonosslError(f"{source}: unknown key {key!r}; valid keys: {valid}") from None
        raise SonosslError(f"{source}: {key}: {err['msg']} (got {err.get('input')!r})") from None


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The model class of the nested field at ``loc`` (``("augment", "view1")``), for naming its keys."""
    for key in loc:
        field = cls.model_fields.get(str(key))
        inner = getattr(field, "annotation", None)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return cls
        cls = inner
    return cls


def dump_config(cfg: Config, path: Path) -> None:
    """Write the resolved config beside a run's outputs (YAML, paths as strings)."""
    atomic_write_text(path, yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))


Accelerator = Literal["auto", "cpu", "gpu"]
# what a run computes in: auto (the fast path's measured choice, sonossl.models.fastpath) or a Lightning precision
Precision = Literal["auto", "32", "32-true", "16-mixed", "bf16-mixed", "bf16-true"]
Launcher = Literal["local", "slurm", "submitit-local"]


class SlurmJobConfig(Config):
    """What a SLURM job asks for, shared by the commands that submit jobs (:mod:`sonossl.launch`)."""

    slurm_partition: str | None = Field(None, description="SLURM partition; none: the cluster's default")
    slurm_timeout_min: int = Field(24 * 60, gt=0, description="SLURM job time limit in minutes")
    slurm_cpus: int = Field(8, ge=1, description="CPUs per SLURM task (a task per GPU)")
    slurm_mem: str = Field("64G", description="memory per SLURM node (SLURM syntax, e.g. 64G)")


class SynthConfig(Config):
    """``sonossl synth``: the built-in synthetic fetal-echo dataset."""

    out: Path = Field(description="folder to write (videos/ and labelled/)")
    videos: int = Field(40, gt=0, description="unlabelled clips")
    frames: int = Field(32, gt=0, description="frames per clip")
    size: int = Field(128, ge=16, description="side of the scan sector in pixels (labelled images are size x size)")
    seed: int = Field(0, description="random seed of the whole dataset")
    format: Literal["dicom", "mp4"] = Field("dicom", description="file format of the clips")
    labelled: tuple[int, int, int] = Field((100, 20, 40), description="labelled images per class: TRAIN,VALID,TEST")


class IngestConfig(Config):
    """``sonossl ingest``: scanner videos -> de-identified frame store (see :mod:`sonossl.data.ingest`)."""

    sources: list[Path] = Field(min_length=1, description="files or folders (searched recursively)")
    out: Path = Field(description="frame store to write (FRAMES.h5)")
    frame_skip: int = Field(5, ge=1, description="keep every K-th frame of a clip")
    size: int = Field(DEFAULT_IMAGE_SIZE, ge=8, description="side of the stored square frames in pixels; pretrain and "
                                                               "evaluate default to it")
    crop: Crop = Field("auto", description="scan region: auto (DICOM regions, else the moving fan), dicom or none")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of patient/study groups held out as the val split")
    workers: int = Field(1, ge=1, description="decoding processes")
    salt_file: Path | None = Field(None, description="secret key of the pseudonymous ids (>= 32 hex digits; made with "
                                   "256 random bits when missing); none: FRAMES.key beside the store (OUT/sonossl.key "
                                   "with --shard). Keep it private, with the manifest: with it, ids can be recomputed")
    modality: list[str] = Field(list(MODALITIES_DEFAULT), min_length=1, description="DICOM Modality values to ingest (e.g. US, or US OT); "
                                "a file of another modality is a manifest row; 'any' ingests every modality")
    max_frame_pixels: int = Field(MAX_FRAME_PIXELS, gt=0, description="refuse, before decoding, a source whose frames "
                                  "declare more pixels than this (height x width)")
    max_source_pixels: int = Field(MAX_SOURCE_PIXELS, gt=0, description="refuse, before decoding, a source declaring more pixels "
                                   "than this in all (frames x height x width)")
    max_frames_per_video: int | None = Field(None, gt=0, description="cap on frames kept per clip, after frame_skip")
    dedup: float | None = Field(None, gt=0, le=255, description="drop a frame whose mean absolute difference (grey levels "
                                "0-255, on a 32x32 copy) to the last kept frame is below this")
    seed: int = Field(0, description="seed of the group split")
    shard: str | None = Field(None, description="I/N: ingest only part I (0 to N-1) of N of the sources, split by a "
                              "hash of their paths, into OUT/part-I-of-N.h5; OUT is then a folder that reads as one "
                              "store once all N parts are written; none: every source into OUT")

    @field_validator("modality")
    @classmethod
    def _modality(cls, v: list[str]) -> list[str]:
        return [m.strip().upper() for m in v]

    def modalities(self) -> tuple[str, ...] | None:
        """The DICOM modalities to ingest; None: any."""
        return None if "ANY" in self.modality else tuple(self.modality)

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        return None if v is None else "{}/{}".format(*parse_shard(v))


class InfoConfig(Config):
    """``sonossl info``: describe a frame store."""

    frames: Path = Field(description="frame store (FRAMES.h5)")


class ReportConfig(Config):
    """``sonossl report``: summary, paired differences and report.html of an evaluation or study folder."""

    dir: Path = Field(description="folder holding results.csv (an evaluate --out or a study folder), or a study "
                      "ledger (sonossl study --ledger), whose records alone then make the tables and report")


Prob = Annotated[float, Field(ge=0, le=1)]
Range = tuple[float, float]


class ViewAugment(Config):
    """One view's augmentation (:class:`~sonossl.data.transforms.ViewTransform`). A setting left
    out keeps the method's own default for that view (the preset's value); the run folder's
    ``config.yaml`` records every value used."""

    crop_scale: Range | None = Field(None, description="area fraction range (lo, hi) of the random resized crop, in (0, 1]")
    crop_ratio: Range | None = Field(None, description="aspect ratio range (lo, hi) of the crop")
    jitter_p: Prob | None = Field(None, description="probability of a brightness/contrast change")
    brightness: float | None = Field(None, ge=0, lt=1, description="brightness factor drawn in 1 +- this")
    contrast: float | None = Field(None, ge=0, lt=1, description="contrast factor drawn in 1 +- this")
    gamma_p: Prob | None = Field(None, description="probability of a gamma change")
    gamma: Range | None = Field(None, description="gamma range (lo, hi), > 0")
    speckle_p: Prob | None = Field(None, description="probability of multiplicative (speckle-like) noise")
    speckle_sigma: Range | None = Field(None, description="speckle noise sigma range (lo, hi), >= 0")
    blur_p: Prob | None = Field(None, description="probability of a Gaussian blur")
    blur_sigma: Range | None = Field(None, description="blur sigma range (lo, hi) in pixels at 224 px, scaled to image_size")
    solarize_p: Prob | None = Field(None, description="probability of solarisation (inverting intensities above 0.5)")
    hflip: bool | None = Field(None, description="random horizontal flips (an LVOT mirrored looks like an RVOT)")
    rotate_p: Prob | None = Field(None, description="probability of rotating the view about its centre (default 0)")
    rotate: float | None = Field(None, ge=0, le=180, description="maximum rotation in degrees; the angle is uniform "
                                 "in +- this (a rotation keeps handedness, so the plane's class)")
    # ultrasound artefacts on the whole frame before the crop (sonossl.data.transforms; default off)
    depth_p: Prob | None = Field(None, description="probability of depth attenuation exp(-rate x distance from the "
                                 "probe at the top centre), default 0")
    depth_rate: Range | None = Field(None, description="attenuation rate range (lo, hi) per frame height, >= 0")
    haze_p: Prob | None = Field(None, description="probability of a haze band (noise at a distance from the probe), "
                                "default 0")
    haze_radius: Range | None = Field(None, description="the haze band's distance from the probe (lo, hi), in frame "
                                      "heights")
    haze_sigma: Range | None = Field(None, description="the haze band's width (lo, hi), in frame heights")
    shadow_p: Prob | None = Field(None, description="probability of a Gaussian acoustic shadow, default 0")
    shadow_strength: Range | None = Field(None, description="darkening at the shadow's centre (lo, hi), in [0, 1]")
    shadow_sigma: Range | None = Field(None, description="the shadow's extent along each axis (lo, hi), as a fraction "
                                       "of the side")

    @field_validator("crop_scale", "crop_ratio", "gamma", "speckle_sigma", "blur_sigma", "depth_rate", "haze_radius",
                     "haze_sigma", "shadow_strength", "shadow_sigma")
    @classmethod
    def _range(cls, v: Range | None, info) -> Range | None:
        if v is None:
            return v
        lo, hi = v
        positive = info.field_name in ("crop_scale", "crop_ratio", "gamma", "shadow_sigma")
        unit = info.field_name in ("crop_scale", "shadow_strength")  # at most 1
        if not (lo <= hi and (lo > 0 if positive else lo >= 0)) or (unit and hi > 1):
            bound = ("0 < lo <= hi <= 1" if info.field_name == "crop_scale" else "0 <= lo <= hi <= 1" if unit
                     else "0 < lo <= hi" if positive else "0 <= lo <= hi")
            raise ValueError(f"expected a range (lo, hi) with {bound}")
        return v

    def transform_kwargs(self) -> dict[str, Any]:
        """The settings given, as :class:`~sonossl.data.transforms.ViewTransform` keywords."""
        names = {"crop_scale": "scale", "crop_ratio": "ratio"}
        return {names.get(k, k): v for k, v in self.model_dump().items() if v is not None}

    @classmethod
    def of(cls, view) -> "ViewAugment":
        """Every setting of a :class:`~sonossl.data.transforms.ViewTransform` (resolved values)."""
        names = {"crop_scale": "scale", "crop_ratio": "ratio"}
        return cls(**{k: getattr(view, names.get(k, k)) for k in cls.model_fields})


class AugmentConfig(Config):
    """The views of a pair: ``view1`` and ``view2`` (a method with one view, AE, takes ``view1``;
    DINO's two global crops are the two views, its local crops are method options)."""

    view1: ViewAugment = Field(default_factory=ViewAugment, description="first view of the pair")
    view2: ViewAugment = Field(default_factory=ViewAugment, description="second view of the pair")

    def views(self) -> list[ViewAugment]:
        return [self.view1, self.view2]


class PretrainConfig(SlurmJobConfig):
    """``sonossl pretrain``. Defaults are the ``cpu`` preset's; ``paper`` overrides them."""

    method: str = Field("barlowtwins", description="SSL method, by its name in the registry (sonossl.methods.METHODS)")
    frames: Path | None = Field(None, description="frame store written by sonossl ingest (FRAMES.h5, or a folder or "
                                  ".txt list of its --shard parts); required")
    out: Path | None = Field(None, description="run folder to create; required")
    backbone: str = Field(DEFAULT_BACKBONE, description="torchvision trunk, by its name in the registry "
                          "(sonossl.models.backbones.BACKBONES)")
    image_size: int | None = Field(None, gt=0, description="side of the views in pixels; none: the frame store's size")
    batch_size: int = Field(64, gt=1, description="global batch in frame pairs, split over devices")
    epochs: int = Field(10, gt=0, description="passes over the train split")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimiser steps; -1: epochs only")
    max_time_s: float | None = Field(None, gt=0, description="wall-clock budget in seconds; stops cleanly and writes "
                                     "backbone.pt")
    pairs: Literal["augment", "temporal"] = Field("augment", description="two augmentations of one frame, or two frames "
                                                  "of one clip")
    max_gap: int = Field(4, ge=1, description="temporal pairs: at most this many stored frames apart")
    frame_stride: int = Field(1, ge=1, description="use every K-th stored frame as an anchor")
    monitor_labels: Path | None = Field(None, description="labelled set (train.csv, valid.csv) for the per-epoch kNN monitor")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="view augmentations (config file)")
    devices: int = Field(1, ge=1, description="processes (GPUs, or CPU processes) of data-parallel training per node")
    num_nodes: int = Field(1, ge=1, description="machines of data-parallel training, each running devices processes; "
                           "the global batch is split over num_nodes x devices")
    launcher: Launcher = Field("local", description="local: train in this process (a multi-node run: start it on each "
                               "node with MASTER_ADDR, MASTER_PORT, NODE_RANK set, or inside a SLURM allocation); "
                               "slurm: submit one job of num_nodes nodes x devices tasks through submitit, requeued "
                               "on preemption and resumed from its checkpoint; submitit-local: that job on this "
                               "machine (one node)")
    accelerator: Accelerator = Field("auto", description="auto: a GPU when one is visible")
    precision: Precision = Field("auto", description="auto: bf16-mixed + channels_last on GPU; on a CPU the faster of "
                           "float32 and bf16 autocast, each in NCHW or channels_last, measured at start "
                           "(sonossl.models.fastpath) and recorded here; or 32-true (float32 NCHW), 16-mixed, "
                           "bf16-mixed or bf16-true")
    channels_last: bool | None = Field(None, description="train in the channels_last memory layout; none: as the "
                                       "precision's choice (auto: measured; 32-true: off; bf16/16: on)")
    num_workers: int | None = Field(None, ge=0, description="data loader processes; none: one per core this process "
                                    "may use, less one for training, at most 8")
    logger: RunLogger = Field("tensorboard", description="training curves beside stats.jsonl: tensorboard (event "
                              "files in RUN/tensorboard, for `tensorboard --logdir`), csv (RUN/csv_logs) or none")
    augment_on: Literal["auto", "loader", "device"] = Field(
        "auto", description="where the views are made: loader (per sample, in the loader's workers), device "
        "(the loader yields uint8 frames, the views are made batched on the model's device), auto: device on "
        "a GPU, loader on a CPU")
    seed: int = Field(0, description="seed of weights, pair sampling and augmentations")
    optimizer: Literal["lars", "adamw", "sgd"] = Field("lars", description="optimiser (LARS: the seed's BarlowTwins/VICReg "
                                                         "recipe)")
    lr_weights: float = Field(0.2, gt=0, description="base learning rate of weights, x batch_size / 256")
    lr_biases: float = Field(0.0048, gt=0, description="base learning rate of biases and norms, x batch_size / 256")
    weight_decay: float = Field(1e-6, ge=0, description="weight decay of the weights")
    warmup_epochs: float = Field(10, ge=0, description="linear learning-rate warm-up, in epochs")
    final_lr_ratio: float = Field(0.001, ge=0, description="cosine schedule's final learning rate / base")
    method_options: dict[str, Any] = Field(default_factory=dict, description="the method's own options (config file)")
    checkpoint_every_s: float = Field(300, gt=0, description="seconds between checkpoints (and one per epoch)")
    log_every_n_steps: int = Field(10, ge=1, description="optimiser steps per line of stats.jsonl")
    tune: list[Literal["lr"]] = Field(default_factory=list, description="hyperparameters chosen on this data before "
                                      "the run (docs/methods.md, 'Choosing the rate on your data'): lr sweeps "
                                      "lr_weights and lr_biases as the paper preset's base rates x tune_factors; "
                                      "none: the rates as given")
    tune_factors: list[float] = Field(default_factory=lambda: [1.0, 5.0, 20.0], min_length=2,
                                      description="the sweep's multiples of the paper's base rates")
    tune_share: float = Field(0.2, gt=0, lt=1, description="share of the run's optimiser steps each candidate "
                              "trains (on the full run's schedule) before the choice; the winner goes on from there")
    on_divergence: Literal["warn", "recover"] = Field(
        "recover", description="when the loss rises (docs/methods.md, 'Health'): warn (one line, and in "
        "summary.json), or recover (also restore the best weights so far and multiply the rates by 0.2; one "
        "process only)")

    @field_validator("tune_factors")
    @classmethod
    def _factors(cls, v: list[float]) -> list[float]:
        if any(f <= 0 for f in v) or len(set(v)) != len(v):
            raise ValueError(f"expected distinct positive factors, got {v}")
        return v

    @property
    def world_size(self) -> int:
        """Processes of data-parallel training: ``num_nodes x devices``."""
        return self.num_nodes * self.devices


class EvaluateConfig(Config):
    """``sonossl evaluate``: the limited-label protocol (docs/protocol.md)."""

    labels: Path | None = Field(None, description="folder with train.csv, valid.csv, test.csv (or per-class folders)")
    train_csv: Path | None = Field(None, description="train split CSV (image_path,class), instead of --labels")
    val_csv: Path | None = Field(None, description="validation split CSV, instead of --labels")
    test_csv: Path | None = Field(None, description="test split CSV, instead of --labels")
    allow_outside_root: bool = Field(False, description="let CSV image paths point outside the CSV's folder")
    init: str = Field("random", description="random, imagenet, a pretrain run folder or a backbone.pt file")
    imagenet_weights: Path | None = Field(None, description="torchvision ImageNet weights file; none: torchvision's cache")
    backbone: str | None = Field(None, description=f"torchvision trunk (none: the pretraining's, else {DEFAULT_BACKBONE})")
    protocol: list[Literal["linear", "finetune"]] = Field(default_factory=lambda: ["linear", "finetune"],
                                                          description="linear probe on frozen features, full fine-tuning")
    fractions: list[float] = Field(default_factory=lambda: [1.0, 10.0, 100.0],
                                   description="percent of the labelled train split, each in (0, 100]")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], description="seeds of subset draw and training")
    out: Path | None = Field(None, description="evaluation folder to create; required")
    image_size: int | None = Field(None, gt=0, description="side of the input images in pixels; none: the init's "
                                   f"pretraining size, else {DEFAULT_IMAGE_SIZE}")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate over a run: constant (the published protocol), or cosine decay to 0 "
        "over the run's steps (docs/protocol.md, deviations)")
    weight_decay: float = Field(1e-6, ge=0, description="AdamW weight decay")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the linear head")
    batch_size: int = Field(128, gt=0, description="images per step")
    epochs: int = Field(100, gt=0, description="fine-tuning epochs")
    linear_epochs: int = Field(100, gt=0, description="linear-probe epochs")
    max_steps: int = Field(-1, ge=-1, description="cap on optimiser steps per fine-tuning run; -1: epochs only")
    min_steps: int = Field(0, ge=0, description="floor on fine-tuning steps, so 1 % runs are more than a handful of updates")
    val_evals: int = Field(20, ge=2, description="validation passes per training run, spread evenly from its first "
                           "epoch to its last (fewer when it has fewer epochs); model selection keeps the best of them")
    augment: bool = Field(True, description="fine-tuning augmentations: RandAugment(5 ops, magnitude 5) and the flips below")
    vflip: bool = Field(True, description="vertical flips in fine-tuning, as published (they put the probe at the bottom)")
    hflip: bool = Field(False, description="horizontal flips in fine-tuning (LVOT and RVOT mirror each other)")
    rotate: float = Field(0.0, ge=0, le=180, description="fine-tuning rotation: an angle uniform in +- this, in degrees; "
                          "0: none, as the published protocol (docs/protocol.md, deviations)")
    save_models: bool = Field(True, description="write model.pt in each run folder")
    num_workers: int = Field(0, ge=0, description="data loader processes")
    logger: RunLogger = Field("tensorboard", description="each run's training curve (loss, validation balanced "
                              "accuracy, lr per optimiser step): tensorboard (RUN/tensorboard), csv (RUN/csv_logs) "
                              "or none")
    accelerator: Accelerator = Field("auto", description="auto: a GPU when one is visible")
    precision: Precision = Field("auto", description="auto: bf16 autocast + channels_last on GPU; on a CPU the faster of "
                           "float32 and bf16, each in NCHW or channels_last, measured (sonossl.models.fastpath); "
                           "32-true forces float32 NCHW")
    head_lr_mult: float = Field(1.0, gt=0, description="fine-tuning: the head's learning rate is lr x this, the "
                                "backbone's lr (1: one rate, as published; the BarlowTwins semi-supervised recipe "
                                "uses 250)")
    lp_ft: bool = Field(False, description="fine-tuning starts from a linear probe's head (LP-FT, Kumar et al. 2022): "
                        "the head is first fitted on the frozen features, then everything is fine-tuned")
    freeze_bn: bool = Field(False, description="fine-tuning keeps the backbone's batch-norm statistics (running mean "
                            "and variance) as the init has them, instead of re-estimating them on the few labelled "
                            "images; the affine weights still train")
    selection: Strategy = Field("random", description="which train images a fraction labels: random (the stratified "
                                "draw) or a strategy choosing them on backbone features, blind to the labels "
                                "(docs/selection.md)")
    selection_init: str | None = Field(None, description="features the selection strategy sees: random, imagenet, a "
                                       "pretrain run folder or a backbone.pt file; none: the init's own")
    selection_fractions: list[float] | None = Field(None, description="percent ladder the selected subsets nest along; "
                                                    "none: the fractions")
    select_on_valid: dict[str, list[Any]] = Field(
        default_factory=dict, description="settings chosen per run on the valid split, e.g. {lr: [1e-3, 3e-4]}: every "
        "combination is trained, the best validation balanced accuracy wins (the first declared on a tie) and only "
        f"it is scored on test; keys: {', '.join(SELECTABLE)} (a linear probe tries {', '.join(LINEAR_SETTINGS)} "
        "only); none: the settings as given")

    @field_validator("fractions", "selection_fractions")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else check_fractions(v)

    @field_validator("init", mode="before")
    @classmethod
    def _init(cls, v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v  # a run folder as pretrain() returns it

    @field_validator("select_on_valid")
    @classmethod
    def _select_on_valid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Known keys, non-empty lists without repeats, each value one its field accepts."""
        for key, values in v.items():
            if key not in SELECTABLE:
                raise ValueError(f"{key!r} cannot be chosen on valid; expected one of: {', '.join(SELECTABLE)}")
            try:
                v[key] = [getattr(cls.model_validate({key: x}), key) for x in values]  # coerced as the field is
            except ValidationError as exc:
                raise ValueError(f"{key}: {exc.errors()[0]['msg']} (got {exc.errors()[0].get('input')!r})") from None
            if not values or len({json.dumps(x) for x in v[key]}) != len(values):
                raise ValueError(f"{key}: expected a non-empty list of distinct values, got {values!r}")
        return v


class StudyRunConfig(SlurmJobConfig):
    """``sonossl study``: how to run a study file (what to run is in the file, :mod:`sonossl.study.grid`)."""

    study: Path | None = Field(None, description="study file (YAML); see the README's 'A whole study'")
    preset: str | None = Field(None, description="a built-in study (paper); a study file given too overrides its keys")
    out: Path | None = Field(None, description="study folder (required unless --dry-run)")
    workers: int = Field(1, ge=1, description="units run at once (local: processes sharing the cores)")
    launcher: Launcher = Field("local", description="where units run")
    dry_run: bool = Field(False, description="print the expanded grid and exit")
    sample: int = Field(6, ge=1, description="runs listed by --dry-run")
    imagenet_weights: Path | None = Field(None, description="torchvision ImageNet weights file; none: torchvision's cache")
    save_models: bool = Field(False, description="keep model.pt in every evaluation run folder")
    slurm_gpus: int = Field(1, ge=0, description="GPUs per SLURM job")
    ingest_shards: int = Field(1, ge=1, description="parts each data variant's ingestion is split into (ingest "
                               "--shard I/N), run as a job array under --launcher slurm or submitit-local, one after "
                               "another under local; the store is then the folder data/<variant>/")
    ledger: Path | None = Field(None, description="study ledger folder, outside --out, for version control: one small "
                                "record per finished unit (results, chosen settings, fingerprints; no weights, frames "
                                "or paths); with --resume its units count as done even when --out is gone; none: no "
                                "ledger (docs/cluster.md)")


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and budgets of one demo: ``quick`` a smoke run, ``full`` the default, ``long``
    pretraining past the point where it overtakes random initialisation; each takes about
    ``minutes`` on 2 idle cores.

    Linear probing is cheap (features are computed once per backbone), so it carries the
    comparison at every label fraction over several seeds; fine-tuning is expensive, so it runs
    at ``finetune_fractions`` only, long enough to converge.
    """

    name: str
    videos: int
    frames: int
    frame_skip: int
    pretrain_steps: int  # the schedule's length (warm-up + cosine), in optimiser steps of batch 64
    pretrain_seconds: float  # a safety cap on the pretraining's wall time
    fractions: tuple[float, ...]  # linear probe
    seeds: tuple[int, ...]
    finetune_fractions: tuple[float, ...]
    finetune_seeds: tuple[int, ...]
    finetune_epochs: int
    finetune_schedule: str = "cosine"  # the learning rate over a fine-tuning run (docs/protocol.md, deviations)
    finetune_vflip: bool = False  # the published vertical flips; off: the probe stays at the top (deviations)
    finetune_min_steps: int = 0  # a floor on a fine-tuning run's optimiser steps, so few labels still converge
    finetune_evals: int = 20  # validation passes per fine-tuning run (EvaluateConfig.val_evals)
    # each init's search on the valid split (EvaluateConfig.select_on_valid), per protocol; empty: none
    linear_select: dict[str, list] = field(default_factory=dict)
    finetune_select: dict[str, list] = field(default_factory=dict)
    synth_size: int = 128
    image_size: int = DEFAULT_IMAGE_SIZE
    labelled_per_class: tuple[int, int, int] = (100, 50, 100)  # train, valid, test
    minutes: int = 15  # about this long on 2 idle cores with bf16 units (the recorded runs in the README)
    minutes_float32: int = 25  # about this long on 2 idle cores of a CPU without them (float32)


# Sized on measurements (benchmarks/README.md, "Pretraining levers" and "The demo's budget").
# Pretraining: BarlowTwins, cpu preset (its learning rates 20x the paper's base rates, which a few
# hundred steps of batch 64 need), 400 steps of 64 pairs: at step 320 of a 1000-step schedule the
# frozen features were already +0.05 macro-F1 over random initialisation at 10 % labels (L-BFGS
# probe, valid), a whole 600-step schedule +0.06-0.08, and the recorded 500-step demo +0.14 through
# its own probe; 400 is what fits the 15 minutes with the fine-tuning below. ~0.65 s per step on 2
# cores with bf16 units, about 1.1 s in float32 elsewhere; the step count decides the pretraining,
# so every machine runs the same schedule to its end (the time cap is a safety net above a float32
# CPU's time); the demo runs two units at a time (sonossl/demo.py, DEMO_WORKERS). Labelled pool:
# 300 / 100 / 100 images per class (train / valid / test), so 1 % is 3 images per class and 10 % is
# 30. The comparison is fair: each init gets the same search on the valid split
# (the probe's rate among 1e-3 and 1e-2, fine-tuning's among the published 1e-3 and 3e-4) and the
# test split is scored once, by the winner. Fine-tuning: 60 epochs (at least 200 steps of batch 32),
# cosine to zero, no vertical flips, validated 10 times; random initialisation needs the 60 (at 40
# its best epoch was the last in 2 of 3 runs, and it scored 0.55 against 0.62-0.64).
FULL = DemoPlan("full", videos=600, frames=8, frame_skip=1, pretrain_steps=400, pretrain_seconds=3600,
                fractions=(1, 10, 100), seeds=(0, 1, 2, 3, 4), finetune_fractions=(10,), finetune_seeds=(0, 1, 2),
                finetune_epochs=60, finetune_min_steps=200, finetune_evals=10, linear_select={"lr": [1e-3, 1e-2]},
                finetune_select={"lr": [1e-3, 3e-4]}, labelled_per_class=(300, 100, 100), minutes=13,
                minutes_float32=20)
# quick's cap is a safety net too: at 100 s (76 s idle with bf16) a busy machine stopped its 40-step
# schedule at 30 steps, so the same demo gave other numbers; float32 needs longer still
QUICK = DemoPlan("quick", videos=40, frames=16, frame_skip=2, pretrain_steps=40, pretrain_seconds=600,
                 fractions=(10, 100), seeds=(0, 1, 2), finetune_fractions=(100,), finetune_seeds=(0,),
                 finetune_epochs=20, labelled_per_class=(40, 20, 40), minutes=3, minutes_float32=4)
# A longer pretraining, scored with more seeds. Fine-tuning at 10 % labels from a 400-step backbone
# is a draw: +0.050 from one (3 of 3 seeds ahead), -0.019 and -0.016 from two others, even the better
# of two draws chosen on valid (benchmarks/README.md); 60 epochs on 30 images per class from random
# weights reach 0.63, past what those features give a probe on every label. From the learning
# curve's 1000-step backbone (same data, same rates) fine-tuning scored 0.70 against random
# initialisation's 0.63, ahead in all 8 seeds (+0.070 [+0.037, +0.103]). So the long plan
# pretrains 1000 steps (one thread,
# beside random initialisation's runs), fine-tunes at 1 and 10 % with 8 seeds, each init at the
# published rate 1e-3 (the search on valid chose it in 29 of 32 runs of the recorded demos at 10 %;
# each init gets the same, so the comparison stays fair; at 1 % the pretrained start had chosen 3e-4
# in 7 of 10, so the fixed rate may cost it there), and probes with 10 seeds.
LONG = replace(FULL, name="long", pretrain_steps=1000, pretrain_seconds=5400, seeds=tuple(range(10)),
               finetune_fractions=(1, 10), finetune_seeds=tuple(range(8)), finetune_select={}, minutes=29,
               minutes_float32=45)
PLANS = {p.name: p for p in (QUICK, FULL, LONG)}


def _percents(fractions: tuple[float, ...]) -> str:
    """``(1, 10, 100)`` -> ``"1, 10, 100"`` (label fractions as a help text states them)."""
    return ", ".join(f"{f:g}" for f in fractions)


class DemoConfig(Config):
    """``sonossl demo``: synth -> ingest -> pretrain -> evaluate -> report on built-in data."""

    out: Path = Field(Path("demo_out"), description="demo folder")
    plan: Literal["quick", "full", "long"] = Field(
        "full", description=f"quick: a smoke run, about {QUICK.minutes} minutes; full: {FULL.pretrain_steps} "
        f"pretraining steps, linear probes at {_percents(FULL.fractions)} % labels and fine-tuning at "
        f"{_percents(FULL.finetune_fractions)} %, about {FULL.minutes} minutes; long: {LONG.pretrain_steps} "
        f"pretraining steps, fine-tuning at {_percents(LONG.finetune_fractions)} % and more seeds ({len(LONG.seeds)} and {len(LONG.finetune_seeds)}), about "
        f"{LONG.minutes} minutes (2 idle cores of a CPU "
        f"with bf16 units; without them about {QUICK.minutes_float32}, {FULL.minutes_float32} and "
        f"{LONG.minutes_float32})")
    quick: bool = Field(False, description="the same as --plan quick")
    seeds: list[int] | None = Field(None, description="override the linear-probe seeds; none: the plan's (" + ", ".join(
        f"{p.name} {p.seeds[0]}-{p.seeds[-1]}" for p in (QUICK, FULL, LONG)) + ")")


INFER_PRECISION = ("auto: the fast path evaluate scores in (bf16 autocast + channels_last on GPU; on a CPU the "
                   "faster of float32 and bf16, each in NCHW or channels_last, measured once per machine); "
                   "32-true: float32 NCHW, the reference")


class PredictConfig(Config):
    """``sonossl predict``: the plane of every frame of new scans."""

    inputs: list[Path] = Field(min_length=1, description="images (PNG/JPEG/DICOM), clips (DICOM cine, MP4, AVI) or folders")
    model: Path = Field(description="evaluate run folder holding model.pt, or a model.pt file")
    out: Path = Field(Path("predictions.csv"), description="CSV of per-frame predictions; OUT_STEM_clips/ and "
                      "OUT_STEM_errors.csv go beside it")
    smooth: int = Field(0, description="moving average over K frames for timelines and best frames")
    frame_skip: int = Field(1, description="predict every K-th frame")
    crop: Crop = Field("auto", description="scan region crop, as in ingest")
    batch_size: int = Field(64, description="frames per forward pass")
    device: str = Field("auto", description="auto, cpu or cuda[:N]")
    precision: Precision = Field("auto", description=INFER_PRECISION)


class ExportConfig(Config):
    """``sonossl export``: the classifier as torchvision weights, TorchScript or ONNX, with a model card."""

    model: Path = Field(description="evaluate run folder holding model.pt, or a model.pt file")
    format: str = Field(description="torchvision, torchscript or onnx")
    out: Path | None = Field(None, description="file to write; none: RUN/exports/<backbone>.<ext>")


class EmbedConfig(Config):
    """``sonossl embed``: a 2-D map of backbone features coloured by class, and a kNN accuracy."""

    model: Path = Field(description="evaluate run folder holding model.pt, or a model.pt file")
    labels: Path = Field(description="folder with train.csv, valid.csv, test.csv")
    out: Path = Field(description="PNG to write")
    method: str = Field("tsne", description="tsne, umap (needs umap-learn) or auto")
    split: str = Field("all", description="images to map: all or test")
    k: int = Field(5, description="neighbours of the kNN accuracy")
    seed: int = Field(0, description="seed of the map")
    device: str = Field("auto", description="auto, cpu or cuda[:N]")
    precision: Precision = Field("auto", description=INFER_PRECISION)


class SelectConfig(Config):
    """``sonossl select``: embed the candidate frames with a backbone and choose a budget of them to label."""

    frames: Path = Field(description="candidates: a frame store FRAMES.h5 or a folder of images (each folder of "
                         "images is one clip)")
    budget: int = Field(description="number of frames to choose (images)")
    out: Path = Field(description="folder to write: to_label.csv, frames/, contact_sheet.png, embedding.png, "
                      "selection.json")
    init: str = Field("random", description="the embedding backbone: random, imagenet, a pretrain run folder or a "
                      "backbone.pt file")
    backbone: str | None = Field(None, description=f"torchvision trunk (none: the pretraining's, else {DEFAULT_BACKBONE})")
    imagenet_weights: Path | None = Field(None, description="torchvision ImageNet weights file; none: torchvision's cache")
    strategy: Strategy = Field("typiclust", description="how to choose; sources in docs/selection.md")
    per_clip: int = Field(2, ge=0, description="at most this many frames of one clip (frames); 0: no limit")
    split: PoolSplit = Field("all", description="frames of the store to choose from")
    seed: int = Field(0, description="seed of the strategy and of a random init")
    image_size: int | None = Field(None, ge=8, description="side the frames are resized to before embedding, in "
                                   f"pixels; none: the pretraining's, else the store's frame size, else {DEFAULT_IMAGE_SIZE}")
    classes: int = Field(PROBCOVER_CLASSES, ge=2, description="probcover: k-means pseudo-classes of the ball purity, "
                         "ideally the number of classes to label")
    map: Literal["tsne", "pca"] = Field("tsne", description="projection of embedding.png")
    batch_size: int = Field(256, ge=1, description="frames per forward pass")
    device: str = Field("auto", description="auto, cpu or cuda[:N]")
    salt_file: Path | None = Field(None, description="secret key of the pseudonymous clip ids of a folder of images, as "
                                   "ingest's --salt-file; none: a random key for this run (its ids then match no "
                                   "other run's)")
    label_studio: bool = Field(False, description="also write label-studio/: tasks.json (one task per chosen frame), "
                               "label_config.xml (a single choice over the classes) and README.txt (how to import them)")
    label_classes: list[str] = Field(default_factory=list, description="classes of label_config.xml's single choice, "
                                     "comma-separated; none: --model's classes")
    model: Path | None = Field(None, description="fine-tuned model (an evaluate run folder or its model.pt) whose top "
                               "class and probability pre-fill each task; none: tasks without a prediction")
    image_url: str | None = Field(None, description="URL prefix the frames/ folder is served under (a task's image is "
                                  "PREFIX/frames/NAME.png); none: Label Studio's local files, /data/local-files/?d=frames/"
                                  "NAME.png with the output folder as LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")


class LabelsImportConfig(Config):
    """``sonossl labels import``: a Label Studio JSON export back to train.csv, valid.csv, test.csv."""

    export: Path = Field(description="Label Studio's JSON export (Export > JSON) of a project made from "
                         "`sonossl select --label-studio`")
    selection: Path = Field(description="the `sonossl select` output folder the tasks came from (its frames/ are "
                            "copied in)")
    out: Path | None = Field(None, description="labelled-set folder to write: train.csv, valid.csv, test.csv, images/, "
                             "labels_import.csv; none: --append (one of the two is needed)")
    append: Path | None = Field(None, description="an existing labelled set (from an earlier import) to add this round "
                                "to; its clips keep their split; none: a new set in --out")
    valid: float = Field(0.2, ge=0, lt=1, description="share of this round's new clips put in valid (fraction of clips, "
                         "0-1)")
    test: float = Field(0.2, ge=0, lt=1, description="share of this round's new clips put in test (fraction of clips, 0-1)")
    seed: int = Field(0, description="seed of the split of clips")
    on_conflict: Literal["majority", "refuse"] = Field("refuse", description="annotators disagreeing on a task: majority "
                                                       "(the most chosen class, a tie left out) or refuse (the task left "
                                                       "out); either way it is listed in labels_import.csv")


def check_fractions(v: list[float]) -> list[float]:
    """Label fractions in percent, each in (0, 100]; sorted, without repeats."""
    for f in v:
        if not 0 < f <= 100:
            raise ValueError(f"fraction {f:g} outside (0, 100] (percent of the labelled train split)")
    return sorted(set(v))
