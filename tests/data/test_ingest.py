import csv
import logging
import shutil

import numpy as np
import pytest

from sonossl import api
from sonossl.config import IngestConfig
from sonossl.data.framestore import FrameStore
from sonossl.data.ingest import MANIFEST_COLUMNS, assign_splits, default_key_file, ingest, load_key, pseudonym, store_info
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
    s = ingest(IngestConfig(sources=[mixed], out=out, frame_skip=1, size=32, val_fraction=0.0), progress=False)
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
    video = tmp_path / "later"
    shutil.move(mixed / "video", video)  # ingested first without the videos, then with them
    ingest(IngestConfig(sources=[mixed], out=out, size=16), progress=False)
    with pytest.raises(SonosslError, match="exists"):
        ingest(IngestConfig(sources=[mixed], out=out, size=16), progress=False)
    # ids are relative to the folder given: a subfolder would give the clip another id, so it is refused
    with pytest.raises(SonosslError, match=r"frames\.h5: none of its 1 clips is among these sources"):
        ingest(IngestConfig(sources=[mixed / "dicom"], out=out, size=16), resume=True, progress=False)
    assert len(FrameStore(out).videos) == 1 and not (tmp_path / "frames.h5.partial").exists()
    shutil.move(video, mixed / "video")
    for _ in range(2):
        s = ingest(IngestConfig(sources=[mixed], out=out, size=16), resume=True, progress=False)
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
    ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=16, val_fraction=0.34, seed=3), progress=False)
    store = FrameStore(out)
    train, val = ({v.group_id for v in store.split(s)} for s in ("train", "val"))
    assert len(train | val) == 6 and not train & val and len(val) == 2
    assert {v.group_id for v in store.videos} == {pseudonym(f"PatientID:PAT{p}", load_key(default_key_file(out))) for p in range(6)}
    again = ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=16, val_fraction=0.34, seed=3),
                                overwrite=True, progress=False)
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
        ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=32), progress=False)
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
        ingest(IngestConfig(sources=[src], out=out), progress=False)
    _, rows = _manifest(tmp_path / "frames.manifest.csv")
    assert [r["status"] for r in rows] == ["error", "error"]
    assert not out.exists() and not (tmp_path / "frames.h5.partial").exists()


def test_bad_options_refused(tmp_path, mixed):
    for kwargs in ({"frame_skip": 0}, {"crop": "fan"}, {"val_fraction": 1.0}, {"size": 2}, {"dedup": 300}):
        with pytest.raises(SonosslError, match=next(iter(kwargs))):  # the edge that builds the config names the key
            api.ingest([mixed], tmp_path / "f.h5", progress=False, **kwargs)
    assert not (tmp_path / "f.h5").exists()
    with pytest.raises(SonosslError, match="no source files"):
        (tmp_path / "nothing").mkdir()
        ingest(IngestConfig(sources=[tmp_path / "nothing"], out=tmp_path / "f.h5"), progress=False)


