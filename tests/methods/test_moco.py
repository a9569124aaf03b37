"""MoCo v2: InfoNCE against the paper's eq. 1 and lightly, the queue (FIFO, wrap-around,
gathered keys under DDP, shuffled BN), the momentum encoder, training through ``run_pretrain``
(smoke, resume with queue and key encoder) and refusal of bad settings."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from torch import nn

from helpers import fixed_batch_losses, run_gloo

from sonossl.config import PretrainConfig
from sonossl.errors import SonosslError
from sonossl.methods import get_method
from sonossl.methods.moco import MoCo
from sonossl.methods.train import run_pretrain

DIM = 8


def paper_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo eq. 1 in float64 with explicit sums, averaged over the queries:
    ``L_q = -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_i exp(q.k_i/tau))``, all vectors unit-norm."""
    q, k, queue = (F.normalize(t.double(), dim=1) for t in (q, k, queue))
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ queue[j]) / tau) for j in range(queue.shape[0]))
        total += -math.log(pos / (pos + neg))
    return torch.tensor(total / q.shape[0], dtype=torch.float64)


def _method(batch_size: int = 4, **options) -> MoCo:
    opts = {"projector": [32, DIM], "queue_size": 16, **options}
    return MoCo(PretrainConfig(method="moco", image_size=32, batch_size=batch_size, method_options=opts))


@pytest.fixture(scope="module")
def method() -> MoCo:
    return _method()


def _qk(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, DIM, generator=g)
    return q, 0.8 * q + 0.5 * torch.randn(n, DIM, generator=g)


def test_loss_equals_the_papers_formula_and_lightly(method):
    q, k = _qk(6, 0)
    ours = method.loss(q, k).double()
    assert torch.allclose(ours, paper_loss(q, k, method.queue, 0.2), rtol=1e-5)
    lightly_loss = NTXentLoss(temperature=0.2, memory_bank_size=(16, DIM))
    lightly_loss.memory_bank.bank.copy_(method.queue)
    assert torch.allclose(ours, lightly_loss(q, k).double(), rtol=1e-5)
    assert get_method("moco") is MoCo


def test_loss_ignores_queue_order_and_embedding_scale_and_sees_the_negatives(method):
    q, k = _qk(5, 1)
    base = method.loss(q, k)
    m = _method()
    m.queue.copy_(method.queue.flip(0))
    assert torch.allclose(m.loss(3.0 * q, 0.5 * k), base, rtol=1e-5)
    m.queue[:5] = F.normalize(k, dim=1)  # each positive now also sits in the queue: harder
    assert m.loss(q, k) > base + 0.1


def test_queue_is_first_in_first_out_and_wraps_around_a_short_batch():
    m = _method(queue_size=8)
    keys = F.normalize(torch.randn(14, DIM), dim=1)
    for part in (keys[:4], keys[4:8], keys[8:10], keys[10:14]):  # batches of 4, 4, a short 2, 4
        m.enqueue(part)
    assert int(m.queue_ptr) == 14 % 8
    # the 8 newest keys are kept, the oldest 6 dropped
    assert torch.equal(m.queue, torch.cat([keys[8:10], keys[10:14], keys[6:8]]))


def test_forward_loss_enqueues_the_momentum_encoders_keys_without_gradient():
    torch.manual_seed(0)
    m = _method(queue_size=8)
    m.train()
    xq, xk = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    loss, logs = m.forward_loss((xq, xk))
    loss.backward()
    assert int(m.queue_ptr) == 4 and logs == {}
    assert all(p.grad is None for p in m.key_encoder.parameters())
    assert m.encoder.trunk.conv1.weight.grad is not None
    assert not any(p is q for mod in m.optim_modules() for p in mod.parameters() for q in m.key_encoder.parameters())
    with torch.no_grad():  # train-mode BN: the same batch gives the same keys
        assert torch.allclose(m.queue[:4], m.keys(xk), atol=1e-6)


def test_momentum_update_moves_the_key_encoder_towards_the_query_encoder():
    m = _method(momentum=0.9)
    assert m.momentum() == 0.9 and m.view_transforms()[0] == m.view_transforms()[1]
    w_q, w_k = m.projector[0].weight, m.key_projector[0].weight
    assert torch.equal(w_q, w_k)  # "f_k.params = f_q.params # initialize"
    with torch.no_grad():
        w_q.add_(1.0)
    before = w_k.clone()
    m._update_targets()
    assert torch.allclose(w_k, 0.9 * before + 0.1 * w_q)


