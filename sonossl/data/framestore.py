"""The frame store: decoded, de-identified frames, prepared once and read cheaply many times.

Format (HDF5, compatible with the seed code's files):

- one dataset per clip at the root, ``uint8 [frames, H, W]`` (grey) or ``[frames, H, W, 3]``,
  chunked one frame per chunk so a random frame costs one chunk read;
- per-dataset attributes (all optional, so a seed-format file with datasets only reads as is):
  ``video_id`` (pseudonymous), ``group_id`` (patient/study pseudonym, for leak-free splits),
  ``split`` (``train`` | ``val``), ``fps`` (of the source), ``frame_skip``,
  ``crop_box`` (x0, y0, x1, y1 in source pixels);
- file attributes: ``sonossl_format`` (version) and ``frame_size`` (the side in pixels of the
  square frames ``ingest`` wrote; one size per store).

:class:`FrameStore` opens the HDF5 file lazily and re-opens it in each process (DataLoader
workers fork or spawn), so one object can be handed to every worker.
:class:`FrameStoreWriter` writes to a temporary file beside the target and renames it into place
only when closed without error: a crash never leaves a half-written store under the real name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from sonossl.diskspace import DiskFullError, full_errno, full_message
from sonossl.errors import SonosslError

FORMAT_VERSION = 1
SPLITS = ("train", "val")
HDF5_SUFFIXES = frozenset({".h5", ".hdf5"})  # a frame store, or a seed-format HDF5 source of clips


def is_hdf5_path(path: str | Path | None) -> bool:
    """Whether ``path`` names an HDF5 file (a frame store) by its suffix."""
    return path is not None and Path(path).suffix.lower() in HDF5_SUFFIXES


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


class FrameStore:
    """Read-only view of a frame store.

    ``videos``: every clip, in file order; ``split(name)``: the clips of one split (a seed file
    without ``split`` attributes is all ``train``); ``read(key, i)``: one frame ``uint8 [H, W]``
    or ``[H, W, 3]``; ``read_clip(key)``: ``[T, H, W(, 3)]``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SonosslError(f"{self.path}: frame store not found")
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        try:
            with h5py.File(self.path, "r") as f:
                self.videos = [self._record(k, f[k]) for k in f.keys() if isinstance(f[k], h5py.Dataset)]
                self.attrs = dict(f.attrs)
        except OSError as exc:
            raise SonosslError(f"{self.path}: not a readable HDF5 frame store ({exc})") from None
        if not self.videos:
            raise SonosslError(f"{self.path}: frame store holds no clips")
        self._by_key = {v.key: v for v in self.videos}

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
        state["_h5"], state["_pid"], state["_datasets"] = None, None, {}  # each process opens its own handle
        return state

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._datasets = {}
        return self._h5

    def _dataset(self, key: str) -> h5py.Dataset:
        """The clip's dataset handle, kept per process (a lookup by name costs ~16x a frame read)."""
        f = self.h5
        ds = self._datasets.get(key)
        if ds is None:
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
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            self._datasets = {}


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

    def __init__(self, path: str | Path, *, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        if self.path.exists() and not (overwrite or resume):
            raise SonosslError(f"{self.path}: exists; pass --resume to add to it or --overwrite to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists() and not self.partial.exists():
            os.replace(self.path, self.partial)  # continue the finished store
        elif not resume and self.partial.exists():
            self.partial.unlink()
        try:
            self._f = _open_partial(self.partial)
        except OSError:  # cut off mid-write by a kill or a full disk: HDF5 metadata may be unreadable
            os.replace(self.partial, self.partial.with_name(self.partial.name + ".corrupt"))
            self._f = h5py.File(self.partial, "a")
        self._f.attrs["sonossl_format"] = FORMAT_VERSION

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
