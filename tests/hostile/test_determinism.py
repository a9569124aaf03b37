"""Same seed, same answer (CPU): two tiny evaluations give byte-identical ``results.csv`` and
predictions, two tiny pretrainings give identical ``backbone.pt`` weights; another seed differs."""

from __future__ import annotations

from pathlib import Path

import torch
from hostile_kit import TINY_PRETRAIN, tiny_store, write_yaml
from helpers import make_labelled


def test_evaluate_twice_gives_identical_results(sonossl, tmp_path: Path):
    labels = make_labelled(tmp_path / "lab", {"train": 4, "valid": 2, "test": 3})

    def run(out: Path, seed: str) -> Path:
        rc, err = sonossl("evaluate", "--labels", labels, "--init", "random", "--backbone", "resnet18",
                          "--protocol", "linear,finetune", "--fractions", "50,100", "--seeds", seed, "--image-size", "32",
                          "--epochs", "2", "--linear-epochs", "3", "--batch-size", "4", "--accelerator", "cpu",
                          "--out", out, "--quiet")
        assert rc == 0, err
        return out

    a, b, c = run(tmp_path / "a", "0"), run(tmp_path / "b", "0"), run(tmp_path / "c", "1")
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    assert len((a / "results.csv").read_text().splitlines()) == 5
    for run_dir in sorted(p.name for p in a.iterdir() if p.is_dir()):
        for name in ("predictions.csv", "subset.json", "history.json"):
            assert (a / run_dir / name).read_bytes() == (b / run_dir / name).read_bytes(), (run_dir, name)
        ma = torch.load(a / run_dir / "model.pt", weights_only=True)["state_dict"]
        mb = torch.load(b / run_dir / "model.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # the check can fail: a different seed draws another model
    ma = torch.load(a / "random_finetune_f100_s0" / "model.pt", weights_only=True)["state_dict"]
    mc = torch.load(c / "random_finetune_f100_s1" / "model.pt", weights_only=True)["state_dict"]
    assert not torch.equal(ma["encoder.trunk.conv1.weight"], mc["encoder.trunk.conv1.weight"])


def test_pretrain_twice_gives_identical_weights(sonossl, tmp_path: Path):
    frames = tiny_store(tmp_path / "frames.h5", clips=3, frames=6)

    def run(name: str, seed: int) -> dict:
        cfg = write_yaml(tmp_path / f"{name}.yaml", {**TINY_PRETRAIN, "max_steps": 3, "seed": seed})
        rc, err = sonossl("pretrain", "--config", cfg, "--frames", frames, "--out", tmp_path / name, "--quiet")
        assert rc == 0, err
        return torch.load(tmp_path / name / "backbone.pt", weights_only=True)

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
