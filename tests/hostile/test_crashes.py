"""SIGKILL in the middle of ingest, pretrain and evaluate, then ``--resume``: nothing lost,
nothing duplicated, no corrupt file, and the same result as a run that was never interrupted.

Each command runs as a child process (the real CLI) and is killed once it has visibly made
progress (frames in the partial store, a checkpoint, a results row)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import kill_when, make_labelled, run_cli_process, spawn_cli
from hostile_kit import TINY_PRETRAIN, dicom_sources, tiny_store, write_yaml


def tensors_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------- ingest
def test_ingest_killed_and_resumed_loses_and_duplicates_nothing(scans, tmp_path: Path):
    src = dicom_sources(scans, tmp_path / "scans", clips=24, frames=40, per_patient=3)
    args = ["--frame-skip", "1", "--size", "64", "--quiet", "--salt-file", tmp_path / "ids.key"]  # one key: same ids
    ref = tmp_path / "ref.h5"
    assert run_cli_process("ingest", src, "--out", ref, *args, log=tmp_path / "ref.log") == 0

    out, log = tmp_path / "frames.h5", tmp_path / "kill.log"
    partial = out.with_name(out.name + ".partial")
    proc = spawn_cli("ingest", src, "--out", out, *args, log=log)
    kill_when(proc, lambda: partial.stat().st_size > 400_000, log)  # a few clips in
    assert not out.exists()  # the store appears under its name only when complete
    assert run_cli_process("ingest", src, "--out", out, *args, "--resume", log=log) == 0, log.read_text()[-2000:]

    with h5py.File(ref, "r") as f, h5py.File(out, "r") as g:
        assert sorted(f) == sorted(g) and len(g) == 24
        for k in f:  # every clip whole, none twice, same frames and attributes as the straight run
            assert np.array_equal(f[k][()], g[k][()]), k
            assert dict(f[k].attrs).keys() == dict(g[k].attrs).keys()
            assert f[k].attrs["split"] == g[k].attrs["split"] and f[k].attrs["group_id"] == g[k].attrs["group_id"]
    with open(out.with_suffix(".manifest.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in src.glob("*.dcm"))  # one row per source
    assert {r["status"] for r in rows} == {"ok", "skipped"} and any(r["status"] == "skipped" for r in rows)
    assert not partial.exists() and not list(tmp_path.glob("*.partial"))


# ----------------------------------------------------------------------------------- pretrain
@pytest.mark.slow
def test_pretrain_killed_and_resumed_reaches_the_same_weights(tmp_path: Path):
    frames = tiny_store(tmp_path / "frames.h5", clips=4, frames=8)  # 32 frames: 8 batches of 4 per epoch
    cfg = write_yaml(tmp_path / "cfg.yaml", {**TINY_PRETRAIN, "max_steps": 12, "epochs": 2, "warmup_epochs": 10,
                                              "checkpoint_every_s": 0.2, "seed": 3})
    straight, run = tmp_path / "straight", tmp_path / "run"
    args = ["--config", cfg, "--frames", frames, "--quiet"]
    assert run_cli_process("pretrain", *args, "--out", straight, log=tmp_path / "straight.log") == 0

    log = tmp_path / "kill.log"
    proc = spawn_cli("pretrain", *args, "--out", run, log=log)
    ckpt = run / "checkpoints" / "last.ckpt"

    def mid_run() -> bool:
        steps = [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()]
        return ckpt.is_file() and 3 <= max(steps) < 10

    kill_when(proc, mid_run, log)
    assert not (run / "backbone.pt").exists()
    killed_at = torch.load(ckpt, weights_only=True)["global_step"]  # the checkpoint on disk is whole
    assert 0 < killed_at < 12
    assert run_cli_process("pretrain", *args, "--out", run, "--resume", log=log) == 0, log.read_text()[-3000:]

    a = torch.load(straight / "backbone.pt", weights_only=True)
    b = torch.load(run / "backbone.pt", weights_only=True)
    assert tensors_equal(a, b)  # nothing lost, nothing repeated: the same 12 steps on the same batches
    assert json.loads((run / "summary.json").read_text())["steps"] == 12
    steps = [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert len(steps) == len(set(steps)), "stats.jsonl repeats the steps done again after the kill"
    assert not list(run.rglob("*.tmp"))


# ----------------------------------------------------------------------------------- evaluate
@pytest.mark.slow
def test_evaluate_killed_and_resumed_has_every_row_once(tmp_path: Path):
    labels = make_labelled(tmp_path / "lab", {"train": 6, "valid": 2, "test": 3})
    argv = ["evaluate", "--labels", labels, "--init", "random", "--backbone", "resnet18", "--protocol", "linear,finetune",
            "--fractions", "50,100", "--seeds", "0,1", "--image-size", "32", "--epochs", "2", "--linear-epochs", "3",
            "--batch-size", "8", "--accelerator", "cpu"]
    straight, out = tmp_path / "straight", tmp_path / "eval"
    assert run_cli_process(*argv, "--out", straight, log=tmp_path / "straight.log") == 0
    log = tmp_path / "kill.log"
    proc = spawn_cli(*argv, "--out", out, log=log)
    results = out / "results.csv"
    kill_when(proc, lambda: 3 <= len(results.read_text().splitlines()) <= 6, log)  # 2 to 5 of 8 runs done
    done_before = results.read_text().splitlines()
    assert run_cli_process(*argv, "--out", out, "--resume", log=log) == 0, log.read_text()[-3000:]

    rows = list(csv.DictReader(open(results, newline="")))
    keys = [(r["protocol"], r["fraction"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8
    assert results.read_text().splitlines()[: len(done_before)] == done_before  # finished runs kept as they were
    ref = {(r["protocol"], r["fraction"], r["seed"]): r for r in csv.DictReader(open(straight / "results.csv"))}
    assert {k: r for k, r in zip(keys, rows)} == ref  # and the same numbers as a run never interrupted
    for r in rows:
        run_dir = out / f"random_{r['protocol']}_f{r['fraction']}_s{r['seed']}"
        bundle = torch.load(run_dir / "model.pt", weights_only=True)
        assert bundle["run"]["n_train"] == int(r["n_train"])
    assert not list(out.rglob("*.tmp"))
