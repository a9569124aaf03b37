"""A candidate pool and a tiny fine-tuned model (``model.pt`` of a real evaluate run), for the
Label Studio round trip: ``select --label-studio``, a Label Studio export, ``labels import``."""

from __future__ import annotations

from pathlib import Path

import helpers
import numpy as np
import pytest

CLASSES = ["3VV", "4CH", "LVOT"]  # sorted, as evaluate orders them
SIZE = 32
TRUTH = {f"vid{c:02d}": CLASSES[c // 4] for c in range(12)}  # the pool's clip ids, 4 clips of each class


@pytest.fixture(scope="session")
def pool(tmp_path_factory) -> Path:
    """A frame store of 12 clips x 4 frames of 32 px, each clip one of helpers' bar images (so a model
    trained on the bars has a guess for it), its frames near-duplicates; ``TRUTH`` says each clip's class."""
    from PIL import Image

    from sonossl.data.framestore import FrameStoreWriter

    root = tmp_path_factory.mktemp("pool")
    bars = helpers.make_labelled(root / "bars", {"train": 4}, size=SIZE, seed=5, classes=CLASSES)
    images = sorted((bars / "img" / "train").glob("*.png"))
    rng = np.random.default_rng(0)
    with FrameStoreWriter(root / "frames.h5") as w:
        for c, path in enumerate(images):
            base = np.asarray(Image.open(path).convert("L"), np.float32)
            frames = np.clip(base[None] + rng.normal(0, 3, (4, SIZE, SIZE)), 0, 255).astype(np.uint8)
            w.add_video(f"clip{c}", frames, video_id=f"vid{c:02d}", group_id=f"g{c}", split="train")
    return root / "frames.h5"


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """An evaluate run folder holding model.pt: resnet18, 32 px, fine-tuned 2 epochs on the bars."""
    from sonossl.config import EvaluateConfig
    from sonossl.downstream.evaluate import evaluate

    root = tmp_path_factory.mktemp("model")
    labels = helpers.make_labelled(root / "labelled", {"train": 12, "valid": 3, "test": 5}, size=SIZE, seed=0,
                                   classes=CLASSES)
    cfg = EvaluateConfig(labels=labels, init="random", backbone="resnet18", protocol=["finetune"], fractions=[100.0],
                         seeds=[0], image_size=SIZE, epochs=2, batch_size=16, out=root / "eval", accelerator="cpu",
                         precision="32-true")
    evaluate(cfg, progress=None)
    run = root / "eval" / "random_finetune_f100_s0"
    assert (run / "model.pt").is_file()
    return run


def select_argv(pool: Path, out: Path, *extra) -> list[str]:
    """``sonossl select`` of 12 frames, one per clip, with the Label Studio outputs."""
    return ["select", "--frames", str(pool), "--budget", "12", "--per-clip", "1", "--strategy", "random", "--map", "pca",
            "--out", str(out), "--label-studio", *map(str, extra)]
