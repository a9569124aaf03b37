"""A tiny trained classifier (``model.pt`` of a real evaluate run), built once per session, and a
command line holding the three sub-commands of :mod:`sonossl.infer.commands`."""

from __future__ import annotations

import sys
from pathlib import Path

import helpers
import pytest

from sonossl.errors import SonosslError

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
    cfg = EvaluateConfig(labels=labels, init="random", backbone="resnet18", protocol=["finetune"], fractions=[100.0],
                         seeds=[0], image_size=SIZE, epochs=2, batch_size=16, out=root / "eval", accelerator="cpu")
    evaluate(cfg, progress=None)
    run = root / "eval" / "random_finetune_f100_s0"
    assert (run / "model.pt").is_file()
    return {"labels": labels, "run": run, "classes": CLASSES, "size": SIZE}


def run_cli(argv: list[str]) -> int:
    """``sonossl`` with the infer sub-commands, handling errors as ``sonossl.cli.main`` does."""
    from sonossl.cli import _Parser
    from sonossl.infer.commands import add_embed_parser, add_export_parser, add_predict_parser

    p = _Parser(prog="sonossl")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_predict_parser(sub)
    add_export_parser(sub)
    add_embed_parser(sub)
    a = p.parse_args(argv)
    try:
        return a.func(a)
    except SonosslError as exc:
        print(f"sonossl {a.command}: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture
def cli():
    return run_cli
