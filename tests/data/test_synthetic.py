"""The synthetic dataset: real files that read back, right counts, determinism, screen vs sector."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from PIL import Image

from sonossl.data import synthetic as syn
from sonossl.data.synthetic.scene import plane_layout
from sonossl.errors import SonosslError

SIZE, FRAMES, VIDEOS = 32, 4, 4
PER_CLASS = (2, 1, 1)


def make(out: Path, **kw) -> dict:
    args = dict(videos=VIDEOS, frames=FRAMES, size=SIZE, seed=0, labelled_per_class=PER_CLASS)
    args.update(kw)
    return syn.synthesize(out, **args)


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_dicom")
    return out, make(out)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_dicom_clips_read_back(dicom_set):
    out, summary = dicom_set
    files = sorted((out / "videos").glob("*.dcm"))
    assert [f"videos/{f.name}" for f in files] == [v["path"] for v in summary["videos"]]
    h, w = summary["screen"]
    patients = []
    for f, info in zip(files, summary["videos"]):
        ds = pydicom.dcmread(f)
        assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
        assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
        assert int(ds.NumberOfFrames) == FRAMES
        px = ds.pixel_array
        assert px.shape == (FRAMES, h, w) and px.dtype == np.uint8
        assert float(ds.CineRate) == pytest.approx(info["fps"])
        assert float(ds.FrameTime) == pytest.approx(1000.0 / info["fps"], rel=1e-3)
        assert str(ds.PatientName).startswith("SYNTH^PATIENT^") and ds.PatientID.startswith("SYN")
        assert ds.PatientBirthDate and ds.StudyDate and ds.InstitutionName and ds.StudyInstanceUID
        region = ds.SequenceOfUltrasoundRegions[0]
        x0, y0, x1, y1 = info["fan_box"]
        assert (region.RegionLocationMinX0, region.RegionLocationMinY0) == (x0, y0)
        assert (region.RegionLocationMaxX1, region.RegionLocationMaxY1) == (x1 - 1, y1 - 1)
        patients.append((ds.PatientID, ds.StudyInstanceUID))
    # several clips share a patient (and study), so leak-free group splits have groups to work with
    assert len(set(patients)) < len(patients)
    assert len({p for p, _ in patients}) == len(set(patients))
    groups = [v["group"] for v in summary["videos"]]
    assert [groups.index(g) for g in groups] == [[p for p, _ in patients].index(p) for p, _ in patients]


def test_truth_file_is_not_a_video_and_matches_summary(dicom_set):
    out, summary = dicom_set
    cols, rows = read_csv(out / "videos" / "_truth.csv")
    assert cols == ["file", "class", "fan_x0", "fan_y0", "fan_x1", "fan_y1"]
    assert [r["file"] for r in rows] == [Path(v["path"]).name for v in summary["videos"]]
    assert all(r["class"] in syn.CLASSES for r in rows)
    assert [[int(r[k]) for k in cols[2:]] for r in rows] == [v["fan_box"] for v in summary["videos"]]


def test_screen_has_text_outside_the_sector_and_nothing_else_in_the_box(dicom_set):
    out, summary = dicom_set
    mask = syn.sector_mask(SIZE)
    for info in summary["videos"]:
        px = pydicom.dcmread(out / info["path"]).pixel_array
        x0, y0, x1, y1 = info["fan_box"]
        assert (x1 - x0, y1 - y0) == (SIZE, SIZE)
        fan = px[:, y0:y1, x0:x1]
        assert (fan[:, ~mask] == 0).all()  # black around the sector inside its box
        assert (fan[:, mask].max(axis=1) > 100).all()  # and an image inside
        outside = px.copy()
        outside[:, y0:y1, x0:x1] = 0
        assert (outside > 150).sum(axis=(1, 2)).min() > 100  # burned-in text, markers, UI bar
        assert (px[:, -3, :] > 50).all()  # the grey UI bar at the bottom


def test_labelled_csvs_counts_and_images(dicom_set):
    out, summary = dicom_set
    root = out / "labelled"
    mask = syn.sector_mask(SIZE)
    seen = set()
    for split, n in zip(syn.SPLITS, PER_CLASS):
        cols, rows = read_csv(root / f"{split}.csv")
        assert cols == ["image_path", "class"]
        counts = {c: sum(r["class"] == c for r in rows) for c in syn.CLASSES}
        assert counts == {c: n for c in syn.CLASSES} == summary["labelled"][split]
        for r in rows:
            path = root / r["image_path"]
            assert path.is_file() and not Path(r["image_path"]).is_absolute()
            img = Image.open(path)
            assert img.mode == "L" and img.size == (SIZE, SIZE)
            a = np.asarray(img)
            assert (a[~mask] == 0).all() and a[mask].max() > 100
            seen.add(a.tobytes())
    assert len(seen) == len(syn.CLASSES) * sum(PER_CLASS)  # every image drawn afresh


def test_same_seed_same_data_other_seed_other_data(tmp_path, dicom_set):
    out0, _ = dicom_set
    kw = dict(videos=2, labelled_per_class=(1, 1, 0))
    a, b, c = (make(tmp_path / name, seed=seed, **kw) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert a == b and a != c
    pngs = sorted((tmp_path / "a" / "labelled").rglob("*.png"))
    assert len(pngs) == 2 * len(syn.CLASSES)
    for p in pngs:
        rel = p.relative_to(tmp_path / "a")
        assert p.read_bytes() == (tmp_path / "b" / rel).read_bytes()
        assert p.read_bytes() != (tmp_path / "c" / rel).read_bytes()
        # item streams do not depend on the counts: the fixture's larger set holds the same image
        assert p.read_bytes() == (out0 / rel).read_bytes()
    for v in a["videos"]:
        pa, pb, pc = (pydicom.dcmread(tmp_path / d / v["path"]).pixel_array for d in "abc")
        assert np.array_equal(pa, pb)
        assert not np.array_equal(pa, pc)


def test_clip_frames_move(dicom_set):
    out, summary = dicom_set
    info = summary["videos"][0]
    x0, y0, x1, y1 = info["fan_box"]
    fan = pydicom.dcmread(out / info["path"]).pixel_array[:, y0:y1, x0:x1].astype(int)
    assert np.abs(fan[0] - fan[-1]).mean() > 1.0


def test_mp4_clips_decode(tmp_path):
    calls = []
    summary = make(tmp_path / "m", fmt="mp4", videos=2, labelled_per_class=(1, 0, 0),
                   progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls == [("videos", 1, 2), ("videos", 2, 2)] + [("labelled", k, 5) for k in range(1, 6)]
    h, w = summary["screen"]
    for info in summary["videos"]:
        with av.open(str(tmp_path / "m" / info["path"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name in ("h264", "mpeg4")
            frames = [f.to_ndarray(format="gray") for f in container.decode(stream)]
        assert len(frames) == FRAMES and frames[0].shape == (h, w)
        x0, y0, x1, y1 = info["fan_box"]
        outside = frames[0].copy()
        outside[y0:y1, x0:x1] = 0
        assert (outside > 150).sum() > 100  # text survives the codec
    _, rows = read_csv(tmp_path / "m" / "labelled" / "valid.csv")
    assert rows == []


def test_lvot_is_rvot_mirrored():
    """The documented reason horizontal flips must stay off: RVOT = LVOT flipped left-right."""
    lv = plane_layout("LVOT", np.random.default_rng(5))
    rv = plane_layout("RVOT", np.random.default_rng(5))
    assert lv[0] == rv[0]
    for f, g in zip(lv[1], rv[1]):
        assert (g.c, g.q, g.a, g.b) == ((-f.c[0], f.c[1]), (-f.q[0], f.q[1]), f.a, f.b)
    tube = lv[1][1]
    assert tube.q[0] > tube.c[0]  # LVOT's outflow leaves to the right


@pytest.mark.parametrize("kw, field", [
    (dict(size=8), "size"), (dict(frames=0), "frames"), (dict(fmt="avi"), "format"),
    (dict(videos=-1), "videos"), (dict(labelled_per_class=(1, -1, 0)), "labelled_per_class"),
])
def test_bad_arguments_are_user_errors(tmp_path, kw, field):
    with pytest.raises(SonosslError, match=field):
        make(tmp_path / "x", **kw)
    assert not (tmp_path / "x" / "videos").exists()


def test_refuses_to_overwrite_and_leaves_no_partial_output(tmp_path):
    (tmp_path / "videos").mkdir(parents=True)
    with pytest.raises(SonosslError, match="already exists"):
        make(tmp_path)
    assert not (tmp_path / "labelled").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SonosslError, match="not a folder"):
        make(tmp_path / "file")


@pytest.mark.slow
def test_pixels_alone_do_not_give_the_class_away(tmp_path):
    """Difficulty target (a): logistic regression on raw 64 px pixels stays near chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    syn.synthesize(tmp_path, videos=0, seed=0)
    data = {}
    for split in ("train", "test"):
        _, rows = read_csv(tmp_path / "labelled" / f"{split}.csv")
        x = np.stack([np.asarray(Image.open(tmp_path / "labelled" / r["image_path"]).resize((64, 64), Image.BILINEAR),
                                 dtype=np.float32).ravel() for r in rows])
        data[split] = (x, [r["class"] for r in rows])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(*data["train"])
    assert f1_score(data["test"][1], clf.predict(data["test"][0]), average="macro") < 0.35
