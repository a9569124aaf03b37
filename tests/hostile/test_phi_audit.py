"""PHI audit: scans carrying a known patient's name, ID, birth date, study date and hospital, in
their DICOM tags AND burned into the screen beside the fan, go through ingest -> pretrain ->
evaluate -> report -> predict. Afterwards no output file holds any of those values (in any
common spelling), in its bytes, its HDF5 attributes, its PNG text chunks, its zipped checkpoint
members or its embedded images; no output but the private manifest's ``source`` column (and
predict's own listing of the inputs it was given) names a source path; and the burned-in text
leaves no trace in the frame store's pixels."""

from __future__ import annotations

import base64
import csv
import io
import re
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pydicom
from hostile_kit import TINY_PRETRAIN, write_yaml
from PIL import Image, ImageDraw

from sonossl.data.synthetic import synthesize

PHI = {
    "PatientName": "Quixote^Dulcinea^Amaranta",
    "PatientID": "MRN-4417-ZQW",
    "PatientBirthDate": "19870412",
    "StudyDate": "20230917",
    "InstitutionName": "St Elsewhere Fetal Unit",
    "ReferringPhysicianName": "Zhivago^Yurij",
}
BURNED = ["QUIXOTE^DULCINEA", "ID MRN-4417-ZQW", "DOB 1987-04-12", "2023-09-17", "ST ELSEWHERE"]


def date_variants(d: str) -> list[str]:
    y, m, dd = d[:4], d[4:6], d[6:]
    return [d, f"{y}-{m}-{dd}", f"{y}/{m}/{dd}", f"{dd}/{m}/{y}", f"{m}/{dd}/{y}", f"{dd}.{m}.{y}", f"{y}.{m}.{dd}"]


def needles(extra: list[str]) -> list[bytes]:
    """Every spelling of the PHI above (compared lower-case)."""
    words = ["Quixote^Dulcinea", "Quixote Dulcinea", "Dulcinea^Quixote", "Dulcinea Quixote", "Quixote", "Dulcinea",
             "Amaranta", "MRN-4417-ZQW", "MRN4417ZQW", "4417-ZQW", "St Elsewhere", "Elsewhere Fetal", "Zhivago",
             *date_variants(PHI["PatientBirthDate"]), *date_variants(PHI["StudyDate"]), *extra]
    return sorted({w.lower().encode() for w in words})


def burn(frames: np.ndarray, x_end: int, lines: list[str]) -> np.ndarray:
    """Blank columns [0, x_end) of every frame (the synthetic screen's own text panel) and write
    ``lines`` there (``lines=[]``: the clean screen)."""
    out = frames.copy()
    out[:, :, :x_end] = 0
    if lines:
        panel = Image.new("L", (x_end, frames.shape[1]), 0)
        draw = ImageDraw.Draw(panel)
        for k, s in enumerate(lines):
            draw.text((2, 2 + 12 * k), s, fill=230)
        out[:, :, :x_end] = np.maximum(out[:, :, :x_end], np.asarray(panel)[None])
    return out


