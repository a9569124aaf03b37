"""The scan region (the "fan"): where the ultrasound image is, apart from the scanner's UI.

A cine loop exported from a scanner holds the scan region (a sector, a curved or a linear
field of view) on a screen with burned-in text: patient and hospital names, dates, settings,
scales, an ECG trace. Training on the whole screen teaches a network to read that text, and the
text is PHI. So ingestion keeps only the scan region:

``find_scan_region(frames, regions)`` -> ``(box, mask)``, in this order of preference:

1. **DICOM regions** (``SequenceOfUltrasoundRegions``, 2D ones) when they are consistent with
   the image: inside its bounds (a few pixels of slack) and covering at least 5 % of it. Files
   often carry regions recorded at another resolution (the pydicom examples do), so anything
   else is ignored. Their union is the box and the mask.
2. **Motion** (``T >= 2``): the scan region changes over time, overlays do not. Pixels whose
   standard deviation over time is above a threshold (relative to the clip's own motion), closed
   morphologically, largest connected component, holes filled, made row- and column-convex
   (a cheap convex hull that keeps a sector's shape). What moves must also look like a scan
   (:func:`scan_like`): at least a tenth of the frame high and wide (and 1 % of it), with no rows of pure
   background across it and a core of speckle texture (:func:`scan_statistics`); text or
   graphics on a flat background (a clock, a name, report thumbnails, a cursor) is not taken.
3. **Brightness and texture** (one frame, or a clip with too little motion): pixels brighter
   than the dark background and not flat (speckle has local variance; uniform UI panels do
   not); components shorter than text lines are dropped; the component with the most such
   pixels wins, then closing, hole filling and convexity as above; it too must be
   :func:`scan_like`, and cover at least 5 % of the frame.
4. The whole frame when nothing plausible is found; ``ingest`` then refuses a scanner screen
   (DICOM, video, image folder) rather than keep text that may name the patient.

``crop_to_region(frames, box, mask, size)``: blank (zero) outside the mask, crop to the box,
pad to a square (centred, black) and resize to ``size x size`` with area averaging when
shrinking (bilinear when enlarging).
"""

from __future__ import annotations

from typing import get_args

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

from sonossl.config import Crop

Box = tuple[int, int, int, int]
CROPS: tuple[str, ...] = get_args(Crop)  # --crop of ingest and predict, IngestSpec.crop of a study

MIN_REGION_FRACTION = 0.05  # a scan region covers at least this much of the frame,
MIN_MOVING_FRACTION = 0.01  # or this much when it moves (a cine's fan small on a large screen) and is scan_like
BOUNDS_SLACK = 2  # pixels a DICOM region may overhang the image (rounding)
MAX_FRAMES_FOR_MOTION = 64


def _disk(radius: int) -> np.ndarray:
    r = max(int(radius), 1)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of ``mask`` (a sector is convex but for its shallow top arc)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return mask
    pts = np.stack([xs, ys], 1).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # collinear points
        return mask
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts[hull.vertices]], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask


def _box_of(mask: np.ndarray) -> Box:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _shape_up(component: np.ndarray, radius: int) -> np.ndarray:
    """Close, fill holes and make convex-ish: a tidy region from a ragged component."""
    closed = ndi.binary_closing(np.pad(component, radius), structure=_disk(radius))[radius:-radius, radius:-radius]
    return _convex_hull(ndi.binary_fill_holes(closed))


def _largest(mask: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray | None:
    labels, n = ndi.label(mask)
    if n == 0:
        return None
    scores = ndi.sum(weight if weight is not None else mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(scores)) + 1)


def regions_box(regions, height: int, width: int) -> Box | None:
    """Union of the DICOM regions when they are consistent with an ``height x width`` image."""
    if not regions:
        return None
    boxes = []
    for x0, y0, x1, y1 in regions:
        if x0 < 0 or y0 < 0 or x1 > width + BOUNDS_SLACK or y1 > height + BOUNDS_SLACK or x1 <= x0 or y1 <= y0:
            return None  # recorded for another image size: not to be trusted
        boxes.append((x0, y0, min(x1, width), min(y1, height)))
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    if (x1 - x0) * (y1 - y0) < MIN_REGION_FRACTION * height * width:
        return None
    return x0, y0, x1, y1


def _motion_mask(frames: np.ndarray, radius: int) -> np.ndarray | None:
    """frames: uint8 [T>=2, H, W] -> the moving region, or None when too little moves."""
    if len(frames) > MAX_FRAMES_FOR_MOTION:
        frames = frames[np.linspace(0, len(frames) - 1, MAX_FRAMES_FOR_MOTION).astype(int)]
    acc, acc2 = np.zeros(frames.shape[1:], np.float64), np.zeros(frames.shape[1:], np.float64)
    for f in frames:  # one frame at a time: no float copy of the clip
        acc += f
        acc2 += np.square(f, dtype=np.float64)
    mean = acc / len(frames)
    std = ndi.uniform_filter(np.sqrt(np.maximum(acc2 / len(frames) - mean * mean, 0)).astype(np.float32), 3)
    high = float(np.percentile(std, 99))
    if high < 2.0:
        return None
    moving = std > max(1.0, 0.03 * high)
    moving = ndi.binary_opening(moving, structure=np.ones((3, 3), bool))
    component = _largest(moving)
    if component is None or component.sum() < 0.01 * moving.size:
        return None
    return _shape_up(component, radius)


