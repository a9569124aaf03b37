"""Source readers: one scan file in, grey uint8 frames out.

``read_source(path)`` recognises what a file is by its content (a DICOM file by the 128-byte
preamble + ``DICM``, or by ``pydicom.dcmread`` finding pixel data; a video by PyAV) and hands
it to the opener registered for that kind in :data:`OPENERS`, which returns a :class:`Stream`;
``.read()`` decodes it into a :class:`Clip`:

- ``frames``: ``uint8 [T, H, W]`` grey. Colour becomes luminance (ITU-R BT.601,
  0.299 R + 0.587 G + 0.114 B); YBR is converted to RGB first (pydicom does so by default),
  PALETTE COLOR goes through its lookup table, MONOCHROME1 is inverted, more than 8 bits are
  brought to 8 by the VOI window when the file has one, else by the clip's min/max;
- ``frames_in``: frames in the source before ``frame_skip``/``max_frames``;
- ``group_key``: the raw patient or study identifier (else the parent folder). It is PHI: the
  caller hashes it at once and never stores or logs it;
- ``regions``: the DICOM ultrasound regions (``SequenceOfUltrasoundRegions``) as pixel boxes
  ``(x0, y0, x1, y1)``, exclusive ends, or ``None``.

Frames are decoded one at a time and ``frame_skip`` is applied while decoding.
``open_source(path)`` returns a :class:`Stream` (the header now, frames on demand, a sample spread
over the clip), which ``ingest`` uses to stream a clip of any length in two passes;
``read_source(path)`` decodes every kept frame into a :class:`Clip`.

Two further kinds:

- ``images``: a folder that directly holds PNG/JPEG/BMP/TIFF files (and no video or DICOM) is one
  clip, its images the frames in file-name order (all of one size; 16-bit images brought to 8 bits
  by the clip's min/max). ``group_key`` is the folder's parent folder, as for a video file.
- ``hdf5``: a seed-format file (one root dataset per clip, ``uint8 [T, H, W]`` or ``[T, H, W, 3]``,
  no attributes needed) holds many clips: :func:`hdf5_clips` lists them and
  ``read_source(path, dataset=name)`` reads one. With no patient information in the file, each
  dataset is its own group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

from sonossl.config import MAX_FRAME_PIXELS, MAX_SOURCE_PIXELS
from sonossl.data.codestream import check_dicom_frames, check_image_file
from sonossl.data.framestore import HDF5_SUFFIXES
from sonossl.errors import SonosslError

Box = tuple[int, int, int, int]
Kind = Literal["dicom", "video", "images", "hdf5"]

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".wmv", ".mpg", ".mpeg", ".webm"}
SKIP_SUFFIXES = {".csv", ".json", ".txt", ".md", ".yaml", ".yml", ".log"}
SKIP_ENDINGS = (".h5.partial", ".partial")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}



def check_pixels(path: Path, height: int, width: int, frames: int = 1, *, max_frame_pixels: int = MAX_FRAME_PIXELS,
                 max_source_pixels: int = MAX_SOURCE_PIXELS) -> None:
    """Refuse a source that declares frames of more than ``max_frame_pixels`` pixels, or more than
    ``max_source_pixels`` in all, before anything is decoded."""
    if height < 1 or width < 1:
        raise SonosslError(f"{path}: declares a {width}x{height} image; expected a positive size")
    if height * width > max_frame_pixels:
        raise SonosslError(f"{path}: declares {width}x{height} frames ({height * width:,} pixels), over the limit of "
                           f"{max_frame_pixels:,} pixels a frame (--max-frame-pixels); refused before decoding")
    if frames * height * width > max_source_pixels:
        raise SonosslError(f"{path}: declares {frames} frames of {width}x{height} ({frames * height * width:,} pixels), "
                           f"over the limit of {max_source_pixels:,} pixels a source (--max-source-pixels); refused "
                           "before decoding")


def open_image(path: Path, max_pixels: int = MAX_FRAME_PIXELS):
    """``PIL.Image`` of ``path``, opened lazily and refused (one-line :class:`SonosslError`) when
    it is not an image or declares more than ``max_pixels`` pixels (as Pillow reads it, and in its
    own IHDR / SOF / SIZ: :func:`~sonossl.data.codestream.check_image_file`), before its pixels
    are decoded.
    Use as a context manager, as ``Image.open``."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise SonosslError(f"{path}: declares more than twice {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                           "bomb?); refused before decoding") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SonosslError(f"{path}: not a readable image ({' '.join(str(exc).split())[:160]})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise SonosslError(f"{path}: a {w}x{h} image ({w * h:,} pixels), over the limit of {max_pixels:,} pixels; "
                           "refused before decoding")
    try:
        check_image_file(path, (w, h), max_pixels)  # what the file's own IHDR / SOF / SIZ declares
    except SonosslError:
        im.close()
        raise
    return im


