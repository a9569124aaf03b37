"""Scan-likeness that text cannot pass: sources whose moving content is text or graphics on a flat
background (report thumbnails, report pages, a UI with a moving cursor and clock) are refused
with a manifest row, in several fonts, sizes and positions, while real scans pass with or without
burned-in text around them: pydicom's genuine US files, the synthetic clips, and a cine whose fan
is small on a large screen. Every source goes through the real readers and region search
(``process_source``, what ``ingest`` runs per source)."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from sonossl.data.ingest import process_source
from sonossl.data.readers import read_source

OPTS = {"frame_skip": 1, "max_frames": None, "crop": "auto", "size": 32, "salt": "k"}
WORDS = ["DOE^JANE", "1980-01-01", "MRN 4471823", "ST MARY HOSPITAL", "Report: normal four-chamber view",
         "Dr. SMITH", "12:04:33", "Gestational age 22w3d", "Impression: no anomaly"]


def _ttf_files(limit: int = 6) -> list[str]:
    """Up to ``limit`` TrueType fonts installed on the machine (fc-list), spread over its list."""
    try:
        out = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    files = sorted({p for p in (line.split(":")[0].strip() for line in out.splitlines()) if p.lower().endswith(".ttf")})
    if not files:
        return []
    return [files[i] for i in np.unique(np.linspace(0, len(files) - 1, min(limit, len(files))).astype(int))]


FONTS = ["bitmap", "default"] + _ttf_files()  # PIL's bitmap font, PIL's scalable default, the machine's TTFs


def _font(name: str, size: int):
    if name == "bitmap":
        return ImageFont.load_default()
    if name == "default":
        return ImageFont.load_default(size)
    return ImageFont.truetype(name, size)


def _save(frames: list[np.ndarray], folder: Path, jpeg: bool) -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i:03d}.{'jpg' if jpeg else 'png'}", **({"quality": 80} if jpeg else {}))
    return folder


def thumbnails(folder: Path, font, rng, size=(320, 240), lines=1, ink=255, paper=0, n=6, jpeg=True) -> Path:
    """The issue's patient-portal export: a name and birth date, elsewhere in each image."""
    frames = []
    for _ in range(n):
        im = Image.new("L", size, paper)
        draw = ImageDraw.Draw(im)
        for _ in range(lines):
            text = " ".join(rng.choice(WORDS, 2))
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            xy = (int(rng.integers(0, max(1, size[0] - (x1 - x0)))), int(rng.integers(0, max(1, size[1] - (y1 - y0)))))
            draw.text(xy, text, fill=ink, font=font)
        frames.append(np.asarray(im))
    return _save(frames, folder, jpeg)


def report_pages(folder: Path, font, rng, points: int, ink=0, paper=255, n=3, jpeg=False) -> Path:
    """A multi-page report export: pages of dense text, different on every page."""
    frames = []
    for _ in range(n):
        im = Image.new("L", (600, 800), paper)
        draw = ImageDraw.Draw(im)
        for y in range(30, 770, int(points * 1.25) + 1):
            draw.text((30, y), " ".join(rng.choice(WORDS, 6)), fill=ink, font=font)
        frames.append(np.asarray(im))
    return _save(frames, folder, jpeg)


# (font index, size, kind, ink on paper, jpeg): every font at a small, a middle and a large size,
# the layouts and polarities cycling over them
CASES = [(f, size, kind, polarity, jpeg)
         for k, (f, size) in enumerate((f, s) for f in range(len(FONTS)) for s in (11, 24, 56))
         for kind, polarity, jpeg in [[("thumbs", (255, 0), True), ("thumbs3", (0, 255), False),
                                       ("thumbs3", (180, 20), True)][k % 3]]]
CASES += [(f, points, "report", (0, 255), f % 2 == 0) for f in range(0, len(FONTS), 2) for points in (9, 14)]


def _refused(res: dict) -> None:
    assert res["status"] == "error", f"text was ingested as a clip: {res.get('message')}"
    assert "no scan region found" in res["message"] and "text or graphics" in res["message"]


@pytest.mark.parametrize("case", CASES, ids=[f"{Path(FONTS[c[0]]).stem}-{c[1]}-{c[2]}-{c[3][0]}on{c[3][1]}"
                                             for c in CASES])
def test_text_only_image_folders_are_refused(case, tmp_path):
    f, size, kind, (ink, paper), jpeg = case
    rng = np.random.default_rng(size * 31 + f)
    font = _font(FONTS[f], size)
    if kind == "report":
        folder = report_pages(tmp_path / "pages", font, rng, size, ink=ink, paper=paper, jpeg=jpeg)
    else:
        folder = thumbnails(tmp_path / "thumbs", font, rng, lines=3 if kind == "thumbs3" else 1, ink=ink, paper=paper,
                            size=(640, 480) if size == 56 else (320, 240), jpeg=jpeg)
    _refused(process_source(folder, OPTS))


