"""A tiny trained classifier (``model.pt`` of a real evaluate run), built once per session, and the
command line to call ``predict``, ``export`` and ``embed`` with."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest

CLASSES = ["3VV", "4CH", "LVOT"]  # sorted, as evaluate orders them
SIZE = 32


def make_labelled(root: Path, per_class: dict[str, int], size: int = SIZE, seed: int = 0) -> Path:
    """tests/helpers' bars, with plane names as the three classes."""
    return helpers.make_labelled(root, per_class, size=size, seed=seed, classes=CLASSES)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """``{"labels": DIR, "run": evaluate run folder with model.pt, "classes", "size"}``: resnet18,
    32 px, fine-tuned a few steps.

    Fine-tuning, not a linear probe: a probe's ``Standardise`` divides features that were constant
    (dead) on the train split by 1e-6, so float noise of 1e-6 between two correct computations
    (batch of 1 vs 15, ONNX Runtime vs PyTorch) moves its logits by whole units.
    """
    from sonossl.config import EvaluateConfig
    from sonossl.downstream.evaluate import evaluate

    root = tmp_path_factory.mktemp("infer")
    labels = make_labelled(root / "labelled", {"train": 12, "valid": 3, "test": 5})
    # float32, as predict scores: with `auto`, a CPU with bf16 units trains and scores the test split in bf16,
    # and its predictions.csv then differs from predict's float32 by ~2e-4 (measured on an AVX-512 BF16 EPYC)
    cfg = EvaluateConfig(labels=labels, init="random", backbone="resnet18", protocol=["finetune"], fractions=[100.0],
                         seeds=[0], image_size=SIZE, epochs=2, batch_size=16, out=root / "eval", accelerator="cpu",
                         precision="32-true")
    evaluate(cfg, progress=None)
    run = root / "eval" / "random_finetune_f100_s0"
    assert (run / "model.pt").is_file()
    return {"labels": labels, "run": run, "classes": CLASSES, "size": SIZE}


def run_cli(argv: list[str]) -> int:
    """``sonossl ARGV`` in this process (``sonossl.cli.main``: one error line, exit status 2)."""
    from sonossl.cli import main

    return main(argv)


@pytest.fixture
def cli():
    return run_cli