def test_crop_modes(tmp_path, scans):
    src = tmp_path / "s"
    src.mkdir()
    scans.dicom(src / "r.dcm", scans.clip(t=3), regions=[(16, 10, 64, 50)])
    kept = {}
    for crop in ("auto", "dicom", "none"):
        s = ingest(IngestConfig(sources=[src], out=tmp_path / f"{crop}.h5", crop=crop, frame_skip=1, size=16),
                                progress=False)
        row = _manifest(s.manifest)[1][0]
        kept[crop] = tuple(int(row[k]) for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1"))
    assert kept == {"auto": (16, 10, 64, 50), "dicom": (16, 10, 64, 50), "none": (0, 0, 72, 56)}


def test_workers_give_the_same_store(tmp_path, mixed):
    shutil.rmtree(mixed / "video")
    key = tmp_path / "shared.key"  # one pseudonym key for both stores: the same ids
    a = ingest(IngestConfig(sources=[mixed], out=tmp_path / "a.h5", frame_skip=2, size=16, salt_file=key),
                            progress=False)
    b = ingest(IngestConfig(sources=[mixed], out=tmp_path / "b.h5", frame_skip=2, size=16, workers=2, salt_file=key),
                            progress=False)
    assert (a.ok, a.error) == (b.ok, b.error) == (1, 3)
    sa, sb = FrameStore(a.store), FrameStore(b.store)
    assert [v.key for v in sa.videos] == [v.key for v in sb.videos]
    np.testing.assert_array_equal(sa.read_clip(sa.videos[0].key), sb.read_clip(sb.videos[0].key))


def test_store_info_counts(tmp_path, scans):
    src = tmp_path / "s"
    src.mkdir()
    for p in range(4):
        scans.dicom(src / f"{p}.dcm", scans.clip(t=3, seed=p, text=f"P{p}"), patient_id=f"P{p % 2}")
    ingest(IngestConfig(sources=[src], out=tmp_path / "f.h5", frame_skip=1, size=16, val_fraction=0.5), progress=False)
    info = store_info(tmp_path / "f.h5")
    assert (info["clips"], info["frames"], info["groups"], info["frame_size"]) == (4, 12, 2, [16, 16])
    assert info["splits"]["train"]["groups"] == info["splits"]["val"]["groups"] == 1
    assert info["splits"]["train"]["frames"] + info["splits"]["val"]["frames"] == 12
    assert 0 < info["diversity"] < 1 and info["groups_per_clip"] == 0.5


def test_synthetic_dataset_end_to_end(tmp_path):
    """The built-in synthetic screens: the stored frames are the fan, the text is gone."""
    from sonossl.data.synthetic import synthesize

    synthesize(tmp_path, videos=2, frames=4, size=32, labelled_per_class=(1, 1, 1))
    s = ingest(IngestConfig(sources=[tmp_path / "videos"], out=tmp_path / "frames.h5", frame_skip=1, size=32),
                            progress=False)
    assert (s.ok, s.error) == (2, 0)  # _truth.csv skipped, not an error
    truth = {r["file"]: r for r in csv.DictReader(open(tmp_path / "videos" / "_truth.csv"))}
    for row in _manifest(s.manifest)[1]:
        t = truth[row["source"].rsplit("/", 1)[-1]]
        assert [row[k] for k in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")] == [
            t[k] for k in ("fan_x0", "fan_y0", "fan_x1", "fan_y1")
        ]


def test_seed_hdf5_gives_one_row_and_clip_per_dataset(tmp_path, scans):
    import h5py

    src = tmp_path / "src"
    src.mkdir()
    with h5py.File(src / "seed.h5", "w") as f:
        f["clipA"], f["clipB"] = scans.clip(t=4, seed=1), scans.clip(t=3, seed=2)
        f["broken"] = np.zeros((2, 4), np.uint8)
    (src / "junk.hdf5").write_bytes(b"not hdf5" * 20)
    out = tmp_path / "frames.h5"
    s = ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=16, val_fraction=0.0), progress=False)
    assert (s.ok, s.error, s.frames_kept) == (2, 2, 7)
    rows = _manifest(s.manifest)[1]
    assert [r["source"].rsplit("/", 1)[-1] for r in rows] == ["junk.hdf5", "seed.h5::broken", "seed.h5::clipA",
                                                              "seed.h5::clipB"]  # h5py lists names sorted
    assert [r["status"] for r in rows] == ["error", "error", "ok", "ok"]
    assert "expected uint8" in rows[1]["message"] and str(src) not in rows[1]["message"]
    store = FrameStore(out)
    assert {v.key for v in store.videos} == {rows[2]["video_id"], rows[3]["video_id"]}
    assert store.read_clip(rows[2]["video_id"]).shape == (4, 16, 16)
    store.close()
    s2 = ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=16), resume=True, progress=False)
    assert (s2.ok, s2.skipped, s2.error) == (0, 2, 2) and len(_manifest(s2.manifest)[1]) == 4


def test_image_folder_ingests_as_one_clip(tmp_path, scans):
    from PIL import Image

    frames = scans.clip(t=4)
    clip_dir = tmp_path / "src" / "clip1"
    clip_dir.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(clip_dir / f"{i:02d}.png")
    s = ingest(IngestConfig(sources=[tmp_path / "src"], out=tmp_path / "f.h5", frame_skip=1, size=16), progress=False)
    (row,) = _manifest(s.manifest)[1]
    assert row["source"].endswith("clip1") and (row["status"], row["frames_in"], row["frames_kept"]) == ("ok", "4", "4")
    assert FrameStore(s.store).read_clip(row["video_id"]).shape == (4, 16, 16)


