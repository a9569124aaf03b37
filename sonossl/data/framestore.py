"""The frame store: decoded, de-identified frames, prepared once and read cheaply many times.

Format (HDF5, compatible with the seed code's files):

- one dataset per clip at the root, ``uint8 [frames, H, W]`` (grey) or ``[frames, H, W, 3]``,
  chunked one frame per chunk so a random frame costs one chunk read;
- per-dataset attributes (all optional, so a seed-format file with datasets only reads as is):
  ``video_id`` (pseudonymous), ``group_id`` (patient/study pseudonym, for leak-free splits),
  ``split`` (``train`` | ``val``), ``fps`` (of the source), ``frame_skip``,
  ``crop_box`` (x0, y0, x1, y1 in source pixels);
- file attributes: ``sonossl_format`` (version), ``frame_size`` (the side in pixels of the
  square frames ``ingest`` wrote; one size per store), ``key_fingerprint`` (of the pseudonym key)
  and ``id_keying`` (:data:`ID_KEYING`: what the clip ids are pseudonyms of; absent in a store an
  older sonossl keyed on absolute source paths, which reads as it is but is not added to).

A **sharded store** is several such files read as one: a folder of ``part-I-of-N.h5`` files
(``sonossl ingest --shard I/N``, one per machine or job), or a ``.txt`` list of their paths.
Each part also carries ``shard`` (``"I/N"``), ``val_fraction`` and ``split_seed``; the reader
checks that every part of the N is there exactly once and assigns the splits over the groups of
all parts, so the clips, frames, splits and groups are those of one ingest of everything.

:class:`FrameStore` opens the HDF5 files lazily and re-opens it in each process (DataLoader
workers fork or spawn), so one object can be handed to every worker.
:class:`FrameStoreWriter` writes to a temporary file beside the target and renames it into place
only when closed without error: a crash never leaves a half-written store under the real name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from sonossl.config import parse_shard
from sonossl.diskspace import DiskFullError, full_errno, full_message
from sonossl.errors import SonosslError

FORMAT_VERSION = 1
# What ``video_id`` is the pseudonym of: the source's path relative to the folder given to ingest
# (sonossl.data.ingest.id_label). A store without the attribute was keyed on absolute paths.
ID_KEYING = "relative-path"
SPLITS = ("train", "val")
HDF5_SUFFIXES = frozenset({".h5", ".hdf5"})  # a frame store, or a seed-format HDF5 source of clips


def is_hdf5_path(path: str | Path | None) -> bool:
    """Whether ``path`` names an HDF5 file (a frame store) by its suffix."""
    return path is not None and Path(path).suffix.lower() in HDF5_SUFFIXES


def is_store_path(path: str | Path | None) -> bool:
    """Whether ``path`` names a frame store: an HDF5 file, or a sharded store (:func:`is_sharded`)."""
    return path is not None and (is_hdf5_path(path) or is_sharded(Path(path)))


@dataclass(frozen=True)
class VideoRecord:
    """What the store knows of one clip (no PHI: ids are pseudonyms)."""

    key: str
    video_id: str
    group_id: str
    split: str
    n_frames: int
    height: int
    width: int
    channels: int
    fps: float | None = None
    frame_skip: int | None = None
    crop_box: tuple[int, int, int, int] | None = None


def _text(value, default: str) -> str:
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else str(value)


def assign_splits(group_ids: list[str], val_fraction: float, seed: int = 0) -> dict[str, str]:
    """``{group_id: "train" | "val"}``, deterministic in (groups, val_fraction, seed).

    Groups are ranked by a hash of (``seed``, ``group_id``) and the first ``round(val_fraction *
    groups)`` go to ``val`` (at least one when there are two or more groups and ``val_fraction
    > 0``, never all of them)."""
    groups = sorted(set(group_ids), key=lambda g: (hashlib.sha256(f"{seed}:{g}".encode()).hexdigest(), g))
    n_val = round(val_fraction * len(groups))
    if len(groups) > 1 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(groups) - 1)
    elif len(groups) <= 1:
        n_val = 0
    return {g: ("val" if i < n_val else "train") for i, g in enumerate(groups)}


# ------------------------------------------------------------------------- sharded stores
SHARD_LIST_SUFFIX = ".txt"
_PART = re.compile(r"^part-(\d+)-of-(\d+)\.h5$")


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a sharded store: a folder holding ``part-I-of-N.h5`` files, or a ``.txt`` list of them."""
    path = Path(path)
    if path.is_dir():
        return any(_PART.match(p.name) for p in path.iterdir())
    return path.suffix == SHARD_LIST_SUFFIX and path.is_file()