def _ui_video(path: Path, scans, what: str) -> Path:
    """An MP4 of a screen: a report page with a moving cursor and a ticking clock, a scrolling
    report, or a chart whose line and boxes move."""
    font = _font(FONTS[-1], 14)
    frames = []
    for i in range(12):
        im = Image.new("L", (480, 360), 235 if what != "chart" else 0)
        draw = ImageDraw.Draw(im)
        if what == "cursor":
            for k in range(12):
                line = " ".join(WORDS[(k + j) % len(WORDS)] for j in range(3))
                draw.text((20, 40 + 24 * k), line, fill=20, font=font)
            x, y = 60 + 25 * i, 60 + 18 * i
            draw.polygon([(x, y), (x, y + 18), (x + 5, y + 13), (x + 12, y + 13)], fill=0, outline=255)
            draw.rectangle([0, 0, 479, 24], fill=60)
            draw.text((380, 4), f"12:04:{i:02d}", fill=255, font=font)
        elif what == "scroll":
            for k in range(20):
                draw.text((20, 30 + 22 * k - 9 * i), " ".join(WORDS[(k + j) % len(WORDS)] for j in range(3)), fill=10,
                          font=font)
        else:
            xs = np.linspace(30, 450, 40)
            draw.line(list(zip(xs, 180 + 100 * np.sin(xs / 50 + i / 2))), fill=255, width=2)
            draw.rectangle([40 + 20 * i, 60, 120 + 20 * i, 110], outline=200, width=3)
        frames.append(np.asarray(im))
    return scans.video(path, np.stack(frames))


@pytest.mark.parametrize("what", ["cursor", "scroll", "chart"])
def test_text_and_graphics_videos_are_refused(what, scans, tmp_path):
    _refused(process_source(_ui_video(tmp_path / f"{what}.mp4", scans, what), OPTS))


def _on_screen(cine: np.ndarray, width: int, height: int) -> np.ndarray:
    """The cine pasted small onto a large screen with burned-in patient text and a settings line."""
    im = Image.new("L", (width, height))
    draw = ImageDraw.Draw(im)
    font = _font(FONTS[-1], 28)
    draw.text((10, 10), "DOE^JANE  1980-01-01  ID 123456", fill=255, font=font)
    draw.text((10, height - 40), "B 60dB  FR 30Hz", fill=200, font=font)
    screen = np.broadcast_to(np.asarray(im), (len(cine), height, width)).copy()
    y, x = height // 3, width // 2
    screen[:, y : y + cine.shape[1], x : x + cine.shape[2]] = cine
    return screen


def test_real_scans_pass_with_or_without_burned_in_text(scans, tmp_path):
    """pydicom's genuine US files, the 30-frame cardiac cine small on 1280x720 and 1920x1080 screens
    (as DICOM and MP4), the synthetic clips (DICOM and MP4) and the tests' tiny screen clip."""
    import pydicom

    from sonossl.data.synthetic.files import synthesize

    src = tmp_path / "scans"
    src.mkdir()
    for name in ("examples_ybr_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm"):
        shutil.copy(scans.pydicom_file(name), src / name)
    cine = read_source(scans.pydicom_file("examples_ybr_color.dcm")).frames
    scans.dicom(src / "small_fan_720p.dcm", _on_screen(cine[:12], 1280, 720))
    scans.video(src / "small_fan_1080p.mp4", _on_screen(cine, 1920, 1080))  # all 30: a fan this small needs them
    scans.dicom(src / "tiny_screen.dcm", scans.clip(8))
    for fmt in ("dicom", "mp4"):
        synthesize(tmp_path / fmt, videos=3, frames=8, size=48, fmt=fmt, labelled_per_class=(1, 1, 1), seed=3)
        for clip in sorted((tmp_path / fmt / "videos").glob("clip_*")):
            shutil.copy(clip, src / f"{fmt}_{clip.name}")
            if fmt == "dicom":  # without its recorded regions, so its pixels are judged
                ds = pydicom.dcmread(src / f"{fmt}_{clip.name}")
                del ds.SequenceOfUltrasoundRegions
                ds.save_as(src / f"{fmt}_{clip.name}")
    sources = sorted(src.iterdir())
    assert len(sources) == 13
    for path in sources:
        res = process_source(path, OPTS)
        assert res["status"] == "ok", (path.name, res["message"])
        assert res["message"].startswith(("crop: motion", "crop: texture")), (path.name, res["message"])
    res = process_source(src / "small_fan_720p.dcm", OPTS)
    x0, y0, x1, y1 = res["box"]  # the fan, not the text above and below it
    assert 240 - 4 <= y0 and y1 <= 240 + 240 + 4 and 640 - 4 <= x0 and x1 <= 640 + 320 + 4, res["box"]


def test_a_portal_export_among_scans_is_one_row_each(sonossl, scans, tmp_path):
    """The issue's case through the command line: thumbnails of a report and a UI video beside a
    genuine cine; the text sources are error rows and no byte of them reaches the store."""
    import h5py

    src = tmp_path / "export"
    thumbnails(src / "portal" / "thumbs", _font(FONTS[-1], 18), np.random.default_rng(0))
    shutil.copy(scans.pydicom_file("examples_ybr_color.dcm"), src / "cine.dcm")
    _ui_video(src / "viewer.mp4", scans, "cursor")
    out = tmp_path / "frames.h5"
    rc, err = sonossl("ingest", src, "--out", out, "--size", "32", "--frame-skip", "1", "--quiet")
    assert rc == 0, err
    with open(out.with_suffix(".manifest.csv"), newline="") as fh:
        rows = {Path(r["source"]).name: r for r in csv.DictReader(fh)}
    assert {n: r["status"] for n, r in rows.items()} == {"cine.dcm": "ok", "thumbs": "error", "viewer.mp4": "error"}
    assert all("no scan region found" in rows[n]["message"] for n in ("thumbs", "viewer.mp4"))
    with h5py.File(out, "r") as f:
        assert list(f) == [rows["cine.dcm"]["video_id"]]