def test_dedup_drops_frames_like_the_last_kept_one():
    from sonossl.data.ingest import dedup_indices

    base = np.full((6, 40, 40), 100, np.uint8)
    base[1] += 2  # mean |diff| to frame 0: 2
    base[2] += 4  # 4 from frame 0
    base[3] += 5  # 1 from frame 2 (the last kept), 5 from frame 0
    base[4] += 9
    base[5, :20] = 200  # half the frame changes by 100: mean |diff| 50 from frame 4
    assert dedup_indices(base, 3.0) == [0, 2, 4, 5]
    assert dedup_indices(base, 0.0) == list(range(6))
    assert dedup_indices(base, 60.0) == [0]


def test_ingest_dedup_counts_kept_frames(tmp_path, scans):
    src = tmp_path / "s"
    src.mkdir()
    moving = scans.clip(t=6)
    still = np.repeat(moving[:1], 6, axis=0)
    still[3:] = moving[3]  # one real change in a still loop: frames 0 and 3 are kept
    scans.dicom(src / "moving.dcm", moving)
    scans.dicom(src / "still.dcm", still)
    s = ingest(IngestConfig(sources=[src], out=tmp_path / "f.h5", frame_skip=1, size=32, dedup=2.0), progress=False)
    kept = {r["source"].rsplit("/", 1)[-1]: r for r in _manifest(s.manifest)[1]}
    assert kept["moving.dcm"]["frames_kept"] == "6" and kept["still.dcm"]["frames_kept"] == "2"
    assert kept["still.dcm"]["frames_in"] == "6" and "dedup dropped 4" in kept["still.dcm"]["message"]
    store = FrameStore(s.store)
    assert store.record(kept["still.dcm"]["video_id"]).n_frames == 2 and s.frames_kept == 8
    with pytest.raises(SonosslError, match="dedup"):
        api.ingest([src], tmp_path / "g.h5", dedup=-1, progress=False)


GENUINE = ["examples_ybr_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm"]


def test_genuine_ultrasound_dicoms_ingest_without_their_patient_values(tmp_path, scans):
    """pydicom's genuine US files: every frame stored, and none of their patient/study attribute
    values (names, ids, dates, institution) in any byte of the store or the manifest."""
    import pydicom

    src = tmp_path / "src"
    src.mkdir()
    values = set()
    for name in GENUINE:
        path = scans.pydicom_file(name)
        (src / name).write_bytes(path.read_bytes())
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDate", "ContentDate",
                   "InstitutionName", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            v = str(ds.get(kw, "") or "").strip()
            if len(v) >= 4:  # shorter values occur by chance in compressed pixel bytes
                values.add(v.encode())
    assert values  # the files do carry such values, so the check below can fail
    out = tmp_path / "frames.h5"
    s = ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=48, val_fraction=0.0), progress=False)
    assert (s.ok, s.error) == (len(GENUINE), 0)
    assert {r.n_frames for r in FrameStore(out).videos} == {30, 1}
    for blob in (out.read_bytes(), s.manifest.read_bytes()):
        assert not [v for v in values if v in blob]


def test_videos_made_from_the_genuine_cine_ingest_to_the_same_content(tmp_path, scans):
    """The 30-frame cine loop, re-encoded as MP4 and AVI, stores what the DICOM stores (codec loss)."""
    from sonossl.data.readers import read_source

    frames = read_source(scans.pydicom_file("examples_ybr_color.dcm")).frames
    src = tmp_path / "src"
    src.mkdir()
    (src / "cine.dcm").write_bytes(scans.pydicom_file("examples_ybr_color.dcm").read_bytes())
    scans.video(src / "cine.mp4", frames)
    scans.video(src / "cine.avi", frames)
    out = tmp_path / "frames.h5"
    s = ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=64, val_fraction=0.0), progress=False)
    assert (s.ok, s.error) == (3, 0)
    _, rows = _manifest(s.manifest)
    store = FrameStore(out)
    clips = {r["source"].rsplit(".", 1)[-1]: store.read_clip(r["video_id"]).astype(int) for r in rows}
    assert all(c.shape == (30, 64, 64) for c in clips.values())
    for codec in ("mp4", "avi"):
        assert np.abs(clips[codec] - clips["dcm"]).mean() < 6, codec
        assert np.abs(clips[codec] - np.roll(clips["dcm"], 8, axis=2)).mean() > 6  # a shifted image is farther


