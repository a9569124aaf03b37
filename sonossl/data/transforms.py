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

    def __post_init__(self) -> None:
        if not 0 <= self.rotate <= 180:
            raise ValueError(f"rotate: expected a maximum angle in [0, 180] degrees, got {self.rotate}")

    def __call__(self, frame: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """frame: uint8 or float (1, H, W) -> float32 (1, size, size) in [0, 1]."""
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