def part_name(index: int, count: int) -> str:
    """The file name of part ``index`` (0-based) of ``count`` in a folder of shards."""
    return f"part-{index}-of-{count}.h5"


def store_parts(path: Path) -> list[Path]:
    """The HDF5 files of the store at ``path``: itself; for a folder, its ``part-I-of-N.h5``
    files; for a shard list (a ``.txt`` file), the part stores it names, one per line, relative
    to its own folder. Every part must be present (checked by :class:`FrameStore`)."""
    path = Path(path)
    if path.is_dir():
        parts = sorted((p for p in path.iterdir() if _PART.match(p.name)), key=lambda p: p.name)
        if not parts:
            raise SonosslError(f"{path}: a folder, but no part-I-of-N.h5 shard stores in it "
                               "(write them with sonossl ingest --shard I/N)")
        return parts
    if path.suffix.lower() == SHARD_LIST_SUFFIX and path.is_file():
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        if not lines:
            raise SonosslError(f"{path}: shard list names no part stores (expected one path per line)")
        return [p if p.is_absolute() else path.parent / p for p in map(Path, lines)]
    if not path.is_file():
        raise SonosslError(f"{path}: frame store not found")
    return [path]


def _check_shards(path: Path, parts: list[Path], attrs: list[dict]) -> None:
    """Parts of a sharded store: each says which part of how many it is, all of one split of
    the sources, none missing or twice, one frame size and split rule."""
    have = []
    for p, a in zip(parts, attrs):
        if "shard" not in a:
            raise SonosslError(f"{p}: not a shard store (no 'shard' attribute; written by sonossl ingest --shard I/N)")
        have.append(parse_shard(_text(a["shard"], "")))
        if _PART.match(p.name) and p.name != part_name(*have[-1]):
            raise SonosslError(f"{p}: holds part {have[-1][0]} of {have[-1][1]}, not what its name says")
    counts = {n for _, n in have}
    if len(counts) != 1:
        raise SonosslError(f"{path}: parts of different splits ({', '.join(sorted(f'of {n}' for n in counts))})")
    [n] = counts
    missing = sorted(set(range(n)) - {i for i, _ in have})
    if missing or len(have) != n:
        what = f"part {missing[0]} of {n} missing ({part_name(missing[0], n)})" if missing else f"{len(have)} parts for {n}"
        raise SonosslError(f"{path}: {what}; ingest it with --shard {missing[0] if missing else 0}/{n} --resume")
    for key in ("frame_size", "val_fraction", "split_seed"):
        values = {float(a[key]) for a in attrs if key in a}
        if len(values) > 1:
            raise SonosslError(f"{path}: parts disagree on {key} ({', '.join(f'{v:g}' for v in sorted(values))})")
    keyings = {_text(a.get("id_keying"), "absolute-path") for a in attrs}
    if len(keyings) > 1:  # the same source would have two ids
        raise SonosslError(f"{path}: parts whose clip ids are keyed differently ({', '.join(sorted(keyings))}; "
                           "absolute-path: an older sonossl); ingest every part again with this one")
    keys = {_text(a["key_fingerprint"], "") for a in attrs if "key_fingerprint" in a}
    if len(keys) > 1:  # their pseudonyms are of different keys: one patient could be two groups
        raise SonosslError(f"{path}: parts made with different pseudonym keys (fingerprints {', '.join(sorted(keys))}); "
                           "ingest every part with the same --salt-file")