def _content(frame: np.ndarray) -> np.ndarray:
    """bool [H, W]: bright (away from the commonest grey, the background) and not flat."""
    f = frame.astype(np.float32)
    background = int(np.bincount(frame.ravel(), minlength=256).argmax())
    mean = ndi.uniform_filter(f, 3)
    textured = np.sqrt(np.maximum(ndi.uniform_filter(f * f, 3) - mean * mean, 0)) > 1.5
    return textured & (np.abs(f - background) > 10)


MIN_SCAN_SIDE = 0.1  # a scan region is at least this fraction of the frame high and wide
# Measured on real and synthetic scans against text and graphics (docs/data-safety.md, "Only scans
# become clips"; benchmarks/scan_likeness.py, tests/hostile/test_text_sources.py):
MAX_EMPTY_ROWS = 0.06  # at most this fraction of the region's rows is background (text: >= 0.13, scans: <= 0.034)
MIN_TEXTURE_CORE = 0.12  # at least this fraction of the region is a core of texture (scans: >= 0.24)
EMPTY_ROW = 0.97  # a row is background when at least this fraction of its region pixels is
STAT_FRAMES = 8  # frames spread over the clip the statistics are measured on (their median)


def _local_std(frame: np.ndarray) -> np.ndarray:
    mean = ndi.uniform_filter(frame, 3)
    return np.sqrt(np.maximum(ndi.uniform_filter(frame * frame, 3) - mean * mean, 0))


