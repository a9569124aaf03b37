"""The anatomy of the five planes and how the scanner images it: sector geometry, plane
layouts, :class:`Anatomy` draws, and :func:`render_clip` (image formation, see the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal

import numpy as np
from scipy import ndimage

from sonossl.errors import SonosslError

CLASSES: tuple[str, ...] = ("4CH", "LVOT", "RVOT", "3VV", "3VT")  # the five standard fetal cardiac planes

HALF_ANGLE = math.radians(30.0)
"""Half opening angle of the sector. With the apex at the top centre and radius = box height,
30 degrees makes the sector's bounding box exactly square (width 2 R sin 30 = R)."""
DEPTH_CM = 12.0  # what the depth markers and the DICOM pixel spacing pretend the box spans

ProgressFn = Callable[[str, int, int], None]

# Streams: item k of a kind draws from default_rng([seed, kind, *k]) -> independent of counts.
STREAM_CLIP, STREAM_LABELLED = 0, 1



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
def plane_layout(cls: str, rng: np.random.Generator) -> tuple[tuple[float, float], list[_Fluid]]:
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
    body, fluids = plane_layout(cls, rng)
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


