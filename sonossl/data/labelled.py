"""Labelled plane images: the seed's CSV splits (``image_path,class``) or a folder per class.

Every problem is a :class:`SonosslError` naming the file (and row) and what was expected:
a missing column, a missing or unreadable image, a path escaping the data root, an empty split,
a class in valid/test that train lacks. Images are decoded once, converted to grey, resized to
``size x size`` and kept as one ``uint8 (N, 1, size, size)`` tensor: a few hundred labelled images
fit in memory many times over, and every later epoch reads them for free.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sonossl.config import DEFAULT_IMAGE_SIZE
from sonossl.data.readers import IMAGE_SUFFIXES
from sonossl.errors import SonosslError

SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}


@dataclass
class LabelledSplit:
    """One split: ``images`` uint8 ``(N, 1, S, S)``, ``labels`` int64 ``(N,)``, ``paths`` as given."""

    name: str
    source: Path
    paths: list[str]
    class_names: list[str]
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class LabelledData:
    train: LabelledSplit
    valid: LabelledSplit
    test: LabelledSplit | None  # None: not read (load_labelled's with_test=False)
    class_names: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        def counts(s: LabelledSplit) -> dict[str, int]:
            return {c: int((s.labels == i).sum()) for i, c in enumerate(self.class_names)}

        return {"classes": self.class_names, **{s.name: counts(s) for s in (self.train, self.valid, self.test) if s is not None}}


def read_csv_rows(csv_path: Path, root: Path, allow_outside_root: bool = False) -> list[tuple[str, str, Path]]:
    """Rows ``(image_path, class, resolved path)``; validates columns, paths and files."""
    if not csv_path.is_file():
        raise SonosslError(f"{csv_path}: split file not found")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:  # -sig: tolerate a byte-order mark
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("image_path", "class") if c not in header]
        if missing:
            raise SonosslError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected header image_path,class (found {','.join(header) or 'none'})")
        reader.fieldnames = header
        rows = []
        root_resolved = root.resolve()
        for lineno, row in enumerate(reader, start=2):
            rel, cls = (row.get("image_path") or "").strip(), (row.get("class") or "").strip()
            if not rel or not cls:
                raise SonosslError(f"{csv_path}:{lineno}: empty image_path or class")
            path = (root / rel).resolve()
            if not allow_outside_root and not path.is_relative_to(root_resolved):
                raise SonosslError(f"{csv_path}:{lineno}: image path {rel!r} leaves the data root {root}")
            if not path.is_file():
                raise SonosslError(f"{csv_path}:{lineno}: image file {rel!r} not found under {root}")
            rows.append((rel, cls, path))
    if not rows:
        raise SonosslError(f"{csv_path}: split is empty; expected at least one image_path,class row")
    return rows


def read_folder_rows(split_dir: Path) -> list[tuple[str, str, Path]]:
    """A folder with one sub-folder per class."""
    if not split_dir.is_dir():
        raise SonosslError(f"{split_dir}: split folder not found")
    rows = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for img in sorted(class_dir.rglob("*")):
            if img.suffix.lower() in IMAGE_SUFFIXES:
                rows.append((str(img.relative_to(split_dir)), class_dir.name, img))
    if not rows:
        raise SonosslError(f"{split_dir}: no images found; expected <split>/<class>/<image>.png")
    return rows


def load_image(path: Path, size: int) -> np.ndarray:
    """Grey ``uint8 (size, size)``: colour to luminance, 16-bit scaled, then an antialiased resize."""
    from sonossl.data.readers import open_image

    try:
        with open_image(path) as im:
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                im = Image.fromarray(((arr - lo) / max(hi - lo, 1e-9) * 255).astype(np.uint8))
            im = im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SonosslError(f"{path}: not a readable image ({exc})") from None


def build_split(name: str, source: Path, rows: list[tuple[str, str, Path]], class_names: list[str], size: int) -> LabelledSplit:
    index = {c: i for i, c in enumerate(class_names)}
    for rel, cls, _ in rows:
        if cls not in index:
            raise SonosslError(f"{source}: class {cls!r} (image {rel}) is not in the train split's classes {class_names}")
    images = np.stack([load_image(p, size) for _, _, p in rows])[:, None]
    labels = np.array([index[c] for _, c, _ in rows], dtype=np.int64)
    return LabelledSplit(name, source, [r for r, _, _ in rows], class_names, torch.from_numpy(images), torch.from_numpy(labels))


def load_labelled(
    labels: Path | None = None,
    *,
    train_csv: Path | None = None,
    val_csv: Path | None = None,
    test_csv: Path | None = None,
    size: int = DEFAULT_IMAGE_SIZE,
    allow_outside_root: bool = False,
    with_test: bool = True,
) -> LabelledData:
    """Read train/valid/test from ``labels`` (CSVs or per-class folders) or from three CSVs.

    With explicit CSVs, paths are relative to each CSV's folder. Classes are those of the train
    split, sorted; valid/test may not introduce a new one. ``with_test=False``: the test split is
    not read at all (its ``test`` is None), for what must choose without seeing it (the
    pretraining's monitors and its learning-rate sweep).
    """
    wanted = [s for s in SPLIT_FILES if with_test or s != "test"]
    sources: dict[str, tuple[Path, list]] = {}
    if labels is not None:
        labels = Path(labels)
        if not labels.is_dir():
            raise SonosslError(f"{labels}: labelled data folder not found")
        for split in wanted:
            fname = SPLIT_FILES[split]
            csv_path = labels / fname
            if csv_path.is_file():
                sources[split] = (csv_path, read_csv_rows(csv_path, labels, allow_outside_root))
            elif (labels / split).is_dir():
                sources[split] = (labels / split, read_folder_rows(labels / split))
            else:
                raise SonosslError(f"{labels}: neither {fname} nor a {split}/ folder; expected {', '.join(SPLIT_FILES.values())}")
    else:
        given = {"train": train_csv, "valid": val_csv, "test": test_csv}
        for split in wanted:
            csv_path = given[split]
            if csv_path is None:
                raise SonosslError(f"--{split.replace('valid', 'val')}-csv is required when --labels is not given")
            csv_path = Path(csv_path)
            sources[split] = (csv_path, read_csv_rows(csv_path, csv_path.parent, allow_outside_root))
    class_names = sorted({c for _, c, _ in sources["train"][1]})
    if len(class_names) < 2:
        raise SonosslError(f"{sources['train'][0]}: train split has {len(class_names)} class; expected at least 2")
    splits = {s: build_split(s, src, rows, class_names, size) for s, (src, rows) in sources.items()}
    return LabelledData(splits["train"], splits["valid"], splits.get("test"), class_names)