def _frame_statistics(frame: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """(empty rows, texture core) of region ``mask`` in one uint8 frame; ``rows``: the region's
    rows wide enough to count (at least 8 pixels)."""
    f = frame.astype(np.float32)
    background = int(np.bincount(frame.ravel(), minlength=256).argmax())
    contrast = float(np.percentile(np.abs(f[mask] - background), 99))
    near = np.abs(f - background) <= max(10.0, 0.1 * contrast)
    per_row = (near & mask).sum(1)[rows] / mask.sum(1)[rows]
    empty = float((per_row >= EMPTY_ROW).mean()) if rows.any() else 1.0
    stretched = f * min(4.0, 255.0 / max(contrast, 1.0))  # a dim scan measured as a bright one
    core = ndi.binary_erosion(_local_std(stretched) >= 3.0, structure=np.ones((5, 5), bool))
    return empty, float(core[mask].mean())


def scan_statistics(frames: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """What tells a scan from text or graphics in region ``mask`` (bool [H, W]) of ``frames``
    (uint8 [T, H, W]), each the median over up to :data:`STAT_FRAMES` frames spread over the clip:

    - ``empty_rows``: the fraction of the region's rows in which at least 97 % of the region's
      pixels are background (within ``max(10, 10 %`` of the contrast) grey levels of the frame's
      commonest grey). Lines of text and drawn shapes leave such rows between them; every row of
      a fan crosses tissue.
    - ``texture_core``: the fraction of the region inside a 5x5 block of pixels that are all
      locally textured (3x3 standard deviation >= 3 grey levels once the contrast is stretched to
      255, by at most 4x). Speckle is texture everywhere; glyphs are flat inside and on the page.
    """
    rows = mask.sum(1) >= 8
    pick = np.unique(np.linspace(0, len(frames) - 1, min(STAT_FRAMES, len(frames))).astype(int))
    stats = np.array([_frame_statistics(frames[i], mask, rows) for i in pick])
    return {"empty_rows": float(np.median(stats[:, 0])), "texture_core": float(np.median(stats[:, 1]))}


def scan_like(mask: np.ndarray, frames: np.ndarray) -> bool:
    """Whether region ``mask`` (bool [H, W]) of ``frames`` (uint8 [T, H, W]) looks like an
    ultrasound scan: tall and wide enough, no more than :data:`MAX_EMPTY_ROWS` of its rows
    background and at least :data:`MIN_TEXTURE_CORE` of it a core of texture
    (:func:`scan_statistics`)."""
    h, w = mask.shape
    x0, y0, x1, y1 = _box_of(mask)
    if (y1 - y0) < MIN_SCAN_SIDE * h or (x1 - x0) < MIN_SCAN_SIDE * w:
        return False
    stats = scan_statistics(frames, mask)
    return stats["empty_rows"] <= MAX_EMPTY_ROWS and stats["texture_core"] >= MIN_TEXTURE_CORE


def _texture_mask(frame: np.ndarray, radius: int) -> np.ndarray | None:
    """frame: uint8 [H, W] -> the bright, speckled region, or None."""
    bright_textured = _content(frame)
    bright = np.abs(frame.astype(np.int16) - int(np.bincount(frame.ravel(), minlength=256).argmax())) > 10
    k = max(5, round(0.03 * min(frame.shape)) | 1)  # text is sparse at this scale, speckle dense
    content = (ndi.uniform_filter(bright_textured.astype(np.float32), k, mode="constant") > 0.5) & bright
    content = ndi.binary_opening(content, structure=_disk(radius))  # cuts thin bridges
    h = frame.shape[0]
    labels, n = ndi.label(content, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    keep = np.zeros(n + 1, bool)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        keep[i] = (sl[0].stop - sl[0].start) >= 0.1 * h  # taller than a line of text
    content &= keep[labels]
    component = _largest(content)
    if component is None:
        return None
    region = _shape_up(component, radius)
    return region if region.sum() >= 0.01 * region.size else None


def find_scan_region(frames: np.ndarray, regions=None) -> tuple[Box, np.ndarray]:
    """frames: uint8 [T, H, W]; regions: DICOM region boxes or None.

    Returns ``box`` (x0, y0, x1, y1; exclusive ends, source pixels) and ``mask`` bool [H, W],
    true inside the scan region (see the module docstring for the policy).
    """
    box, mask, _ = locate_scan_region(frames, regions)
    return box, mask


def locate_scan_region(frames: np.ndarray, regions=None) -> tuple[Box, np.ndarray, str]:
    """:func:`find_scan_region` plus how it was found: ``dicom``, ``motion``, ``texture`` or ``full``."""
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be [T>=1, H, W], got {frames.shape}")
    _, h, w = frames.shape
    box = regions_box(regions, h, w)
    if box is not None:
        return box, regions_mask(regions, h, w), "dicom"
    radius = max(2, round(0.02 * min(h, w)))
    brightest = frames.max(axis=0)
    how, mask = "motion", (_motion_mask(frames, radius) if len(frames) >= 2 else None)
    if mask is not None and not scan_like(mask, frames):
        mask = None  # what moves is not a scan (text, a cursor): look for one by texture instead
    if mask is None:
        how, mask = "texture", _texture_mask(brightest, radius)
        if mask is not None and not scan_like(mask, frames):
            mask = None  # text or graphics on a flat background
    if mask is None or mask.sum() < (MIN_MOVING_FRACTION if how == "motion" else MIN_REGION_FRACTION) * h * w:
        return (*full_frame(h, w), "full")
    return _box_of(mask), mask, how


def regions_mask(regions, height: int, width: int) -> np.ndarray:
    """bool [H, W]: true inside any of the region boxes."""
    mask = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in regions:
        mask[max(y0, 0) : y1, max(x0, 0) : x1] = True
    return mask


def full_frame(height: int, width: int) -> tuple[Box, np.ndarray]:
    """The whole frame as box and mask (``--crop none``, or when no region is found)."""
    return (0, 0, width, height), np.ones((height, width), bool)


def crop_to_region(frames: np.ndarray, box: Box, mask: np.ndarray, size: int) -> np.ndarray:
    """frames: uint8 [T, H, W] -> uint8 [T, size, size].

    Zero outside ``mask``, crop to ``box``, pad to a square with black (content centred),
    resize (area averaging when shrinking, bilinear when enlarging).
    """
    x0, y0, x1, y1 = box
    crop = frames[:, y0:y1, x0:x1] * mask[None, y0:y1, x0:x1]
    t, h, w = crop.shape
    side = max(h, w)
    square = np.zeros((t, side, side), np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[:, top : top + h, left : left + w] = crop
    if side == size:
        return square
    resample = Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), resample)) for f in square])


def scan_region(frames: np.ndarray, regions, kind: str, crop: str) -> tuple[Box, np.ndarray, str]:
    """The region of a clip's ``frames`` ``(T, H, W)`` uint8 to keep under ``crop`` (one of
    :data:`CROPS`): box, mask and how it was found (``dicom``, ``motion``, ``texture`` or
    ``full``). ``kind`` is the source's kind (``dicom``, ``video``, ``images``, ``hdf5``).
    Shared by ``ingest`` and ``predict``, so a model sees at prediction what it was trained on.

    With ``auto``, a scanner screen (DICOM, video or image folder) where no scan region is found
    is refused rather than kept whole: the whole screen may hold burned-in patient text.
    """
    from sonossl.errors import SonosslError

    if crop not in CROPS:
        raise SonosslError(f"crop: expected one of {', '.join(CROPS)}, got {crop!r}")
    h, w = frames.shape[-2:]
    if crop == "auto":
        box, mask, how = locate_scan_region(frames, regions)
        if how == "full" and kind in ("dicom", "video", "images"):
            raise SonosslError("no scan region found (no usable DICOM regions, no moving fan, no region of speckle; "
                               "text or graphics on a flat background is not a scan); "
                               "the whole screen may hold burned-in patient text, so it is not used; pass --crop none "
                               "to keep whole frames")
        return box, mask, how
    if crop == "dicom" and regions_box(regions, h, w) is not None:
        return regions_box(regions, h, w), regions_mask(regions, h, w), "dicom"
    return (*full_frame(h, w), "full")
