"""The built-in synthetic fetal-echo dataset: ``sonossl synth`` and ``sonossl demo`` start here.

It mimics the five standard fetal cardiac planes (SFCP) and how an ultrasound scanner forms an
image, so that the whole pipeline (ingest -> pretrain -> limited-label evaluation) can run
without patient data, and so that self-supervised pretraining has something to learn: the
classes differ only in *shape and layout*, while everything a pixel-level model could latch on
to (position, rotation, scale, speckle, gain, brightness, dark area) is randomised.

The planes (drawn in a heart-centred frame: u to the right, v into depth; 1 unit = heart radius)
- ``4CH``  four fluid-filled chambers in a 2 x 2 cross inside the myocardium, bright septum and
  walls between them; atria and ventricles beat in counter-phase.
- ``LVOT`` one chamber with an outflow tube (the aorta) leaving it up and to the **right**.
- ``RVOT`` one chamber with an outflow tube leaving it up and to the **left**.
- ``3VV``  three vessel cross-sections (dark discs with bright walls) in a row, decreasing size.
- ``3VT``  two vessel arches meeting in a V, the SVC beside them and the trachea: a small ring
  with a thick bright wall.

**Side matters: a horizontal flip turns LVOT into RVOT and back** (RVOT is LVOT mirrored).
Any augmentation or test-time transform that flips left-right must be disabled for these labels;
the evaluation disables horizontal flips by default. Rotations are not restricted: the fetus lies
at any angle under the probe, and a rotation keeps handedness (an LVOT turned by any angle is
still an LVOT), so the heart's axis is drawn uniformly over the full circle.

Image formation (all vectorised numpy + scipy.ndimage; no per-pixel Python)
1. The scene is evaluated on a polar grid (depth r x beam angle theta) of a 60-degree sector:
   fetal thorax (lung tissue) in amniotic fluid, thorax ring, spine and ribs (bright reflectors),
   the heart plane, and nuisance fluid pockets. The tissue texture is a smooth random field.
2. Along each beam: depth attenuation with partial time-gain compensation, and acoustic shadows
   behind bone (the transmitted intensity decays with the attenuation accumulated along r).
3. Fully developed speckle: Rayleigh-distributed amplitude (|complex Gaussian| with a correlated
   resolution cell, longer laterally than axially), multiplicative, partly persistent across
   the frames of a clip.
4. Log compression with random dynamic range, gain and contrast (gamma); random blur.
5. Scan conversion to a Cartesian square that is the sector's bounding box: black outside.

Motion over a clip: the chambers and vessels pulse at a random heart rate (110-170 bpm at a
random cine rate), and the probe drifts: slow translation and rotation of the whole scene.

Outputs of :func:`synthesize`
- ``videos/``: unlabelled clips (one random plane each) as files ``ingest`` reads: multi-frame
  DICOM (Ultrasound Multi-frame Image Storage, MONOCHROME2, 8 bit, uncompressed, with fake PHI
  and ``SequenceOfUltrasoundRegions`` giving the sector box) or MP4 (PyAV, yuv420p). Each frame
  is a scanner *screen*: the sector at a fixed per-clip position on a larger black canvas, with
  burned-in fake patient name/ID/date, ``SONOSSL SYNTH``, depth markers and a grey UI bar, all
  outside the sector's box. ``videos/_truth.csv`` (file, class, sector box) is private ground
  truth for tests; it is not a video, so ingestion skips it.
- ``labelled/``: PNG images of the sector box only (what ingestion yields after cropping),
  ``images/<split>/<class>/<n>.png``, and ``train.csv``, ``valid.csv``, ``test.csv`` with
  columns ``image_path,class`` (paths relative to ``labelled/``). Every labelled image is one
  random frame of its own freshly drawn anatomy: disjoint from the clips and from each other.

Everything is deterministic in ``seed``: item k of a given kind draws from its own random
stream, so the same seed gives byte-identical PNGs and identical DICOM pixel data.
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from sonossl import CLASSES_DEFAULT
from sonossl.errors import SonosslError

CLASSES: tuple[str, ...] = tuple(CLASSES_DEFAULT)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
FORMATS: tuple[str, ...] = ("dicom", "mp4")
HALF_ANGLE = math.radians(30.0)
"""Half opening angle of the sector. With the apex at the top centre and radius = box height,
30 degrees makes the sector's bounding box exactly square (width 2 R sin 30 = R)."""
DEPTH_CM = 12.0  # what the depth markers and the DICOM pixel spacing pretend the box spans

