"""What ``sonossl select`` writes, all into a temporary folder renamed into place at the end:

- ``to_label.csv``: ``rank, clip_id, frame_index, png`` (``png`` relative to the CSV), in the
  order the strategy picked the frames;
- ``frames/<rank>_<clip_id>_f<frame>.png``: each chosen frame as stored (the scan region, cropped
  and de-identified at ingestion), written without text metadata;
- ``contact_sheet.png``: the chosen frames in a grid, captioned with rank, clip id and frame;
- ``embedding.png``: a 2-D map (t-SNE or PCA) of the candidates' features, at most
  ``MAP_SAMPLE`` of them plus every chosen one, the chosen marked;
- ``selection.json``: the settings and counts (no path of the source).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MAP_SAMPLE = 2000  # candidates drawn on the embedding map (the chosen ones always are)
TILE = 128  # contact-sheet tile side, pixels
CAPTION = 14  # caption strip under each tile, pixels


def png_name(rank: int, clip_id: str, frame: int) -> str:
    return f"{rank:04d}_{clip_id}_f{frame:05d}.png"


def write_frames(out: Path, chosen: np.ndarray, pool) -> list[dict]:
    """``frames/*.png`` and the rows of ``to_label.csv``."""
    (out / "frames").mkdir()
    rows = []
    for rank, i in enumerate(chosen, start=1):
        name = png_name(rank, str(pool.clip_ids[i]), int(pool.frames[i]))
        Image.fromarray(np.ascontiguousarray(pool.read(int(i)))).save(out / "frames" / name)
        rows.append({"rank": rank, "clip_id": str(pool.clip_ids[i]), "frame_index": int(pool.frames[i]),
                     "png": f"frames/{name}"})
    with open(out / "to_label.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["rank", "clip_id", "frame_index", "png"])
        w.writeheader()
        w.writerows(rows)
    return rows


def contact_sheet(out: Path, rows: list[dict]) -> Path:
    """A grid of the chosen frames, ``TILE`` px each, captioned ``#rank clip frame``."""
    cols = min(8, len(rows))
    lines = math.ceil(len(rows) / cols)
    sheet = Image.new("L", (cols * TILE, lines * (TILE + CAPTION)), 0)
    draw = ImageDraw.Draw(sheet)
    for k, r in enumerate(rows):
        x, y = (k % cols) * TILE, (k // cols) * (TILE + CAPTION)
        with Image.open(out / r["png"]) as im:
            sheet.paste(im.convert("L").resize((TILE, TILE), Image.Resampling.BILINEAR), (x, y))
        draw.text((x + 2, y + TILE + 1), f"#{r['rank']} {r['clip_id'][:8]} f{r['frame_index']}", fill=255)
    path = out / "contact_sheet.png"
    sheet.save(path)
    return path


def embedding_map(out: Path, feats: np.ndarray, chosen: np.ndarray, title: str, method: str, seed: int) -> Path:
    """The candidates' features in 2-D (``method`` tsne or pca), the chosen ones marked and numbered."""
    from sonossl.plotting import pyplot

    plt = pyplot()

    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(len(feats)), chosen)
    rest = np.sort(rng.choice(rest, min(MAP_SAMPLE, len(rest)), replace=False)) if len(rest) else rest
    shown = np.concatenate([rest, chosen])
    xy = project(feats[shown], method, seed)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    ax.scatter(xy[: len(rest), 0], xy[: len(rest), 1], s=6, color="0.65", edgecolors="none",
               label=f"candidates ({len(rest)} of {len(feats) - len(chosen)} shown)")
    ax.scatter(xy[len(rest):, 0], xy[len(rest):, 1], s=28, color="tab:red", edgecolors="black", linewidths=0.5,
               label=f"chosen ({len(chosen)})")
    if len(chosen) <= 60:
        for rank, (x, y) in enumerate(xy[len(rest):], start=1):
            ax.annotate(str(rank), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / "embedding.png"
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


def project(feats: np.ndarray, method: str, seed: int) -> np.ndarray:
    """``(n, D)`` -> ``(n, 2)``: t-SNE as ``sonossl embed`` draws it, or PCA (also for n < 4)."""
    if method == "tsne" and len(feats) >= 4:
        from sonossl.models.features import project_2d

        return project_2d(feats, "tsne", seed)
    from sklearn.decomposition import PCA

    if len(feats) < 2:
        return np.zeros((len(feats), 2))
    xy = PCA(n_components=min(2, len(feats), feats.shape[1]), random_state=seed).fit_transform(feats)
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` folder to ``out`` (replacing it only when ``overwrite``)."""
    if out.exists() and overwrite:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def write_json(path: Path, info: dict) -> None:
    path.write_text(json.dumps(info, indent=1, default=str))