@dataclass
class Clip:
    """One decoded source. frames: uint8 [T, H, W] grey, T >= 1."""

    frames: np.ndarray
    fps: float | None
    group_key: str
    regions: list[Box] | None
    kind: Kind
    frames_in: int


KIND_WORDS = {"dicom": "DICOM", "video": "video", "images": "image folder", "hdf5": "HDF5 dataset"}


@dataclass
class Stream:
    """One source opened for streaming: the header at once, the frames one at a time.

    ``frames_in``/``n_kept``: frames in the source and frames kept (after ``frame_skip`` and
    ``max_frames``); ``None`` for a video whose container does not say, until a full pass.
    Frames come out grey, ``uint8`` or wider (16-bit DICOM, images); :meth:`to_uint8` brings
    them to 8 bits with the VOI ``window`` when the file has one, else with a ``(lo, hi)``
    range, and inverts MONOCHROME1.
    """

    kind: Kind
    frames_in: int | None
    n_kept: int | None
    fps: float | None
    group_key: str
    regions: list[Box] | None
    _frames: Callable[[list[int] | None], Iterator[np.ndarray]]
    window: tuple[float, float] | None = None
    invert: bool = False
    path: Path | None = None
    shape: tuple[int, int] | None = None  # (height, width) of a frame, as the header declares it

    def reduced_sample(self, k: int, reduce: Callable[[np.ndarray], np.ndarray]) -> tuple[list[np.ndarray], tuple[float, float] | None]:
        """:meth:`sample` with each frame passed through ``reduce`` (e.g. a downscale) as it is
        decoded, so only reduced frames are held; and the grey range of the full frames (see
        :meth:`range_of`), accumulated on the way."""
        seen = {"lo": np.inf, "hi": -np.inf, "wide": False}

        def take(frame: np.ndarray) -> np.ndarray:
            if frame.dtype != np.uint8:
                seen.update(wide=True, lo=min(seen["lo"], float(frame.min())), hi=max(seen["hi"], float(frame.max())))
            return reduce(frame)

        frames = self.sample(k, take)
        if not seen["wide"]:
            return frames, None
        return frames, window_bounds(self.window) if self.window is not None else (seen["lo"], seen["hi"])

    def frames(self) -> Iterator[np.ndarray]:
        """Every kept frame, in order, one at a time."""
        return self._frames(None)

    def sample(self, k: int, reduce: Callable[[np.ndarray], np.ndarray] | None = None) -> list[np.ndarray]:
        """Up to ``k`` kept frames spread evenly over the clip (all of them when there are <= k),
        holding at most ``2k`` frames at any time; each passed through ``reduce`` when given."""
        reduce = reduce or (lambda f: f)
        if self.n_kept is not None:
            positions = sorted(set(np.linspace(0, self.n_kept - 1, min(k, self.n_kept)).astype(int).tolist()))
            out = [reduce(f) for f in self._frames(positions)]
        else:  # length unknown: keep every s-th frame, thinning by half whenever 2k are held
            out, step = [], 1
            for i, frame in enumerate(self.frames()):
                if i % step == 0:
                    out.append(reduce(frame))
                    if len(out) >= 2 * k:
                        out, step = out[::2], step * 2
            if len(out) > k:
                out = [out[j] for j in np.linspace(0, len(out) - 1, k).astype(int)]
        if not out:
            raise SonosslError(f"{self.path}: {KIND_WORDS[self.kind]} with no frames")
        return out

    def range_of(self, frames: list[np.ndarray]) -> tuple[float, float] | None:
        """The grey range that :meth:`to_uint8` maps to 0-255: the VOI window, else the min/max of
        ``frames``; None for 8-bit sources."""
        if frames[0].dtype == np.uint8:
            return None
        if self.window is not None:
            return window_bounds(self.window)
        return float(min(f.min() for f in frames)), float(max(f.max() for f in frames))

    def to_uint8(self, frame: np.ndarray, grey_range: tuple[float, float] | None) -> np.ndarray:
        if frame.dtype != np.uint8:
            lo, hi = grey_range if grey_range is not None else (float(frame.min()), float(frame.max()))
            frame = np.clip(np.rint((frame.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6))), 0, 255).astype(np.uint8)
        return 255 - frame if self.invert else frame

    def read(self) -> Clip:
        """Every kept frame decoded into a :class:`Clip` (8 bits over the whole clip's range)."""
        raw = list(self.frames())
        if not raw:
            raise SonosslError(f"{self.path}: {KIND_WORDS[self.kind]} with no frames")
        grey_range = self.range_of(raw)
        stack = np.stack([self.to_uint8(f, grey_range) for f in raw])
        return Clip(stack, self.fps, self.group_key, self.regions, self.kind, int(self.frames_in or len(raw)))


