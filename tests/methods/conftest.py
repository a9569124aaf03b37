"""Shared by the method tests.

One torch thread for every test and fixture of any scope, set when this file is imported:
bit-exact comparisons (resume == straight run, DDP == single process) need the same reduction
order in every fixture, and on a shared 2-core machine torch's 2-thread pool stalled for
seconds under contention (measured: 20x slower steps).
"""

import numpy as np
import pytest
import torch

from sonossl.data.framestore import FrameStoreWriter

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """3 clips x 6 grey frames (18 frames: 5 batches of 4 per epoch, the last one short)."""
    path = tmp_path_factory.mktemp("store") / "frames.h5"
    rng = np.random.default_rng(0)
    with FrameStoreWriter(path) as w:
        for v in range(3):
            w.add_video(f"v{v}", rng.integers(0, 256, (6, 40, 48), dtype=np.uint8), video_id=f"v{v}", group_id=f"g{v}")
        w.add_video("val0", rng.integers(0, 256, (3, 40, 48), dtype=np.uint8), video_id="val0", group_id="gv", split="val")
    return path