# ------------------------------------------------------------------ the same archive, wherever it sits
def _archive(root, scans):
    """DICOMs (patient groups), videos and an image-less HDF5 seed file (folder and file groups)."""
    import h5py

    (root / "a" / "b").mkdir(parents=True)
    (root / "c").mkdir()
    for p in range(2):
        scans.dicom(root / "a" / f"{p}.dcm", scans.clip(t=4, seed=p, text=f"P{p}"), patient_id=f"P{p}")
    scans.video(root / "a" / "b" / "clip.mp4", scans.clip(t=4, seed=5))
    scans.video(root / "c" / "clip.mp4", scans.clip(t=4, seed=6))
    rng = np.random.default_rng(0)
    with h5py.File(root / "c" / "seed.h5", "w") as f:
        for name in ("x", "y"):
            f[name] = rng.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    return root


def _contents(store_path):
    store = FrameStore(store_path)
    return [(v.key, v.video_id, v.group_id, v.split, store.read_clip(v.key).tobytes()) for v in store.videos]


def test_one_archive_ingested_from_two_folders_gives_the_same_store(tmp_path, scans):
    first = _archive(tmp_path / "one" / "archive", scans)
    second = tmp_path / "two" / "deeper" / "scans"
    shutil.copytree(first, second)  # another mount point, another folder name
    key = tmp_path / "shared.key"
    stores = []
    for src, name in ((first, "a.h5"), (second, "b.h5")):
        s = ingest(IngestConfig(sources=[src], out=tmp_path / name, frame_skip=1, size=16, val_fraction=0.5,
                                salt_file=key), progress=False)
        assert (s.ok, s.error) == (6, 0)
        stores.append(_contents(s.store))
    assert len(stores[0]) == 6 and stores[0] == stores[1]  # ids, order, groups, splits and frames
    assert {split for *_, split, _ in stores[0]} == {"train", "val"}
    assert len({g for _, _, g, _, _ in stores[0]}) == 6  # 2 patients, 2 folders of videos, 2 clips of seed.h5
    # the ids are the pseudonyms of the paths relative to the folder given, ::dataset for HDF5
    k = load_key(key)
    assert {v for _, v, *_ in stores[0]} == {pseudonym(p, k) for p in
                                             ("a/0.dcm", "a/1.dcm", "a/b/clip.mp4", "c/clip.mp4", "c/seed.h5::x",
                                              "c/seed.h5::y")}
    # two sources given: relative to the folder holding both
    s = ingest(IngestConfig(sources=[first / "a", first / "c"], out=tmp_path / "c.h5", frame_skip=1, size=16,
                            val_fraction=0.5, salt_file=key), progress=False)
    assert [c[1:] for c in _contents(s.store)] == [c[1:] for c in stores[0]]


def test_a_store_keyed_on_absolute_paths_reads_but_is_not_added_to(tmp_path, scans):
    import h5py

    src = tmp_path / "s"
    src.mkdir()
    scans.dicom(src / "0.dcm", scans.clip(t=3), patient_id="P0")
    out = tmp_path / "old.h5"
    ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=16), progress=False)
    with h5py.File(out, "a") as f:  # as an older sonossl wrote it
        assert f.attrs["id_keying"] == "relative-path"
        del f.attrs["id_keying"]
    assert FrameStore(out).n_frames == 3
    scans.dicom(src / "1.dcm", scans.clip(t=3, seed=1), patient_id="P1")
    with pytest.raises(SonosslError, match=r"old\.h5: its clip ids are pseudonyms of absolute source paths"):
        ingest(IngestConfig(sources=[src], out=out, frame_skip=1, size=16), resume=True, progress=False)
    assert FrameStore(out).n_frames == 3