class FrameStore:
    """Read-only view of a frame store: one HDF5 file, or a sharded store (a folder of
    ``part-I-of-N.h5`` files, or a ``.txt`` list of them) read as one.

    ``videos``: every clip, in key order; ``split(name)``: the clips of one split (a seed file
    without ``split`` attributes is all ``train``); ``read(key, i)``: one frame ``uint8 [H, W]``
    or ``[H, W, 3]``; ``read_clip(key)``: ``[T, H, W(, 3)]``.

    The splits of a sharded store are assigned over the groups of every part (the parts record
    ``val_fraction`` and ``split_seed``), so they are the splits of one ingest of everything.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.parts = store_parts(self.path)
        self._h5: dict[int, h5py.File] = {}
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        videos, attrs = [], []
        for i, part in enumerate(self.parts):
            try:
                with h5py.File(part, "r") as f:
                    videos += [(self._record(k, f[k]), i) for k in f.keys() if isinstance(f[k], h5py.Dataset)]
                    attrs.append(dict(f.attrs))
            except OSError as exc:
                raise SonosslError(f"{part}: not a readable HDF5 frame store ({exc})") from None
        if len(self.parts) > 1 or self.path.is_dir() or self.path.suffix.lower() == SHARD_LIST_SUFFIX:
            _check_shards(self.path, self.parts, attrs)
            videos = self._union_splits(videos, attrs)
        if not videos:
            raise SonosslError(f"{self.path}: frame store holds no clips")
        self.attrs = {k: v for a in attrs for k, v in a.items() if k != "shard"}
        self._part = {v.key: i for v, i in videos}
        if len(self._part) != len(videos):
            raise SonosslError(f"{self.path}: a clip is in more than one part")
        self.videos = [v for v, _ in videos]
        self._by_key = {v.key: v for v in self.videos}

    @staticmethod
    def _union_splits(videos: list[tuple[VideoRecord, int]], attrs: list[dict]) -> list[tuple[VideoRecord, int]]:
        """The parts' clips in key order, with splits assigned over the groups of every part."""
        videos = sorted(videos, key=lambda vi: vi[0].key)
        rule = next((a for a in attrs if "val_fraction" in a), None)
        if rule is None:
            return videos
        splits = assign_splits([v.group_id for v, _ in videos], float(rule["val_fraction"]), int(rule["split_seed"]))
        return [(replace(v, split=splits[v.group_id]), i) for v, i in videos]
    @staticmethod
    def _record(key: str, ds: h5py.Dataset) -> VideoRecord:
        if ds.dtype != np.uint8 or ds.ndim not in (3, 4) or (ds.ndim == 4 and ds.shape[3] != 3):
            raise SonosslError(f"dataset {key!r}: expected uint8 [frames, H, W] or [frames, H, W, 3], got {ds.dtype} {ds.shape}")
        a = ds.attrs
        box = a.get("crop_box")
        split = _text(a.get("split"), "train")
        if split not in SPLITS:
            raise SonosslError(f"dataset {key!r}: split {split!r}, expected one of {SPLITS}")
        return VideoRecord(
            key=key,
            video_id=_text(a.get("video_id"), key),
            group_id=_text(a.get("group_id"), _text(a.get("video_id"), key)),
            split=split,
            n_frames=int(ds.shape[0]),
            height=int(ds.shape[1]),
            width=int(ds.shape[2]),
            channels=3 if ds.ndim == 4 else 1,
            fps=float(a["fps"]) if "fps" in a else None,
            frame_skip=int(a["frame_skip"]) if "frame_skip" in a else None,
            crop_box=tuple(int(v) for v in box) if box is not None else None,
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"], state["_pid"], state["_datasets"] = {}, None, {}  # each process opens its own handles
        return state

    def _file(self, part: int) -> h5py.File:
        if self._pid != os.getpid():
            self._h5, self._pid, self._datasets = {}, os.getpid(), {}
        f = self._h5.get(part)
        if f is None:
            f = self._h5[part] = h5py.File(self.parts[part], "r")
        return f

    @property
    def h5(self) -> h5py.File:
        """The HDF5 file of a one-file store (a sharded store has one per part: :meth:`read`)."""
        return self._file(0)

    def _dataset(self, key: str) -> h5py.Dataset:
        """The clip's dataset handle, kept per process (a lookup by name costs ~16x a frame read)."""
        ds = self._datasets.get(key) if self._pid == os.getpid() else None
        if ds is None:
            f = self._file(self._part[key])
            ds = self._datasets[key] = f[key]
        return ds

    def split(self, name: str | None) -> list[VideoRecord]:
        if name is None:
            return list(self.videos)
        return [v for v in self.videos if v.split == name]

    def record(self, key: str) -> VideoRecord:
        return self._by_key[key]

    def read(self, key: str, index: int) -> np.ndarray:
        return self._dataset(key)[index]

    def read_clip(self, key: str) -> np.ndarray:
        return self._dataset(key)[()]

    @property
    def n_frames(self) -> int:
        return sum(v.n_frames for v in self.videos)

    @property
    def frame_size(self) -> int:
        """Side in pixels of the store's frames: the ``frame_size`` attribute ``ingest`` writes;
        for a store without it (seed format), the smallest frame side over its clips."""
        if "frame_size" in self.attrs:
            return int(self.attrs["frame_size"])
        return min(min(v.height, v.width) for v in self.videos)

    def close(self) -> None:
        for f in self._h5.values():
            f.close()
        self._h5, self._datasets = {}, {}


TMP_SUFFIX = ".writing"
_STORED_EOF = re.compile(r"truncated file: eof = (\d+), sblock->base_addr = \d+, stored_eof = (\d+)")


def _open_partial(path: Path) -> h5py.File:
    """Open a partial store to continue it, without the clips whose write did not finish;
    OSError when it cannot be. One that a full disk cut short of the size its header records is
    padded back to that size first (the missing tail held only the clip being written)."""
    try:
        f = h5py.File(path, "a")
    except OSError as exc:
        m = _STORED_EOF.search(str(exc))
        if m is None or int(m.group(1)) != path.stat().st_size or int(m.group(2)) <= int(m.group(1)):
            raise
        os.truncate(path, int(m.group(2)))
        f = h5py.File(path, "a")
    try:
        for name in [k for k in f.keys() if k.endswith(TMP_SUFFIX)]:
            del f[name]
    except (KeyError, RuntimeError) as exc:  # the failed write left its links inconsistent
        f.close()
        raise OSError(f"{path}: cannot drop an unfinished clip ({exc})") from None
    return f


def _check_own_store(path: Path) -> None:
    """Refuse to replace ``path`` unless it is a frame store sonossl wrote."""
    try:
        with h5py.File(path, "r") as f:
            ours = "sonossl_format" in f.attrs
    except OSError:
        ours = False
    if not ours:
        raise SonosslError(f"{path}: --overwrite refused: not a frame store written by sonossl ingest (it may be "
                           "your data); remove it yourself or choose another --out")


def _check_key(path: Path, fingerprint: str | None, id_keying: str | None = None) -> None:
    """Refuse to continue the store ``path`` with a pseudonym key other than the one it was made
    with, or when its clip ids are keyed otherwise than ``id_keying`` (an older sonossl's)."""
    if fingerprint is None or not path.exists():
        return
    try:
        with h5py.File(path, "r") as f:
            have = f.attrs.get("key_fingerprint")
            keying = f.attrs.get("id_keying")
            clips = any(isinstance(f[k], h5py.Dataset) for k in f.keys())
    except OSError:
        return  # unreadable: the writer sets it aside and starts again
    have = have.decode() if isinstance(have, bytes) else have
    if have is None and clips:
        raise SonosslError(f"{path}: made with the public default salt of an older sonossl, whose pseudonyms anyone "
                           "can recompute; ingest into a new store instead of adding to it")
    if id_keying is not None and clips and _text(keying, "absolute-path") != id_keying:
        raise SonosslError(f"{path}: its clip ids are pseudonyms of absolute source paths (an older sonossl), which "
                           "the same clips would not get again; ingest into a new store instead of adding to it")
    if have is not None and have != fingerprint:
        raise SonosslError(f"{path}: made with another pseudonym key (fingerprint {have}, this key's is "
                           f"{fingerprint}); pass the key file it was made with (--salt-file)")


class FrameStoreWriter:
    """Writes a store atomically: ``with FrameStoreWriter(path) as w: w.add_video(...)``.

    Data go to ``<path>.partial`` and are renamed to ``path`` on a clean exit; on an exception
    the partial file is kept (``resume=True`` continues it) and ``path`` is never touched.
    A clip is written under a temporary name and renamed when complete (one metadata update),
    so a clip cut off by a kill is dropped on resume rather than taken for a finished one; a
    partial file that a kill left unreadable is set aside (``.partial.corrupt``) and the store
    is started again.

    A write that runs out of space (``ENOSPC``, ``EDQUOT``, ``EFBIG``) raises
    :class:`~sonossl.diskspace.DiskFullError` and closes the file without another byte written
    (HDF5 cannot close a file whose metadata it cannot flush: h5py would crash the process);
    the partial file then ends short of the size its header records, and ``resume`` pads it back
    to that size, which gives back every clip completed before the failure.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, resume: bool = False,
                 key_fingerprint: str | None = None, id_keying: str | None = None):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        if self.path.is_dir():
            raise SonosslError(f"{self.path}: is a folder, not a frame store file")
        if self.path.exists() and not (overwrite or resume):
            raise SonosslError(f"{self.path}: exists; pass --resume to add to it or --overwrite to replace it")
        if self.path.exists() and overwrite and not resume:
            _check_own_store(self.path)
        if resume:
            _check_key(self.partial if self.partial.exists() else self.path, key_fingerprint, id_keying)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists() and not self.partial.exists():
            # continue a copy of the finished store: until the new one is complete, the finished
            # one stays under its name, whatever happens (a full disk, a kill)
            from sonossl.diskspace import room_for

            with room_for(self.partial, need=self.path.stat().st_size, tmp=self.partial):
                shutil.copyfile(self.path, self.partial)
        elif not resume and self.partial.exists():
            self.partial.unlink()
        try:
            self._f = _open_partial(self.partial)
        except OSError:  # cut off mid-write by a kill or a full disk: HDF5 metadata may be unreadable
            os.replace(self.partial, self.partial.with_name(self.partial.name + ".corrupt"))
            self._f = h5py.File(self.partial, "a")
        self._f.attrs["sonossl_format"] = FORMAT_VERSION
        if key_fingerprint is not None:
            self._f.attrs["key_fingerprint"] = key_fingerprint
        if id_keying is not None:
            self._f.attrs["id_keying"] = id_keying

    def __contains__(self, key: str) -> bool:
        return key in self._f

    def keys(self) -> list[str]:
        return list(self._f.keys())

    def add_video(
        self,
        key: str,
        frames: np.ndarray,
        *,
        video_id: str,
        group_id: str,
        split: str = "train",
        fps: float | None = None,
        frame_skip: int | None = None,
        crop_box: Sequence[int] | None = None,
    ) -> None:
        """frames: ``uint8 [T, H, W]`` or ``[T, H, W, 3]``, T >= 1."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[0] < 1:
            raise ValueError(f"frames must be uint8 [T>=1, H, W(, 3)], got {frames.dtype} {frames.shape}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self._check_size(frames.shape[1:3])
        tmp = key + TMP_SUFFIX
        try:
            for name in (key, tmp):
                if name in self._f:
                    del self._f[name]
            ds = self._f.create_dataset(tmp, data=frames, chunks=(1, *frames.shape[1:]))
            ds.attrs.update({"video_id": video_id, "group_id": group_id, "split": split})
            if fps is not None:
                ds.attrs["fps"] = float(fps)
            if frame_skip is not None:
                ds.attrs["frame_skip"] = int(frame_skip)
            if crop_box is not None:
                ds.attrs["crop_box"] = np.asarray(crop_box, dtype=np.int64)
            self._f.flush()
            self._f.move(tmp, key)  # the clip exists under its name only once it is complete
            self._f.flush()
        except Exception as exc:
            self._out_of_space(exc, frames.nbytes)
            raise

    def _check_size(self, hw: tuple[int, int]) -> None:
        """Record ``frame_size`` with the first clip; refuse a clip of another size (a store
        resumed with another ``--size``), so the store's size is one fact."""
        side = int(hw[0]) if hw[0] == hw[1] else None
        have = self._f.attrs.get("frame_size")
        if have is None and not any(isinstance(self._f[k], h5py.Dataset) for k in self._f.keys()):
            if side is not None:
                self._f.attrs["frame_size"] = side
        elif have is not None and side != int(have):
            raise SonosslError(f"{self.path}: holds {int(have)} px frames, this clip's are {hw[0]}x{hw[1]}; "
                               "ingest at the store's --size, or into a new store (or --overwrite)")

    def mark_shard(self, shard: str, val_fraction: float, split_seed: int) -> None:
        """Record that this store is part ``shard`` (``"I/N"``) of a sharded store, and the split
        rule, so a reader of all the parts assigns the splits of one ingest of everything."""
        self._f.attrs.update({"shard": shard, "val_fraction": float(val_fraction), "split_seed": int(split_seed)})

    def records(self) -> list[VideoRecord]:
        """What the store being written holds so far (clips added by an earlier run included)."""
        return [FrameStore._record(k, self._f[k]) for k in self._f.keys() if isinstance(self._f[k], h5py.Dataset)]

    def set_split(self, key: str, split: str) -> None:
        """Re-assign a clip's split (ingest decides splits once every group is known)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        try:
            self._f[key].attrs["split"] = split
        except Exception as exc:
            self._out_of_space(exc, 0)
            raise

    def close(self, ok: bool = True) -> None:
        if self._f is None:
            return
        try:
            self._f.close()
        except Exception as exc:
            self._out_of_space(exc, 0)
            raise
        self._f = None
        if ok:
            os.replace(self.partial, self.path)

    def _out_of_space(self, exc: BaseException, need: int) -> None:
        """When ``exc`` is a write that ran out of room: close the file without writing more
        (its descriptor now points at /dev/null, so HDF5's closing flush succeeds and the file on
        disk stays as the failure left it) and raise :class:`DiskFullError`."""
        code = full_errno(exc)
        if code is None or self._f is None:
            return
        f, self._f = self._f, None
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, f.id.get_vfd_handle())
        finally:
            os.close(null)
        try:
            f.close()
        except Exception:  # nothing more can reach the disk; the partial file is resumable as it is
            pass
        raise DiskFullError(full_message(self.partial, code, need, None)) from None

    def __enter__(self) -> "FrameStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)
