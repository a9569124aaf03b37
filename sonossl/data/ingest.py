"""``sonossl ingest``: scan files in, a de-identified frame store and its manifest out.

For each source (see :mod:`sonossl.data.readers`): decode every ``frame_skip``-th frame, find the
scan region (:mod:`sonossl.data.sector`), blank everything outside it, crop, pad to a square and
resize to ``size x size``, optionally drop near-duplicate frames (``dedup``, see
:func:`dedup_indices`), and write ``uint8 [T, size, size]`` into the store under a pseudonym.
A seed-format HDF5 source holds many clips: each of its datasets is ingested as its own source,
named ``file.h5::dataset`` in the manifest.

Memory does not grow with the source: a clip is read in two passes, first a sample of at most 64
frames spread over it (the scan region and, for 16-bit data without a VOI window, the grey
range), then every kept frame, cropped and resized 32 at a time; what is held is the output
(``T x size x size`` bytes) and one chunk of source frames. Workers hold at most ``2 x workers``
clips in flight.

What leaves ingestion, and what does not:

- ``video_id`` = HMAC-SHA256(``key``, the source's path relative to the folder given (plus
  ``::dataset`` for HDF5), :func:`id_label`), first 16 hex digits; it is also the dataset name in
  the store. ``group_id`` = the same hash of the patient/study key (the raw ``PatientID`` or
  ``StudyInstanceUID``, else the source's folder, relative as the id is). So the same archive,
  key and seed give the same ids, store order and splits wherever the archive is mounted; the
  store records this as ``id_keying`` (:data:`ID_KEYING`), and a store whose ids an older
  sonossl keyed on absolute paths is read as it is but not added to. ``key`` is a secret of
  256 random bits in a key file (``FRAMES.key`` beside the store, made on first use, or
  ``--salt-file``), so neither can be recomputed from a patient's ID without it, however short
  and structured IDs are. The store records only the key's fingerprint, which refuses a later
  ``--resume`` or ``--shard`` run with another key.
- A DICOM or video whose scan region cannot be found (``crop="auto"``: no usable DICOM regions,
  no motion, no speckle) is an ``error`` row, not a whole screen with its burned-in text in the
  store; ``crop="none"`` keeps whole frames when the user says so.
- The store holds frames (burned-in text is outside the crop), the pseudonyms, the split, fps,
  frame skip and crop box. No DICOM attribute value, no path. Logs name clips by ``video_id``.
- ``FRAMES.manifest.csv`` (beside the store) maps sources to pseudonyms with the outcome of each:
  it is the one private file and stays with the raw data. It carries no DICOM attribute value.

Splits are by group, so frames of one patient/study never sit in both ``train`` and ``val``:
groups are ranked by a hash of (``seed``, ``group_id``) and the first ``round(val_fraction *
groups)`` go to ``val`` (at least one when there are two or more groups and ``val_fraction > 0``,
never all of them). The ranking is redone over every group in the store at the end of each run,
so a resumed store stays leak-free.

Sharded ingestion (``shard=(I, N)``, ``sonossl ingest --shard I/N``): ``out`` is a folder and
this run writes its part ``out/part-I-of-N.h5`` (with ``part-I-of-N.manifest.csv``) from the
sources whose path relative to the source given (``::dataset`` appended for HDF5) hashes to
``I`` mod N (SHA-256): a split that does not depend on the order files are found in, nor on
files added later, so N machines or array jobs can each run one part and resume it alone. The
parts read as one store (:class:`~sonossl.data.framestore.FrameStore` of the folder) with the
splits assigned over all their groups.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import logging
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sonossl.config import MAX_FRAME_PIXELS, MAX_SOURCE_PIXELS, IngestConfig, parse_shard
from sonossl.data.framestore import HDF5_SUFFIXES, ID_KEYING, FrameStore, FrameStoreWriter, assign_splits, is_hdf5_path, part_name
from sonossl.data.readers import find_sources, hdf5_clips, open_source
from sonossl.data.sector import MAX_FRAMES_FOR_MOTION, Box, crop_to_region, scan_region
from sonossl.errors import SonosslError
from sonossl.outlock import check_apart, lock_output
from sonossl.outputs import atomic_write_csv
from sonossl.progress import progress_bar

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "source", "video_id", "group_id", "status", "frames_in", "frames_kept",
    "crop_x0", "crop_y0", "crop_x1", "crop_y1", "message",
)  # fmt: skip


@dataclass
class IngestSummary:
    """Counts of one run (``skipped``: already in the store on ``resume``)."""

    ok: int
    skipped: int
    error: int
    frames_kept: int
    store: Path
    manifest: Path


def pseudonym(value: str, key: str) -> str:
    """16 hex digits of HMAC-SHA256(key, value)."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def id_base(sources: list[Path]) -> Path:
    """The folder clip ids are relative to: the one folder given, else the deepest folder holding
    every source given (the folder of a single file). Paths are taken as given (absolute, not
    through symlinks), so the base moves with the archive and the labels below it do not."""
    paths = [Path(os.path.abspath(s)) for s in sources]
    common = Path(os.path.commonpath(paths))
    return common if common.is_dir() else common.parent


