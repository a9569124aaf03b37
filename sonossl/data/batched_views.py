"""Views made in batches on the model's device, with a random draw per sample.

:class:`BatchedViews` takes the uint8 frames a loader delivers and makes every view of a batch
at once, with the semantics and parameter ranges of :class:`~sonossl.data.transforms.ViewTransform`
(it reads them from the very same objects): per sample, a random resized crop (torchvision's
sampling: 10 tries of area fraction and log-aspect, then the centre square), resized with the
same antialiased bilinear weights ``F.interpolate(..., antialias=True)`` uses, an optional
horizontal flip, an optional rotation (the very same :func:`~sonossl.data.transforms.rotate_views`), intensity jitter (brightness around the view's mean, then contrast), gamma,
multiplicative speckle, Gaussian blur (sigma scaled by size / 224, radius 3 sigma, reflect
padding) and solarisation, each with its own probability.

How, and why not kornia: the crop and resize is one gather of K source rows and K source
columns per output pixel (K <= ceil(2 x downscale) + 1) weighted exactly as torchvision's
antialiased filter, so a crop box gives the same pixels as the per-sample path (to float
rounding) at every scale; a batched affine ``grid_sample`` (what kornia's ``RandomResizedCrop``
does) reads 4 pixels per output and aliases when the crop is shrunk (a 256 px frame to a 64 px
view is a 2-4x shrink), and on the CPU it measured 1.3 ms per 256 px view against 0.4 ms for
the whole per-sample crop. Blur is a grouped (depthwise) convolution per radius, so a sample
blurred with radius 2 costs 5 taps, not the batch's largest radius. The other operations are
element-wise over the batch, computed only on the samples whose coin came up.

Randomness: every draw comes from the ``torch.Generator`` passed in (on the frames' device),
a fixed number of draws per sample and operation before any data-dependent work, so the
views are a pure function of the frames and the generator's seed. The training module seeds
it from ``(seed, global step, rank)``, so a resumed run makes the same views as a straight one.

Shapes: frames ``uint8 (B, 1, H, W)`` (one frame for every view) or a tuple of them, one per
view (temporal pairs); views ``float32 (B, 1, S_v, S_v)`` in [0, 1], one per transform.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sonossl.data.pairs import FramePairDataset
from sonossl.data.transforms import ViewTransform, add_haze, depth_attenuation, gaussian_shadow, rotate_views
from sonossl.errors import SonosslError

CROP_TRIES = 10  # torchvision's RandomResizedCrop.get_params


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, device, dtype=torch.float32) -> torch.Tensor:
    """(n,) uniform in [lo, hi)."""
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device, dtype=dtype)


def sample_crop_boxes(
    n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator, device
) -> tuple[torch.Tensor, ...]:
    """Random resized crop boxes for ``n`` frames of ``h x w``: (top, left, height, width), each
    ``int64 (n,)``. Per sample the first of 10 (area fraction, log aspect) tries that fits, at
    a uniform position; when none fits, the centre square (``ViewTransform._crop``'s rule)."""
    f64 = torch.float64 if torch.device(device).type != "mps" else torch.float32
    target = h * w * _uniform(g, n * CROP_TRIES, *scale, device, f64).view(n, CROP_TRIES)
    aspect = torch.exp(_uniform(g, n * CROP_TRIES, math.log(ratio[0]), math.log(ratio[1]), device, f64)).view(n, CROP_TRIES)
    cw = torch.round(torch.sqrt(target * aspect)).long()  # round half to even, as Python's round
    ch = torch.round(torch.sqrt(target / aspect)).long()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.argmax(fits.int(), dim=1)  # the first try that fits (0 when none does)
    found = fits.any(dim=1)
    side = min(h, w)
    ch = torch.where(found, ch.gather(1, first[:, None])[:, 0], side)
    cw = torch.where(found, cw.gather(1, first[:, None])[:, 0], side)
    u_top, u_left = _uniform(g, n, 0, 1, device, f64), _uniform(g, n, 0, 1, device, f64)
    top = torch.where(found, torch.floor(u_top * (h - ch + 1)).long().clamp(max=h - ch), (h - side) // 2)
    left = torch.where(found, torch.floor(u_left * (w - cw + 1)).long().clamp(max=w - cw), (w - side) // 2)
    return top, left, ch, cw


def resize_taps(start: torch.Tensor, length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights that resize each window ``[start, start + length)`` (int64
    ``(n,)``) to ``out`` pixels with the antialiased bilinear filter of ``F.interpolate(mode=
    "bilinear", antialias=True, align_corners=False)`` (a triangle as wide as the scale when
    shrinking, plain bilinear when enlarging, clipped to the window and renormalised).
    Returns ``idx int64 (n, out, K)`` and ``weight float32 (n, out, K)``, K the widest support."""
    dev = start.device
    f = torch.float64 if dev.type != "mps" else torch.float32
    scale = length.to(f) / out  # (n,)
    support = torch.clamp(scale, min=1.0)
    inv = 1.0 / support
    center = scale[:, None] * (torch.arange(out, device=dev, dtype=f)[None] + 0.5)  # (n, out)
    lo = torch.clamp(torch.trunc(center - support[:, None] + 0.5), min=0)
    hi = torch.minimum(torch.trunc(center + support[:, None] + 0.5), length.to(f)[:, None])
    k = max(1, int((hi - lo).max()))  # taps of the widest window (one host sync)
    j = lo[..., None] + torch.arange(k, device=dev, dtype=f)  # (n, out, K) window coordinates
    wt = torch.clamp(1 - torch.abs((j - center[..., None] + 0.5) * inv[:, None, None]), min=0)
    wt = torch.where(j < hi[..., None], wt, 0)
    wt = wt / wt.sum(-1, keepdim=True)
    idx = start[:, None, None] + torch.minimum(j.long(), (length - 1)[:, None, None])
    return idx, wt.float()


def _resample_rows(x: torch.Tensor, idx: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """x (B, H, W), idx int64 (B, S, K) source rows, wt (B, S, K) -> (B, S, W): each output row
    the weighted sum of its K source rows (one row gather and multiply-add per tap)."""
    b, h, w = x.shape
    flat = x.reshape(b * h, w)
    rows = idx + (torch.arange(b, device=x.device) * h)[:, None, None]  # rows of ``flat``
    out = None
    for k in range(idx.shape[-1]):
        r = flat.index_select(0, rows[..., k].reshape(-1)).view(b, -1, w)
        out = r.mul_(wt[..., k, None]) if out is None else out.addcmul_(r, wt[..., k, None])
    return out


def resized_crop(frames: torch.Tensor, boxes: tuple[torch.Tensor, ...], size: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """frames ``float (B, H, W)`` in [0, 1], boxes from :func:`sample_crop_boxes`, flip ``bool
    (B,)`` or None -> ``float32 (B, size, size)`` in [0, 1]: each box resized as
    ``ViewTransform._crop`` does (rows, then columns), mirrored left-right where ``flip``."""
    top, left, ch, cw = boxes
    iy, wy = resize_taps(top, ch, size)  # (B, S, Ky)
    ix, wx = resize_taps(left, cw, size)  # (B, S, Kx)
    if flip is not None:
        ix = torch.where(flip[:, None, None], ix.flip(1), ix)
        wx = torch.where(flip[:, None, None], wx.flip(1), wx)
    y = _resample_rows(frames, iy, wy)  # (B, S_y, W)
    x = _resample_rows(y.transpose(1, 2).contiguous(), ix, wx)  # (B, S_x, S_y)
    return x.transpose(1, 2).clamp(0, 1)


def _on(x: torch.Tensor, sel: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x`` (B, ...) with ``fn(x[i], i)`` in the rows ``i`` where ``sel`` (bool (B,)) holds; the
    other rows untouched (``x`` is updated in place). ``fn`` gets the selected rows and their
    indices."""
    idx = sel.nonzero()[:, 0]
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, idx)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx), idx))


