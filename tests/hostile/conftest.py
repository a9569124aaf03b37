"""Fixtures of the hostile-input, crash, safety, PHI and determinism tests; builders in hostile_kit.py."""

from __future__ import annotations

import pytest
from hostile_kit import Cli


@pytest.fixture
def sonossl(capsys) -> Cli:
    return Cli(capsys)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict:
    """A real evaluate run (resnet18, 32 px, random init, fine-tuned 1 epoch): its labelled set
    and the run folder holding ``model.pt``."""
    from helpers import make_labelled

    from sonossl.config import EvaluateConfig
    from sonossl.downstream.evaluate import evaluate

    root = tmp_path_factory.mktemp("hostile_model")
    labels = make_labelled(root / "labelled", {"train": 4, "valid": 2, "test": 2}, size=32)
    cfg = EvaluateConfig(labels=labels, init="random", backbone="resnet18", protocol=["finetune"], fractions=[100.0],
                         seeds=[0], image_size=32, epochs=1, batch_size=16, out=root / "eval", accelerator="cpu")
    evaluate(cfg, progress=None)
    return {"labels": labels, "run": root / "eval" / "random_finetune_f100_s0"}
