import csv
import logging
import shutil

import numpy as np
import pytest

from sonossl.data.framestore import FrameStore
from sonossl.data.ingest import MANIFEST_COLUMNS, assign_splits, ingest, pseudonym, store_info
from sonossl.errors import SonosslError


def _manifest(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture
def mixed(tmp_path, scans):
    """One clip as DICOM (fake PHI), MP4 and AVI, plus a corrupt, a truncated and an empty file."""
    src = tmp_path / "scans"
    (src / "dicom").mkdir(parents=True)
    (src / "video").mkdir()
    frames = scans.clip(t=6)
    good = scans.dicom(src / "dicom" / "clip.dcm", frames)
    scans.video(src / "video" / "clip.mp4", frames)
    scans.video(src / "video" / "clip.avi", frames)
    (src / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 64)
    (src / "truncated.dcm").write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    (src / "empty.dcm").write_bytes(b"")
    (src / "_truth.csv").write_text("file,class\n")
    return src


def test_mixed_folder_good_in_bad_reported(tmp_path, mixed):
    out = tmp_path / "frames.h5"
    s = ingest([mixed], out, frame_skip=1, size=32, val_fraction=0.0, progress=False)
    assert (s.ok, s.skipped, s.error, s.frames_kept) == (3, 0, 3, 18)
    assert s.manifest == tmp_path / "frames.manifest.csv"
    columns, rows = _manifest(s.manifest)
    assert tuple(columns) == MANIFEST_COLUMNS
    by_name = {r["source"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == {"clip.dcm", "clip.mp4", "clip.avi", "corrupt.mp4", "truncated.dcm", "empty.dcm"}
    for name in ("corrupt.mp4", "truncated.dcm", "empty.dcm"):
        assert by_name[name]["status"] == "error" and by_name[name]["message"] and "\n" not in by_name[name]["message"]
    assert "truncated or corrupt" in by_name["truncated.dcm"]["message"]
    dcm = by_name["clip.dcm"]
    assert (dcm["status"], dcm["frames_in"], dcm["frames_kept"]) == ("ok", "6", "6")
    x0, y0, x1, y1 = (int(dcm[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    assert abs(x0 - 20) <= 2 and abs(y0 - 14) <= 2 and abs(x1 - 60) <= 2 and abs(y1 - 44) <= 2

    store = FrameStore(out)
    clips = {r["source"].rsplit(".", 1)[-1]: store.read_clip(r["video_id"]) for r in rows if r["status"] == "ok"}
    assert all(c.shape == (6, 32, 32) for c in clips.values())
    for codec in ("mp4", "avi"):  # the same content, within codec loss (boxes may differ by a pixel)
        assert np.abs(clips[codec].astype(int) - clips["dcm"]).mean() < 4  # vs ~16 for another frame
    rec = store.record(dcm["video_id"])
    assert rec.frame_skip == 1 and rec.fps == pytest.approx(25.0) and rec.crop_box == (x0, y0, x1, y1)


def test_resume_twice_duplicates_nothing(tmp_path, mixed):
    out = tmp_path / "frames.h5"
    ingest([mixed / "dicom"], out, size=16, progress=False)
    with pytest.raises(SonosslError, match="exists"):
        ingest([mixed / "dicom"], out, size=16, progress=False)
    for _ in range(2):
        s = ingest([mixed], out, size=16, resume=True, progress=False)
        _, rows = _manifest(s.manifest)
        assert len(rows) == 6 and len({r["source"] for r in rows}) == 6
        assert len(FrameStore(out).videos) == 3
    assert (s.ok, s.skipped, s.error) == (0, 3, 3)
    assert not (tmp_path / "frames.h5.partial").exists()


def test_group_aware_split(tmp_path, scans):
    src = tmp_path / "scans"
    src.mkdir()
    for p in range(6):  # 6 patients, 2 clips each
        for k in range(2):
            scans.dicom(src / f"p{p}_{k}.dcm", scans.clip(t=2, seed=p * 10 + k), patient_id=f"PAT{p}")
    out = tmp_path / "frames.h5"
    ingest([src], out, frame_skip=1, size=16, val_fraction=0.34, seed=3, progress=False)
    store = FrameStore(out)
    train, val = ({v.group_id for v in store.split(s)} for s in ("train", "val"))
    assert len(train | val) == 6 and not train & val and len(val) == 2
    assert {v.group_id for v in store.videos} == {pseudonym(f"PatientID:PAT{p}", "sonossl") for p in range(6)}
    again = ingest([src], out, frame_skip=1, size=16, val_fraction=0.34, seed=3, overwrite=True, progress=False)
    assert {v.group_id for v in FrameStore(again.store).split("val")} == val  # deterministic


def test_assign_splits_edge_cases():
    assert set(assign_splits(["a", "b"], 0.1).values()) == {"train", "val"}  # at least one val group
    assert set(assign_splits(["a", "b", "c"], 0.9).values()) == {"train", "val"}  # never all val
    assert set(assign_splits(["a"], 0.5).values()) == {"train"}
    assert set(assign_splits(["a", "b"], 0.0).values()) == {"train"}


def test_no_phi_in_store_or_logs(tmp_path, scans, caplog):
    src = tmp_path / "Doe_Janet_scans"
    src.mkdir()
    scans.dicom(src / "janet.dcm", scans.clip(t=4))
    out = tmp_path / "frames.h5"
    with caplog.at_level(logging.DEBUG):
        ingest([src], out, frame_skip=1, size=32, progress=False)
    blob = out.read_bytes()
    for secret in (scans.FAKE_NAME, scans.FAKE_ID, "Doe", "Janet", "PHI General", "20240131", str(tmp_path), "janet"):
        assert secret.encode() not in blob, secret
        assert secret not in caplog.text, secret
    frames = FrameStore(out).read_clip(FrameStore(out).videos[0].key)
    assert frames[:, :2].max() == 0  # the burned-in text rows are outside the crop


def test_all_errors_raise_after_writing_the_manifest(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"")
    (src / "b.avi").write_bytes(b"RIFF....AVI junk")
    out = tmp_path / "frames.h5"
    with pytest.raises(SonosslError, match="no source could be ingested"):
        ingest([src], out, progress=False)
    _, rows = _manifest(tmp_path / "frames.manifest.csv")
    assert [r["status"] for r in rows] == ["error", "error"]
    assert not out.exists() and not (tmp_path / "frames.h5.partial").exists()


def test_bad_options_refused(tmp_path, mixed):
    for kwargs in ({"frame_skip": 0}, {"crop": "fan"}, {"val_fraction": 1.0}, {"size": 2}):
        with pytest.raises(SonosslError):
            ingest([mixed], tmp_path / "f.h5", progress=False, **kwargs)
    with pytest.raises(SonosslError, match="no source files"):
        (tmp_path / "nothing").mkdir()
        ingest([tmp_path / "nothing"], tmp_path / "f.h5", progress=False)


def test_crop_modes(tmp_path, scans):
    src = tmp_path / "s"
    src.mkdir()
    scans.dicom(src / "r.dcm", scans.clip(t=3), regions=[(16, 10, 64, 50)])
    kept = {}
    for crop in ("auto", "dicom", "none"):
        s = ingest([src], tmp_path / f"{crop}.h5", crop=crop, frame_skip=1, size=16, progress=False)
        row = _manifest(s.manifest)[1][0]
        kept[crop] = tuple(int(row[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    assert kept == {"auto": (16, 10, 64, 50), "dicom": (16, 10, 64, 50), "none": (0, 0, 72, 56)}


def test_workers_give_the_same_store(tmp_path, mixed):
    shutil.rmtree(mixed / "video")
    a = ingest([mixed], tmp_path / "a.h5", frame_skip=2, size=16, progress=False)
    b = ingest([mixed], tmp_path / "b.h5", frame_skip=2, size=16, workers=2, progress=False)
    assert (a.ok, a.error) == (b.ok, b.error) == (1, 3)
    sa, sb = FrameStore(a.store), FrameStore(b.store)
    assert [v.key for v in sa.videos] == [v.key for v in sb.videos]
    np.testing.assert_array_equal(sa.read_clip(sa.videos[0].key), sb.read_clip(sb.videos[0].key))


def test_store_info_counts(tmp_path, scans):
    src = tmp_path / "s"
    src.mkdir()
    for p in range(4):
        scans.dicom(src / f"{p}.dcm", scans.clip(t=3, seed=p, text=f"P{p}"), patient_id=f"P{p % 2}")
    ingest([src], tmp_path / "f.h5", frame_skip=1, size=16, val_fraction=0.5, progress=False)
    info = store_info(tmp_path / "f.h5")
    assert (info["clips"], info["frames"], info["groups"], info["frame_size"]) == (4, 12, 2, [16, 16])
    assert info["splits"]["train"]["groups"] == info["splits"]["val"]["groups"] == 1
    assert info["splits"]["train"]["frames"] + info["splits"]["val"]["frames"] == 12
    assert 0 < info["diversity"] < 1 and info["groups_per_clip"] == 0.5


def test_synthetic_dataset_end_to_end(tmp_path):
    """The built-in synthetic screens: the stored frames are the fan, the text is gone."""
    from sonossl.data.synthetic import synthesize

    synthesize(tmp_path, videos=2, frames=4, size=32, labelled_per_class=(1, 1, 1))
    s = ingest([tmp_path / "videos"], tmp_path / "frames.h5", frame_skip=1, size=32, progress=False)
    assert (s.ok, s.error) == (2, 0)  # _truth.csv skipped, not an error
    truth = {r["file"]: r for r in csv.DictReader(open(tmp_path / "videos" / "_truth.csv"))}
    for row in _manifest(s.manifest)[1]:
        t = truth[row["source"].rsplit("/", 1)[-1]]
        assert [row[k] for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")] == [
            t[k] for k in ("fan_x0", "fan_y0", "fan_x1", "fan_y1")
        ]
