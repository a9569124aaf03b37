"""FramePairDataset / EpochSampler / ResumableLoader on a tiny store."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from helpers import ramp_store
from sonossl.data.framestore import FrameStore
from sonossl.data.pairs import EpochSampler, FramePairDataset, ResumableLoader, to_grey
from sonossl.data.transforms import ViewTransform
from sonossl.errors import SonosslError

PLAIN = ViewTransform(size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0, gamma_p=0, speckle_p=0, blur_p=0)


@pytest.fixture
def store(tmp_path):
    """Clip v0: 5 frames whose pixels all equal 10 * frame index; clip v1: 3 colour frames; val clip."""
    return FrameStore(ramp_store(tmp_path / "f.h5", val_clip=True))


def test_index_covers_every_frame_of_the_split(store):
    ds = FramePairDataset(store, "train", [PLAIN, PLAIN])
    assert len(ds) == 8
    assert [ds.locate(i) for i in (0, 4, 5, 7)] == [(0, 0), (0, 4), (1, 0), (1, 2)]
    assert len(FramePairDataset(store, "train", [PLAIN, PLAIN], frame_stride=2)) == 3 + 2
    assert len(FramePairDataset(store, "val", [PLAIN, PLAIN])) == 2


def test_augment_pairs_are_the_same_frame_and_colour_becomes_grey(store):
    ds = FramePairDataset(store, "train", [PLAIN, PLAIN])
    v1, v2 = ds[(2, 0)]
    assert v1.shape == v2.shape == (1, 16, 16) and torch.allclose(v1, v2) and v1.mean().item() == pytest.approx(20 / 255)
    c1, _ = ds[6]
    assert c1.mean().item() == pytest.approx(200 / 255, abs=1e-3)
    assert to_grey(np.array([[[255, 0, 0]]], np.uint8))[0, 0] == 76


def test_temporal_pairs_stay_within_max_gap(store):
    ds = FramePairDataset(store, "train", [PLAIN, PLAIN], pairs="temporal", max_gap=1)
    for epoch in range(10):
        v1, v2 = ds[(2, epoch)]
        i, j = round(v1.mean().item() * 255 / 10), round(v2.mean().item() * 255 / 10)
        assert i == 2 and abs(j - i) == 1


def test_views_depend_on_seed_epoch_index_only(store):
    t = ViewTransform(size=16)
    ds = FramePairDataset(store, "train", [t, t], seed=1)
    assert all(torch.equal(a, b) for a, b in zip(ds[(3, 2)], ds[(3, 2)]))
    assert not torch.equal(ds[(3, 2)][0], ds[(3, 1)][0])
    assert not torch.equal(ds[(3, 2)][0], FramePairDataset(store, "train", [t, t], seed=2)[(3, 2)][0])


def test_seed_format_file_without_attributes_reads(tmp_path):
    path = tmp_path / "seed.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("clip", data=np.zeros((4, 16, 16), np.uint8))
    assert len(FramePairDataset(FrameStore(path), "train", [PLAIN, PLAIN])) == 4
    with pytest.raises(SonosslError):
        FramePairDataset(FrameStore(path), "val", [PLAIN, PLAIN])


def test_sampler_shards_reshuffles_and_never_leaves_a_batch_of_one():
    s0, s1 = EpochSampler(9, 3, seed=0, rank=0, world_size=2), EpochSampler(9, 3, seed=0, rank=1, world_size=2)
    a, b = [i for i, _ in s0], [i for i, _ in s1]
    assert len(a) == len(b) == 5 and set(a) | set(b) == set(range(9))
    s = EpochSampler(9, 4, seed=0)
    assert len(list(s)) == 8  # 9 = 4 + 4 + 1: the single leftover is dropped
    first = [i for i, _ in s]
    s.set_epoch(1)
    assert [i for i, _ in s] != first and all(e == 1 for _, e in s)


def test_loader_state_resumes_mid_epoch(store):
    ds = FramePairDataset(store, "train", [PLAIN, PLAIN])
    full = [k for k in EpochSampler(len(ds), 2, seed=0)]
    loader = ResumableLoader(ds, EpochSampler(len(ds), 2, seed=0))
    loader.load_state_dict({"epoch": 0, "batches_done": 3})
    assert list(loader.epoch_sampler) == full[6:]
    loader.load_state_dict({"epoch": 0, "batches_done": 4})  # the epoch was complete
    assert loader.epoch_sampler.epoch == 1 and len(list(loader.epoch_sampler)) == 8
    loader.progress = lambda: 2
    assert loader.state_dict() == {"epoch": 1, "batches_done": 2}
    batch = next(iter(loader))
    assert len(batch) == 2 and batch[0].shape == (2, 1, 16, 16)
