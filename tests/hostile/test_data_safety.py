"""Nothing lost, nothing leaked: outputs apart from inputs, one writer per output, pseudonyms that
need a secret, only scans ingested, memory bounded by a pixel budget whatever a file declares."""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pydicom
from helpers import make_labelled, spawn_cli
from hostile_kit import dicom_sources, tiny_store, write_yaml
from PIL import Image, ImageDraw

from sonossl.data.ingest import default_key_file, key_fingerprint, load_key, pseudonym
from sonossl.outlock import lock_file

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
GiB = 1 << 30


def manifest(path: Path) -> dict[str, dict]:
    with open(path, newline="") as fh:
        return {Path(r["source"]).name: r for r in csv.DictReader(fh)}


# ------------------------------------------------------------------ outputs and inputs
def test_evaluate_out_on_its_labels_is_refused_and_deletes_nothing(sonossl, tmp_path):
    labels = make_labelled(tmp_path / "L", {"train": 2, "valid": 1, "test": 1}, size=16)
    before = sorted(p.relative_to(labels) for p in labels.rglob("*"))
    for extra in ([], ["--overwrite"]):
        line = sonossl.refused("evaluate", "--labels", labels, "--out", labels, "--protocol", "linear", *extra,
                               names=("the output is the input --labels",))
        assert str(labels) in line
    assert sorted(p.relative_to(labels) for p in labels.rglob("*")) == before


def test_pretrain_out_around_its_frame_store_is_refused(sonossl, tmp_path):
    d = tmp_path / "D"
    d.mkdir()
    store = tiny_store(d / "frames.h5")
    (d / "frames.manifest.csv").write_text("source,video_id\n")
    sonossl.refused("pretrain", "--frames", store, "--out", d, "--overwrite", "--max-steps", "1",
                    names=("contains the input --frames",))
    assert store.is_file() and (d / "frames.manifest.csv").is_file()


def test_overwrite_refuses_a_folder_sonossl_did_not_write(sonossl, tmp_path):
    labels = make_labelled(tmp_path / "L", {"train": 2, "valid": 1, "test": 1}, size=16)
    mine = tmp_path / "my_results"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    sonossl.refused("evaluate", "--labels", labels, "--out", mine, "--overwrite", "--protocol", "linear",
                    "--fractions", "100", names=("--overwrite refused", "no .sonossl-output marker"))
    assert (mine / "thesis.docx").read_text() == "years of work"


def test_ingest_out_on_its_source_folder_is_one_line(sonossl, scans, tmp_path):
    src = dicom_sources(scans, tmp_path / "DIR", clips=2, frames=3, per_patient=1)
    for extra in ([], ["--overwrite"]):
        line = sonossl.refused("ingest", src, "--out", src, *extra, names=("is a folder",))
        assert "--resume" not in line
    assert not (tmp_path / "DIR.partial").exists() and len(list(src.iterdir())) == 2
    sonossl.refused("ingest", src, "--out", tmp_path / "x.h5", "--shard", "0/3", names=("--shard writes a folder",),
                    untouched=(tmp_path / "x.h5",))


def test_overwrite_of_a_file_that_is_no_frame_store_is_refused(sonossl, scans, tmp_path):
    src = dicom_sources(scans, tmp_path / "scans", clips=1, frames=3, per_patient=1)
    theirs = tmp_path / "seed_data.h5"
    with h5py.File(theirs, "w") as f:
        f["clip"] = np.zeros((2, 8, 8), np.uint8)
    sonossl.refused("ingest", src, "--out", theirs, "--overwrite", names=("not a frame store written by sonossl",))
    assert h5py.File(theirs, "r")["clip"].shape == (2, 8, 8)


def test_study_names_that_would_escape_the_study_folder_are_refused(sonossl, tmp_path):
    labels = make_labelled(tmp_path / "L", {"train": 2, "valid": 1, "test": 1}, size=16)
    for where in ("labelled", "variants"):
        spec = {"name": "s", "data": {"labelled": {"ok": str(labels)}}, "evaluate": {"inits": ["random"]}}
        if where == "labelled":
            spec["data"]["labelled"] = {"../../../x": str(labels)}
        else:
            spec["variants"] = {"../../../x": {}}
        study = write_yaml(tmp_path / f"{where}.yaml", spec)
        sonossl.refused("study", study, "--out", tmp_path / "out", names=("../../../x", "folder name"),
                        untouched=(tmp_path / "out",))
    assert not (tmp_path.parent / "x").exists()


