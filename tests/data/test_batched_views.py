"""Batched on-device views draw what the per-sample views draw.

- the crop and resize of a given box is the per-sample path's, pixel for pixel;
- crop boxes (area fraction, aspect, position) and the intensity moments of each operation
  on its own, and of the whole asymmetric pair, pass two-sample Kolmogorov-Smirnov tests
  against the per-sample path over hundreds of draws; a view with one setting changed fails
  them (the tests can tell);
- views are a pure function of the frames and the generator's seed;
- a pretraining with ``augment_on: device`` resumes bit-exact.

Every draw comes from fixed seeds, so the p-values are the same on every run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp

from helpers import one_thread_run, ramp_store, random_clip_store

import sonossl.data.transforms as transforms_module
from sonossl.config import PretrainConfig
from sonossl.data.batched_views import BatchedView, BatchedViews, FrameDataset, batched_blur, resized_crop, sample_crop_boxes
from sonossl.data.framestore import FrameStore, FrameStoreWriter
from sonossl.data.transforms import ViewTransform, asymmetric_pair, gaussian_blur
from sonossl.errors import SonosslError

N = 400  # draws per path
SAME, DIFFERENT = 1e-3, 1e-6  # KS p-value floors: same distribution above, a changed one below
PLAIN = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, gamma_p=0.0, speckle_p=0.0, blur_p=0.0)


def _frame(h: int = 48, w: int = 48) -> torch.Tensor:
    """uint8 (1, h, w): a smooth gradient with texture (mid-grey mean, every level used)."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = 0.6 * (0.3 + 0.5 * yy * xx + 0.2 * torch.sin(9 * xx)) + 0.4 * torch.rand(h, w, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)[None]


def _per_sample(t: ViewTransform, frame: torch.Tensor, n: int = N) -> torch.Tensor:
    """(n, 1, S, S): n per-sample views, seeds 0..n-1."""
    return torch.stack([t(frame, torch.Generator().manual_seed(s)) for s in range(n)])


def _batched(t: ViewTransform, frame: torch.Tensor, n: int = N, seed: int = 1) -> torch.Tensor:
    """(n, 1, S, S): one batch of n views."""
    return BatchedView(t)(frame[None].expand(n, -1, -1, -1), torch.Generator().manual_seed(seed))


