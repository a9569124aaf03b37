"""Tiny candidate pools: a frame store written directly, and pydicom's genuine cardiac cine ingested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def tiny_store(tmp_path) -> Path:
    """4 clips x 6 frames of 32 px; each clip a different texture, its frames near-duplicates."""
    from sonossl.data.framestore import FrameStoreWriter

    rng = np.random.default_rng(0)
    path = tmp_path / "frames.h5"
    with FrameStoreWriter(path) as w:
        for c in range(4):
            base = rng.integers(0, 255, (32, 32)).astype(np.float32)
            frames = np.clip(base[None] + rng.normal(0, 4, (6, 32, 32)), 0, 255).astype(np.uint8)
            w.add_video(f"clip{c}", frames, video_id=f"vid{c:02d}", group_id=f"g{c}", split="train" if c else "val")
    return path


@pytest.fixture(scope="session")
def cine_store(tmp_path_factory) -> dict:
    """pydicom's genuine 30-frame cardiac cine (examples_ybr_color.dcm) ingested, every frame kept;
    returns the store and the patient values the DICOM holds."""
    import pydicom
    from pydicom.data import get_testdata_file

    from sonossl.config import IngestConfig
    from sonossl.data.ingest import ingest

    root = tmp_path_factory.mktemp("cine")
    src = Path(get_testdata_file("examples_ybr_color.dcm"))
    (root / "scans").mkdir()
    (root / "scans" / "cine.dcm").write_bytes(src.read_bytes())
    ingest(IngestConfig(sources=[root / "scans"], out=root / "cine.h5", frame_skip=1, size=48, val_fraction=0.0),
                        progress=False)
    ds = pydicom.dcmread(src, stop_before_pixels=True)
    phi = [str(ds.get(k)) for k in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyDate",
                                    "StudyInstanceUID", "SOPInstanceUID") if ds.get(k) not in (None, "")]
    return {"store": root / "cine.h5", "phi": [v for v in phi if len(v) >= 3]}
