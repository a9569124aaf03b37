"""A clear answer on the wrong hardware, and training curves where Lightning users look."""

import json
import os
import resource
import subprocess
import sys

import pytest
import torch

from sonossl.config import PretrainConfig
from sonossl.errors import SonosslError
from sonossl.methods.memcheck import measure, oom_error, out_of_memory
from sonossl.methods.train import build_model, run_pretrain
from sonossl.data.framestore import FrameStore
from sonossl.models.memory import saved_bytes, step_memory

TINY = dict(image_size=32, batch_size=4, epochs=1, num_workers=0, log_every_n_steps=1, accelerator="cpu",
            precision="32-true", method_options={"projector": [32, 32]})


def test_saved_bytes_counts_what_autograd_keeps_and_scales_with_the_batch():
    lin = torch.nn.Linear(100, 50)
    x = torch.randn(8, 100)
    # a linear layer saves its input for the weight's gradient (8 x 100 floats), not its own weight
    assert saved_bytes(lambda: lin(x), exclude=lin) == 8 * 100 * 4
    mlp = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10))
    est = step_memory(mlp, lambda n: mlp(torch.randn(n, 100)).sum(), optimizer_states=2, probes=(2, 6))
    at = {n: saved_bytes(lambda n=n: mlp(torch.randn(n, 100)).sum(), exclude=mlp) for n in (16, 64)}
    for n, b in at.items():  # the line through two small batches predicts larger ones
        assert est.fixed_bytes + est.per_sample_bytes * n == pytest.approx(b, rel=0.01)
    params = sum(p.numel() for p in mlp.parameters()) * 4
    assert est.model_bytes == params * 4  # weights, gradients, two AdamW states
    assert est.largest_batch(est.at(100)) == 100


def test_the_estimate_leaves_the_model_as_it_was(frames, tmp_path):
    cfg = PretrainConfig(method="barlowtwins", frames=frames, out=tmp_path / "r", **TINY)
    model = build_model(cfg, FrameStore(frames))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    est = measure(model)
    assert est.per_sample_bytes > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics included
    assert torch.equal(rng, torch.get_rng_state())


def test_a_step_that_cannot_fit_is_refused_before_anything_is_written(frames, tmp_path, monkeypatch):
    from sonossl.methods import memcheck

    monkeypatch.setattr(memcheck, "available_bytes", lambda: (512 * 2 ** 20, "available memory"))
    cfg = PretrainConfig(method="barlowtwins", frames=frames, out=tmp_path / "r", **{**TINY, "batch_size": 4096})
    with pytest.raises(SonosslError) as exc:
        run_pretrain(cfg, progress=False)
    msg = str(exc.value)
    assert msg.startswith("pretrain: one training step needs about ") and "4096 pairs per process" in msg
    assert "but 0.5 GiB is left (available memory); lower --batch-size to at most " in msg
    assert not (tmp_path / "r").exists()


def test_out_of_memory_errors_become_one_line(frames, tmp_path):
    cfg = PretrainConfig(method="barlowtwins", frames=frames, out=tmp_path / "r", **TINY)
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                       "to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")
    assert out_of_memory(cpu) and out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and not out_of_memory(
        RuntimeError("shape mismatch"))
    est = measure(build_model(cfg, FrameStore(frames)))
    msg = str(oom_error(cfg, cpu, est, 12))
    assert msg.startswith("pretrain: out of memory at step 12 (resnet18, 32 px, 4 pairs per process, 32-true; a step "
                          "was estimated at ") and "\n" not in msg


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc are Linux's")
def test_paper_preset_on_a_small_machine_exits_2_naming_the_memory_and_the_flag(frames, tmp_path):
    """As a user would: the README's `pretrain --preset paper`, in a process limited to 12 GiB of
    address space (the limit this test chooses, half what the 40 px step needs, like `ulimit -v`)."""
    limit = 6 * 2 ** 30

    def small_machine():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "sonossl", "pretrain", "--preset", "paper", "--frames", str(frames),
                        "--out", str(out), "--accelerator", "cpu"], capture_output=True, text=True, timeout=300,
                       preexec_fn=small_machine, env=env)
    assert p.returncode == 2, p.stderr[-2000:]
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, err
    # the estimate says so, or (when even its probe of 4 pairs cannot get the memory) the probe does
    assert "resnet50" in err[0] and ("one training step needs about" in err[0] and "2048 pairs per process" in err[0]
                                     or "even a probe step of 4 pairs runs out of memory" in err[0]), err[0]
    assert "address-space limit" in err[0] or "available memory" in err[0]
    assert "--preset cpu" in err[0]
    assert not out.exists()


def test_pretraining_writes_tensorboard_events_with_every_stats_scalar(frames, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "r"
    run_pretrain(PretrainConfig(method="barlowtwins", frames=frames, out=out, max_steps=3, **TINY), progress=False)
    [events] = list((out / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    steps = [r for r in stats if r["kind"] == "step"]
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in steps] == [1, 2, 3]
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([r["lr"] for r in steps])
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([r["loss"] for r in steps])
    epoch = [r for r in stats if r["kind"] == "epoch"][-1]
    numeric = {k for k, v in epoch.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} - {"step", "epoch"}
    assert {f"epoch/{k}" for k in numeric} <= tags


def test_logger_none_writes_no_event_files_and_csv_writes_csv(frames, tmp_path):
    run_pretrain(PretrainConfig(method="barlowtwins", frames=frames, out=tmp_path / "a", max_steps=2, logger="none",
                                **TINY), progress=False)
    assert not (tmp_path / "a" / "tensorboard").exists()
    run_pretrain(PretrainConfig(method="barlowtwins", frames=frames, out=tmp_path / "b", max_steps=2, logger="csv",
                                **TINY), progress=False)
    text = (tmp_path / "b" / "csv_logs" / "metrics.csv").read_text()
    assert "train/loss" in text.splitlines()[0]