def window_bounds(window: tuple[float, float]) -> tuple[float, float]:
    """A DICOM VOI window (centre, width) as the grey range (lo, hi) it maps to 0-255."""
    centre, width = window
    return centre - width / 2, centre + width / 2


def luminance(rgb: np.ndarray) -> np.ndarray:
    """rgb: uint8 [..., 3] -> uint8 [...] (ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B); a grey
    ``[...]`` array passes through. Computed a block of rows at a time, so a large frame costs
    its output plus one block of float64, not three float64 copies of the frame."""
    if rgb.ndim < 3 or rgb.shape[-1] != 3:
        return rgb
    out = np.empty(rgb.shape[:-1], np.uint8)
    flat, dest = rgb.reshape(-1, 3), out.reshape(-1)
    block = 1 << 20
    for i in range(0, len(flat), block):
        b = flat[i : i + block]
        y = b[:, 0] * 0.299 + b[:, 1] * 0.587 + b[:, 2] * 0.114
        dest[i : i + block] = np.clip(np.rint(y), 0, 255)
    return out


# ---------------------------------------------------------------- recognising a source


def _is_dicom(path: Path) -> bool:
    """DICM preamble, or (no preamble) a dataset pydicom can parse that holds pixel data."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if path.suffix.lower() in VIDEO_SUFFIXES or len(head) < 8:
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=False, specific_tags=["PixelData", "Rows"])
        return "PixelData" in ds and "Rows" in ds
    except Exception:  # not parseable as DICOM at all: a sniff answers "no", read_source reports it
        return False


def sniff_kind(path: Path) -> Kind | None:
    """What kind of source ``path`` is, or None when no reader handles it."""
    if path.is_dir():
        return "images" if is_image_folder(path) else None
    if path.suffix.lower() in HDF5_SUFFIXES:
        return "hdf5"
    if _is_dicom(path):
        return "dicom"
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    return None


def _listed(name: str) -> bool:
    """Whether a file found inside a folder is a candidate source (not hidden, a note or a leftover)."""
    low = name.lower()
    return not (name.startswith(".") or Path(low).suffix in SKIP_SUFFIXES or low.endswith(SKIP_ENDINGS))


def image_files(folder: Path) -> list[Path]:
    """The images directly inside ``folder`` (not hidden), sorted by name."""
    return sorted(
        p for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )  # fmt: skip


def is_image_folder(folder: Path) -> bool:
    """A folder is one image clip when it directly holds images and no video or DICOM file."""
    folder = Path(folder)
    if not folder.is_dir() or not image_files(folder):
        return False
    for p in folder.iterdir():
        if p.is_file() and _listed(p.name) and p.suffix.lower() not in IMAGE_SUFFIXES:
            if p.suffix.lower() in VIDEO_SUFFIXES or p.suffix.lower() == ".dcm" or _is_dicom(p):
                return False
    return True


def find_sources(paths: list[Path], *, image_folders: bool = False) -> list[Path]:
    """Sources: files as given, folders walked recursively, in sorted order.

    image_folders: a folder that is an image clip (:func:`is_image_folder`) is one source in
    place of its images (its subfolders are still walked); ingestion asks for this, ``predict``
    wants single images. A folder given directly that is an image clip counts too.
    Skipped inside folders: hidden files and folders,
    ``*.csv``/``*.json``/``*.txt`` (and other text notes), and ``*.partial`` leftovers. A path
    that does not exist is an error.
    """
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise SonosslError(f"{p}: no such file or folder")
        if p.is_file():
            found.setdefault(p, None)
            continue
        seen_dirs: set[tuple[int, int]] = set()
        for root, dirs, files in os.walk(p, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop, or a link back to a folder seen: once is enough
                dirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            clip_folder = image_folders and is_image_folder(Path(root))
            if clip_folder:
                found.setdefault(Path(root), None)
            for name in sorted(files):
                if not _listed(name) or (clip_folder and Path(name).suffix.lower() in IMAGE_SUFFIXES):
                    continue
                found.setdefault(Path(root) / name, None)
    seen: set[Path] = set()
    out = []
    for p in found:
        try:
            r = p.resolve(strict=True)
        except (OSError, RuntimeError):  # a dangling link or a link loop: not a source; skipped
            continue
        if r not in seen:
            seen.add(r)
            out.append(p)
    return out


# ---------------------------------------------------------------- DICOM


def _to_uint8(frame: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    f = frame.astype(np.float32)
    if window is not None:
        lo, hi = window_bounds(window)
    else:
        lo, hi = float(f.min()), float(f.max())
    return np.clip(np.rint((f - lo) * (255.0 / max(hi - lo, 1e-6))), 0, 255).astype(np.uint8)


def _first(value) -> float:
    """A DICOM number that may be multi-valued (e.g. WindowCenter)."""
    from pydicom.multival import MultiValue

    return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)


def _dicom_fps(ds) -> float | None:
    for tag in ("RecommendedDisplayFrameRate", "CineRate"):
        v = ds.get(tag)
        if v not in (None, ""):
            try:
                if float(v) > 0:
                    return float(v)
            except (TypeError, ValueError):
                pass
    ft = ds.get("FrameTime")
    try:
        if ft not in (None, "") and float(ft) > 0:
            return 1000.0 / float(ft)
    except (TypeError, ValueError):
        pass
    return None


def _dicom_regions(ds) -> list[Box] | None:
    seq = ds.get("SequenceOfUltrasoundRegions")
    if not seq:
        return None
    boxes = []
    corners = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")
    for r in seq:
        try:
            fmt = int(r.get("RegionSpatialFormat", 1))
            box = tuple(int(r[t].value) for t in corners)
        except (KeyError, TypeError, ValueError):
            continue
        if fmt == 1:  # 2D tissue or flow; M-mode, spectral and waveform regions are not the scan
            boxes.append((box[0], box[1], box[2] + 1, box[3] + 1))  # DICOM max is inclusive
    return boxes or None


def _group_key(ds, path: Path) -> str:
    for tag in ("PatientID", "StudyInstanceUID"):
        v = ds.get(tag)
        if v not in (None, "") and str(v).strip():
            return f"{tag}:{str(v).strip()}"
    return f"folder:{path.resolve().parent}"


def _frame_indices(n: int, frame_skip: int, max_frames: int | None) -> list[int]:
    idx = list(range(0, n, frame_skip))
    return idx[:max_frames] if max_frames else idx


def _dicom_int(ds, tag: str, path: Path, default: int | None = None) -> int:
    """An integer attribute of the header, or a one-line error naming it."""
    raw = ds.get(tag)
    if raw in (None, ""):
        if default is None:
            raise SonosslError(f"{path}: DICOM without {tag}")
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        raise SonosslError(f"{path}: DICOM {tag} is {str(raw)[:20]!r}; expected an integer") from None


def _check_dicom_header(ds, path: Path, modalities: tuple[str, ...] | None, max_frame_pixels: int,
                        max_source_pixels: int) -> tuple[int, int, int]:
    """A DICOM header's image, modality and pixel budget checked: (frames, rows, columns)."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if "Rows" not in ds or "Columns" not in ds:
        what = f"{modality} object" if modality else "object"
        raise SonosslError(f"{path}: DICOM {what} without an image (no Rows/Columns), e.g. a report, plan or DICOMDIR")
    if modalities is not None and modality not in modalities:
        raise SonosslError(f"{path}: DICOM modality {modality or 'missing'}, not {'/'.join(modalities)}; pass "
                           f"--modality {modality or 'OT'} to ingest it anyway")
    n = _dicom_int(ds, "NumberOfFrames", path, default=1)
    if n < 1:
        raise SonosslError(f"{path}: DICOM with no frames")
    rows, cols = _dicom_int(ds, "Rows", path), _dicom_int(ds, "Columns", path)
    check_pixels(path, rows, cols, n, max_frame_pixels=max_frame_pixels, max_source_pixels=max_source_pixels)
    return n, rows, cols


