"""What tells a scan from text: the two statistics of ``sonossl.data.sector.scan_statistics`` on
real and synthetic scans against text and graphics sources, and the margins of the rule.

Scans: pydicom's four genuine US files; the 30-frame cardiac cine at half size, 1.5x upscaled,
blurred, dimmed to 40 %, brightened, and small on 1280x720 and 1920x1080 screens with burned-in
text; the palette and JPEG 2000 stills upscaled and dimmed; synthetic clips (``synthesize``,
DICOM at 48, 64 and 128 px, MP4 at 96 px). Text: PIL's bitmap and scalable default fonts and
every TrueType font found (fc-list), at 11-64 px, 1 or 4 lines at a random place in each of 8
images, white on black, black on white and grey on dark, half of them JPEG-compressed; dense
report pages (9-16 px, 4 pages and 1); a screen with a moving cursor and a ticking clock, a
scrolling report, moving line graphics and filled shapes. Every candidate region a source
offers (the moving one and the textured one, before the rule) is measured on frames decimated
as ``ingest`` decimates them (at most 512 px).

    python benchmarks/scan_likeness.py [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from sonossl.data import sector
from sonossl.data.readers import read_source

FILES = Path(pydicom.__file__).parent / "data" / "test_files"
WORDS = ["DOE^JANE", "1980-01-01", "MRN 4471823", "ST MARY HOSPITAL", "Report: normal four-chamber view",
         "Dr. SMITH", "12:04:33", "Gestational age 22w3d", "Impression: no anomaly"]


def fonts() -> list[str]:
    try:
        out = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return ["bitmap", "default"] + sorted({p for p in (x.split(":")[0].strip() for x in out.splitlines())
                                           if p.lower().endswith(".ttf")})


def font(name: str, size: int):
    if name == "bitmap":
        return ImageFont.load_default()
    return ImageFont.load_default(size) if name == "default" else ImageFont.truetype(name, size)


def decimate(frames: np.ndarray) -> np.ndarray:
    step = max(1, -(-max(frames.shape[1:]) // 512))
    return np.ascontiguousarray(frames[:, ::step, ::step])


def jpeg(frames: np.ndarray, quality: int) -> np.ndarray:
    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("L")))
    return np.stack(out)


def on_screen(cine: np.ndarray, width: int, height: int) -> np.ndarray:
    im = Image.new("L", (width, height))
    draw = ImageDraw.Draw(im)
    draw.text((10, 10), "DOE^JANE  1980-01-01  ID 123456", fill=255, font=font("default", 28))
    screen = np.broadcast_to(np.asarray(im), (len(cine), height, width)).copy()
    screen[:, height // 3 : height // 3 + cine.shape[1], width // 2 : width // 2 + cine.shape[2]] = cine
    return screen


def scans(tmp: Path) -> dict[str, np.ndarray]:
    from sonossl.data.synthetic.files import synthesize

    out = {n: read_source(FILES / n).frames for n in
           ("examples_ybr_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm")}
    cine = out["examples_ybr_color.dcm"]
    out.update({
        "cine, half size": cine[:, ::2, ::2],
        "cine, 1.5x upscaled": np.stack([np.asarray(Image.fromarray(f).resize((480, 360), Image.Resampling.BILINEAR))
                                         for f in cine]),
        "cine, blurred (sigma 1)": np.stack([ndi.gaussian_filter(f, 1.0) for f in cine]),
        "cine, dimmed to 40 %": (cine * 0.4).astype(np.uint8),
        "cine, brightened x1.6": np.clip(cine * 1.6, 0, 255).astype(np.uint8),
        "cine on a 1280x720 screen": on_screen(cine, 1280, 720),
        "cine on a 1920x1080 screen": on_screen(cine, 1920, 1080),
        "palette, 1.5x upscaled": np.asarray(Image.fromarray(out["examples_palette.dcm"][0]).resize(
            (1200, 525), Image.Resampling.BICUBIC))[None],
        "jpeg2k, dimmed to 40 %": (out["examples_jpeg2k.dcm"] * 0.4).astype(np.uint8),
    })
    for size, fmt in [(48, "dicom"), (64, "dicom"), (96, "mp4"), (128, "dicom")]:
        d = tmp / f"{fmt}{size}"
        synthesize(d, videos=6, frames=12, size=size, fmt=fmt, labelled_per_class=(1, 1, 1), seed=size)
        for p in sorted((d / "videos").glob("clip_*")):
            out[f"synthetic {fmt} {size} px {p.stem}"] = read_source(p).frames
    return out


def text_frames(rng, size, fnt, lines, ink, paper, n=8) -> np.ndarray:
    frames = []
    for _ in range(n):
        im = Image.new("L", size, paper)
        draw = ImageDraw.Draw(im)
        for _ in range(lines):
            s = " ".join(rng.choice(WORDS, 2))
            x0, y0, x1, y1 = draw.textbbox((0, 0), s, font=fnt)
            xy = (int(rng.integers(0, max(1, size[0] - x1 + x0))), int(rng.integers(0, max(1, size[1] - y1 + y0))))
            draw.text(xy, s, fill=ink, font=fnt)
        frames.append(np.asarray(im))
    return np.stack(frames)


def texts(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in fonts():
        for px in (11, 18, 32, 64):
            for size in ((320, 240), (640, 480)):
                for lines in (1, 4):
                    ink, paper = [(255, 0), (0, 255), (180, 20)][int(rng.integers(3))]
                    fr = text_frames(rng, size, font(name, px), lines, ink, paper)
                    out[f"{Path(name).stem} {px} px {size[0]}x{size[1]} {lines} lines"] = \
                        jpeg(fr, 75) if rng.random() < 0.5 else fr
        for px in (9, 12, 16):
            pages = []
            for _ in range(4):
                im = Image.new("L", (600, 800), 255)
                draw = ImageDraw.Draw(im)
                for y in range(30, 770, int(px * 1.25) + 1):
                    draw.text((30, y), " ".join(rng.choice(WORDS, 6)), fill=0, font=font(name, px))
                pages.append(np.asarray(im))
            out[f"report pages {Path(name).stem} {px} px"] = np.stack(pages)
            out[f"report page {Path(name).stem} {px} px"] = np.stack(pages[:1])
    return out | graphics()


def graphics() -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {"cursor and clock": [], "scrolling report": [], "line graphics": [],
                                        "filled shapes": []}
    fnt = font("default", 14)
    for i in range(12):
        ims = {k: Image.new("L", (800, 600), 235 if k in ("cursor and clock", "scrolling report") else 0) for k in out}
        d = {k: ImageDraw.Draw(v) for k, v in ims.items()}
        for k in range(20):
            line = " ".join(WORDS[(k + j) % 9] for j in range(3))
            d["cursor and clock"].text((20, 50 + 25 * k), line, fill=20, font=fnt)
            d["scrolling report"].text((20, 40 + 22 * k - 9 * i), line, fill=10, font=fnt)
        x, y = 100 + 30 * i, 80 + 20 * i
        d["cursor and clock"].polygon([(x, y), (x, y + 18), (x + 5, y + 13), (x + 12, y + 13)], fill=0, outline=255)
        d["cursor and clock"].text((710, 8), f"12:04:{i:02d}", fill=0, font=fnt)
        xs = np.linspace(50, 750, 40)
        d["line graphics"].line(list(zip(xs, 300 + 150 * np.sin(xs / 60 + i / 2))), fill=255, width=2)
        d["line graphics"].rectangle([100 + 20 * i, 100, 200 + 20 * i, 160], outline=200, width=3)
        d["filled shapes"].rectangle([100 + 30 * i, 100, 300 + 30 * i, 300], fill=200)
        d["filled shapes"].ellipse([400, 300 - 10 * i, 600, 500 - 10 * i], fill=150)
        for k, v in ims.items():
            out[k].append(np.asarray(v))
    return {k: np.stack(v) for k, v in out.items()}


def candidates(frames: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The regions the search considers before the rule: the moving one and the textured one."""
    h, w = frames.shape[1:]
    radius = max(2, round(0.02 * min(h, w)))
    found = [("motion", sector._motion_mask(frames, radius) if len(frames) >= 2 else None),
             ("texture", sector._texture_mask(frames.max(0), radius))]
    return [(how, m) for how, m in found if m is not None]


