"""Shared fixtures: tiny scan clips (a moving fan on a screen with burned-in fake PHI) as DICOM,
MP4 and AVI, and paths to the genuine ultrasound DICOMs that ship with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"
FAKE_NAME = "Doe^Janet^Phisample"
FAKE_ID = "PHI-93417-ZQX"
FAN_BOX = (20, 14, 60, 44)  # x0, y0, x1, y1 of the fan in the tiny screen below
SCREEN = (56, 72)  # H, W


def pydicom_file(name: str) -> Path:
    """A file shipped in pydicom's test data (never downloaded)."""
    path = PYDICOM_FILES / name
    if not path.is_file():  # pydicom 3 ships these; a missing one is a broken install, not a skip
        pytest.fail(f"{name} not found in pydicom's shipped test files ({PYDICOM_FILES})")
    return path


def screen_clip(t: int = 8, seed: int = 0, text: str = "DOE J 1999") -> np.ndarray:
    """uint8 [t, 56, 72]: a speckled fan that changes every frame inside FAN_BOX, static text
    at the top-left and a static UI bar at the bottom."""
    rng = np.random.default_rng(seed)
    h, w = SCREEN
    x0, y0, x1, y1 = FAN_BOX
    yy, xx = np.mgrid[0:h, 0:w]
    cx = (x0 + x1) / 2
    fan = (yy >= y0) & (yy < y1) & (np.abs(xx + 0.5 - cx) <= (yy - y0 + 1) * (x1 - x0) / 2 / (y1 - y0))
    static = Image.new("L", (w, h))
    draw = ImageDraw.Draw(static)
    draw.text((1, 0), text, fill=255)
    draw.rectangle([0, h - 3, w - 1, h - 1], fill=90)
    static = np.asarray(static)
    frames = np.empty((t, h, w), np.uint8)
    for i in range(t):
        speckle = rng.integers(60, 220, size=(h, w))
        frames[i] = np.where(fan, speckle, static)
    return frames


def write_dicom(path: Path, frames: np.ndarray, patient_id: str = FAKE_ID, name: str = FAKE_NAME,
                regions: list[tuple[int, int, int, int]] | None = None, fps: float = 25.0) -> Path:
    """A multi-frame MONOCHROME2 ultrasound DICOM with fake PHI."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = name, patient_id
    ds.InstitutionName, ds.StudyDate = "PHI General Hospital", "20240131"
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 1000.0 / fps
    if regions:
        seq = []
        for x0, y0, x1, y1 in regions:
            r = Dataset()
            r.RegionSpatialFormat, r.RegionDataType = 1, 1
            r.RegionLocationMinX0, r.RegionLocationMinY0 = x0, y0
            r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x1 - 1, y1 - 1
            seq.append(r)
        ds.SequenceOfUltrasoundRegions = seq
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """MP4 (H.264) or AVI (MPEG-4 part 2) by the suffix, yuv420p."""
    import av

    codec = "libx264" if path.suffix == ".mp4" else "mpeg4"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width = frames.shape[1:]
        s.pix_fmt = "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "10"}
        else:
            s.bit_rate = 2_000_000
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.stack([f] * 3, -1), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture
def tiny_clip() -> np.ndarray:
    return screen_clip()


class Scans:
    """The helpers above, handed to tests as the ``scans`` fixture."""

    FAKE_NAME, FAKE_ID, FAN_BOX, SCREEN = FAKE_NAME, FAKE_ID, FAN_BOX, SCREEN
    clip = staticmethod(screen_clip)
    dicom = staticmethod(write_dicom)
    video = staticmethod(write_video)
    pydicom_file = staticmethod(pydicom_file)


@pytest.fixture
def scans() -> type[Scans]:
    return Scans