def open_dicom(path: Path, *, frame_skip: int = 1, max_frames: int | None = None,
               modalities: tuple[str, ...] | None = None, max_frame_pixels: int = MAX_FRAME_PIXELS,
               max_source_pixels: int = MAX_SOURCE_PIXELS) -> Stream:
    """A single- or multi-frame DICOM, native or compressed: the header now, frames one at a time.

    modalities: DICOM ``Modality`` values accepted (None: any); a file of another modality, or
    an object without an image (a structured report, an RT plan, a DICOMDIR), is refused. The
    header's size is checked against the pixel budget, then what every encapsulated frame's
    codestream declares against the header (:func:`~sonossl.data.codestream.check_dicom_frames`),
    before a frame is decoded."""
    import pydicom

    import warnings

    with open(path, "rb") as fh:
        try:
            with warnings.catch_warnings():  # pydicom warns of invalid values; the checks below name what matters
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fh, force=True, stop_before_pixels=True)
        except Exception as exc:  # a header pydicom cannot parse
            raise SonosslError(f"{path}: not a readable DICOM header ({type(exc).__name__})") from None
        n, rows, cols = _check_dicom_header(ds, path, modalities, max_frame_pixels, max_source_pixels)
        check_dicom_frames(fh, ds, path)  # what each encapsulated frame's codestream declares, before decoding
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    window = None
    if int(ds.get("BitsStored", 8)) > 8 and "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    indices = _frame_indices(n, frame_skip, max_frames)

    def frames(positions: list[int] | None) -> Iterator[np.ndarray]:
        from pydicom.pixels import iter_pixels

        wanted = indices if positions is None else [indices[i] for i in positions]
        try:
            for arr in iter_pixels(path, indices=wanted):
                if arr.shape[:2] != (rows, cols):  # the codestream's size is not the header's
                    raise SonosslError(f"{path}: a decoded frame is {arr.shape[1]}x{arr.shape[0]}, the header "
                                       f"declares {cols}x{rows}; refused")
                yield _grey(arr, ds, photometric, path)
        except SonosslError:
            raise
        except Exception as exc:
            detail = " ".join(str(exc).split())[:200]
            raise SonosslError(
                f"{path}: pixel data could not be decoded, truncated or corrupt? ({type(exc).__name__}: {detail})"
            ) from None

    return Stream("dicom", n, len(indices), _dicom_fps(ds), _group_key(ds, path), _dicom_regions(ds), frames,
                  window=window, invert=photometric == "MONOCHROME1", path=path, shape=(rows, cols))