def id_label(src: Path, dataset: str | None, base: Path) -> str:
    """What a source's ``video_id`` is the pseudonym of: its path relative to ``base``
    (:func:`id_base`), POSIX-style, with ``::dataset`` for a clip of an HDF5 file."""
    return _label(Path(os.path.relpath(os.path.abspath(src), base)).as_posix(), dataset)


def _group_where(src: Path, dataset: str | None, base: Path) -> tuple[str, str]:
    """(the clip's id label, its folder relative to ``base``): what a reader's path-derived group
    key (``folder:`` the source's folder, ``hdf5:`` the clip) is replaced by, so groups do not
    depend on where the archive is mounted either."""
    folder = Path(os.path.relpath(Path(os.path.abspath(src)).parent, base)).as_posix()
    return id_label(src, dataset, base), folder


def _portable_group_key(key: str, where: tuple[str, str] | None) -> str:
    if where is None:
        return key
    if key.startswith("folder:"):
        return f"folder:{where[1]}"
    if key.startswith("hdf5:"):
        return f"hdf5:{where[0]}"
    return key  # a patient or study identifier: the same wherever the file sits


KEY_HEX_DIGITS = 64  # 256 random bits in a new key file
MIN_KEY_HEX_DIGITS = 32  # 128 bits: the least a key file given with --salt-file may hold


def default_key_file(out: Path, shard: tuple[int, int] | None = None) -> Path:
    """Where the pseudonym key lives unless ``--salt-file`` says: ``FRAMES.key`` beside the store
    and its manifest, or ``sonossl.key`` in the folder of a sharded store (one key for all parts)."""
    return Path(out) / "sonossl.key" if shard is not None else Path(out).with_suffix(".key")


def load_key(path: Path, create: bool = True) -> str:
    """The secret key of the pseudonyms, from ``path``: hex digits, at least 128 bits. A missing
    file is created (``create``) with 256 random bits, readable by its owner only; two processes
    creating it at once agree on one key (the file appears whole, once, by ``os.link``)."""
    import os
    import secrets

    path = Path(path)
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(KEY_HEX_DIGITS // 2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use theirs
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise SonosslError(f"{path}: pseudonym key file could not be read ({exc.strerror})") from None
    if len(key) < MIN_KEY_HEX_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in key):
        raise SonosslError(f"{path}: expected a pseudonym key of at least {MIN_KEY_HEX_DIGITS} hex digits (128 bits), "
                           "e.g. made by `openssl rand -hex 32`")
    return key.lower()


def key_fingerprint(key: str) -> str:
    """What a store records of its key: 16 hex digits of a hash of it, which tells two keys apart
    and gives nothing of the key away."""
    return hashlib.sha256(b"sonossl pseudonym key\0" + key.encode()).hexdigest()[:16]


