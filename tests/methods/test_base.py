"""The shared pretraining loop through ``run_pretrain``: outputs, refusal, resume, divergence."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from helpers import assert_torchvision_backbone

from sonossl.config import PretrainConfig
from sonossl.errors import SonosslError
from sonossl.methods.train import run_pretrain


def _cfg(frames, out, **kw) -> PretrainConfig:
    base = dict(frames=frames, out=out, image_size=32, batch_size=4, epochs=1, num_workers=0, log_every_n_steps=1,
                method_options={"projector": [32, 32]})
    return PretrainConfig(**{**base, **kw})


def test_two_step_run_writes_the_run_folder(frames, tmp_path):
    out = run_pretrain(_cfg(frames, tmp_path / "run", max_steps=2), progress=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 2
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2]
    assert {"loss", "lr", "images_per_s", "time_s", "epoch"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["images_seen"] == 8 and summary["method"] == "barlowtwins"
    assert_torchvision_backbone(out / "backbone.pt")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)  # no pickled objects
    assert ckpt["global_step"] == 2
    assert not list(out.rglob("*.tmp"))


def test_refuses_an_existing_folder_unless_told(frames, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SonosslError, match="exists"):
        run_pretrain(_cfg(frames, out, max_steps=1), progress=False)
    with pytest.raises(SonosslError, match="--overwrite refused"):  # not a run folder sonossl made
        run_pretrain(_cfg(frames, out, max_steps=1), overwrite=True, progress=False)
    assert (out / "keep.txt").exists()
    run = tmp_path / "run2"
    run_pretrain(_cfg(frames, run, max_steps=1), progress=False)
    (run / "keep.txt").write_text("x")
    run_pretrain(_cfg(frames, run, max_steps=1), overwrite=True, progress=False)  # an earlier pretraining: replaced
    assert not (run / "keep.txt").exists() and (run / "backbone.pt").exists()


def test_resume_equals_a_straight_run(frames, tmp_path):
    """6 steps straight == 3 steps, stop, resume, 3 more: identical weights on CPU.

    The stop happens mid-epoch (5 batches per epoch) and the resumed part crosses an epoch end.
    All 6 steps lie in the warm-up, whose learning rate does not depend on the total number of
    steps: a cosine schedule computed for max_steps=3 would differ from one for 6, by design."""
    kw = dict(epochs=3, warmup_epochs=10)
    run_pretrain(_cfg(frames, tmp_path / "straight", max_steps=6, **kw), progress=False)
    run_pretrain(_cfg(frames, tmp_path / "split", max_steps=3, **kw), progress=False)
    assert torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    run_pretrain(_cfg(frames, tmp_path / "split", max_steps=6, **kw), resume=True, progress=False)
    a = torch.load(tmp_path / "straight/backbone.pt", weights_only=True)
    b = torch.load(tmp_path / "split/backbone.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(r)["step"] for r in (tmp_path / "split/stats.jsonl").read_text().splitlines()
             if json.loads(r)["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_without_checkpoint_starts_fresh(frames, tmp_path):
    out = run_pretrain(_cfg(frames, tmp_path / "new", max_steps=1), resume=True, progress=False)
    assert json.loads((out / "summary.json").read_text())["steps"] == 1


def test_divergence_stops_with_a_clear_error(frames, tmp_path):
    # a weight decay of 1e30 under plain SGD sends the weights to inf after one step
    cfg = _cfg(frames, tmp_path / "nan", max_steps=4, optimizer="sgd", lr_weights=1.0, weight_decay=1e30,
               checkpoint_every_s=1e-3)
    with pytest.raises(SonosslError, match="NaN"):
        run_pretrain(cfg, progress=False)
    assert not (tmp_path / "nan" / "backbone.pt").exists()
    for ckpt in (tmp_path / "nan").rglob("*.ckpt"):  # whatever was saved is finite
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_bad_inputs_are_sonossl_errors(frames, tmp_path):
    with pytest.raises(SonosslError, match="projektor"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"projektor": [8]}), progress=False)
    with pytest.raises(SonosslError, match="method"):
        run_pretrain(_cfg(frames, tmp_path / "x", method="simclrr"), progress=False)
    with pytest.raises(SonosslError, match="frames"):
        run_pretrain(_cfg(None, tmp_path / "x"), progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes_one_step(frames, tmp_path):
    out = run_pretrain(_cfg(frames, tmp_path / "ddp", max_steps=1, devices=2, accelerator="cpu"), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["images_seen"] == 4
    assert torch.load(out / "backbone.pt", weights_only=True)