ProgressFn = Callable[[str, int, int], None]

# Streams: item k of a kind draws from default_rng([seed, kind, *k]) -> independent of counts.
_STREAM_CLIP, _STREAM_LABELLED = 0, 1


# --------------------------------------------------------------------------------------------
# Sector geometry
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sector:
    """Polar sampling grid and its scan conversion for a square box of ``size`` pixels.

    ``x``, ``y``: (n_r, n_t) box coordinates in [0, 1] of the polar samples (apex at (0.5, 0)).
    ``coords``: (2, size, size) fractional polar indices of each output pixel; ``mask`` (size, size)
    bool, True inside the sector.
    """

    size: int
    r: np.ndarray
    x: np.ndarray
    y: np.ndarray
    coords: np.ndarray
    mask: np.ndarray


@lru_cache(maxsize=8)
def _sector(size: int) -> _Sector:
    n_r = n_t = size
    r = np.linspace(0.0, 1.0, n_r)[:, None]
    t = np.linspace(-HALF_ANGLE, HALF_ANGLE, n_t)[None, :]
    x = 0.5 + r * np.sin(t)
    y = r * np.cos(t)
    px = (np.arange(size) + 0.5) / size
    gx, gy = np.meshgrid(px - 0.5, px, indexing="xy")
    rr = np.hypot(gx, gy)
    tt = np.arctan2(gx, gy)
    mask = (rr <= 1.0) & (np.abs(tt) <= HALF_ANGLE)
    coords = np.stack([rr * (n_r - 1), (tt + HALF_ANGLE) / (2 * HALF_ANGLE) * (n_t - 1)])
    f32 = lambda a: np.ascontiguousarray(np.broadcast_to(a, (n_r, n_t)), dtype=np.float32)  # noqa: E731
    return _Sector(size, f32(r), f32(x), f32(y), coords.astype(np.float32), mask)


def sector_mask(size: int) -> np.ndarray:
    """(size, size) bool: True inside the sector of a ``size``-pixel box (outside is black)."""
    return _sector(size).mask.copy()