def test_loss_decreases_on_a_fixed_batch():
    """Queries learn to find their keys among a queue of keys of 32 other frames. The queue is
    put back before every step: enqueued, the fixed batch's own keys would become its negatives
    (a floor of log 2 per copy, which is the queue doing its job, not learning)."""
    torch.manual_seed(0)
    m = _method(batch_size=8, queue_size=32, momentum=0.9)
    m.train()
    opt = torch.optim.SGD([p for mod in m.optim_modules() for p in mod.parameters()], lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    x1 = torch.rand(8, 1, 32, 32, generator=g)
    x2 = (x1 + 0.1 * torch.rand(8, 1, 32, 32, generator=g)).clamp(0, 1)
    m.enqueue(m.keys(torch.rand(32, 1, 32, 32, generator=g)))
    queue = m.queue.clone()
    losses = fixed_batch_losses(m, (x1, x2), opt, before=lambda m: (m.queue.copy_(queue), m._update_targets()))
    assert losses[-1] < 0.5 * losses[0], losses


# ---- DDP: gradients as on one process, keys gathered before queueing, shuffled BN -------------

def _global_batch():
    g = torch.Generator().manual_seed(4)
    return torch.randn(10, 6, generator=g), torch.randn(10, DIM, generator=g), torch.rand(10, 1, 4, 4, generator=g)


def _ddp_worker(rank: int, world: int, out: str) -> None:
    torch.manual_seed(0)
    m = _method(batch_size=10)
    lin = nn.Linear(6, DIM)
    ddp = nn.parallel.DistributedDataParallel(lin)
    x, k, images = _global_batch()
    part = slice(rank * 5, (rank + 1) * 5)
    loss = m.loss(ddp(x[part]), k[part])
    loss.backward()
    m.enqueue(k[part])
    # shuffled BN: a BatchNorm-free key encoder must give each process its own frames' keys
    m.key_encoder, m.key_projector = nn.Flatten(), nn.Linear(16, DIM, bias=False)
    torch.manual_seed(1)
    nn.init.normal_(m.key_projector.weight)
    keys = m.keys(images[part])
    torch.save({"loss": loss.detach(), "grad": lin.weight.grad.clone(), "queue": m.queue.clone(),
                "ptr": m.queue_ptr.clone(), "keys": keys, "proj": m.key_projector.weight.detach().clone()},
               f"{out}/rank{rank}.pt")


@pytest.mark.slow  # two spawned processes: ~25 s on the shared 2-core machine
def test_ddp_matches_one_process_on_the_global_batch(tmp_path):
    """Two gloo processes with 5 queries each vs one process with all 10: the ranks' mean loss
    and DDP's averaged gradients equal the single-process ones, and every rank's queue holds
    the keys of both processes, in the order one process would have queued them."""
    run_gloo(_ddp_worker, tmp_path)

    torch.manual_seed(0)
    m = _method(batch_size=10)
    lin = nn.Linear(6, DIM)
    x, k, images = _global_batch()
    loss = m.loss(lin(x), k)
    loss.backward()
    m.enqueue(k)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.allclose((got[0]["loss"] + got[1]["loss"]) / 2, loss.detach(), rtol=1e-5)
    for r, g in enumerate(got):
        assert torch.allclose(g["grad"], lin.weight.grad, rtol=1e-4, atol=1e-6)
        assert torch.equal(g["queue"], m.queue) and int(g["ptr"]) == 10
        expected = F.normalize(images[r * 5 : (r + 1) * 5].flatten(1) @ g["proj"].T, dim=1)
        assert torch.allclose(g["keys"], expected, atol=1e-5)


# ---- through run_pretrain ---------------------------------------------------------------------

def _cfg(frames, out, **kw) -> PretrainConfig:
    # warm-up covers every step: its rate does not depend on max_steps (see test_base's resume test);
    # momentum 0.9 so that a missed or doubled key-encoder update would show
    base = dict(method="moco", frames=frames, out=out, image_size=32, batch_size=4, epochs=3, num_workers=0,
                log_every_n_steps=1, warmup_epochs=10, optimizer="sgd", lr_weights=0.03, lr_biases=0.03,
                method_options={"projector": [32, DIM], "queue_size": 12, "momentum": 0.9})
    return PretrainConfig(**{**base, **kw})


def test_bad_settings_fail_at_start_with_one_line(frames, tmp_path):
    with pytest.raises(SonosslError, match="queue_size 2 is smaller than batch_size 4"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"queue_size": 2}), progress=False)
    with pytest.raises(SonosslError, match="momentum"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"momentum": 1.5}), progress=False)
    with pytest.raises(SonosslError, match="queue_length"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"queue_length": 64}), progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(SonosslError, match="queue_size"):  # the constructor checks too
        _method(batch_size=32, queue_size=16)
    with pytest.raises(ValueError, match="equal shape"):
        _method().loss(torch.randn(4, DIM), torch.randn(3, DIM))


@pytest.mark.slow
def test_ddp_two_cpu_processes_through_run_pretrain(frames, tmp_path):
    """Shuffled BN and the gathered queue inside Lightning's DDP: 2 steps of 2 x 2 frames."""
    out = run_pretrain(_cfg(frames, tmp_path / "ddp", max_steps=2, devices=2, accelerator="cpu"), progress=False)
    assert json.loads((out / "summary.json").read_text())["images_seen"] == 8
    state = torch.load(out / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert int(state["queue_ptr"]) == 8  # both processes' keys, twice