# ------------------------------------------------------------------ one writer
def test_two_ingest_writers_one_runs_the_other_names_it(scans, tmp_path):
    a = dicom_sources(scans, tmp_path / "A", clips=6, frames=30, per_patient=2)
    b = dicom_sources(scans, tmp_path / "B", clips=3, frames=30, per_patient=1)
    key, out = tmp_path / "ids.key", tmp_path / "d.h5"
    args = ["--frame-skip", "1", "--size", "32", "--quiet", "--salt-file", key]
    first = spawn_cli("ingest", a, "--out", out, *args, log=tmp_path / "a.log")
    deadline = time.time() + 120
    while not (lock_file(out).is_file() and f'"pid": {first.pid}' in lock_file(out).read_text()):
        assert time.time() < deadline and first.poll() is None, (tmp_path / "a.log").read_text()
        time.sleep(0.002)
    os.kill(first.pid, signal.SIGSTOP)  # the first writer is mid-run, holding the lock, while the second starts
    try:
        second = subprocess.run([sys.executable, "-m", "sonossl", "ingest", str(b), "--out", str(out), *map(str, args)],
                                capture_output=True, text=True, timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(300) == 0, (tmp_path / "a.log").read_text()
    err = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2 and len(err) == 1, second.stderr
    assert f"being written by pid {first.pid}" in err[0] and "sonossl ingest" in err[0]
    ref = tmp_path / "ref.h5"
    assert subprocess.run([sys.executable, "-m", "sonossl", "ingest", str(a), "--out", str(ref), *map(str, args)],
                          capture_output=True, timeout=300).returncode == 0
    with h5py.File(ref, "r") as f, h5py.File(out, "r") as g:
        assert sorted(f) == sorted(g) and len(g) == 6
        for k in f:
            assert np.array_equal(f[k][()], g[k][()])
    assert set(manifest(out.with_suffix(".manifest.csv"))) == {p.name for p in a.iterdir()}


# ------------------------------------------------------------------ pseudonyms
def test_pseudonyms_cannot_be_recomputed_without_the_key(sonossl, scans, tmp_path):
    src = dicom_sources(scans, tmp_path / "scans", clips=2, frames=3, per_patient=1)
    out = tmp_path / "frames.h5"
    assert sonossl("ingest", src, "--out", out, "--frame-skip", "1", "--size", "16", "--quiet")[0] == 0
    key_path = default_key_file(out)
    assert key_path.is_file() and (key_path.stat().st_mode & 0o077) == 0  # private to its owner
    key = load_key(key_path)
    assert len(key) == 64 and len(set(key)) > 8  # 256 random bits
    with h5py.File(out, "r") as f:
        groups = {f[k].attrs["group_id"] for k in f}
        assert f.attrs["key_fingerprint"] == key_fingerprint(key) and key not in json.dumps(
            {k: str(v) for k, v in f.attrs.items()})
    candidates = [f"PatientID:P{i}" for i in range(10)]
    for public in ("sonossl", "", "salt", "secret"):  # the repository's code and the ID alone do not find them
        assert not groups & {pseudonym(c, public) for c in candidates}
    assert groups == {pseudonym(f"PatientID:P{i}", key) for i in range(2)}  # the key does
    other = tmp_path / "other.key"
    other.write_text("ab" * 32)
    sonossl.refused("ingest", src, "--out", out, "--resume", "--salt-file", other, "--frame-skip", "1", "--size", "16",
                    names=("another pseudonym key",))
    weak = tmp_path / "weak.key"
    weak.write_text("1234")
    sonossl.refused("ingest", src, "--out", tmp_path / "w.h5", "--salt-file", weak, names=("at least 32 hex digits",))


# ------------------------------------------------------------------ only scans become clips
def _hospital_export(root: Path) -> Path:
    """Genuine files pydicom ships, as a viewer export mixes them: ultrasound (a 30-frame cine
    among them), CT and MR in several transfer syntaxes, RT dose, SR, RT plan, an ECG waveform,
    a DICOMDIR tree, an empty and a text file, and a symlink loop."""
    import shutil

    ex = root / "export"
    (ex / "series" / "deeper").mkdir(parents=True)
    for name in ("examples_ybr_color.dcm", "examples_jpeg2k.dcm", "examples_palette.dcm", "examples_rgb_color.dcm",
                 "ExplVR_BigEnd.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_jp2klossless.dcm", "rtdose.dcm", "badVR.dcm", "test-SR.dcm", "rtplan.dcm",
                 "waveform_ecg.dcm"):
        shutil.copy(PYDICOM_FILES / name, ex / "series" / name)
    shutil.copytree(PYDICOM_FILES / "dicomdirtests", ex / "dicomdir")
    (ex / "empty.dcm").write_bytes(b"")
    (ex / "readme.bin").write_text("exported by the viewer\n")
    os.symlink("..", ex / "series" / "deeper" / "loop")
    return ex


def test_a_hospital_export_is_ingested_as_it_is(sonossl, tmp_path):
    ex = _hospital_export(tmp_path)
    out = tmp_path / "frames.h5"
    rc, err = sonossl("ingest", ex, "--out", out, "--frame-skip", "1", "--size", "32", "--quiet")
    assert rc == 0 and not any("Traceback" in line for line in err), err
    rows = manifest(out.with_suffix(".manifest.csv"))
    ok = {n for n, r in rows.items() if r["status"] == "ok"}
    assert ok == {"examples_ybr_color.dcm", "examples_jpeg2k.dcm", "examples_palette.dcm", "examples_rgb_color.dcm"}
    for name, modality in [("CT_small.dcm", "CT"), ("MR_small_RLE.dcm", "MR"), ("MR_small_jpeg_ls_lossless.dcm", "MR"),
                           ("MR_small_jp2klossless.dcm", "MR"), ("rtdose.dcm", "RTDOSE")]:
        assert rows[name]["status"] == "error" and f"modality {modality}, not US" in rows[name]["message"], rows[name]
    for name in ("test-SR.dcm", "rtplan.dcm", "waveform_ecg.dcm"):
        assert "without an image" in rows[name]["message"], rows[name]
    assert rows["empty.dcm"]["message"] == "empty file"
    # the 60x80 colour-flow frame: a flat colour overlay, no speckled scan region; said so
    assert "no scan region found" in rows["ExplVR_BigEnd.dcm"]["message"]
    assert sum(1 for r in rows.values() if r["source"].endswith("examples_ybr_color.dcm")) == 1  # the loop: walked once
    assert all("\n" not in r["message"] and len(r["message"]) < 300 for r in rows.values())
    wide = tmp_path / "any.h5"
    assert sonossl("ingest", ex / "series" / "badVR.dcm", ex / "series" / "CT_small.dcm", "--out", wide,
                   "--modality", "any", "--size", "32", "--frame-skip", "1", "--quiet")[0] == 0
    rows = manifest(wide.with_suffix(".manifest.csv"))
    assert rows["CT_small.dcm"]["status"] == "ok"
    assert rows["badVR.dcm"]["message"] == "DICOM NumberOfFrames is '1A'; expected an integer"


def test_images_whose_only_motion_is_text_are_not_a_clip(sonossl, tmp_path):
    """A viewer's thumbnails: black frames, and a line of text (a name, a date) that changes."""
    folder = tmp_path / "thumbs" / "study1"
    folder.mkdir(parents=True)
    for i in range(8):
        im = Image.new("L", (320, 240))
        ImageDraw.Draw(im).text((20, 200), f"DOE^JANE 1980-01-0{i + 1} frame {i}", fill=255)
        im.save(folder / f"{i:03d}.jpg", quality=95)
    out = tmp_path / "frames.h5"
    rc, _ = sonossl("ingest", tmp_path / "thumbs", "--out", out, "--size", "256", "--frame-skip", "1", "--quiet")
    assert rc == 2 and not out.exists()  # nothing ingested: no store to read a name from
    row = manifest(out.with_suffix(".manifest.csv"))["study1"]
    assert row["status"] == "error" and "no scan region found" in row["message"]


# ------------------------------------------------------------------ memory bounded by a pixel budget
# VmHWM, the peak resident set of this process's own memory; not ru_maxrss, which keeps across
# exec the resident set of the forked parent (pytest's, with torch loaded)
MEASURE = textwrap.dedent("""
    import sys
    from sonossl.cli import main
    rc = main(sys.argv[1:])
    kb = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("PEAK", int(kb) * 1024, flush=True)
    sys.exit(rc)
""")


def ingest_peak(*argv) -> tuple[int, int, str]:
    """``sonossl ingest ARGV`` in a fresh process: exit status, peak resident bytes, stderr."""
    p = subprocess.run([sys.executable, "-c", MEASURE, "ingest", *map(str, argv)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak = int(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("PEAK")))
    return p.returncode, peak, p.stderr


def _dicom_declaring(path: Path, rows: int, cols: int, frames: int) -> None:
    """A tiny native DICOM whose header declares ``frames`` frames of rows x cols (its pixel data: 16 bytes)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.3.1", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "US", rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = 1, "MONOCHROME2", 8, 8
    ds.HighBit, ds.PixelRepresentation, ds.PixelData = 7, 0, bytes(16)
    ds.save_as(path, enforce_file_format=True)


def _png_declaring(path: Path, width: int, height: int) -> None:
    """A 1x1 grey PNG whose header (IHDR, CRC fixed) declares width x height."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_bombs_are_refused_before_decoding_within_a_gigabyte(tmp_path):
    bombs = tmp_path / "bombs"
    bombs.mkdir()
    _dicom_declaring(bombs / "huge_frame.dcm", 30000, 30000, 1)  # 900 M pixels a frame
    _dicom_declaring(bombs / "many_frames.dcm", 2048, 2048, 100_000)  # 419 G pixels in all
    _dicom_declaring(bombs / "short.dcm", 2048, 2048, 64)  # within the budget, but 16 bytes of pixels
    (bombs / "pngs").mkdir()
    for i in range(2):
        _png_declaring(bombs / "pngs" / f"{i}.png", 40000, 40000)
    rc, peak, err = ingest_peak(bombs, "--out", tmp_path / "f.h5", "--quiet")
    assert rc == 2 and "Traceback" not in err, err  # nothing could be ingested: one line, and the rows
    assert peak < GiB, peak
    rows = manifest(tmp_path / "f.manifest.csv")
    assert "over the limit of 67,108,864 pixels a frame" in rows["huge_frame.dcm"]["message"]
    assert "pixels a source (--max-source-pixels)" in rows["many_frames.dcm"]["message"]
    assert rows["short.dcm"]["status"] == "error"
    assert "refused before decoding" in rows["pngs"]["message"]


def test_large_but_honest_sources_stream_within_a_gigabyte(tmp_path):
    """A 4096x2160 video and a folder of 8000x8000 PNGs: legal sizes, held one frame at a time."""
    import av

    src = tmp_path / "src"
    src.mkdir()
    with av.open(str(src / "uhd.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 4096, 2160, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(6):
            img = np.zeros((2160, 4096), np.uint8)
            img[400:1800, 1200:2900] = rng.integers(60, 200, (1400, 1700), dtype=np.uint8)  # a speckled scan
            frame = av.VideoFrame.from_ndarray(np.stack([img] * 3, -1), format="rgb24")
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    (src / "big_pngs").mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        img = np.zeros((8000, 8000), np.uint8)
        img[2000:6000, 2000:6000] = rng.integers(60, 200, (4000, 4000), dtype=np.uint8)
        Image.fromarray(img).save(src / "big_pngs" / f"{i}.png", compress_level=1)
    rc, peak, err = ingest_peak(src, "--out", tmp_path / "f.h5", "--frame-skip", "1", "--size", "64", "--quiet")
    assert rc == 0, err
    assert peak < GiB, peak


def test_a_labelled_image_bomb_is_one_line(sonossl, tmp_path):
    labels = make_labelled(tmp_path / "L", {"train": 2, "valid": 1, "test": 1}, size=16)
    victim = next((labels / "img" / "train").glob("*.png"))
    _png_declaring(victim, 30000, 30000)
    sonossl.refused("evaluate", "--labels", labels, "--out", tmp_path / "e", "--protocol", "linear",
                    names=(victim.name, "refused before decoding"), untouched=(tmp_path / "e",))


def test_class_names_are_plain_text_in_figures(sonossl, tmp_path):
    labels = make_labelled(tmp_path / "L", {"train": 3, "valid": 2, "test": 2}, size=16,
                           classes=["4CH $x^", "LVOT", "RVOT"])
    rc, err = sonossl("evaluate", "--labels", labels, "--out", tmp_path / "e", "--protocol", "linear",
                      "--fractions", "100", "--seeds", "0", "--image-size", "16", "--epochs", "2")
    assert rc == 0, err
    assert (tmp_path / "e" / "random_linear_f100_s0" / "confusion.png").is_file()