def batched_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each sample of ``x`` (n, 1, S, S) with its own ``sigma`` (n,),
    as :func:`~sonossl.data.transforms.gaussian_blur` (radius ceil(3 sigma) within [1, S/2 - 1],
    reflect padding, no blur below sigma 0.05). One depthwise convolution per distinct radius."""
    side = min(x.shape[-2:])
    radius = torch.clamp(torch.ceil(3 * sigma), min=1, max=max(1, side // 2 - 1)).long()
    active = sigma >= 0.05
    out = x.clone()
    for r in torch.unique(radius[active]).tolist():
        sel = active & (radius == r)
        idx = sel.nonzero()[:, 0]
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None] / sigma[idx, None].to(x.dtype)) ** 2)
        k = k / k.sum(1, keepdim=True)  # (m, 2r + 1)
        m = idx.numel()
        y = F.pad(x.index_select(0, idx).view(1, m, *x.shape[-2:]), (r, r, r, r), mode="reflect")
        y = F.conv2d(y, k.view(m, 1, 1, -1), groups=m)
        y = F.conv2d(y, k.view(m, 1, -1, 1), groups=m)
        out = out.index_copy_(0, idx, y.view(m, 1, *x.shape[-2:]))
    return out


def _artefacts(t: ViewTransform, frames: torch.Tensor, u: Callable[..., torch.Tensor], g: torch.Generator) -> torch.Tensor:
    """:meth:`ViewTransform._artefacts` of a batch ``float (B, 1, H, W)``, a draw per sample (the
    frames are shared by the views: never changed in place)."""
    b, _, h, w = frames.shape

    def where(sel: torch.Tensor, on: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        return torch.where(sel[:, None, None, None], on, off)

    if t.depth_p > 0:
        sel, rate = u() < t.depth_p, u(*t.depth_rate)
        frames = where(sel, frames * depth_attenuation(h, w, rate), frames)
    if t.haze_p > 0:
        sel, radius, sigma = u() < t.haze_p, u(*t.haze_radius), u(*t.haze_sigma)
        noise = torch.rand(frames.shape, generator=g, device=frames.device, dtype=frames.dtype)
        frames = where(sel, add_haze(frames, noise, radius, sigma), frames)
    if t.shadow_p > 0:
        sel = u() < t.shadow_p
        k = [u(*r) for r in (t.shadow_strength, t.shadow_sigma, t.shadow_sigma, (0, 1), (0, 1))]
        frames = where(sel, frames * gaussian_shadow(h, w, *k), frames)
    return frames


class BatchedView:
    """One :class:`ViewTransform` applied to a batch, a random draw per sample."""

    def __init__(self, t: ViewTransform):
        self.t = t

    def __call__(self, frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """frames uint8 (B, 1, H, W), or float in [0, 1] -> float32 (B, 1, S, S) in [0, 1]."""
        t, (b, _, h, w), dev = self.t, frames.shape, frames.device

        def u(lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
            return _uniform(g, b, lo, hi, dev)

        boxes = sample_crop_boxes(b, h, w, t.scale, t.ratio, g, dev)
        flip = u() < 0.5 if t.hflip else None
        # every coin and parameter drawn up front: the number of draws never depends on the data
        jit, bright, contrast = u() < t.jitter_p, u(1 - t.brightness, 1 + t.brightness), u(1 - t.contrast, 1 + t.contrast)
        gam, gamma = u() < t.gamma_p, u(*t.gamma)
        spk, speckle = u() < t.speckle_p, u(*t.speckle_sigma)
        blur, blur_sigma = u() < t.blur_p, u(*t.blur_sigma) * t.size / 224
        sol = u() < t.solarize_p
        rot, angle = (u() < t.rotate_p, u(-t.rotate, t.rotate)) if t.rotate_p > 0 else (None, None)
        if frames.dtype == torch.uint8:
            frames = frames.float().div_(255)
        if t.artefacts:
            frames = _artefacts(t, frames, u, g)
        x = resized_crop(frames[:, 0], boxes, t.size, flip)[:, None]
        if rot is not None:
            x = _on(x, rot, lambda v, i: rotate_views(v, angle[i]))

        def jitter(v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            m = v.mean((1, 2, 3), keepdim=True)
            return ((v * bright[i, None, None, None] - m) * contrast[i, None, None, None] + m).clamp_(0, 1)

        def noise(v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            n = torch.randn(v.shape, generator=g, device=dev, dtype=v.dtype)
            return (v * n.mul_(speckle[i, None, None, None]).add_(1)).clamp_(0, 1)

        x = _on(x, jit, jitter)
        x = _on(x, gam, lambda v, i: v.clamp(min=1e-6).pow_(gamma[i, None, None, None]))
        x = _on(x, spk, noise)
        x = _on(x, blur, lambda v, i: batched_blur(v, blur_sigma[i]))
        if t.solarize_p > 0:
            x = torch.where(sol[:, None, None, None] & (x >= 0.5), 1 - x, x)
        return x.contiguous()


class BatchedViews:
    """Every view of a method, made on the frames' device: ``views(frames, g)``.

    transforms: one :class:`ViewTransform` per view (the method's ``view_transforms()``).
    frames: ``uint8 (B, 1, H, W)`` shared by every view, or a tuple with one such tensor per
    view (``pairs="temporal"``). Returns a tuple of ``float32 (B, 1, S_v, S_v)``.
    """

    def __init__(self, transforms: Sequence[ViewTransform]):
        self.views = [BatchedView(t) for t in transforms]

    def __call__(self, frames: torch.Tensor | Sequence[torch.Tensor], g: torch.Generator) -> tuple[torch.Tensor, ...]:
        if isinstance(frames, torch.Tensor):
            frames = [frames]
        frames = [f.float().div_(255) if f.dtype == torch.uint8 else f for f in frames]  # once per frame
        if len(frames) == 1:
            frames = frames * len(self.views)
        if len(frames) != len(self.views):
            raise ValueError(f"expected 1 or {len(self.views)} frame tensors, got {len(frames)}")
        return tuple(v(f, g) for v, f in zip(self.views, frames))


def view_generator(seed: int, step: int, rank: int, device: torch.device | str) -> torch.Generator:
    """The generator of one training step's views: seeded by ``(seed, step, rank)`` (and a tag
    that keeps it apart from other per-step streams), on ``device``."""
    s = np.random.SeedSequence([seed & 0xFFFFFFFF, step, rank, 0x7669]).generate_state(1, np.uint64)[0] >> 1
    return torch.Generator(device=device).manual_seed(int(s))


class FrameDataset(FramePairDataset):
    """The uint8 frames behind :class:`FramePairDataset`'s views, for views made on the device.

    Same index, splits and temporal rule (the neighbour frames are drawn from the same
    ``(seed, epoch, index)`` generator). Item -> ``(uint8 (1, H, W),)`` with ``pairs="augment"``
    (every view is cut from that frame), or one frame per view with ``pairs="temporal"``.
    Frames are batched before the views are cut, so every clip of the split must have one size.
    """

    def __init__(self, store, split: str | None, view_transforms: Sequence[ViewTransform], **kwargs):
        super().__init__(store, split, view_transforms, **kwargs)
        sizes = sorted({(v.height, v.width) for v in self.videos})
        if len(sizes) > 1:
            raise SonosslError(
                f"{store.path}: clips of {len(sizes)} frame sizes ({sizes[0]} ... {sizes[-1]}); views on the "
                f"device need one size: re-ingest with one --size, or use augment_on: loader"
            )

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        if not 0 <= index < len(self):
            raise IndexError(index)
        v, i = self.locate(int(index))
        frame = self._frame(v, i)
        if self.pairs != "temporal":
            return (frame,)
        g = torch.Generator().manual_seed(self.item_seed(index, epoch))
        return (frame, *[self._frame(v, self.neighbour(v, i, g)) for _ in self.transforms[1:]])
