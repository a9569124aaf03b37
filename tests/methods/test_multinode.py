"""Multi-node pretraining: ``pretrain --num-nodes 2 --devices 1`` as two processes on this machine
joined by gloo through Lightning's cluster environment (MASTER_ADDR, MASTER_PORT, NODE_RANK,
WORLD_SIZE, LOCAL_RANK: what a launcher sets on each node), against one process on the global
batch; and the job ``--launcher slurm`` submits, as submitit writes it for SLURM."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import slurm_on_path
from torch.utils.data import default_collate

from sonossl.config import PretrainConfig
from sonossl.data.framestore import FrameStore
from sonossl.data.pairs import EpochSampler
from sonossl.methods.optim import lr_factor
from sonossl.methods.train import build_model, job_shape

ROOT = Path(__file__).resolve().parents[2]
# BarlowTwins with a one-layer projector (no BatchNorm in the head); no warm-up, so step 0 moves
SETTINGS = dict(method="barlowtwins", backbone="resnet18", image_size=32, batch_size=8, max_steps=1, epochs=1,
                num_workers=0, warmup_epochs=0, log_every_n_steps=1, accelerator="cpu", seed=3, precision="32-true",
                lr_weights=0.2, lr_biases=0.0048,  # given, so the CLI run (cpu preset) and the reference agree
                method_options={"projector": [16]})


def _node(rank: int, port: int, frames: Path, out: Path, cfg_file: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank),
           "WORLD_SIZE": "2", "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "sonossl.cli", "pretrain", "--config", str(cfg_file), "--frames", str(frames),
            "--out", str(out), "--num-nodes", "2", "--devices", "1", "--quiet"]
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _one_process_reference(cfg: PretrainConfig, store: FrameStore, world: int) -> tuple[float, dict]:
    """One process, the same global batch: the halves the two ranks draw go through the model
    one after the other (BatchNorm normalises each rank's share on a CPU, as DDP does there), the
    loss is over their concatenated embeddings, then one optimiser step. Returns (loss, params)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    m = build_model(cfg, store, "cpu")
    z1, z2 = [], []
    for rank in range(world):
        keys = list(EpochSampler(len(m.train_set), cfg.batch_size // world, cfg.seed, rank, world))[: cfg.batch_size // world]
        x1, x2 = default_collate([m.train_set[k] for k in keys])
        z1.append(m.projector(m.encoder(x1)))
        z2.append(m.projector(m.encoder(x2)))
    loss = m.loss(torch.cat(z1), torch.cat(z2))
    opt = m.configure_optimizers()
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * lr_factor(0, 1, 0, cfg.final_lr_ratio)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item(), {k: v.detach() for k, v in m.named_parameters()}


# two CLI processes (imports, a gloo rendezvous, one step): 24 s on the loaded 2-core machine
def test_two_nodes_equal_one_process_on_the_global_batch(frames, tmp_path):
    import yaml

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({k: v for k, v in SETTINGS.items()}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two_nodes"
    procs = [_node(r, port, frames, out, cfg_file, tmp_path / f"node{r}.log") for r in range(2)]
    codes = [p.wait(600) for p in procs]
    assert codes == [0, 0], [(tmp_path / f"node{r}.log").read_text()[-3000:] for r in range(2)]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["images_seen"] == 8  # 2 nodes x 4 pairs
    [row] = [json.loads(ln) for ln in (out / "stats.jsonl").read_text().splitlines() if '"step"' in ln][:1]
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    cfg = PretrainConfig(**SETTINGS, frames=frames, out=tmp_path / "unused")
    ref_loss, ref_params = _one_process_reference(cfg, FrameStore(frames), world=2)
    assert row["loss"] == pytest.approx(ref_loss, rel=1e-5)
    init = build_model(cfg, FrameStore(frames), "cpu")  # seeded as above: the weights before the step
    moved = 0
    for k, v in ref_params.items():
        assert torch.allclose(state[k], v, rtol=1e-4, atol=1e-6), k
        moved += not torch.equal(v, dict(init.named_parameters())[k].detach())
    assert moved > len(ref_params) // 2  # the step changed the weights: the comparison is not of two inits


def test_slurm_job_is_one_job_of_nodes_by_tasks(tmp_path, monkeypatch):
    """The sbatch script submitit writes for ``pretrain --launcher slurm --num-nodes 2 --devices 4``:
    one job, 2 nodes, 4 tasks (one per GPU) and 4 GPUs per node, requeued on its signal."""
    from sonossl.launch import executor

    slurm_on_path(tmp_path, monkeypatch)
    cfg = PretrainConfig(frames=tmp_path / "f.h5", out=tmp_path / "run", num_nodes=2, devices=4, launcher="slurm",
                         slurm_partition="gpu", slurm_timeout_min=120, slurm_cpus=6, slurm_mem="200G")
    ex = executor(tmp_path / "submitit", "slurm", job_shape(cfg))
    script = ex._executor._make_submission_file_text("python -m job", "1234")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --mem=200G", "#SBATCH --partition=gpu", "#SBATCH --time=120",
                 "#SBATCH --signal=USR2@"):
        assert line in script, line
    assert "#SBATCH --array" not in script  # one job, not an array
    assert job_shape(cfg.model_copy(update={"accelerator": "cpu"})).gpus_per_node == 0


def test_submitit_local_refuses_more_than_one_node_before_touching_anything(frames, tmp_path, capsys):
    from sonossl.cli import main

    out = tmp_path / "run"
    assert main(["pretrain", "--frames", str(frames), "--out", str(out), "--launcher", "submitit-local",
                 "--num-nodes", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_nodes" in err[0] and "one node" in err[0]
    assert not out.exists()


# a submitit job process that imports torch and trains two steps: 12 s on the loaded 2-core machine
def test_pretrain_through_the_submitit_local_job_and_its_requeue_payload(frames, tmp_path):
    """The job payload runs the pretraining (waited for) and its requeue payload resumes it."""
    from sonossl import api
    from sonossl.launch import Requeueable
    from sonossl.methods.train import pretrain_job

    settings = {k: v for k, v in SETTINGS.items() if k != "max_steps"}
    out = api.pretrain(launcher="submitit-local", frames=frames, out=tmp_path / "run", max_steps=2, progress=False,
                       **settings)
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert list((out / "submitit").glob("*_log.out"))
    again = Requeueable(pretrain_job, PretrainConfig(**{**settings, "frames": frames, "out": out, "max_steps": 3,
                                                        "launcher": "slurm"})).checkpoint()
    assert again.function.fn is pretrain_job
    again.function()  # the requeued payload: resumes from last.ckpt (step 2) and stops at 3
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