def measure(bank: dict[str, np.ndarray]) -> list[tuple[str, str, dict[str, float], bool]]:
    rows = []
    for name, frames in bank.items():
        frames = decimate(frames)
        taken = sector.locate_scan_region(frames)[2] != "full"
        for how, mask in candidates(frames):
            rows.append((name, how, sector.scan_statistics(frames, mask), taken))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        groups = {"scans": measure(scans(Path(tmp))), "text and graphics": measure(texts(args.seed))}
    print(f"rule: empty_rows <= {sector.MAX_EMPTY_ROWS} and texture_core >= {sector.MIN_TEXTURE_CORE}")
    for label, rows in groups.items():
        e = sorted((r[2]["empty_rows"], r[0], r[1]) for r in rows)
        c = sorted((r[2]["texture_core"], r[0], r[1]) for r in rows)
        sources = {r[0]: r[3] for r in rows}
        taken = sum(sources.values())
        print(f"{label}: {len(sources)} sources, {len(rows)} candidate regions, {taken} taken as a scan")
        print(f"  empty_rows   min {e[0][0]:.3f} ({e[0][1]}, {e[0][2]})  max {e[-1][0]:.3f} ({e[-1][1]}, {e[-1][2]})")
        print(f"  texture_core min {c[0][0]:.3f} ({c[0][1]}, {c[0][2]})  max {c[-1][0]:.3f} ({c[-1][1]}, {c[-1][2]})")


if __name__ == "__main__":
    main()