def manifest_path(out: Path) -> Path:
    """``frames.h5`` -> ``frames.manifest.csv``."""
    return Path(out).with_suffix(".manifest.csv")


# ---------------------------------------------------------------- one source (runs in a worker)

DEDUP_SIDE = 32
STREAM_CHUNK = 32  # source frames decoded before a crop-and-resize step,
STREAM_CHUNK_PIXELS = 32 * 1024 * 1024  # and at most this many source pixels (fewer frames when they are large)
REGION_SIDE = 512  # the scan region is found on frames decimated to at most this side


def _decimate(frame: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th pixel in both directions (a view-free copy): what the region search sees."""
    return np.ascontiguousarray(frame[::step, ::step]) if step > 1 else frame


def _full_res(box: Box, mask: np.ndarray, step: int, shape: tuple[int, int]) -> tuple[Box, np.ndarray]:
    """A region found on ``step``-decimated frames, at the source's ``shape`` (height, width)."""
    if step == 1:
        return box, mask
    h, w = shape
    x0, y0, x1, y1 = box
    full = np.repeat(np.repeat(mask, step, 0), step, 1)[:h, :w]
    return (x0 * step, y0 * step, min(x1 * step, w), min(y1 * step, h)), full


def dedup_indices(frames: np.ndarray, threshold: float, side: int = DEDUP_SIDE) -> list[int]:
    """Indices of the frames to keep, dropping near-duplicates of the last kept frame.

    frames: uint8 [T, H, W] grey. Each frame is area-downsampled to at most ``side x side``; a
    frame is dropped when its mean absolute difference (grey levels 0-255) to the last kept
    frame is below ``threshold``. Frame 0 is always kept.
    """
    from PIL import Image

    t, h, w = frames.shape
    shape = (min(side, w), min(side, h))
    small = [np.asarray(Image.fromarray(f).resize(shape, Image.Resampling.BOX), np.float32) for f in frames]
    keep = [0]
    for i in range(1, t):
        if float(np.abs(small[i] - small[keep[-1]]).mean()) >= threshold:
            keep.append(i)
    return keep



def _one_line(exc: BaseException, source: Path, dataset: str | None = None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # the manifest row names the source already
    text = text.replace(f"{source}::{dataset}: ", "").replace(f"{source}: ", "")
    if not isinstance(exc, SonosslError):
        text = f"{type(exc).__name__}: {text}"
    return text[:300]


def process_source(source: Path, opts: dict[str, Any], dataset: str | None = None,
                   where: tuple[str, str] | None = None) -> dict[str, Any]:
    """Decode, crop, resize and (``opts["dedup"]``) deduplicate one source (one ``dataset`` of
    an HDF5 file); never raises (errors come back as ``status=error``). ``where``: the source's
    relative id label and folder (:func:`_group_where`), which a path-derived group key is made of.

    The raw group key is hashed here, so it never leaves the worker.
    """
    try:
        st = open_source(source, frame_skip=opts["frame_skip"], max_frames=opts["max_frames"], dataset=dataset,
                         modalities=opts.get("modalities"), max_frame_pixels=opts.get("max_frame_pixels", MAX_FRAME_PIXELS),
                         max_source_pixels=opts.get("max_source_pixels", MAX_SOURCE_PIXELS))
        # Pass 1: the scan region and grey range from a sample of frames spread over the clip,
        # each decimated to at most REGION_SIDE as it is decoded (the full frames are not held).
        shape = st.shape or (REGION_SIDE, REGION_SIDE)
        step = max(1, -(-max(shape) // REGION_SIDE))
        sample, grey_range = st.reduced_sample(MAX_FRAMES_FOR_MOTION, lambda f: _decimate(f, step))
        crop = opts["crop"]
        small = np.stack([st.to_uint8(f, grey_range) for f in sample])
        del sample
        regions = None if st.regions is None else [tuple(v // step for v in r) for r in st.regions]
        box, mask, how = scan_region(small, regions, st.kind, crop)
        box, mask = _full_res(box, mask, step, shape if st.shape else small.shape[1:])
        if regions is not None and how == "dicom":  # the recorded regions, exactly
            from sonossl.data.sector import regions_box, regions_mask

            box, mask = regions_box(st.regions, *shape), regions_mask(st.regions, *shape)
        del small
        # Pass 2: every kept frame, decoded, cropped and resized a chunk at a time, so memory holds
        # the output (frames x size x size) and one chunk of source frames, not the source clip.
        per_chunk = max(1, min(STREAM_CHUNK, STREAM_CHUNK_PIXELS // max(1, shape[0] * shape[1])))
        chunks, chunk = [], []
        for frame in st.frames():
            chunk.append(st.to_uint8(frame, grey_range))
            if len(chunk) == per_chunk:
                chunks.append(crop_to_region(np.stack(chunk), box, mask, opts["size"]))
                chunk = []
        if chunk:
            chunks.append(crop_to_region(np.stack(chunk), box, mask, opts["size"]))
        frames = np.concatenate(chunks)
        note = f"crop: {how}" + (" (no usable DICOM regions)" if crop == "dicom" and how != "dicom" else "")
        if opts.get("dedup") is not None:
            kept = dedup_indices(frames if frames.ndim == 3 else frames.mean(-1).astype(np.uint8), opts["dedup"])
            note += f"; dedup dropped {len(frames) - len(kept)}"
            frames = frames[kept]
        return {
            "status": "ok", "frames": frames, "frames_in": int(st.frames_in or len(frames)), "box": box, "fps": st.fps,
            "group_id": pseudonym(_portable_group_key(st.group_key, where), opts["salt"]), "message": note,
        }  # fmt: skip
    except Exception as exc:  # one bad file must not stop the run
        return {"status": "error", "message": _one_line(exc, source, dataset)}


Unit = tuple[Path, "str | None"]  # a source file or folder, and the HDF5 dataset within it


def _results(units: list[Unit], opts: dict[str, Any], workers: int, base: Path) -> Iterator[dict[str, Any]]:
    """Results in source order; with ``workers > 1`` from a spawn process pool, at most
    ``2 * workers`` clips in flight so memory stays bounded."""
    if workers <= 1:
        for s, d in units:
            yield process_source(s, opts, d, _group_where(s, d, base))
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future] = deque()
        it = iter(units)
        for s, d in it:
            pending.append(pool.submit(process_source, s, opts, d, _group_where(s, d, base)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            yield pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(process_source, nxt[0], opts, nxt[1], _group_where(*nxt, base)))


def _units(files: list[Path], salt: str, base: Path) -> tuple[list[Unit], list[dict[str, Any]], dict[str, int]]:
    """Expand HDF5 files into one unit per dataset; an unreadable HDF5 file becomes an error row.

    Also returns each manifest ``source`` label's position, for rows in source order.
    """
    units: list[Unit] = []
    errors: list[dict[str, Any]] = []
    order: dict[str, int] = {}
    for f in files:
        if f.is_file() and f.suffix.lower() in HDF5_SUFFIXES:
            try:
                found = [(f, d) for d in hdf5_clips(f)]
            except SonosslError as exc:
                errors.append({"source": str(f), "video_id": pseudonym(id_label(f, None, base), salt), "status": "error",
                               "message": _one_line(exc, f)})  # fmt: skip
                found = [(f, None)]
            else:
                units.extend(found)
        else:
            found = [(f, None)]
            units.append((f, None))
        for u in found:
            order.setdefault(_label(*u), len(order))
    return units, errors, order


def _label(src: Path | str, dataset: str | None) -> str:
    return f"{src}::{dataset}" if dataset is not None else str(src)


def _relative_label(unit: Unit, roots: list[Path]) -> str:
    """The unit's path relative to the source (file or folder) it was found under, with
    ``::dataset`` for a clip of an HDF5 file: the same wherever the archive is mounted."""
    src, dset = unit
    path = src.resolve()
    rel = src.name
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            rel = path.relative_to(root).as_posix()
            break
    return _label(Path(rel), dset)


def shard_of(label: str, count: int) -> int:
    """The part (0 .. count-1) a source labelled ``label`` (see :func:`_relative_label`) belongs to."""
    return int(hashlib.sha256(label.encode()).hexdigest(), 16) % count


def _in_shard(units: list[Unit], sources: list[Path], shard: tuple[int, int]) -> list[Unit]:
    roots = [Path(s).resolve() for s in sources]
    return [u for u in units if shard_of(_relative_label(u, roots), shard[1]) == shard[0]]


# ---------------------------------------------------------------- the run


def _write_manifest(path: Path, rows: list[dict[str, Any]], keep_previous: bool) -> None:
    """Rows of this run; on resume, rows of earlier runs for other sources are kept."""
    ours = {r["source"] for r in rows}
    old: list[dict[str, Any]] = []
    if keep_previous and path.is_file():
        with open(path, newline="") as f:
            old = [r for r in csv.DictReader(f) if r.get("source") not in ours]
    atomic_write_csv(path, old + rows, MANIFEST_COLUMNS)


def _todo(units: list[Unit], writer: FrameStoreWriter, salt: str, rows: list[dict[str, Any]],
          base: Path) -> list[tuple[Unit, str]]:
    """The units not yet in the store, with their pseudonyms; a ``skipped`` row for each one that is."""
    existing = {r.key: r for r in writer.records()}
    todo: list[tuple[Unit, str]] = []
    for src, dset in units:  # rows come out in source order: skipped ones now, the rest as they are ingested
        vid = pseudonym(id_label(src, dset, base), salt)
        if vid in existing:
            r = existing[vid]
            box = r.crop_box or ("", "", "", "")
            rows.append({"source": _label(src, dset), "video_id": vid, "group_id": r.group_id, "status": "skipped",
                         "frames_kept": r.n_frames, "crop_x0": box[0], "crop_y0": box[1], "crop_x1": box[2],
                         "crop_y1": box[3], "message": "already in the store"})  # fmt: skip
        else:
            todo.append(((src, dset), vid))
    return todo


def _store_result(writer: FrameStoreWriter, unit: Unit, vid: str, res: dict[str, Any], frame_skip: int) -> dict[str, Any]:
    """Write one processed source into the store (when it is ``ok``); returns its manifest row."""
    row = {"source": _label(*unit), "video_id": vid, "status": res["status"], "message": res["message"]}
    if res["status"] != "ok":
        log.warning("%s: could not be ingested (see the manifest)", vid)
        return row
    frames, box = res["frames"], res["box"]
    writer.add_video(vid, frames, video_id=vid, group_id=res["group_id"], split="train",
                     fps=res["fps"], frame_skip=frame_skip, crop_box=box)  # fmt: skip
    row.update(group_id=res["group_id"], frames_in=res["frames_in"], frames_kept=len(frames),
               crop_x0=box[0], crop_y0=box[1], crop_x1=box[2], crop_y1=box[3])  # fmt: skip
    log.info("%s: %d frames", vid, len(frames))
    return row


def _claim_store(out: Path, sources: list[Path], salt_file: Path | None,
                 shard: tuple[int, int] | None) -> tuple[Path, Path, Path, str]:
    """The store (or part) to write, its manifest, its key file and key: each apart from the
    sources, the store locked for this process (:mod:`sonossl.outlock`)."""
    if shard is not None and is_hdf5_path(out):
        raise SonosslError(f"{out}: --shard writes a folder of parts (part-I-of-N.h5); give --out a folder name, "
                           "not an .h5 file")
    if shard is None and out.is_dir():
        raise SonosslError(f"{out}: is a folder; --out names the frame store file to write (FRAMES.h5), or a "
                           "folder of parts with --shard")
    store = out if shard is None else out / part_name(*shard)
    manifest = manifest_path(store)
    key_file = Path(salt_file) if salt_file is not None else default_key_file(out, shard)
    written = [store, store.with_name(store.name + ".partial"), manifest] + ([] if salt_file else [key_file])
    for w in written:
        check_apart(w, [("source", s) for s in sources] + ([("--salt-file", salt_file)] if salt_file else []))
    lock_output(store, "ingest")
    return store, manifest, key_file, load_key(key_file)


def ingest(cfg: IngestConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> IngestSummary:
    """Ingest ``cfg.sources`` (files or folders) into the frame store ``cfg.out``, with the
    settings of ``cfg`` (:class:`~sonossl.config.IngestConfig`, validated where it was built:
    ``sonossl.ingest``, the command line or a study); see the module docstring.

    With ``cfg.shard`` ``"I/N"`` only part I (0-based) of N of the sources is ingested, into
    ``out/part-I-of-N.h5`` (``out`` is then the folder of the parts); a part that no source falls
    into is written empty.

    Writes the store (atomically) and its ``.manifest.csv`` beside it. Raises
    :class:`SonosslError` when the store exists without ``resume``/``overwrite``, and (after
    writing the manifest) when no source could be ingested.
    """
    sources = [Path(s) for s in cfg.sources]
    shard = parse_shard(cfg.shard) if cfg.shard else None
    store, manifest, key_file, key = _claim_store(Path(cfg.out), sources, cfg.salt_file, shard)
    found = find_sources(sources, image_folders=True)
    files = [p for p in found if p.resolve() != key_file.resolve()]
    if not files:
        raise SonosslError(f"{', '.join(map(str, sources))}: no source files found")
    opts = {"frame_skip": cfg.frame_skip, "size": cfg.size, "crop": cfg.crop, "salt": key,
            "max_frames": cfg.max_frames_per_video, "dedup": cfg.dedup, "modalities": cfg.modalities(),
            "max_frame_pixels": cfg.max_frame_pixels, "max_source_pixels": cfg.max_source_pixels}  # fmt: skip
    salt, base = key, id_base(sources)
    units, rows, order = _units(files, salt, base)
    if shard is not None:
        units = _in_shard(units, sources, shard)
        mine = {_label(*u) for u in _in_shard([(Path(r["source"]), None) for r in rows], sources, shard)}
        rows = [r for r in rows if r["source"] in mine]
    writer = FrameStoreWriter(store, overwrite=overwrite, resume=resume, key_fingerprint=key_fingerprint(key),
                              id_keying=ID_KEYING)
    _check_same_base(writer, units, salt, base, store)
    if shard is not None:
        writer.mark_shard(f"{shard[0]}/{shard[1]}", cfg.val_fraction, cfg.seed)
    ok, records = _write_units(writer, units, rows, opts, cfg.workers, progress, salt, base)
    try:
        splits = assign_splits([r.group_id for r in records], cfg.val_fraction, cfg.seed)
        for r in records:
            if r.split != splits[r.group_id]:
                writer.set_split(r.key, splits[r.group_id])
    except BaseException:
        writer.close(ok=False)
        raise
    if records or (shard is not None and not units):
        writer.close(ok=True)
    else:
        writer.close(ok=False)
        writer.partial.unlink(missing_ok=True)
    rows.sort(key=lambda r: order[r["source"]])
    _write_manifest(manifest, rows, keep_previous=resume)
    skipped = sum(r["status"] == "skipped" for r in rows)
    errors = sum(r["status"] == "error" for r in rows)
    if ok == 0 and skipped == 0 and (shard is None or units):
        raise SonosslError(f"{store}: no source could be ingested; see {manifest}")
    kept = sum(int(r["frames_kept"]) for r in rows if r["status"] == "ok")
    return IngestSummary(ok=ok, skipped=skipped, error=errors, frames_kept=kept, store=store, manifest=manifest)


def _check_same_base(writer: FrameStoreWriter, units: list[Unit], salt: str, base: Path, store: Path) -> None:
    """Refuse to add to a store none of whose clips is among ``units`` as labelled now: ids are
    relative to the folder given, so another folder (a parent, a subfolder) would give clips
    already in it another id and store them twice."""
    have = {r.key for r in writer.records()}
    if not have or not units or any(pseudonym(id_label(s, d, base), salt) in have for s, d in units):
        return
    writer.close(ok=False)
    if store.exists():  # the partial file was a copy of the finished store: nothing of it is lost
        writer.partial.unlink(missing_ok=True)
    raise SonosslError(f"{store}: none of its {len(have)} clips is among these sources; clip ids are relative to the "
                       "folder given, so add to a store only from the folder it was made from (or into a new store)")


def _write_units(writer: FrameStoreWriter, units: list[Unit], rows: list[dict[str, Any]], opts: dict[str, Any],
                 workers: int, progress: bool, salt: str, base: Path) -> tuple[int, list]:
    """Ingest the units not yet in the store (appending their manifest rows to ``rows``);
    returns how many were ingested and the store's records. On any exception the writer is
    closed with its partial file kept for ``resume``."""
    ok = 0
    try:
        todo = _todo(units, writer, salt, rows, base)
        with progress_bar("ingest", progress) as bar:
            task = bar.add_task("ingest", total=len(todo))
            for (unit, vid), res in zip(todo, _results([u for u, _ in todo], opts, workers, base)):
                rows.append(_store_result(writer, unit, vid, res, opts["frame_skip"]))
                ok += res["status"] == "ok"
                bar.advance(task)
        return ok, writer.records()
    except BaseException:
        writer.close(ok=False)
        raise


# ---------------------------------------------------------------- sonossl info


def _clip_descriptor(store: FrameStore, key: str, n_frames: int, side: int = 16) -> np.ndarray:
    """Mean of up to 4 evenly spaced frames, area-downsampled to side x side, in [0, 1]."""
    from PIL import Image

    idx = np.unique(np.linspace(0, n_frames - 1, min(4, n_frames)).astype(int))
    acc = np.zeros((side, side), np.float64)
    for i in idx:
        f = store.read(key, int(i))
        f = f if f.ndim == 2 else f.mean(-1).astype(np.uint8)
        acc += np.asarray(Image.fromarray(f).resize((side, side), Image.Resampling.BOX), np.float64)
    return (acc / len(idx) / 255.0).ravel()


def store_info(path: Path, max_clips: int = 500) -> dict[str, Any]:
    """What ``sonossl info FRAMES.h5`` prints.

    ``diversity``: mean pairwise RMS difference (grey levels in [0, 1]) between clip
    descriptors (each clip's mean of 4 frames at 16x16), over up to ``max_clips`` clips spread
    through the store. 0 means every clip looks alike; unrelated scans give about 0.1-0.3. It
    measures what the paper found to matter more than size: how varied the videos are.
    ``groups_per_clip`` says how many independent patients/studies stand behind the clips.
    """
    store = FrameStore(path)
    try:
        vids = store.videos
        info: dict[str, Any] = {
            "path": str(path),
            "clips": len(vids),
            "frames": sum(v.n_frames for v in vids),
            "groups": len({v.group_id for v in vids}),
        }
        sizes = sorted({(v.height, v.width) for v in vids})
        info["frame_size"] = list(sizes[0]) if len(sizes) == 1 else [list(s) for s in sizes]
        info["splits"] = {
            s: {"clips": len(vs), "frames": sum(v.n_frames for v in vs), "groups": len({v.group_id for v in vs})}
            for s in ("train", "val")
            for vs in [store.split(s)]
        }
        info["groups_per_clip"] = round(info["groups"] / len(vids), 4)
        pick = [vids[i] for i in np.unique(np.linspace(0, len(vids) - 1, min(max_clips, len(vids))).astype(int))]
        if len(pick) >= 2:
            d = np.stack([_clip_descriptor(store, v.key, v.n_frames) for v in pick])
            sq = (d * d).sum(1)
            dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * d @ d.T, 0) / d.shape[1]
            iu = np.triu_indices(len(pick), 1)
            info["diversity"] = round(float(np.sqrt(dist2[iu]).mean()), 4)
        else:
            info["diversity"] = 0.0
        return info
    finally:
        store.close()
