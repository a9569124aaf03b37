"""The candidate frames of a selection, and their backbone features.

A :class:`Pool` is every frame that may be chosen, from a frame store (``FRAMES.h5``, all of it or
one split) or from a folder of images (each folder of images is one clip; its frames in sorted
file-name order). A candidate is named by its clip's pseudonymous id and its frame index: the
store's ids are the ingestion's pseudonyms, and a folder's are made the same way (HMAC of its
path relative to the folder given, keyed by a secret: ``--salt-file`` or a random key made for the run),
so no file or patient name reaches an output.

Features are the backbone's pooled output of each grey frame resized to ``image_size``,
L2-normalised (:func:`sonossl.models.features.features`): ``(N, feature_dim)`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, get_args

import numpy as np
import torch

from sonossl.config import PoolSplit
from sonossl.errors import SonosslError
from sonossl.models.features import check_features, features

POOL_SPLITS = get_args(PoolSplit)


@dataclass
class Pool:
    """``N`` candidates: ``clip_ids`` ``(N,)`` str, ``frames`` ``(N,)`` frame index in its clip,
    ``groups`` ``(N,)`` clip number; ``chunks()`` yields the frames in pool order as uint8
    ``[n, H, W]`` (grey) or ``[n, H, W, 3]`` arrays, one clip (or image) at a time; ``read(i)`` one frame."""

    clip_ids: np.ndarray
    frames: np.ndarray
    groups: np.ndarray
    chunks: Callable[[], Iterator[np.ndarray]]
    read: Callable[[int], np.ndarray]
    frame_size: int | None = None  # the store's frame side, when known

    def __len__(self) -> int:
        return len(self.frames)


def store_pool(path: Path, split: str = "all") -> Pool:
    from sonossl.data.framestore import FrameStore

    if split not in POOL_SPLITS:
        raise SonosslError(f"--split: {split!r}; expected one of {', '.join(POOL_SPLITS)}")
    store = FrameStore(path)
    clips = [v for v in store.split(None if split == "all" else split) if v.n_frames > 0]
    if not clips:
        raise SonosslError(f"{path}: frame store holds no frames in split {split!r}; expected at least one")
    ids = np.array([v.video_id for v in clips for _ in range(v.n_frames)])
    frames = np.concatenate([np.arange(v.n_frames) for v in clips])
    groups = np.concatenate([np.full(v.n_frames, g) for g, v in enumerate(clips)])
    starts = np.cumsum([0] + [v.n_frames for v in clips])

    def read(i: int) -> np.ndarray:
        g = int(groups[i])
        return store.read(clips[g].key, int(i - starts[g]))

    size = store.attrs.get("frame_size")
    return Pool(ids, frames, groups, lambda: (store.read_clip(v.key) for v in clips), read,
                int(size) if size is not None else None)


def folder_pool(root: Path, salt: str) -> Pool:
    from sonossl.data.ingest import pseudonym
    from sonossl.data.labelled import IMAGE_SUFFIXES

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise SonosslError(f"{root}: no images found; expected PNG/JPEG/BMP/TIFF files (a folder per clip)")
    folders = [str(p.parent.relative_to(root)) for p in files]
    names = list(dict.fromkeys(folders))
    groups = np.array([names.index(f) for f in folders])
    seen: dict[str, int] = {}
    frames = np.zeros(len(files), np.int64)
    for i, f in enumerate(folders):  # the position of each image in its own folder
        frames[i] = seen.get(f, 0)
        seen[f] = frames[i] + 1
    ids = np.array([pseudonym(f"folder::{f}", salt) for f in folders])

    def read(i: int) -> np.ndarray:
        from sonossl.data.readers import open_image

        with open_image(files[i]) as im:
            try:
                return np.array(im.convert("L"), dtype=np.uint8)
            except OSError as exc:
                raise SonosslError(f"{files[i]}: not a readable image ({exc})") from None

    return Pool(ids, frames, groups, lambda: (read(i)[None] for i in range(len(files))), read)


def open_pool(frames: Path, split: str = "all", salt_file: Path | None = None) -> Pool:
    """A frame store (``.h5``/``.hdf5``, or a sharded one: a folder or ``.txt`` list of parts) or a folder of images."""
    from sonossl.data.framestore import is_sharded

    frames = Path(frames)
    if is_sharded(frames):
        return store_pool(frames, split)
    if frames.is_dir():
        if split != "all":
            raise SonosslError(f"--split {split}: a folder of images has no splits; expected --split all")
        import secrets

        from sonossl.data.ingest import load_key

        return folder_pool(frames, load_key(salt_file, create=False) if salt_file else secrets.token_hex(32))
    if not frames.is_file():
        raise SonosslError(f"{frames}: not found; expected a frame store (FRAMES.h5) or a folder of images")
    return store_pool(frames, split)


def to_model_input(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 ``[n, H, W]`` or ``[n, H, W, 3]`` -> grey uint8 ``(n, 1, size, size)`` (antialiased bilinear)."""
    from sonossl.data.pairs import to_grey

    grey = np.stack([to_grey(f) for f in frames]) if frames.ndim == 4 else frames
    x = torch.from_numpy(np.ascontiguousarray(grey))[:, None]
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def embed_pool(pool: Pool, encoder: torch.nn.Module, size: int, device: str, batch_size: int = 256,
               source: str = "--init") -> np.ndarray:
    """``(N, feature_dim)`` float32 L2-normalised features, refused when they do not vary."""
    encoder = encoder.to(device).eval()
    out, pending, n_pending = [], [], 0
    for chunk in pool.chunks():
        pending.append(to_model_input(chunk, size))
        n_pending += len(chunk)
        if n_pending >= batch_size:
            out.append(features(encoder, torch.cat(pending), torch.device(device), batch_size))
            pending, n_pending = [], 0
    if pending:
        out.append(features(encoder, torch.cat(pending), torch.device(device), batch_size))
    feats = torch.cat(out).numpy().astype(np.float32)
    check_features(feats, source)
    return feats