# --------------------------------------------------------------------------------------------
# Shape primitives (signed distances in box units; negative inside)
# --------------------------------------------------------------------------------------------
def _sd_ellipse(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * min(a, b)


def _sd_capsule(u: np.ndarray, v: np.ndarray, p: tuple[float, float], q: tuple[float, float],
                radius: float) -> np.ndarray:
    dx, dy = q[0] - p[0], q[1] - p[1]
    h = np.clip(((u - p[0]) * dx + (v - p[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(u - p[0] - h * dx, v - p[1] - h * dy) - radius


@dataclass(frozen=True)
class _Fluid:
    """A fluid-filled structure in heart units: ellipse (a, b) at c, or a tube p->q (a = radius).

    ``pulse``: how strongly its size follows the heartbeat (signed: counter-phase if < 0).
    ``wall``: brightness of its wall; ``ring``: a thick-walled ring (trachea), half-dark inside.
    """

    kind: Literal["ellipse", "tube"]
    c: tuple[float, float]
    a: float
    b: float = 0.0
    q: tuple[float, float] = (0.0, 0.0)
    pulse: float = 1.0
    wall: float = 1.0
    ring: bool = False


# The planes, in heart units (u right, v depth). Dark (fluid) areas are balanced across classes
# by _CLASS_SCALE so that the fraction of dark pixels is no cue.
def _plane(cls: str, rng: np.random.Generator) -> tuple[tuple[float, float], list[_Fluid]]:
    """(body ellipse half-axes, fluid structures) of one plane with per-anatomy jitter."""
    j = lambda s=0.08: float(1.0 + rng.uniform(-s, s))  # noqa: E731
    if cls == "4CH":
        gap = 0.13 * j(0.3)
        ax, ay = 0.34 * j(), 0.3 * j()
        vx, vy = 0.36 * j(), 0.34 * j()
        cx = max(ax, vx) + gap / 2
        return (1.02 * j(0.05), 0.92 * j(0.05)), [
            _Fluid("ellipse", (-cx, -ay - gap / 2), ax, ay, pulse=-1.0),
            _Fluid("ellipse", (cx, -ay - gap / 2), ax, ay, pulse=-1.0),
            _Fluid("ellipse", (-cx, vy + gap / 2), vx, vy, pulse=1.0),
            _Fluid("ellipse", (cx, vy + gap / 2), vx, vy, pulse=1.0),
        ]
    if cls in ("LVOT", "RVOT"):
        s = 1.0 if cls == "LVOT" else -1.0  # RVOT = LVOT mirrored left-right
        ang = math.radians(rng.uniform(20.0, 40.0))
        length = 1.25 * j(0.1)
        p = (s * 0.12, 0.0)
        q = (p[0] + s * length * math.cos(ang), p[1] - length * math.sin(ang))
        return (0.95 * j(0.05), 0.85 * j(0.05)), [
            _Fluid("ellipse", (-s * 0.12, 0.22), 0.58 * j(), 0.44 * j(), pulse=1.0),
            _Fluid("tube", p, 0.21 * j(), q=q, pulse=0.4),
        ]
    if cls == "3VV":
        r0, r1, r2 = 0.40 * j(), 0.32 * j(), 0.24 * j()
        g = 0.12 * j(0.3)
        x1 = 0.0
        x0 = x1 - r1 - g - r0
        x2 = x1 + r1 + g + r2
        off = (x0 + x2) / 2
        return (1.15 * j(0.05), 0.62 * j(0.05)), [
            _Fluid("ellipse", (x0 - off, 0.0), r0, r0, pulse=0.4),
            _Fluid("ellipse", (x1 - off, 0.0), r1, r1, pulse=0.4),
            _Fluid("ellipse", (x2 - off, 0.0), r2, r2, pulse=0.2),
        ]
    if cls == "3VT":
        apex = (0.0, 0.42 * j())
        return (1.1 * j(0.05), 0.75 * j(0.05)), [
            _Fluid("tube", (-0.78 * j(), -0.42 * j()), 0.22 * j(), q=apex, pulse=0.4),
            _Fluid("tube", (0.3 * j(), -0.55 * j()), 0.19 * j(), q=apex, pulse=0.4),
            _Fluid("ellipse", (0.82 * j(), -0.32 * j()), 0.2 * j(), 0.2, pulse=0.2),
            _Fluid("ellipse", (0.55 * j(), 0.25 * j()), 0.13 * j(), 0.13, pulse=0.0, wall=1.6, ring=True),
        ]
    raise SonosslError(f"synthetic class {cls!r}: expected one of {', '.join(CLASSES)}")


_CLASS_SCALE = {"4CH": 1.0, "LVOT": 1.08, "RVOT": 1.08, "3VV": 1.25, "3VT": 1.32}
ZOOM = 1.4
"""Magnification of the heart relative to the first version of this generator (heart radius 0.19 x
class scale x U(0.75, 1.3) box heights, a seventh of the image's area). Sonographers magnify a
standard plane until the heart fills a third to a half of the screen (docs/synthetic.md); at
ZOOM 1.4 the heart's outline covers about a quarter of the image and half of the sector, so
that the self-supervised views (random crops) hold anatomy rather than mostly lung texture and
ribs. 1.8 was tried first: with the heart that large, raw-pixel logistic regression read the
plane off the image (macro-F1 0.77, benchmarks/synth_difficulty.py), a trivial cue."""


# --------------------------------------------------------------------------------------------
# Anatomy of one clip (or one labelled image)
# --------------------------------------------------------------------------------------------
@dataclass
class Anatomy:
    """Everything random about one clip: plane, pose, motion, nuisances and scanner settings.

    Lengths are in box units (box height = 1 = sector radius), angles in radians.
    """

    cls: str
    frames: int
    fps: float
    heart_c: tuple[float, float]
    heart_r: float
    heart_rot: float
    body: tuple[float, float]
    fluids: list[_Fluid]
    beat_hz: float
    beat_amp: float
    beat_phase: float
    drift: tuple[float, float, float]  # dx, dy, drot over the clip
    thorax_c: tuple[float, float]
    thorax_r: float
    spine_ang: float
    rib_angs: list[float]
    pockets: list[tuple[float, float, float, float]]  # cx, cy, a, b
    amnio: float
    body_echo: float
    wall_echo: float
    att: float  # net depth attenuation (after TGC), nepers per box height
    dyn_range: float
    gain: float
    gamma: float
    blur: float
    speckle_sigma: tuple[float, float]
    speckle_persist: float
    texture_seed: int


def sample_anatomy(rng: np.random.Generator, cls: str, frames: int) -> Anatomy:
    """Draw one anatomy of plane ``cls`` for a clip of ``frames`` frames."""
    body, fluids = _plane(cls, rng)
    heart_r = ZOOM * 0.19 * _CLASS_SCALE[cls] * rng.uniform(0.75, 1.3)
    cy = rng.uniform(0.4, 0.78)
    # the heart stays inside the sector's depth range (deeper than the apex, above the bottom)
    cy = float(np.clip(cy, 0.25 + 0.6 * heart_r, 0.95 - 0.7 * heart_r)) if heart_r < 0.5 else 0.55
    half_w = cy * math.tan(HALF_ANGLE)
    cx = 0.5 + rng.uniform(-1.0, 1.0) * max(half_w - 0.75 * heart_r, 0.02)
    thorax_r = heart_r * rng.uniform(2.0, 2.6)
    tang = rng.uniform(0, 2 * math.pi)
    toff = rng.uniform(0.25, 0.45) * thorax_r
    thorax_c = (cx + toff * math.cos(tang), cy + toff * math.sin(tang))
    pockets = []
    for _ in range(int(rng.integers(0, 3))):
        for _try in range(8):
            a, b = rng.uniform(0.04, 0.11), rng.uniform(0.03, 0.08)
            px, py = rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.95)
            if math.hypot(px - cx, py - cy) > 1.35 * heart_r + max(a, b):
                pockets.append((px, py, a, b))
                break
    fps = float(rng.integers(20, 41))  # cine rate, whole frames per second
    return Anatomy(
        cls=cls, frames=frames, fps=fps,
        heart_c=(cx, cy), heart_r=heart_r, heart_rot=math.radians(rng.uniform(-180.0, 180.0)),
        body=body, fluids=fluids,
        beat_hz=rng.uniform(110.0, 170.0) / 60.0, beat_amp=rng.uniform(0.05, 0.12),
        beat_phase=rng.uniform(0, 2 * math.pi),
        drift=(rng.normal(0, 0.03), rng.normal(0, 0.03), math.radians(rng.normal(0, 4.0))),
        thorax_c=thorax_c, thorax_r=thorax_r,
        spine_ang=tang + math.pi + rng.uniform(-0.5, 0.5),
        rib_angs=list(rng.uniform(0, 2 * math.pi, size=int(rng.integers(1, 4)))),
        pockets=pockets,
        amnio=rng.uniform(0.01, 0.05), body_echo=rng.uniform(0.2, 0.45),
        wall_echo=rng.uniform(4.0, 8.0),
        att=rng.uniform(-0.3, 1.8), dyn_range=rng.uniform(40.0, 60.0),
        gain=rng.uniform(0.45, 0.7), gamma=rng.uniform(0.75, 1.3), blur=rng.uniform(0.3, 1.2),
        speckle_sigma=(rng.uniform(0.6, 1.1), rng.uniform(1.0, 2.0)),
        speckle_persist=rng.uniform(0.5, 0.9),
        texture_seed=int(rng.integers(0, 2**31)),
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _soft(d: np.ndarray, eps: float) -> np.ndarray:
    """Smooth inside-indicator of a signed distance: 1 inside, 0 outside, width ``eps``."""
    return 0.5 * (1.0 - np.tanh(d / eps))


def _scene(an: Anatomy, t: int, x: np.ndarray, y: np.ndarray, px: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Echogenicity and bone attenuation at box points (x, y) at frame ``t``.

    Returns ``echo`` (n_r, n_t) >= 0 and ``bone`` (n_r, n_t) in [0, 1]. ``px``: one pixel in box units.
    """
    frac = t / max(an.frames - 1, 1)
    # Probe drift: move the sample points instead of the scene (rotate about the heart centre).
    dx, dy, drot = (d * frac for d in an.drift)
    hc = (an.heart_c[0] + dx, an.heart_c[1] + dy)
    c, s = math.cos(drot), math.sin(drot)
    wx = hc[0] + c * (x - hc[0]) - s * (y - hc[1]) - dx
    wy = hc[1] + s * (x - hc[0]) + c * (y - hc[1]) - dy
    eps = 0.9 * px

    # Thorax in amniotic fluid; thorax ring; spine and ribs on the ring (bone: bright + shadow).
    tx, ty = wx - an.thorax_c[0], wy - an.thorax_c[1]
    rho = np.hypot(tx, ty)
    d_th = rho - an.thorax_r
    inside = _soft(d_th, 2 * eps)
    echo = an.amnio + (1.0 - an.amnio) * inside
    ring = np.exp(-(d_th / (1.6 * px)) ** 2)
    echo = echo + 1.5 * ring
    phi = np.arctan2(ty, tx)
    bone = np.zeros_like(echo)
    for ang, width, strength in [(an.spine_ang, 0.45, 1.0)] + [(a, 0.22, 0.8) for a in an.rib_angs]:
        dang = (phi - ang + math.pi) % (2 * math.pi) - math.pi
        bone = np.maximum(bone, strength * np.exp(-(d_th / (2.5 * px)) ** 2) * (np.abs(dang) < width / 2))
    echo = echo + 6.0 * bone

    # Nuisance fluid pockets (dark, no wall).
    for (pcx, pcy, a, b) in an.pockets:
        echo = echo * (1.0 - 0.9 * _soft(_sd_ellipse(wx - pcx, wy - pcy, a, b), 2 * eps))

    # The plane, in heart units: u right, v depth, rotated by heart_rot.
    hr = an.heart_r
    cr, sr = math.cos(an.heart_rot), math.sin(an.heart_rot)
    ux, uy = wx - an.heart_c[0], wy - an.heart_c[1]
    u = (cr * ux + sr * uy) / hr
    v = (-sr * ux + cr * uy) / hr
    beat = an.beat_amp * math.sin(2 * math.pi * an.beat_hz * t / an.fps + an.beat_phase)
    d_body = _sd_ellipse(u, v, *an.body) * hr
    echo = echo * (1.0 - _soft(d_body, 2 * eps)) + an.body_echo * _soft(d_body, 2 * eps)
    d_fluid = np.full_like(u, np.inf)
    for f in an.fluids:
        k = 1.0 + f.pulse * beat
        if f.kind == "ellipse":
            d = _sd_ellipse(u - f.c[0], v - f.c[1], f.a * k, f.b * k) * hr
        else:
            d = _sd_capsule(u, v, f.c, f.q, f.a * k) * hr
        if f.ring:  # trachea: thick bright wall, partly dark lumen, drawn on top
            echo = echo * (1.0 - 0.8 * _soft(d, eps)) + an.wall_echo * f.wall * np.exp(-(d / (2.5 * px)) ** 2)
        else:
            d_fluid = np.minimum(d_fluid, d)
    echo = echo * (1.0 - 0.97 * _soft(d_fluid, eps)) + an.wall_echo * np.exp(-(d_fluid / (1.8 * px)) ** 2)
    return echo, bone


def _texture(an: Anatomy, shape: tuple[int, int]) -> np.ndarray:
    g = np.random.default_rng(an.texture_seed).standard_normal(shape)
    g = ndimage.gaussian_filter(g, sigma=max(shape[0] / 24, 1.0))
    return np.exp(0.35 * g / (g.std() + 1e-8))


def _speckle_field(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]
                   ) -> np.ndarray:
    """Complex Gaussian field with a correlated resolution cell, unit mean power."""
    z = rng.standard_normal((2, *shape), dtype=np.float32)
    z = ndimage.gaussian_filter(z, sigma=(0, *sigma))
    z = z[0] + 1j * z[1]
    return z / np.sqrt(np.mean(np.abs(z) ** 2))


def render_clip(an: Anatomy, size: int, rng: np.random.Generator,
                frames: list[int] | None = None) -> np.ndarray:
    """Render frames of a clip as the sector box: uint8 ``(T, size, size)``, black outside the sector.

    ``frames``: which frame indices (default all ``an.frames``); ``rng`` drives the speckle.
    """
    sec = _sector(size)
    idx = list(range(an.frames)) if frames is None else list(frames)
    shape = sec.x.shape
    scale = size / 128.0  # keep the speckle cell and blur constant in physical size
    sig = (an.speckle_sigma[0] * scale, an.speckle_sigma[1] * scale)
    texture = _texture(an, shape)
    depth = np.exp(-an.att * sec.r)  # net of time-gain compensation
    dr = 1.0 / (shape[0] - 1)
    persistent = _speckle_field(rng, shape, sig)
    p = an.speckle_persist
    out = np.zeros((len(idx), size, size), dtype=np.uint8)
    for i, t in enumerate(idx):
        echo, bone = _scene(an, t, sec.x, sec.y, 1.0 / size)
        shadow = np.exp(-np.cumsum(bone, axis=0) * dr * 60.0)  # transmission past bone along r
        shadow = np.concatenate([np.ones((1, shape[1])), shadow[:-1]], axis=0)
        z = p * persistent + math.sqrt(1 - p * p) * _speckle_field(rng, shape, sig)
        amp = np.sqrt(echo * texture * shadow * depth) * np.abs(z)
        db = 20.0 * np.log10(amp + 1e-4)
        img = np.clip(an.gain + db / an.dyn_range, 0.0, 1.0) ** an.gamma
        img = ndimage.gaussian_filter(img, sigma=an.blur * scale)
        cart = ndimage.map_coordinates(img, sec.coords, order=1, mode="nearest")
        out[i] = np.where(sec.mask, np.clip(cart * 255.0 + 0.5, 0, 255), 0).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# The scanner screen (videos only)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenLayout:
    """Canvas ``(height, width)`` and the range of sector-box origins; all in pixels."""

    height: int
    width: int
    panel: int  # text panel width at the left
    top: int
    slack_x: int
    slack_y: int
    bar: int  # UI bar height at the bottom


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_w(s: str) -> int:
    box = _font().getbbox(s)
    return int(box[2] - box[0])


def screen_layout(size: int) -> ScreenLayout:
    """Canvas layout for sector boxes of ``size`` px (fixed per dataset; origin varies per clip)."""
    panel = _text_w("SYNTH^PATIENT^0000") + 10
    top, bar, right = 14, 22, 34
    slack_x, slack_y = max(size // 8, 4), max(size // 16, 2)
    w = panel + slack_x + size + right
    h = top + slack_y + size + 6 + bar
    return ScreenLayout(h + h % 2, w + w % 2, panel, top, slack_x, slack_y, bar)


def _overlay(lay: ScreenLayout, box: tuple[int, int, int, int], lines: list[str], fps: float
             ) -> np.ndarray:
    """The static screen (uint8 (H, W)): UI bar, burned-in text and depth markers, none in ``box``."""
    img = Image.new("L", (lay.width, lay.height), 0)
    draw = ImageDraw.Draw(img)
    font = _font()
    draw.text((4, 2), "SONOSSL SYNTH", fill=235, font=font)
    for k, s in enumerate(lines):
        draw.text((4, lay.top + 4 + 13 * k), s, fill=200, font=font)
    x0, y0, x1, y1 = box
    for k in range(5):  # depth markers, right of the sector box
        yy = y0 + round(k * (y1 - y0 - 1) / 4)
        draw.line([(x1 + 2, yy), (x1 + 6, yy)], fill=220)
        if k % 2 == 0:
            draw.text((x1 + 9, max(yy - 5, 0)), f"{k * DEPTH_CM / 4:g}", fill=220, font=font)
    draw.rectangle([0, lay.height - lay.bar, lay.width - 1, lay.height - 1], fill=90)
    draw.text((4, lay.height - lay.bar + 5), f"B  FR {fps:.0f}Hz  DR 60", fill=240, font=font)
    arr = np.asarray(img, dtype=np.uint8).copy()
    arr[y0:y1, x0:x1] = 0  # never any text inside the sector box
    return arr


def compose_screen(fan: np.ndarray, overlay: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Paste sector frames ``fan`` (T, S, S) into the screen ``overlay`` (H, W) at ``box``: (T, H, W)."""
    x0, y0, x1, y1 = box
    out = np.broadcast_to(overlay, (fan.shape[0], *overlay.shape)).copy()
    out[:, y0:y1, x0:x1] = fan
    return out


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Phi:
    """Fake protected health information of one synthetic patient (all invented)."""

    name: str
    pid: str
    birth: str
    study_date: str
    institution: str
    study_uid: str


def _uid(key: str) -> str:
    """A DICOM UID derived from ``key`` (deterministic, so the same seed gives the same files)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[key])


def _write_dicom(path: Path, frames: np.ndarray, phi: _Phi, fps: float, box: tuple[int, int, int, int],
                 size: int, uid_key: str, series: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage

    sop_uid = _uid(f"{uid_key}-sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "US"
    ds.Manufacturer = "sonossl"
    ds.ManufacturerModelName = "SONOSSL SYNTH"
    ds.PatientName = phi.name
    ds.PatientID = phi.pid
    ds.PatientBirthDate = phi.birth
    ds.PatientSex = "F"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = phi.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.InstitutionName = phi.institution
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.StudyInstanceUID = phi.study_uid
    ds.SeriesInstanceUID = _uid(f"{uid_key}-series")
    ds.StudyID = "1"
    ds.SeriesNumber = series
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = int(frames.shape[0])
    ds.FrameIncrementPointer = (0x0018, 0x1063)  # -> FrameTime
    ds.FrameTime = f"{1000.0 / fps:.3f}"
    ds.CineRate = int(round(fps))
    ds.RecommendedDisplayFrameRate = int(round(fps))
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = box[0], box[1]
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = box[2] - 1, box[3] - 1  # inclusive
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = DEPTH_CM / size
    region.ReferencePixelX0 = size // 2  # the apex, relative to the region
    region.ReferencePixelY0 = 0
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        try:
            stream = container.add_stream("libx264", rate=int(round(fps)))
            stream.options = {"crf": "17", "preset": "veryfast"}
        except Exception:  # an FFmpeg build without x264
            stream = container.add_stream("mpeg4", rate=int(round(fps)))
            stream.bit_rate = 4_000_000
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray").reformat(format="yuv420p")
            container.mux(stream.encode(vf))
        container.mux(stream.encode())


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------
def _check(out: Path, videos: int, frames: int, size: int, fmt: str,
           labelled_per_class: tuple[int, int, int]) -> None:
    if videos < 0:
        raise SonosslError(f"synth videos={videos}: expected an integer >= 0")
    if frames < 1:
        raise SonosslError(f"synth frames={frames}: expected an integer >= 1")
    if not 32 <= size <= 1024:
        raise SonosslError(f"synth size={size}: expected an integer in [32, 1024] pixels")
    if fmt not in FORMATS:
        raise SonosslError(f"synth format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if len(labelled_per_class) != 3 or any(int(n) < 0 for n in labelled_per_class):
        raise SonosslError(f"synth labelled_per_class={labelled_per_class}: expected three counts >= 0 "
                           "(train, valid, test)")
    if out.exists() and not out.is_dir():
        raise SonosslError(f"{out}: exists and is not a folder; expected an output folder")
    for sub in ("videos", "labelled"):
        if (out / sub).exists():
            raise SonosslError(f"{out / sub}: already exists; choose another output folder or remove it")


def synthesize(out: Path, *, videos: int = 40, frames: int = 32, size: int = 128, seed: int = 0,
               fmt: Literal["dicom", "mp4"] = "dicom",
               labelled_per_class: tuple[int, int, int] = (100, 20, 40),
               progress: ProgressFn | None = None) -> dict:
    """Write the synthetic dataset under ``out`` (``videos/`` and ``labelled/``); return a summary.

    videos: number of unlabelled clips; frames: frames per clip; size: side of the sector box in
    pixels (labelled PNGs are ``size x size``, video screens are larger); labelled_per_class:
    images per class in (train, valid, test). ``progress(stage, done, total)`` is called per item.

    Everything is written to a hidden staging folder inside ``out`` and moved into place at the
    end, so an error leaves no half-written ``videos/`` or ``labelled/``.

    Returns a JSON-able dict: ``format``, ``seed``, ``size``, ``screen`` (H, W), ``videos``
    (list of ``{"path", "frames", "fps", "fan_box": [x0, y0, x1, y1] (half-open, pixels), "group"}``;
    ``group`` is the index of the invented patient, shared by consecutive clips; no PHI),
    ``truth`` (path of the private truth CSV), ``labelled`` ({split: {class: count}}), ``csv``
    ({split: path}); paths are relative to ``out``.
    """
    out = Path(out)
    _check(out, videos, frames, size, fmt, labelled_per_class)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / ".synth-partial"
    if stage.exists():
        shutil.rmtree(stage)
    try:
        summary = _write_all(stage, videos=videos, frames=frames, size=size, seed=seed, fmt=fmt,
                             labelled_per_class=tuple(int(n) for n in labelled_per_class),
                             progress=progress)
        for sub in ("videos", "labelled"):
            (stage / sub).rename(out / sub)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def _write_all(root: Path, *, videos: int, frames: int, size: int, seed: int, fmt: str,
               labelled_per_class: tuple[int, int, int], progress: ProgressFn | None) -> dict:
    vdir, ldir = root / "videos", root / "labelled"
    vdir.mkdir(parents=True)
    ldir.mkdir(parents=True)
    lay = screen_layout(size)
    n_patients = max(1, math.ceil(videos / 3))
    clips, truth = [], []
    for i in range(videos):
        rng = np.random.default_rng([seed, _STREAM_CLIP, i])
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        an = sample_anatomy(rng, cls, frames)
        fan = render_clip(an, size, rng)
        x0 = lay.panel + int(rng.integers(0, lay.slack_x + 1))
        y0 = lay.top + int(rng.integers(0, lay.slack_y + 1))
        box = (x0, y0, x0 + size, y0 + size)
        pat = (i * n_patients) // max(videos, 1)  # consecutive clips share a patient
        prng = np.random.default_rng([seed, 2, pat])
        phi = _Phi(
            name=f"SYNTH^PATIENT^{pat}", pid=f"SYN{pat:04d}",
            birth=f"{int(prng.integers(1980, 2004))}{int(prng.integers(1, 13)):02d}{int(prng.integers(1, 29)):02d}",
            study_date=f"2024{int(prng.integers(1, 13)):02d}{int(prng.integers(1, 29)):02d}",
            institution="SONOSSL SYNTHETIC HOSPITAL",
            study_uid=_uid(f"sonossl-synth-{seed}-study-{pat}"),
        )
        date = f"{phi.study_date[:4]}-{phi.study_date[4:6]}-{phi.study_date[6:]}"
        overlay = _overlay(lay, box, [phi.name, f"ID {phi.pid}", date], an.fps)
        screen = compose_screen(fan, overlay, box)
        name = f"clip_{i:04d}." + ("dcm" if fmt == "dicom" else "mp4")
        if fmt == "dicom":
            _write_dicom(vdir / name, screen, phi, an.fps, box, size, f"sonossl-synth-{seed}-clip-{i}", i + 1)
        else:
            _write_mp4(vdir / name, screen, an.fps)
        clips.append({"path": f"videos/{name}", "frames": frames, "fps": an.fps,
                      "fan_box": list(box), "group": pat})
        truth.append([name, cls, *box])
        if progress:
            progress("videos", i + 1, videos)
    with open(vdir / "_truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "class", "fan_x0", "fan_y0", "fan_x1", "fan_y1"])
        w.writerows(truth)

    total = sum(labelled_per_class) * len(CLASSES)
    done = 0
    counts: dict[str, dict[str, int]] = {}
    for s, (split, n) in enumerate(zip(SPLITS, labelled_per_class)):
        rows = []
        counts[split] = {}
        for c, cls in enumerate(CLASSES):
            (ldir / "images" / split / cls).mkdir(parents=True)
            for k in range(n):
                rng = np.random.default_rng([seed, _STREAM_LABELLED, s, c, k])
                an = sample_anatomy(rng, cls, frames)
                t = int(rng.integers(frames))
                img = render_clip(an, size, rng, frames=[t])[0]
                rel = f"images/{split}/{cls}/{split}_{cls}_{k:04d}.png"
                Image.fromarray(img).save(ldir / rel)
                rows.append((rel, cls))
                done += 1
                if progress:
                    progress("labelled", done, total)
            counts[split][cls] = n
        with open(ldir / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_path", "class"])
            w.writerows(rows)
    return {
        "format": fmt, "seed": seed, "size": size, "classes": list(CLASSES),
        "screen": [lay.height, lay.width],
        "videos": clips, "truth": "videos/_truth.csv",
        "labelled": counts, "csv": {sp: f"labelled/{sp}.csv" for sp in SPLITS},
    }