def _stats(v: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-view summary statistics of (n, 1, S, S) views, rounded to 1e-5: the views an
    operation leaves alone are one value in both paths, up to float rounding that KS would
    otherwise read as two separate atoms."""
    flat = v.flatten(1).double()
    centre = v[..., v.shape[-2] // 4 : -(v.shape[-2] // 4), v.shape[-1] // 4 : -(v.shape[-1] // 4)].flatten(1)
    grad = (v[..., 1:] - v[..., :-1]).abs().flatten(1)  # sharpness: blur and speckle move it
    stats = {"mean": flat.mean(1), "std": flat.std(1), "centre": centre.double().mean(1), "grad": grad.double().mean(1),
             "bright": (flat > 0.5).double().mean(1),
             "left": (v[..., : v.shape[-1] // 2].mean((1, 2, 3)) - v[..., v.shape[-1] // 2 :].mean((1, 2, 3))).double()}
    return {k: np.round(s.numpy(), 5) for k, s in stats.items()}


def _ks(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    sa, sb = _stats(a), _stats(b)
    return {k: ks_2samp(sa[k], sb[k]).pvalue for k in sa}


# ---- the crop ---------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,size", [(40, 56, 32), (96, 96, 24), (30, 30, 48)])  # shrink 2-4x; enlarge
def test_a_crop_box_resizes_to_the_per_sample_pixels(h, w, size):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (12, h, w), dtype=torch.uint8, generator=g)
    boxes = sample_crop_boxes(12, h, w, (0.05, 1.0), (3 / 4, 4 / 3), g, "cpu")
    flip = torch.arange(12) % 2 == 0
    out = resized_crop(frames.float() / 255, boxes, size, flip)
    for i in range(12):
        top, left, ch, cw = (int(b[i]) for b in boxes)
        crop = frames[i, top : top + ch, left : left + cw].float()[None, None] / 255
        ref = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0]
        ref = ref.clamp(0, 1).flip(-1) if flip[i] else ref.clamp(0, 1)
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_crop_boxes_are_distributed_as_the_per_sample_ones(monkeypatch):
    """The per-sample path's boxes are read off the crop it hands to ``F.interpolate``: its frame
    holds ``1000 * row + column`` in every pixel, so the crop's first pixel is its corner."""
    h, w = 40, 56
    seen = []
    real = F.interpolate

    def spy(x, **kw):
        seen.append((int(x[0, 0, 0, 0]) // 1000, int(x[0, 0, 0, 0]) % 1000, x.shape[-2], x.shape[-1]))
        return real(x, **kw)

    monkeypatch.setattr(transforms_module.F, "interpolate", spy)
    coords = (1000 * torch.arange(h)[:, None] + torch.arange(w)[None]).float()[None]
    t = ViewTransform(size=16, scale=(0.08, 1.0), ratio=(0.5, 2.0), jitter_p=0, gamma_p=0, speckle_p=0, blur_p=0)
    for s in range(2 * N):
        t(coords, torch.Generator().manual_seed(s))
    ref = np.array(seen, dtype=float)  # top, left, height, width
    got = np.stack([b.numpy() for b in sample_crop_boxes(2 * N, h, w, t.scale, t.ratio, torch.Generator().manual_seed(9), "cpu")], 1).astype(float)

    def summaries(b):
        return {"area": b[:, 2] * b[:, 3] / (h * w), "aspect": np.log(b[:, 3] / b[:, 2]),
                "top": b[:, 0] / np.maximum(1, h - b[:, 2]), "left": b[:, 1] / np.maximum(1, w - b[:, 3])}

    sr, sg = summaries(ref), summaries(got)
    for k in sr:
        assert ks_2samp(sr[k], sg[k]).pvalue > SAME, k
    assert got[:, 0].min() >= 0 and (got[:, 0] + got[:, 2]).max() <= h and (got[:, 1] + got[:, 3]).max() <= w
    narrower = sample_crop_boxes(2 * N, h, w, (0.3, 1.0), t.ratio, torch.Generator().manual_seed(9), "cpu")
    assert ks_2samp(sr["area"], summaries(np.stack([b.numpy() for b in narrower], 1).astype(float))["area"]).pvalue < DIFFERENT


# ---- each intensity operation on its own, then the whole pair -----------------------------------
OPS = {
    "jitter": dict(jitter_p=0.8),
    "gamma": dict(gamma_p=0.5),
    "speckle": dict(speckle_p=0.5),
    "blur": dict(blur_p=0.5, blur_sigma=(1.0, 14.0)),  # 0.14-2 px at 32 px (the default range is for 224 px)
    "solarize": dict(solarize_p=0.2),
    "hflip": dict(hflip=True),
    "rotate": dict(rotate_p=0.5, rotate=90.0),
    "depth": dict(depth_p=0.5),
    "haze": dict(haze_p=0.5, haze_sigma=(0.05, 0.2)),
    "shadow": dict(shadow_p=0.5),
}
CHANGED = {  # the same operation with one setting changed: the tests must notice
    "jitter": dict(jitter_p=0.8, brightness=0.0, contrast=0.0),
    "gamma": dict(gamma_p=0.5, gamma=(1.0, 2.0)),
    "speckle": dict(speckle_p=0.5, speckle_sigma=(0.2, 0.4)),
    "blur": dict(blur_p=1.0, blur_sigma=(1.0, 14.0)),
    "solarize": dict(solarize_p=0.6),
    "hflip": dict(hflip=False),
    "rotate": dict(rotate_p=0.5, rotate=15.0),
    "depth": dict(depth_p=0.5, depth_rate=(2.0, 3.0)),
    "haze": dict(haze_p=0.5, haze_sigma=(0.05, 0.2), haze_radius=(0.7, 0.95)),
    "shadow": dict(shadow_p=0.5, shadow_sigma=(0.3, 0.5)),
}


@pytest.mark.parametrize("op", list(OPS))
def test_each_operation_draws_the_per_sample_moments(op):
    frame = _frame()
    t = ViewTransform(size=32, **{**PLAIN, **OPS[op]})
    ref, got = _per_sample(t, frame), _batched(t, frame)
    p = _ks(ref, got)
    assert min(p.values()) > SAME, p
    changed = _batched(dataclasses.replace(t, **CHANGED[op]), frame)
    assert min(_ks(ref, changed).values()) < DIFFERENT, op


def test_the_asymmetric_pair_and_multicrop_draw_the_per_sample_distribution():
    frame = _frame(64, 64)
    local = ViewTransform(size=12, scale=(0.05, 0.4), blur_p=0.5)
    for t in [*asymmetric_pair(32), local]:
        p = _ks(_per_sample(t, frame), _batched(t, frame))
        assert min(p.values()) > SAME, (t, p)
    v1, v2 = asymmetric_pair(32)
    assert min(_ks(_per_sample(v1, frame), _batched(v2, frame)).values()) < DIFFERENT  # the pair is asymmetric


def test_blur_matches_the_per_sample_kernel():
    x = torch.rand(6, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.01, 0.3, 0.9, 1.5, 2.0, 40.0])  # no blur; radius 1, 3, 5, 6; capped at 24/2 - 1
    y = batched_blur(x, sigma)
    for i in range(6):
        torch.testing.assert_close(y[i], gaussian_blur(x[i], float(sigma[i])), atol=1e-6, rtol=0)


# ---- determinism, shapes, data --------------------------------------------------------------------
def test_views_are_a_function_of_the_frames_and_the_seed():
    frames = _frame(40, 56)[None].expand(5, -1, -1, -1).contiguous()
    views = BatchedViews([*asymmetric_pair(16), ViewTransform(size=8, scale=(0.05, 0.4))])
    a = views(frames, torch.Generator().manual_seed(3))
    b = views([frames], torch.Generator().manual_seed(3))
    c = views(frames, torch.Generator().manual_seed(4))
    assert [v.shape for v in a] == [(5, 1, 16, 16), (5, 1, 16, 16), (5, 1, 8, 8)]
    assert all(v.dtype == torch.float32 and 0 <= v.min() and v.max() <= 1 for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    assert not torch.equal(a[0][0], a[0][1])  # a draw per sample, not per batch
    with pytest.raises(ValueError, match="frame tensors"):
        views([frames, frames], torch.Generator())


@pytest.fixture
def store(tmp_path):
    return FrameStore(ramp_store(tmp_path / "f.h5"))


def test_frame_dataset_yields_uint8_frames_and_temporal_neighbours(store):
    pair = asymmetric_pair(8)
    (f,) = FrameDataset(store, "train", pair)[(6, 0)]
    assert f.dtype == torch.uint8 and f.shape == (1, 16, 16) and int(f[0, 0, 0]) == round(200 * 0.299 + 200 * 0.587 + 200 * 0.114)
    ds = FrameDataset(store, "train", pair, pairs="temporal", max_gap=1)
    for epoch in range(8):
        a, b = ds[(2, epoch)]
        assert int(a[0, 0, 0]) == 20 and abs(int(b[0, 0, 0]) - 20) == 10


def test_a_store_never_holds_clips_of_several_sizes(tmp_path):
    """FrameDataset batches frames of the store's one recorded size; the writer refuses a clip
    of another size in one line, so a mixed store cannot reach it."""
    path = tmp_path / "mixed.h5"
    with pytest.raises(SonosslError, match="holds 16 px frames"):
        with FrameStoreWriter(path) as w:
            w.add_video("a", np.zeros((2, 16, 16), np.uint8), video_id="a", group_id="a")
            w.add_video("b", np.zeros((2, 20, 16), np.uint8), video_id="b", group_id="b")


# ---- pretraining with device views ---------------------------------------------------------------
@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return random_clip_store(tmp_path_factory.mktemp("store") / "frames.h5")


def _cfg(frames, out, **kw) -> PretrainConfig:
    base = dict(frames=frames, out=out, image_size=32, batch_size=4, epochs=3, warmup_epochs=10, num_workers=0,
                log_every_n_steps=1, accelerator="cpu", augment_on="device", method_options={"projector": [32, 32]})
    return PretrainConfig(**{**base, **kw})


def test_device_views_pretraining_resumes_bit_exact(frames, tmp_path):
    """6 steps straight == 3 steps, stop, resume, 3 more (mid-epoch stop; 4 batches per epoch)."""
    one_thread_run(_cfg(frames, tmp_path / "straight", max_steps=6))
    one_thread_run(_cfg(frames, tmp_path / "split", max_steps=3))
    one_thread_run(_cfg(frames, tmp_path / "split", max_steps=6), resume=True)
    a = torch.load(tmp_path / "straight/backbone.pt", weights_only=True)
    b = torch.load(tmp_path / "split/backbone.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    loader = one_thread_run(_cfg(frames, tmp_path / "loader", max_steps=6, augment_on="loader"))
    c = torch.load(loader / "backbone.pt", weights_only=True)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the device path really made the views
