"""Shared by the method tests.

One torch thread for every test and fixture of any scope, set when this file is imported:
bit-exact comparisons (resume == straight run, DDP == single process) need the same reduction
order in every fixture, and on a shared 2-core machine torch's 2-thread pool stalled for
seconds under contention (measured: 20x slower steps).
"""

import pytest
import torch

from helpers import random_clip_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """3 clips x 6 grey frames (18 frames: 5 batches of 4 per epoch, the last one short)."""
    return random_clip_store(tmp_path_factory.mktemp("store") / "frames.h5", val_frames=3)