def _grey(arr: np.ndarray, ds, photometric: str, path: Path) -> np.ndarray:
    """One decoded DICOM frame -> [H, W] grey (uint8, or wider for monochrome > 8 bit)."""
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        arr = (arr // 257).astype(np.uint8) if arr.max(initial=0) > 255 else arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = luminance(arr if arr.dtype == np.uint8 else _to_uint8(arr, None))
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise SonosslError(f"{path}: unexpected pixel array shape {arr.shape}")
    return arr


# ---------------------------------------------------------------- video


def open_video(path: Path, *, frame_skip: int = 1, max_frames: int | None = None,
               max_frame_pixels: int = MAX_FRAME_PIXELS, max_source_pixels: int = MAX_SOURCE_PIXELS, **_) -> Stream:
    """MP4/AVI/MOV/MKV through PyAV; every ``frame_skip``-th frame is converted, the rest only decoded."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SonosslError(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            n = int(stream.frames or 0) or None  # the container's count, when it has one
            shape = (int(stream.codec_context.height or 0), int(stream.codec_context.width or 0))
    except av.error.FFmpegError as exc:
        raise SonosslError(f"{path}: not a readable video ({exc})") from None
    check_pixels(path, *shape, n or 1, max_frame_pixels=max_frame_pixels, max_source_pixels=max_source_pixels)
    kept = None if n is None else len(_frame_indices(n, frame_skip, max_frames))
    st = Stream("video", n, kept, fps, f"folder:{path.resolve().parent}", None, lambda positions: iter(()), path=path,
                shape=shape)

    def frames(positions: list[int] | None) -> Iterator[np.ndarray]:
        wanted = None if positions is None else set(positions)
        decoded = kept_so_far = 0
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if decoded % frame_skip == 0:
                        if max_frames and kept_so_far >= max_frames:
                            decoded = max(decoded, int(stream.frames or 0))
                            break
                        if wanted is None or kept_so_far in wanted:
                            if (frame.height, frame.width) != shape:
                                raise SonosslError(f"{path}: a frame is {frame.width}x{frame.height}, the stream "
                                                   f"declares {shape[1]}x{shape[0]}; refused")
                            yield frame.to_ndarray(format="gray")
                        kept_so_far += 1
                    decoded += 1
                    if n is None and decoded * shape[0] * shape[1] > max_source_pixels:
                        raise SonosslError(f"{path}: more than {decoded - 1} frames of {shape[1]}x{shape[0]}, over "
                                           f"the limit of {max_source_pixels:,} pixels a source (--max-source-pixels)")
        except av.error.FFmpegError as exc:
            raise SonosslError(f"{path}: not a readable video ({exc})") from None
        if positions is None:  # a full pass: now the counts are known
            st.frames_in, st.n_kept = max(decoded, st.frames_in or 0), kept_so_far

    st._frames = frames
    return st




# ---------------------------------------------------------------- image folder


def _image_grey(img) -> np.ndarray:
    """One PIL image -> [H, W] grey (uint8, or wider for 16/32-bit grey)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(img.convert("I") if img.mode.startswith("I;16") else img)
    if img.mode == "L":
        return np.asarray(img)
    if img.mode == "1":
        return np.asarray(img.convert("L"))
    return luminance(np.asarray(img.convert("RGB")))  # RGB, RGBA (alpha dropped), P, CMYK, YCbCr, LA


def open_images(path: Path, *, frame_skip: int = 1, max_frames: int | None = None,
                max_frame_pixels: int = MAX_FRAME_PIXELS, max_source_pixels: int = MAX_SOURCE_PIXELS, **_) -> Stream:
    """A folder of PNG/JPEG/BMP/TIFF frames, sorted by name; only the kept images are decoded.
    The first image's declared size stands for all (each is checked against it as it is read)."""
    files = image_files(path)
    if not files:
        raise SonosslError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    with open_image(files[0], max_frame_pixels) as first:
        w, h = first.size
    indices = _frame_indices(len(files), frame_skip, max_frames)
    check_pixels(path, h, w, len(indices), max_frame_pixels=max_frame_pixels, max_source_pixels=max_source_pixels)
    first_shape: list[tuple[int, ...]] = []

    def frames(positions: list[int] | None) -> Iterator[np.ndarray]:
        for i in (indices if positions is None else [indices[k] for k in positions]):
            with open_image(files[i], max_frame_pixels) as img:
                if img.size != (w, h):
                    raise SonosslError(f"{path}: image {files[i].name} is {img.size[0]}x{img.size[1]}, "
                                       f"expected {w}x{h} like the first frame")
                try:
                    frame = _image_grey(img)
                except (OSError, ValueError) as exc:
                    raise SonosslError(f"{path}: image {files[i].name} could not be read ({type(exc).__name__})") from None
            if not first_shape:
                first_shape.append(frame.shape)
            elif frame.shape != first_shape[0]:
                raise SonosslError(
                    f"{path}: image {files[i].name} is {frame.shape[1]}x{frame.shape[0]}, "
                    f"expected {first_shape[0][1]}x{first_shape[0][0]} like the first frame"
                )
            yield frame

    return Stream("images", len(files), len(indices), None, f"folder:{path.resolve().parent}", None, frames, path=path,
                  shape=(h, w))




# ---------------------------------------------------------------- seed-format HDF5


def hdf5_clips(path: Path) -> list[str]:
    """Names of the clip datasets at the root of a seed-format HDF5 file, in file order."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
    except OSError as exc:
        raise SonosslError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())[:120]})") from None
    if not names:
        raise SonosslError(f"{path}: HDF5 file holds no datasets at its root")
    return names


def open_hdf5(path: Path, *, dataset: str | None = None, frame_skip: int = 1, max_frames: int | None = None,
              max_frame_pixels: int = MAX_FRAME_PIXELS, max_source_pixels: int = MAX_SOURCE_PIXELS, **_) -> Stream:
    """One dataset ``uint8 [T, H, W]`` or ``[T, H, W, 3]`` of a seed-format HDF5 file.

    dataset: its name; may be left out only when the file holds a single dataset.
    """
    import h5py

    if dataset is None:
        names = hdf5_clips(path)
        if len(names) != 1:
            raise SonosslError(f"{path}: HDF5 file holds {len(names)} clips; name one (dataset=...)")
        dataset = names[0]
    try:
        with h5py.File(path, "r") as f:
            ds = f.get(dataset)
            if not isinstance(ds, h5py.Dataset):
                raise SonosslError(f"{path}::{dataset}: no such dataset")
            if ds.dtype != np.uint8 or ds.ndim not in (3, 4) or (ds.ndim == 4 and ds.shape[3] != 3) or ds.shape[0] < 1:
                raise SonosslError(
                    f"{path}::{dataset}: expected uint8 [frames, H, W] or [frames, H, W, 3], got {ds.dtype} {ds.shape}"
                )
            n = int(ds.shape[0])
            shape = (int(ds.shape[1]), int(ds.shape[2]))
    except OSError as exc:
        raise SonosslError(f"{path}::{dataset}: could not be read ({' '.join(str(exc).split())[:120]})") from None
    indices = _frame_indices(n, frame_skip, max_frames)
    check_pixels(Path(f"{path}::{dataset}"), *shape, len(indices), max_frame_pixels=max_frame_pixels,
                 max_source_pixels=max_source_pixels)

    def frames(positions: list[int] | None) -> Iterator[np.ndarray]:
        try:
            with h5py.File(path, "r") as f:
                ds = f[dataset]
                for i in (indices if positions is None else [indices[k] for k in positions]):
                    frame = ds[i]
                    yield luminance(frame) if frame.ndim == 3 else frame
        except OSError as exc:
            raise SonosslError(f"{path}::{dataset}: could not be read ({' '.join(str(exc).split())[:120]})") from None

    return Stream("hdf5", n, len(indices), None, f"hdf5:{path.resolve()}::{dataset}", None, frames, path=path,
                  shape=shape)




# ---------------------------------------------------------------- registry

Opener = Callable[..., Stream]
OPENERS: dict[str, Opener] = {"dicom": open_dicom, "video": open_video, "images": open_images, "hdf5": open_hdf5}


def open_source(
    path: Path, *, frame_skip: int = 1, max_frames: int | None = None, dataset: str | None = None,
    modalities: tuple[str, ...] | None = None, max_frame_pixels: int = MAX_FRAME_PIXELS,
    max_source_pixels: int = MAX_SOURCE_PIXELS,
) -> Stream:
    """Open one source (file or image folder) as a :class:`Stream`: its header now, its frames
    one at a time on demand (see the module docstring).

    frame_skip: keep frames 0, k, 2k, ...; max_frames: stop after that many kept frames;
    dataset: for an HDF5 source, the clip to read (see :func:`hdf5_clips`); modalities: the
    DICOM modalities accepted (None: any); max_frame_pixels, max_source_pixels: the pixel budget
    (:func:`check_pixels`), checked before decoding.
    Raises :class:`SonosslError` for an empty, unsupported or unreadable source.
    """
    path = Path(path)
    if frame_skip < 1:
        raise SonosslError(f"frame_skip: expected an integer >= 1, got {frame_skip}")
    if not path.exists():
        raise SonosslError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise SonosslError(f"{path}: empty file")
    kind = sniff_kind(path)
    if kind is None:
        if path.is_dir():
            raise SonosslError(f"{path}: not an image folder (needs images and no video or DICOM files)")
        raise SonosslError(f"{path}: not a DICOM file, a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or HDF5")
    if kind not in OPENERS:
        raise SonosslError(f"{path}: {kind} sources are not supported yet")
    if dataset is not None and kind != "hdf5":
        raise SonosslError(f"{path}: dataset={dataset!r} given, but this is a {kind} source, not HDF5")
    extra = {"dataset": dataset} if kind == "hdf5" else {"modalities": modalities} if kind == "dicom" else {}
    return OPENERS[kind](path, frame_skip=frame_skip, max_frames=max_frames, max_frame_pixels=max_frame_pixels,
                         max_source_pixels=max_source_pixels, **extra)


def read_source(
    path: Path, *, frame_skip: int = 1, max_frames: int | None = None, dataset: str | None = None
) -> Clip:
    """Decode one source into a :class:`Clip` (every kept frame in memory; ``ingest`` streams
    with :func:`open_source` instead). Arguments and errors as :func:`open_source`."""
    return open_source(path, frame_skip=frame_skip, max_frames=max_frames, dataset=dataset).read()
