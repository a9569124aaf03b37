"""``sonossl select``: embed every candidate frame with a backbone and pick the ones worth labelling.

Everything that can be wrong (the init, the pool, the budget, constant features, an existing
``--out``) is found before anything is written; the outputs are written into a temporary
folder beside ``--out`` and renamed into place only when complete (see
:mod:`sonossl.select.sheets` for what they are).
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sonossl.errors import SonosslError
from sonossl.select.strategies import PROBCOVER_CLASSES, STRATEGIES, check_budget, select

DEFAULT_STRATEGY = "typiclust"
DEFAULT_PER_CLIP = 2
DEFAULT_IMAGE_SIZE = 64  # when neither the init nor the store says


@dataclass
class SelectSettings:
    """The options of one selection (the CLI's flags)."""

    frames: Path
    out: Path
    budget: int
    init: str = "random"
    backbone: str | None = None
    imagenet_weights: Path | None = None
    strategy: str = DEFAULT_STRATEGY
    per_clip: int = DEFAULT_PER_CLIP  # 0: no limit
    split: str = "all"
    seed: int = 0
    image_size: int | None = None
    classes: int = PROBCOVER_CLASSES
    map: str = "tsne"
    batch_size: int = 256
    device: str = "auto"
    salt: str = "sonossl"
    overwrite: bool = False


def _check(s: SelectSettings) -> None:
    if s.strategy not in STRATEGIES:
        raise SonosslError(f"--strategy: {s.strategy!r}; expected one of: {', '.join(STRATEGIES)}")
    for name, value, low in (("--per-clip", s.per_clip, 0), ("--classes", s.classes, 2), ("--batch-size", s.batch_size, 1)):
        if value < low:
            raise SonosslError(f"{name}: {value}; expected an integer >= {low}")
    if s.image_size is not None and s.image_size < 8:
        raise SonosslError(f"--image-size: {s.image_size}; expected at least 8 pixels")
    if s.map not in ("tsne", "pca"):
        raise SonosslError(f"--map: {s.map!r}; expected tsne or pca")
    out = Path(s.out)
    if out.exists() and not out.is_dir():
        raise SonosslError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not s.overwrite:
        raise SonosslError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SonosslError(f"--device {name}: no CUDA device is visible")
    return name


def run_select(s: SelectSettings, echo=print) -> dict:
    """Select ``s.budget`` frames; returns ``{"out", "chosen", "n_candidates", "clips", "wall_s"}``."""
    from sonossl.downstream.evaluate import resolve_init
    from sonossl.select.candidates import embed_pool, open_pool
    from sonossl.select.sheets import contact_sheet, embedding_map, publish, write_frames, write_json

    t0 = time.time()
    _check(s)
    init = resolve_init(s.init, s.backbone, s.imagenet_weights)
    pool = open_pool(s.frames, s.split, s.salt)
    check_budget(len(pool), s.budget)
    size = s.image_size or init.image_size or pool.frame_size or DEFAULT_IMAGE_SIZE
    torch.manual_seed(s.seed)  # a random init is drawn from the seed
    encoder = init.build(s.imagenet_weights)
    feats = embed_pool(pool, encoder, size, _device(s.device), s.batch_size, source=f"--init {s.init}")
    cap = s.per_clip or None
    chosen = select(feats, s.budget, s.strategy, s.seed, groups=pool.groups, cap=cap, classes=s.classes)
    t_select = time.time() - t0

    out = Path(s.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        rows = write_frames(tmp, chosen, pool)
        contact_sheet(tmp, rows)
        title = (f"{init.backbone} features ({init.label}, {size} px), {s.map}; {s.strategy} chose {len(chosen)} "
                 f"of {len(pool)} frames")
        embedding_map(tmp, feats, chosen, title, s.map, s.seed)
        write_json(tmp / "selection.json", {
            "strategy": s.strategy, "seed": s.seed, "budget": s.budget, "per_clip": cap, "split": s.split,
            "init": init.label, "backbone": init.backbone, "image_size": size, "feature_dim": int(feats.shape[1]),
            "candidates": len(pool), "clips": int(len(np.unique(pool.groups))),
            "clips_chosen": int(len(np.unique(pool.groups[chosen]))), "classes": s.classes,
            "select_wall_s": round(t_select, 2)})
        publish(tmp, out, s.overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": out, "chosen": chosen, "n_candidates": len(pool), "clips": int(len(np.unique(pool.groups[chosen]))),
            "wall_s": time.time() - t0}


def cmd_select(a: argparse.Namespace) -> int:
    fields = SelectSettings.__dataclass_fields__
    r = run_select(SelectSettings(**{k: getattr(a, k) for k in fields}))
    print(f"{len(r['chosen'])} of {r['n_candidates']} frames chosen from {r['clips']} clips in {r['wall_s']:.1f} s: "
          f"{r['out'] / 'to_label.csv'}, contact_sheet.png, embedding.png")
    return 0


def add_select_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("select", help="choose which frames to label: embed the candidates, pick a budget of them")
    s.add_argument("--frames", required=True, type=Path, help="candidates: a frame store FRAMES.h5 or a folder of images "
                   "(each folder of images is one clip)")
    s.add_argument("--budget", required=True, type=int, help="number of frames to choose (images)")
    s.add_argument("--out", required=True, type=Path, help="folder to write: to_label.csv, frames/, contact_sheet.png, "
                   "embedding.png, selection.json")
    s.add_argument("--init", default="random", help="the embedding backbone: random | imagenet | pretrain run folder | "
                   "backbone.pt (default random)")
    s.add_argument("--backbone", help="architecture (default: the pretrain run's, else resnet18)")
    s.add_argument("--imagenet-weights", type=Path, help="ImageNet checkpoint for --init imagenet (default: torchvision's cache)")
    s.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES,
                   help=f"how to choose (default {DEFAULT_STRATEGY}); sources in docs/selection.md")
    s.add_argument("--per-clip", type=int, default=DEFAULT_PER_CLIP,
                   help=f"at most this many frames of one clip, 0 for no limit (default {DEFAULT_PER_CLIP} frames)")
    s.add_argument("--split", default="all", help="frames of the store to choose from: all, train or val (default all)")
    s.add_argument("--seed", type=int, default=0, help="seed of the strategy and of a random init (default 0)")
    s.add_argument("--image-size", type=int, help="side the frames are resized to before embedding, pixels "
                   f"(default: the pretraining's, else the store's frame size, else {DEFAULT_IMAGE_SIZE})")
    s.add_argument("--classes", type=int, default=PROBCOVER_CLASSES, help="probcover: k-means pseudo-classes of the "
                   f"ball purity, ideally the number of classes to label (default {PROBCOVER_CLASSES})")
    s.add_argument("--map", default="tsne", choices=["tsne", "pca"], help="projection of embedding.png (default tsne)")
    s.add_argument("--batch-size", type=int, default=256, help="frames per forward pass (default 256 frames)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    s.add_argument("--salt", default="sonossl", help="key of the pseudonymous clip ids of a folder of images, as "
                   "ingest's --salt (default sonossl)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out folder (default: refuse)")
    s.set_defaults(func=cmd_select)
    return s
