"""View augmentations: shapes, ranges, determinism, no flips by default, the seed's pair."""

from __future__ import annotations

import math

import pytest
import torch

from sonossl.data.transforms import ViewTransform, asymmetric_pair, gaussian_blur


def _frame():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 40, 56), dtype=torch.uint8, generator=g)


def test_output_shape_range_and_determinism():
    t = ViewTransform(size=32, blur_p=1.0, solarize_p=0.5, speckle_p=1.0)
    a = t(_frame(), torch.Generator().manual_seed(3))
    b = t(_frame(), torch.Generator().manual_seed(3))
    c = t(_frame(), torch.Generator().manual_seed(4))
    assert a.shape == (1, 32, 32) and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_horizontal_flip_by_default():
    # left half black, right half white: a flip would put the bright side on the left
    frame = torch.zeros(1, 32, 32, dtype=torch.uint8)
    frame[..., 16:] = 255
    t = ViewTransform(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0, gamma_p=0, speckle_p=0, blur_p=0)
    for s in range(20):
        x = t(frame, torch.Generator().manual_seed(s))
        assert x[..., :8].mean() < 0.1 and x[..., -8:].mean() > 0.9
    flips = ViewTransform(size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0, gamma_p=0, speckle_p=0, blur_p=0, hflip=True)
    assert any(flips(frame, torch.Generator().manual_seed(s))[..., :8].mean() > 0.9 for s in range(20))


def test_seed_pair_is_asymmetric():
    v1, v2 = asymmetric_pair(64)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    assert not v1.hflip and not v2.hflip


def test_blur_preserves_mean_and_smooths():
    x = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(1))
    y = gaussian_blur(x, 1.5)
    assert y.shape == x.shape and abs(y.mean() - x.mean()) < 0.02 and y.std() < x.std()


def test_ultrasound_artefacts_follow_their_definitions():
    from sonossl.data.transforms import add_haze, depth_attenuation, gaussian_shadow

    att = depth_attenuation(33, 33, torch.tensor([0.0, 2.0]))[:, 0]  # (2, 33, 33)
    assert torch.allclose(att[0], torch.ones(33, 33))  # rate 0: nothing
    assert att[1, 0, 16] == 1 and att[1, -1, 16] == pytest.approx(math.exp(-2.0))  # the probe at the top centre
    assert (att[1, 1:, 16] < att[1, :-1, 16]).all() and att[1, 10, 0] < att[1, 10, 16]  # darker with distance
    shadow = gaussian_shadow(21, 21, *(torch.tensor([v]) for v in (0.6, 0.1, 0.2, 0.5, 0.25)))[0, 0]
    assert shadow.min() == pytest.approx(0.4) and shadow[5, 10] == pytest.approx(0.4) and shadow[20, 0] > 0.99
    frame = torch.full((1, 1, 21, 21), 0.5)
    frame[..., :, :3] = 0  # black outside the scan region
    hazy = add_haze(frame, torch.ones_like(frame), torch.tensor([0.5]), torch.tensor([0.05]))[0, 0]
    assert (hazy[:, :3] == 0).all()  # outside the scan: untouched
    assert hazy[10, 10] == pytest.approx(1.0) and hazy[0, 10] == pytest.approx(0.5)  # on the band (clipped) / off it
    assert torch.isfinite(add_haze(frame, torch.ones_like(frame), torch.tensor([0.5]), torch.tensor([0.0]))).all()  # width 0


def test_artefacts_off_leave_every_view_as_it_was():
    frame = (torch.rand(1, 40, 40, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    plain, off = ViewTransform(size=24), ViewTransform(size=24, depth_rate=(1.0, 2.0), haze_sigma=(0.1, 0.2))
    for seed in range(5):
        assert torch.equal(plain(frame, torch.Generator().manual_seed(seed)), off(frame, torch.Generator().manual_seed(seed)))
    on = ViewTransform(size=24, depth_p=1.0, depth_rate=(3.0, 3.0))
    assert on(frame, torch.Generator().manual_seed(0)).mean() < plain(frame, torch.Generator().manual_seed(0)).mean()
