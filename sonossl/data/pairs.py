"""Pairs of views of unlabelled frames, with a data order that survives a resume.

:class:`FramePairDataset` indexes every ``frame_stride``-th stored frame of a split. Item
``(index, epoch)`` is a tuple of views, one per view transform:

- ``pairs="augment"``: every view is an augmentation of the same frame;
- ``pairs="temporal"``: the first view is the frame, the others frames of the same clip at most
  ``max_gap`` stored frames away, each augmented.

All randomness comes from a generator seeded by ``(seed, epoch, index)``, never from global RNG,
so the views of an item do not depend on worker count, on which process reads it, or on how
many items were read before. :class:`EpochSampler` draws the order from ``(seed, epoch)`` and
shards it across DDP ranks; :class:`ResumableLoader` stores ``(epoch, batches done)`` in the
Lightning checkpoint, so a resumed run continues mid-epoch with exactly the batches a straight
run would have seen.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sonossl.data.framestore import FrameStore
from sonossl.data.readers import luminance
from sonossl.data.transforms import ViewTransform
from sonossl.errors import SonosslError


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def to_grey(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 3] -> uint8 [H, W] (ITU-R BT.601 luma, :func:`~sonossl.data.readers.luminance`)."""
    return luminance(frame)


class FramePairDataset(Dataset):
    """Views of the frames of one split of a frame store.

    store: an open :class:`FrameStore` (picklable; each worker opens its own handle).
    split: ``"train"``, ``"val"`` or ``None`` (every clip).
    view_transforms: one :class:`ViewTransform` per view (2 for a pair).
    Item ``i`` or ``(i, epoch)`` -> tuple of ``float32 (1, S, S)`` tensors in [0, 1].
    """

    def __init__(
        self,
        store: FrameStore,
        split: str | None,
        view_transforms: Sequence[ViewTransform],
        pairs: str = "augment",
        max_gap: int = 4,
        frame_stride: int = 1,
        seed: int = 0,
    ):
        if pairs not in ("augment", "temporal"):
            raise SonosslError(f"pairs: expected 'augment' or 'temporal', got {pairs!r}")
        if max_gap < 1 or frame_stride < 1:
            raise SonosslError(f"max_gap and frame_stride must be >= 1 (got {max_gap}, {frame_stride})")
        self.store = store
        self.videos = store.split(split)
        if not self.videos:
            raise SonosslError(f"{store.path}: no clips in split {split!r}")
        self.transforms = list(view_transforms)
        self.pairs, self.max_gap, self.frame_stride, self.seed = pairs, max_gap, frame_stride, seed
        per_video = np.array([(v.n_frames + frame_stride - 1) // frame_stride for v in self.videos], dtype=np.int64)
        self._ends = np.cumsum(per_video)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Flat index -> (video position in the split, stored frame index)."""
        v = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[v - 1]) if v else 0
        return v, (index - start) * self.frame_stride

    def _frame(self, v: int, i: int) -> torch.Tensor:
        return torch.from_numpy(to_grey(self.store.read(self.videos[v].key, i)))[None]

    def item_seed(self, index: int, epoch: int) -> int:
        """Seed of item ``index``'s generator in ``epoch``."""
        return _seed(self.seed, epoch, index)

    def neighbour(self, v: int, i: int, g: torch.Generator) -> int:
        """A stored frame of clip ``v`` at most ``max_gap`` from ``i`` and not ``i`` (``i`` itself
        for a one-frame clip), drawn from ``g``."""
        n = self.videos[v].n_frames
        if n < 2:
            return i
        lo, hi = max(0, i - self.max_gap), min(n - 1, i + self.max_gap)
        j = int(torch.randint(lo, hi, (), generator=g))  # lo..hi-1, skip i below
        return j + 1 if j >= i else j

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        if not 0 <= index < len(self):
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.item_seed(index, epoch))
        v, i = self.locate(int(index))
        frame = self._frame(v, i)
        views = [self.transforms[0](frame, g)]
        for t in self.transforms[1:]:
            if self.pairs == "temporal" and self.videos[v].n_frames > 1:
                views.append(t(self._frame(v, self.neighbour(v, i, g)), g))
            else:
                views.append(t(frame, g))
        return tuple(views)


class EpochSampler(Sampler):
    """Shuffled order drawn from ``(seed, epoch)``, sharded like ``DistributedSampler``
    (padded to a multiple of ``world_size``, then every ``world_size``-th item from ``rank``).

    Yields ``(index, epoch)`` keys. A trailing batch of one item is dropped (BatchNorm needs two).
    ``skip_batches`` leading batches of the current epoch are skipped once (resume).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip_batches = 0
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = -(-self.n // self.world_size) * self.world_size
        order = (order * (total // max(1, self.n) + 1))[:total]
        local = order[self.rank :: self.world_size]
        if len(local) > 1 and len(local) % self.batch_size == 1:
            local = local[:-1]
        return local

    def __len__(self) -> int:
        return len(self._order())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        local = self._order()[self.skip_batches * self.batch_size :]
        self.skip_batches = 0
        epoch = self.epoch
        return iter([(i, epoch) for i in local])


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that Lightning can checkpoint.

    ``progress``: returns the number of batches of the current epoch already trained on; the
    training module sets it (Lightning's batch progress), since this loader cannot tell
    prefetched batches from trained ones.
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs):
        super().__init__(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=False, **kwargs)
        self.epoch_sampler = sampler
        self.progress: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        done = self.progress() if self.progress is not None else 0
        return {"epoch": int(self.epoch_sampler.epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= len(self):  # saved at the end of an epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        self.epoch_sampler.epoch = epoch
        self.epoch_sampler.skip_batches = done
