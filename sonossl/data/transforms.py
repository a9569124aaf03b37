"""Ultrasound-aware view augmentations for grey frames.

A view is ``ViewTransform(frame, generator)``: frame ``uint8 (1, H, W)`` (a torch tensor),
result ``float32 (1, S, S)`` in [0, 1] (the Encoder applies the ImageNet normalisation). Every
random draw comes from the ``torch.Generator`` passed in, so a view is a pure function of the
frame and the generator's seed (runs resume with the same data).

What differs from the seed's ImageNet recipe, and why:

- no hue/saturation jitter and no random grayscale: ultrasound frames are grey;
- no horizontal flip by default (``hflip=False``): mirroring turns an LVOT view into an
  RVOT-looking one, i.e. it changes the class the backbone should later tell apart;
- added gamma and multiplicative (speckle-like) noise, the two intensity changes a change of
  scanner gain/compression and a different probe produce;
- Gaussian blur's sigma is scaled with the output size (the seed's 0.1-2.0 px are at 224 px);
- an optional rotation of the view (``rotate_p``, off by default): the heart's axis turns with
  the fetus's lie, so a representation of the plane should not encode it (docs/methods.md, view augmentations).
- optional ultrasound artefacts on the whole frame before the crop (off by default): depth
  attenuation and haze (Ostvik et al. 2021), a Gaussian acoustic shadow (Smistad et al. 2018),
  as Tupper et al. 2025 ("Revisiting Data Augmentation for Ultrasound Images") define them; the
  probe sits at the top centre of the frame, and the scan region is where the frame is not black
  (ingestion blanks everything else).

The seed's asymmetric pair (blur p 1.0 / 0.1, solarize p 0 / 0.2) is :func:`asymmetric_pair`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


@dataclass(frozen=True)
class ViewTransform:
    """One view's augmentation settings (probabilities in [0, 1])."""

    size: int = 64
    scale: tuple[float, float] = (0.3, 1.0)  # area fraction of the random resized crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gamma_p: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    speckle_p: float = 0.5
    speckle_sigma: tuple[float, float] = (0.0, 0.2)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # at 224 px; scaled by size / 224
    solarize_p: float = 0.0
    hflip: bool = False
    rotate_p: float = 0.0
    rotate: float = 0.0  # degrees: the angle is drawn uniform in +- this
    depth_p: float = 0.0  # ultrasound artefacts (off by default), each with its probability
    depth_rate: tuple[float, float] = (0.0, 3.0)  # attenuation exp(-rate x depth), depth 1 = the frame's height
    haze_p: float = 0.0
    haze_radius: tuple[float, float] = (0.05, 0.95)  # the hazy band's distance from the probe
    haze_sigma: tuple[float, float] = (0.0, 0.1)  # and its width
    shadow_p: float = 0.0
    shadow_strength: tuple[float, float] = (0.25, 0.8)  # darkening at the shadow's centre
    shadow_sigma: tuple[float, float] = (0.01, 0.2)  # its extent along each axis, as a fraction of the side

    @property
    def artefacts(self) -> bool:
        return self.depth_p > 0 or self.haze_p > 0 or self.shadow_p > 0

    def __post_init__(self) -> None:
        if not 0 <= self.rotate <= 180:
            raise ValueError(f"rotate: expected a maximum angle in [0, 180] degrees, got {self.rotate}")

    def __call__(self, frame: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """frame: uint8 or float (1, H, W) -> float32 (1, size, size) in [0, 1]."""
        if self.artefacts:
            frame = self._artefacts(frame.float() / 255 if frame.dtype == torch.uint8 else frame.float(), g)
        x = self._crop(frame, g)
        if self.hflip and _u(g) < 0.5:
            x = x.flip(-1)
        if self.rotate_p > 0 and _u(g) < self.rotate_p:
            x = rotate_views(x[None], torch.tensor([_u(g, -self.rotate, self.rotate)]))[0]
        if _u(g) < self.jitter_p:
            b = _u(g, 1 - self.brightness, 1 + self.brightness)
            c = _u(g, 1 - self.contrast, 1 + self.contrast)
            x = ((x * b - x.mean()) * c + x.mean()).clamp_(0, 1)
        if _u(g) < self.gamma_p:
            x = x.clamp_(min=1e-6).pow_(_u(g, *self.gamma))
        if _u(g) < self.speckle_p:
            sigma = _u(g, *self.speckle_sigma)
            x = (x * (1 + sigma * torch.randn(x.shape, generator=g))).clamp_(0, 1)
        if _u(g) < self.blur_p:
            x = gaussian_blur(x, _u(g, *self.blur_sigma) * self.size / 224)
        if _u(g) < self.solarize_p:
            x = torch.where(x < 0.5, x, 1 - x)
        return x.contiguous()

    def _artefacts(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The ultrasound artefacts on a whole frame ``float (1, H, W)``, each with its probability."""
        h, w = x.shape[-2:]
        one = lambda v: torch.tensor([v])  # noqa: E731
        if self.depth_p > 0 and _u(g) < self.depth_p:
            x = x * depth_attenuation(h, w, one(_u(g, *self.depth_rate)))[0]
        if self.haze_p > 0 and _u(g) < self.haze_p:
            r, s = one(_u(g, *self.haze_radius)), one(_u(g, *self.haze_sigma))
            x = add_haze(x[None], torch.rand((1, 1, h, w), generator=g), r, s)[0]
        if self.shadow_p > 0 and _u(g) < self.shadow_p:
            k = [one(_u(g, *r)) for r in (self.shadow_strength, self.shadow_sigma, self.shadow_sigma, (0, 1), (0, 1))]
            x = x * gaussian_shadow(h, w, *k)[0]
        return x

    def _crop(self, frame: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random resized crop (torchvision's sampling, 10 tries then the centre), bilinear."""
        h, w = frame.shape[-2:]
        area = h * w
        top, left, ch, cw = 0, 0, h, w
        for _ in range(10):
            target = area * _u(g, *self.scale)
            aspect = math.exp(_u(g, math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw_ = int(round(math.sqrt(target * aspect)))
            ch_ = int(round(math.sqrt(target / aspect)))
            if 0 < cw_ <= w and 0 < ch_ <= h:
                top = int(torch.randint(0, h - ch_ + 1, (), generator=g))
                left = int(torch.randint(0, w - cw_ + 1, (), generator=g))
                ch, cw = ch_, cw_
                break
        else:
            s = min(h, w)
            top, left, ch, cw = (h - s) // 2, (w - s) // 2, s, s
        crop = frame[..., top : top + ch, left : left + cw].float()
        if frame.dtype == torch.uint8:
            crop = crop / 255
        out = F.interpolate(crop[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return out[0].clamp_(0, 1)


def _grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates ``(h, 1)`` and ``(1, w)``, the frame's height and width both 1."""
    return torch.linspace(0, 1, h, device=device)[:, None], torch.linspace(0, 1, w, device=device)[None, :]


def _probe_distance(h: int, w: int, device: torch.device) -> torch.Tensor:
    """``(h, w)``: each pixel's distance from the probe at the top centre."""
    y, x = _grid(h, w, device)
    return ((x - 0.5) ** 2 + y**2).sqrt()


def depth_attenuation(h: int, w: int, rate: torch.Tensor) -> torch.Tensor:
    """The beam's loss with depth (Ostvik et al. 2021): ``exp(-rate d)``, ``d`` the distance from the
    probe. rate ``(B,)`` -> multiplicative map ``(B, 1, h, w)``."""
    return torch.exp(-rate[:, None, None, None] * _probe_distance(h, w, rate.device))


def add_haze(x: torch.Tensor, noise: torch.Tensor, radius: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Haze (Ostvik et al. 2021): uniform noise ``(B, 1, H, W)`` weighted by a Gaussian band at
    distance ``radius`` (B,) from the probe, of width ``sigma`` (B,), half of it added inside the
    scan region of ``x`` ``(B, 1, H, W)`` (its non-black pixels), clipped to [0, 1]."""
    r = _probe_distance(*x.shape[-2:], x.device)
    band = torch.exp(-((r - radius[:, None, None, None]) ** 2) / (2 * sigma[:, None, None, None] ** 2 + 1e-12))
    return (x + 0.5 * noise * band * (x > 0)).clamp(0, 1)


def gaussian_shadow(h: int, w: int, strength: torch.Tensor, sigma_x: torch.Tensor, sigma_y: torch.Tensor,
                    centre_x: torch.Tensor, centre_y: torch.Tensor) -> torch.Tensor:
    """An acoustic shadow (Smistad et al. 2018): ``1 - strength`` at its centre, a Gaussian of
    extent ``sigma_x``, ``sigma_y`` (fractions of the sides) around ``centre_x``, ``centre_y`` (in
    [0, 1]); each ``(B,)`` -> multiplicative map ``(B, 1, h, w)``."""
    y, x = _grid(h, w, strength.device)
    e = lambda t: t[:, None, None, None]  # noqa: E731
    blob = torch.exp(-((x - e(centre_x)) ** 2 / (2 * e(sigma_x) ** 2) + (y - e(centre_y)) ** 2 / (2 * e(sigma_y) ** 2)))
    return 1 - e(strength) * blob


def rotate_views(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each view of ``x`` ``(B, C, S, S)`` by its own angle ``degrees`` ``(B,)`` about the
    centre (counter-clockwise), bilinear, black outside the frame (as the sector's surround)."""
    a = torch.deg2rad(degrees.to(x.dtype))
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, H, W)`` with reflect padding; radius 3 sigma."""
    if sigma < 0.05:
        return x
    radius = max(1, min(int(math.ceil(3 * sigma)), min(x.shape[-2:]) // 2 - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def asymmetric_pair(size: int, *, hflip: bool = False, scale: tuple[float, float] = (0.3, 1.0)) -> list[ViewTransform]:
    """The seed's BarlowTwins/VICReg pair: blur p 1.0 / 0.1, solarize p 0.0 / 0.2."""
    return [
        ViewTransform(size=size, scale=scale, blur_p=1.0, solarize_p=0.0, hflip=hflip),
        ViewTransform(size=size, scale=scale, blur_p=0.1, solarize_p=0.2, hflip=hflip),
    ]