def rewrite(src: Path, dst: Path, box, lines: list[str], regions: bool) -> Path:
    """``src`` with our PHI in its tags, ``lines`` burned left of the fan, with or without its
    ultrasound regions (without them the crop is found from motion alone)."""
    ds = pydicom.dcmread(src)
    for tag, value in PHI.items():
        setattr(ds, tag, value)
    ds.SeriesDate = ds.ContentDate = PHI["StudyDate"]
    frames = ds.pixel_array
    ds.PixelData = np.ascontiguousarray(burn(frames, box[0] - 1, lines)).tobytes()
    if not regions:
        del ds.SequenceOfUltrasoundRegions
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def texts_of(path: Path, blob: bytes) -> list[tuple[str, bytes]]:
    """(where, bytes) to search: the file itself, plus what hides from a byte search (zip
    members, PNG text chunks, images embedded in HTML, HDF5 attributes)."""
    out = [("bytes", blob)]
    if zipfile.is_zipfile(io.BytesIO(blob)):
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            out += [(f"zip:{n}", z.read(n)) for n in z.namelist()]
            out += [("zip-names", "\n".join(z.namelist()).encode())]
    if blob[:8] == b"\x89PNG\r\n\x1a\n":
        with Image.open(io.BytesIO(blob)) as im:
            out.append(("png-text", repr({**im.info, **getattr(im, "text", {})}).encode()))
    if path.suffix in (".html", ".htm"):
        for i, b64 in enumerate(re.findall(rb"base64,([A-Za-z0-9+/=]+)", blob)):
            inner = base64.b64decode(b64)
            out += [(f"embedded{i}:{w}", b) for w, b in texts_of(Path("x.png"), inner)]
    if blob[:8] == b"\x89HDF\r\n\x1a\n":
        found = []
        with h5py.File(path, "r") as f:
            found += [f"{k}={v!r}" for k, v in f.attrs.items()]
            f.visititems(lambda name, obj: found.extend([name] + [f"{k}={v!r}" for k, v in obj.attrs.items()]))
        out.append(("hdf5-attrs", "\n".join(found).encode()))
    return out


def leaks(folder: Path, words: list[bytes]) -> list[str]:
    found = []
    for path in sorted(p for p in folder.rglob("*")):
        rel = str(path.relative_to(folder)).lower().encode()
        found += [f"{path}: name holds {w!r}" for w in words if w in rel]
        if path.is_file():
            for where, blob in texts_of(path, path.read_bytes()):
                low = blob.lower()
                found += [f"{path} [{where}]: {w!r}" for w in words if w in low]
    return found


