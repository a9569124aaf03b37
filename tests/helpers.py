"""Small builders shared by the tests (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["a", "b", "c"]


def make_labelled(root: Path, per_class: dict[str, int], size: int = 24, seed: int = 0,
                  classes: list[str] = CLASSES) -> Path:
    """Bars of three orientations on noise, one orientation per class (in ``classes`` order):
    ``root/{split}.csv`` with ``image_path,class`` rows and the PNGs under ``root/img/``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in per_class.items():
        lines = ["image_path,class"]
        for ci, cls in enumerate(classes):
            for k in range(n):
                img = rng.integers(0, 60, (size, size)).astype(np.uint8)
                if ci == 0:
                    img[size // 2 - 2 : size // 2 + 2, :] = 220
                elif ci == 1:
                    img[:, size // 2 - 2 : size // 2 + 2] = 220
                else:
                    np.fill_diagonal(img, 220)
                rel = f"img/{split}/{cls}_{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / rel)
                lines.append(f"{rel},{cls}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def _gloo_entry(rank: int, worker, world: int, port: int, out: str) -> None:
    import os

    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        worker(rank, world, out)
    finally:
        torch.distributed.destroy_process_group()


def run_gloo(worker, out: Path, world: int = 2) -> None:
    """Run ``worker(rank, world, out)`` in ``world`` spawned CPU processes joined by gloo on a free
    loopback port (``worker`` must be a module-level function so spawn can pickle it)."""
    import socket

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_gloo_entry, args=(worker, world, port, str(out)), nprocs=world, join=True)


def write_study(path: Path, data: Path, *, methods=("barlowtwins",), inits=("random", "pretrained"),
                protocols=("linear", "finetune"), fractions=(50, 100), seeds=(0, 1), **extra) -> Path:
    """A tiny ``study.yaml`` over ``data`` (from ``synthesize``): runs of a few steps each; no
    ``pretrain`` section when no init needs one."""
    spec = {
        "name": "tiny",
        "data": {"unlabelled": str(data / "videos"), "labelled": {"planes": str(data / "labelled")}},
        # one pseudonym key per data set: studies of the same data get the same ids, hence the same splits
        "ingest": {"size": 32, "val_fraction": 0.2, "salt_file": str(data / "ids.key")},
        "variants": {"all": {"frame_skip": 2}},
        "pretrain": {"preset": "cpu", "methods": list(methods), "variants": ["all"],
                     "options": {"max_steps": 3, "batch_size": 8, "epochs": 1, "num_workers": 0,
                                 "method_options": {"projector": [64, 64]}} if list(methods) == ["barlowtwins"] else
                                {"max_steps": 3, "batch_size": 8, "epochs": 1, "num_workers": 0}},
        "evaluate": {"inits": list(inits), "protocols": list(protocols), "fractions": list(fractions),
                     "seeds": list(seeds), "options": {"batch_size": 8, "epochs": 2, "linear_epochs": 5,
                                                       "max_steps": 4}},
    }
    for k, v in extra.items():
        spec[k] = v
    if "pretrained" not in inits and not any("-" in i for i in inits):
        del spec["pretrain"]
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


def one_thread_run(cfg, **kwargs) -> Path:
    """``run_pretrain(cfg)`` with one torch thread, as the method tests run (tests/methods/conftest):
    module-scoped fixtures need it too, since another thread count reorders float sums and
    changes the weights' last bits."""
    import torch

    from sonossl.methods.train import run_pretrain

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_pretrain(cfg, progress=False, **kwargs)
    finally:
        torch.set_num_threads(n)


def assert_torchvision_backbone(path: Path) -> dict:
    """``backbone.pt`` at ``path`` loads into ``torchvision.models.resnet18()``, missing only the
    classifier; returns the state dict."""
    import torch
    import torchvision

    state = torch.load(path, weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    return state


def assert_ranks_match(out: Path, loss, lin, *, bias: bool = True, world: int = 2) -> None:
    """Each DDP rank's saved ``rank{r}.pt`` (loss, weight grad, bias grad) equals the
    single-process ``loss`` and the gradients in ``lin`` after its backward."""
    import torch

    for r in range(world):
        got = torch.load(Path(out) / f"rank{r}.pt", weights_only=True)
        assert torch.allclose(got["loss"], loss.detach(), rtol=1e-5)
        assert torch.allclose(got["grad"], lin.weight.grad, rtol=1e-4, atol=1e-6)
        if bias:
            assert torch.allclose(got["bias"], lin.bias.grad, rtol=1e-4, atol=1e-6)


def fixed_batch_losses(m, views, opt, steps: int = 30, before=None, after=None) -> list[float]:
    """``steps`` optimiser steps of method ``m`` on the same ``views`` (each (batch, 1, S, S));
    the loss before each step. ``before(m)`` / ``after(m)`` run around each step (a queue put
    back, a momentum update)."""
    losses = []
    for _ in range(steps):
        if before is not None:
            before(m)
        loss, _ = m.forward_loss(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after is not None:
            after(m)
        losses.append(loss.item())
    return losses


def random_clip_store(path: Path, val_frames: int = 0) -> Path:
    """3 clips x 6 random grey 40x48 frames (train), plus a val clip of ``val_frames`` frames when > 0."""
    from sonossl.data.framestore import FrameStoreWriter

    rng = np.random.default_rng(0)
    with FrameStoreWriter(path) as w:
        for v in range(3):
            w.add_video(f"v{v}", rng.integers(0, 256, (6, 40, 48), dtype=np.uint8), video_id=f"v{v}", group_id=f"g{v}")
        if val_frames:
            w.add_video("val0", rng.integers(0, 256, (val_frames, 40, 48), dtype=np.uint8), video_id="val0",
                        group_id="gv", split="val")
    return path


def ramp_store(path: Path, val_clip: bool = False) -> Path:
    """Clip v0: 5 frames whose pixels all equal 10 * frame index; clip v1: 3 colour frames; with
    ``val_clip``, a 2-frame val clip v2."""
    from sonossl.data.framestore import FrameStoreWriter

    with FrameStoreWriter(path) as w:
        w.add_video("v0", np.stack([np.full((16, 16), 10 * i, np.uint8) for i in range(5)]), video_id="a", group_id="a")
        w.add_video("v1", np.full((3, 16, 16, 3), 200, np.uint8), video_id="b", group_id="b")
        if val_clip:
            w.add_video("v2", np.zeros((2, 16, 16), np.uint8), video_id="c", group_id="c", split="val")
    return path


def spawn_cli(*argv, log: Path) -> subprocess.Popen:
    """``sonossl ARGV`` in a child process (one torch thread), output to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    fh = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "sonossl.cli", *map(str, argv)], stdout=fh, stderr=subprocess.STDOUT,
                            env=env, cwd=Path(__file__).resolve().parents[1])


def run_cli_process(*argv, log: Path, timeout: float = 300) -> int:
    p = spawn_cli(*argv, log=log)
    return p.wait(timeout)


def kill_when(proc, ready, log: Path, timeout: float = 240, slice_s: float | None = None) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it finished (or timed out) first.

    With ``slice_s``, the process runs in slices of that many seconds (SIGCONT, sleep, SIGSTOP)
    and ``ready()`` is asked between them, while it stands still: on a fast machine a small job
    can otherwise pass the ready point and finish between two looks.
    """
    t0 = time.time()
    while time.time() - t0 < timeout:
        if slice_s is not None:
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(slice_s)
            os.kill(proc.pid, signal.SIGSTOP)
        if proc.poll() is not None:
            pytest.fail(f"finished before it could be killed (status {proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if ready():
                break
        except Exception:  # a file caught mid-write: look again
            pass
        if slice_s is None:
            time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("no progress to interrupt")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def slurm_on_path(tmp_path: Path, monkeypatch) -> None:
    """submitit's SLURM executor is built only where ``srun`` is on the PATH (it looks no
    further); an ``srun`` that refuses to run lets the real executor write its sbatch script here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
