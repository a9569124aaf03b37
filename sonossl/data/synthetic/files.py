"""The files of the synthetic dataset: multi-frame DICOM (with fake PHI) and MP4 clips, labelled
PNGs with their split CSVs, and :func:`synthesize`, which writes them all."""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from sonossl.data.synthetic.scene import (STREAM_CLIP, STREAM_LABELLED, CLASSES, DEPTH_CM, ProgressFn,
                                          render_clip, sample_anatomy)
from sonossl.data.synthetic.screen import burned_in_overlay, compose_screen, screen_layout
from sonossl.errors import SonosslError

SPLITS: tuple[str, ...] = ("train", "valid", "test")
FORMATS: tuple[str, ...] = ("dicom", "mp4")


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Phi:
    """Fake protected health information of one synthetic patient (all invented)."""

    name: str
    pid: str
    birth: str
    study_date: str
    institution: str
    study_uid: str


def _uid(key: str) -> str:
    """A DICOM UID derived from ``key`` (deterministic, so the same seed gives the same files)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[key])


def _write_dicom(path: Path, frames: np.ndarray, phi: _Phi, fps: float, box: tuple[int, int, int, int],
                 size: int, uid_key: str, series: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage

    sop_uid = _uid(f"{uid_key}-sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "US"
    ds.Manufacturer = "sonossl"
    ds.ManufacturerModelName = "SONOSSL SYNTH"
    ds.PatientName = phi.name
    ds.PatientID = phi.pid
    ds.PatientBirthDate = phi.birth
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = phi.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.InstitutionName = phi.institution
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.StudyInstanceUID = phi.study_uid
    ds.SeriesInstanceUID = _uid(f"{uid_key}-series")
    ds.StudyID = "1"
    ds.SeriesNumber = series
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = int(frames.shape[0])
    ds.FrameIncrementPointer = (0x0018, 0x1063)  # -> FrameTime
    ds.FrameTime = f"{1000.0 / fps:.3f}"
    ds.CineRate = int(round(fps))
    ds.RecommendedDisplayFrameRate = int(round(fps))
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = box[0], box[1]
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = box[2] - 1, box[3] - 1  # inclusive
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = DEPTH_CM / size
    region.ReferencePixelX0 = size // 2  # the apex, relative to the region
    region.ReferencePixelY0 = 0
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        try:
            stream = container.add_stream("libx264", rate=int(round(fps)))
            stream.options = {"crf": "17", "preset": "veryfast"}
        except Exception:  # an FFmpeg build without x264
            stream = container.add_stream("mpeg4", rate=int(round(fps)))
            stream.bit_rate = 4_000_000
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray").reformat(format="yuv420p")
            container.mux(stream.encode(vf))
        container.mux(stream.encode())


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------
def _check(out: Path, videos: int, frames: int, size: int, fmt: str,
           labelled_per_class: tuple[int, int, int]) -> None:
    if videos < 0:
        raise SonosslError(f"synth videos={videos}: expected an integer >= 0")
    if frames < 1:
        raise SonosslError(f"synth frames={frames}: expected an integer >= 1")
    if not 32 <= size <= 1024:
        raise SonosslError(f"synth size={size}: expected an integer in [32, 1024] pixels")
    if fmt not in FORMATS:
        raise SonosslError(f"synth format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if len(labelled_per_class) != 3 or any(int(n) < 0 for n in labelled_per_class):
        raise SonosslError(f"synth labelled_per_class={labelled_per_class}: expected three counts >= 0 "
                           "(train, valid, test)")
    if out.exists() and not out.is_dir():
        raise SonosslError(f"{out}: exists and is not a folder; expected an output folder")
    for sub in ("videos", "labelled"):
        if (out / sub).exists():
            raise SonosslError(f"{out / sub}: already exists; choose another output folder or remove it")


def synthesize(out: Path, *, videos: int = 40, frames: int = 32, size: int = 128, seed: int = 0,
               fmt: Literal["dicom", "mp4"] = "dicom",
               labelled_per_class: tuple[int, int, int] = (100, 20, 40),
               progress: ProgressFn | None = None) -> dict:
    """Write the synthetic dataset under ``out`` (``videos/`` and ``labelled/``); return a summary.

    videos: number of unlabelled clips; frames: frames per clip; size: side of the sector box in
    pixels (labelled PNGs are ``size x size``, video screens are larger); labelled_per_class:
    images per class in (train, valid, test). ``progress(stage, done, total)`` is called per item.

    Everything is written to a hidden staging folder inside ``out`` and moved into place at the
    end, so an error leaves no half-written ``videos/`` or ``labelled/``.

    Returns a JSON-able dict: ``format``, ``seed``, ``size``, ``screen`` (H, W), ``videos``
    (list of ``{"path", "frames", "fps", "fan_box": [x0, y0, x1, y1] (half-open, pixels), "group"}``;
    ``group`` is the index of the invented patient, shared by consecutive clips; no PHI),
    ``truth`` (path of the private truth CSV), ``labelled`` ({split: {class: count}}), ``csv``
    ({split: path}); paths are relative to ``out``.
    """
    out = Path(out)
    _check(out, videos, frames, size, fmt, labelled_per_class)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / ".synth-partial"
    if stage.exists():
        shutil.rmtree(stage)
    try:
        summary = _write_all(stage, videos=videos, frames=frames, size=size, seed=seed, fmt=fmt,
                             labelled_per_class=tuple(int(n) for n in labelled_per_class),
                             progress=progress)
        for sub in ("videos", "labelled"):
            (stage / sub).rename(out / sub)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def _write_all(root: Path, *, videos: int, frames: int, size: int, seed: int, fmt: str,
               labelled_per_class: tuple[int, int, int], progress: ProgressFn | None) -> dict:
    vdir, ldir = root / "videos", root / "labelled"
    vdir.mkdir(parents=True)
    ldir.mkdir(parents=True)
    lay = screen_layout(size)
    n_patients = max(1, math.ceil(videos / 3))
    clips, truth = [], []
    for i in range(videos):
        rng = np.random.default_rng([seed, STREAM_CLIP, i])
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        an = sample_anatomy(rng, cls, frames)
        fan = render_clip(an, size, rng)
        x0 = lay.panel + int(rng.integers(0, lay.slack_x + 1))
        y0 = lay.top + int(rng.integers(0, lay.slack_y + 1))
        box = (x0, y0, x0 + size, y0 + size)
        pat = (i * n_patients) // max(videos, 1)  # consecutive clips share a patient
        prng = np.random.default_rng([seed, 2, pat])
        phi = _Phi(
            name=f"SYNTH^PATIENT^{pat}", pid=f"SYN{pat:04d}",
            birth=f"{int(prng.integers(1980, 2004))}{int(prng.integers(1, 13)):02d}{int(prng.integers(1, 29)):02d}",
            study_date=f"2024{int(prng.integers(1, 13)):02d}{int(prng.integers(1, 29)):02d}",
            institution="SONOSSL SYNTHETIC HOSPITAL",
            study_uid=_uid(f"sonossl-synth-{seed}-study-{pat}"),
        )
        date = f"{phi.study_date[:4]}-{phi.study_date[4:6]}-{phi.study_date[6:]}"
        text = burned_in_overlay(lay, box, [phi.name, f"ID {phi.pid}", date], an.fps)
        screen = compose_screen(fan, text, box)
        name = f"clip_{i:04d}." + ("dcm" if fmt == "dicom" else "mp4")
        if fmt == "dicom":
            _write_dicom(vdir / name, screen, phi, an.fps, box, size, f"sonossl-synth-{seed}-clip-{i}", i + 1)
        else:
            _write_mp4(vdir / name, screen, an.fps)
        clips.append({"path": f"videos/{name}", "frames": frames, "fps": an.fps,
                      "fan_box": list(box), "group": pat})
        truth.append([name, cls, *box])
        if progress:
            progress("videos", i + 1, videos)
    with open(vdir / "_truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "class", "fan_x0", "fan_y0", "fan_x1", "fan_y1"])
        w.writerows(truth)

    total = sum(labelled_per_class) * len(CLASSES)
    done = 0
    counts: dict[str, dict[str, int]] = {}
    for s, (split, n) in enumerate(zip(SPLITS, labelled_per_class)):
        rows = []
        counts[split] = {}
        for c, cls in enumerate(CLASSES):
            (ldir / "images" / split / cls).mkdir(parents=True)
            for k in range(n):
                rng = np.random.default_rng([seed, STREAM_LABELLED, s, c, k])
                an = sample_anatomy(rng, cls, frames)
                t = int(rng.integers(frames))
                img = render_clip(an, size, rng, frames=[t])[0]
                rel = f"images/{split}/{cls}/{split}_{cls}_{k:04d}.png"
                Image.fromarray(img).save(ldir / rel)
                rows.append((rel, cls))
                done += 1
                if progress:
                    progress("labelled", done, total)
            counts[split][cls] = n
        with open(ldir / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_path", "class"])
            w.writerows(rows)
    return {
        "format": fmt, "seed": seed, "size": size, "classes": list(CLASSES),
        "screen": [lay.height, lay.width],
        "videos": clips, "truth": "videos/_truth.csv",
        "labelled": counts, "csv": {sp: f"labelled/{sp}.csv" for sp in SPLITS},
    }