def test_no_phi_leaves_the_raw_data(sonossl, capsys, tmp_path: Path):
    raw, work = tmp_path / "raw", tmp_path / "work"
    summary = synthesize(raw / "synth", videos=4, frames=6, size=64, labelled_per_class=(4, 2, 2))  # a fan big enough to find by motion
    scans = raw / "scans"
    synth_phi = []
    for k, v in enumerate(summary["videos"]):
        src = raw / "synth" / v["path"]
        ds = pydicom.dcmread(src, stop_before_pixels=True)
        synth_phi += [str(ds.PatientName), str(ds.PatientID), str(ds.PatientName).replace("^", " ")]
        rewrite(src, scans / f"clip_{k}.dcm", v["fan_box"], BURNED, regions=True)
    broken = scans / "clip_broken.dcm"  # a PHI-carrying file that fails to decode: its error row must not quote tags
    broken.write_bytes((scans / "clip_0.dcm").read_bytes()[:-3000])
    labelled = raw / "synth" / "labelled"
    words = needles(synth_phi)
    assert len(leaks(scans, words)) >= 5  # control: the search finds the PHI where it is

    logs = []

    def run(*argv):
        rc, err = sonossl(*argv)
        logs.append("\n".join(err))
        assert rc == 0, err

    frames = work / "frames.h5"
    capsys.readouterr()
    run("ingest", scans, "--out", frames, "--frame-skip", "1", "--size", "32")
    cfg = write_yaml(tmp_path / "pretrain.yaml", {**TINY_PRETRAIN, "max_steps": 2})
    run("pretrain", "--config", cfg, "--frames", frames, "--out", work / "run")
    run("evaluate", "--labels", labelled, "--init", work / "run", "--protocol", "linear,finetune", "--fractions", "100",
        "--seeds", "0", "--image-size", "32", "--epochs", "1", "--linear-epochs", "2", "--out", work / "eval")
    run("report", work / "eval")
    run("predict", "--model", work / "eval" / "barlowtwins_finetune_f100_s0", scans, "--out", work / "pred" / "pred.csv")
    logs.append(capsys.readouterr().out)
    (work / "console.log").write_text("\n".join(logs))  # what the commands printed is searched too

    assert (work / "eval" / "report.html").is_file() and (work / "pred" / "pred_clips").is_dir()
    assert leaks(work, words) == []

    # source paths: only in the manifest's source column (and predict's list of its own inputs)
    manifest = frames.with_suffix(".manifest.csv")
    rows = list(csv.DictReader(open(manifest, newline="")))
    assert {r["status"] for r in rows} == {"ok", "error"} and len(rows) == 5
    path_words = [str(scans).encode(), b"clip_"]  # the scans (the labelled set's folder is named in configs, by design)
    for r in rows:
        assert not any(w.decode() in v for w in path_words for k, v in r.items() if k != "source"), r
    elsewhere = [p for p in work.rglob("*") if p.is_file() and p != manifest and "pred" not in p.relative_to(work).parts
                 and p.name != "console.log"]
    for p in elsewhere:
        assert not any(w in blob for _, blob in texts_of(p, p.read_bytes()) for w in path_words), p

    # the burned-in text leaves no trace in the store: same pixels as the clean screen, with the
    # DICOM regions and with the crop found from motion alone; outside the fan is blank
    stores = {}
    for label, lines, regions in [("burned_noreg", BURNED, False), ("clean_noreg", [], False), ("clean", [], True)]:
        for k, v in enumerate(summary["videos"]):
            rewrite(raw / "synth" / v["path"], raw / label / f"clip_{k}.dcm", v["fan_box"], lines, regions)
        stores[label] = tmp_path / f"{label}.h5"
        run("ingest", raw / label, "--out", stores[label], "--frame-skip", "1", "--size", "32", "--salt-file", tmp_path / "ids.key",
            "--quiet")

    def frames_of(path: Path) -> tuple[list[bytes], list[tuple[int, ...]], list[np.ndarray]]:
        with h5py.File(path, "r") as f:  # compared as sets: keys are pseudonyms of different paths
            clips = [f[key][()] for key in f]
            return sorted(c.tobytes() for c in clips), sorted(tuple(int(v) for v in f[key].attrs["crop_box"]) for key in f), clips

    main, main_boxes, main_clips = frames_of(frames)
    assert main == frames_of(stores["clean"])[0]
    assert main_boxes == sorted(tuple(v["fan_box"]) for v in summary["videos"])  # the DICOM regions: the fan only
    burned, burned_boxes, burned_clips = frames_of(stores["burned_noreg"])
    assert burned == frames_of(stores["clean_noreg"])[0]  # motion finds the fan, not the static text
    assert min(b[0] for b in burned_boxes) >= min(v["fan_box"][0] for v in summary["videos"]) - 1
    for clip in main_clips + burned_clips:
        assert clip[:, 0, 0].max() == 0 and clip[:, 0, -1].max() == 0  # blank corners beside the sector's apex


def test_a_screen_whose_scan_region_is_not_found_is_not_stored(sonossl, scans, tmp_path: Path):
    """No DICOM regions and nothing moving: the auto crop would be the whole screen, burned-in
    text included. That clip becomes an error row; ``--crop none`` is the explicit way to keep it."""
    src = tmp_path / "scans"
    src.mkdir()
    still = np.repeat(scans.clip(1), 4, axis=0)  # one frame shown 4 times, with "DOE J 1999" burned in ...
    x0, y0, x1, y1 = scans.FAN_BOX
    still[:, y0:y1, x0:x1] = 0  # ... and a frozen, blank fan: no motion, no speckle to find
    scans.dicom(src / "still.dcm", still)
    scans.dicom(src / "moving.dcm", scans.clip(6))
    out = tmp_path / "frames.h5"
    rc, err = sonossl("ingest", src, "--out", out, "--frame-skip", "1", "--size", "32", "--quiet")
    assert rc == 0, err
    rows = {Path(r["source"]).name: r for r in csv.DictReader(open(out.with_suffix(".manifest.csv"), newline=""))}
    assert rows["moving.dcm"]["status"] == "ok"
    assert rows["still.dcm"]["status"] == "error" and "--crop none" in rows["still.dcm"]["message"]
    with h5py.File(out, "r") as f:
        assert list(f) == [rows["moving.dcm"]["video_id"]]
    rc, err = sonossl("ingest", src / "still.dcm", "--out", tmp_path / "all.h5", "--crop", "none", "--quiet")
    assert rc == 0, err
