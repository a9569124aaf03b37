"""``sonossl select``: embed every candidate frame with a backbone and pick the ones worth labelling.

Everything that can be wrong (the init, the pool, the budget, constant features, an existing
``--out``) is found before anything is written; the outputs are written into a temporary
folder beside ``--out`` and renamed into place only when complete (see
:mod:`sonossl.select.sheets` for what they are).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sonossl.config import SelectConfig, resolve_image_size
from sonossl.errors import SonosslError
from sonossl.outlock import check_overwrite, write_marker
from sonossl.select.strategies import check_budget, select


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SonosslError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SonosslError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it")
        check_overwrite(out, "select")  # only a folder an earlier `sonossl select` wrote


def run_select(s: SelectConfig, overwrite: bool = False, extra: Callable[[Path, list[dict]], None] | None = None) -> dict:
    """Select ``s.budget`` frames (settings: :class:`SelectConfig`); returns ``{"out", "chosen", "n_candidates", "clips", "wall_s"}``.
    ``extra(folder, rows)``, when given, writes more outputs into the unfinished folder beside
    ``to_label.csv``'s ``rows`` (the Label Studio tasks, :mod:`sonossl.select.labelstudio`)."""
    from sonossl.models.devices import resolve_device
    from sonossl.models.init import resolve_init
    from sonossl.select.candidates import embed_pool, open_pool
    from sonossl.select.sheets import contact_sheet, embedding_map, publish, write_frames, write_json

    t0 = time.time()
    _check_out(Path(s.out), overwrite)
    init = resolve_init(s.init, s.backbone, s.imagenet_weights)
    pool = open_pool(s.frames, s.split, s.salt_file)
    check_budget(len(pool), s.budget)
    size = resolve_image_size(s.image_size, pretrained=init.image_size, stored=pool.frame_size)
    torch.manual_seed(s.seed)  # a random init is drawn from the seed
    encoder = init.build(s.imagenet_weights)
    feats = embed_pool(pool, encoder, size, resolve_device(s.device), s.batch_size, source=f"--init {s.init}")
    cap = s.per_clip or None
    chosen = select(feats, s.budget, s.strategy, s.seed, groups=pool.groups, cap=cap, classes=s.classes)
    t_select = time.time() - t0

    out = Path(s.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_marker(tmp, "select")
    try:
        rows = write_frames(tmp, chosen, pool)
        if extra is not None:
            extra(tmp, rows)
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
        publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": out, "chosen": chosen, "n_candidates": len(pool), "clips": int(len(np.unique(pool.groups[chosen]))),
            "wall_s": time.time() - t0}

