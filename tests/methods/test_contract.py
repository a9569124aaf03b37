"""What every SSL method must do, one parametrised test per promise.

- a two-step run through ``run_pretrain`` writes a ``backbone.pt`` that torchvision loads, and a
  summary naming the method (all seven);
- a run stopped after one step and resumed equals a straight two-step run, to the last bit of
  every weight and buffer (all seven: queues, targets, teachers, centres, decoders included);
- the loss falls on a fixed batch (the methods whose loss takes two embeddings; the others have
  their own fixed-batch test beside their specific set-up);
- under DDP, each rank's loss and averaged gradients equal one process on the global batch
  (the same methods; BYOL, MoCo and DINO test their own DDP paths).

Per-method files keep only what is that method's own (its loss against the authors' formula,
its options, its state).
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from helpers import assert_ranks_match, assert_torchvision_backbone, fixed_batch_losses, one_thread_run, run_gloo
from torch import nn

from sonossl.config import PretrainConfig
from sonossl.methods import METHODS, get_method
from sonossl.methods.train import run_pretrain

# Tiny heads, and the settings under which a 1+1-step run must equal a 2-step one: the warm-up
# covers every step (its rate then does not depend on max_steps), momenta constant where a cosine
# over max_steps would differ between the runs.
RUNS = {
    "ae": dict(optimizer="adamw", lr_weights=1e-3, lr_biases=1e-3, warmup_epochs=0,
               method_options={"variant": "denoise", "decoder": [16, 8, 8, 4, 4], "lr_step_epochs": 0.2}),
    "barlowtwins": dict(method_options={"projector": [32, 16]}),
    "byol": dict(method_options={"projector": [32, 16], "predictor": [32, 16], "momentum": 0.9, "momentum_end": 0.9}),
    "dino": dict(optimizer="sgd", lr_weights=0.03, lr_biases=0.03, weight_decay=1e-4, pairs="temporal", max_gap=2,
                 method_options={"hidden_dim": 32, "bottleneck_dim": 16, "out_dim": 64, "local_crops": 2,
                                 "momentum": 0.9, "momentum_end": 0.9, "warmup_teacher_temp_epochs": 2,
                                 "teacher_temp": 0.06}),
    "moco": dict(optimizer="sgd", lr_weights=0.03, lr_biases=0.03,
                 method_options={"projector": [32, 16], "queue_size": 12, "momentum": 0.9}),
    "simclr": dict(method_options={"projector": [32, 16]}),
    "vicreg": dict(method_options={"projector": [32, 32]}),
}
# A state key each method must carry through a checkpoint (its own state beyond the encoder).
OWN_STATE = {"ae": "decoder.", "barlowtwins": "projector.", "byol": "target_encoder.", "dino": "criterion.center",
             "moco": "queue_ptr", "simclr": "projector.", "vicreg": "projector."}
# Fixed-batch settings of the methods whose loss takes two embeddings: options, SGD rate, image
# side, and whether view 2 is a noisy copy of view 1 (SimCLR needs positives to find).
FIXED_BATCH = {
    "barlowtwins": ({"projector": [32, 16]}, 0.05, 32, False),
    "simclr": ({"projector": [32, 16], "temperature": 0.2}, 0.05, 32, True),  # at tau 0.5 the floor is ~0.97
    "vicreg": ({"projector": [32, 16]}, 0.02, 16, False),
}


def test_every_registered_method_is_under_contract():
    assert set(RUNS) == set(METHODS) == set(OWN_STATE)


def _cfg(method: str, frames, out, **kw) -> PretrainConfig:
    base = dict(method=method, frames=frames, out=out, image_size=32, batch_size=4, epochs=3, num_workers=0,
                log_every_n_steps=1, warmup_epochs=10)
    return PretrainConfig(**{**base, **RUNS[method], **kw})


@pytest.fixture(scope="module", params=sorted(RUNS))
def straight(request, frames, tmp_path_factory):
    """(method, a straight 2-step run): the smoke run, and the straight half of the resume test.
    One thread, as the split runs get from conftest: another thread count changes float
    reductions and the weights' last bits."""
    method = request.param
    return method, one_thread_run(_cfg(method, frames, tmp_path_factory.mktemp(method) / "straight", max_steps=2))


def test_two_step_run_writes_a_torchvision_backbone(straight):
    method, run = straight
    assert_torchvision_backbone(run / "backbone.pt")
    assert json.loads((run / "summary.json").read_text())["method"] == method


def test_resume_equals_a_straight_run(frames, straight, tmp_path):
    method, run = straight
    run_pretrain(_cfg(method, frames, tmp_path / "split", max_steps=1), progress=False)
    run_pretrain(_cfg(method, frames, tmp_path / "split", max_steps=2), resume=True, progress=False)
    a = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith(OWN_STATE[method]) for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _method(method: str, **options):
    return get_method(method)(PretrainConfig(method=method, image_size=32, method_options=options))


@pytest.mark.parametrize("method", sorted(FIXED_BATCH))
def test_loss_falls_on_a_fixed_batch(method):
    options, lr, size, correlated = FIXED_BATCH[method]
    torch.manual_seed(0)
    m = _method(method, **options)
    m.train()
    g = torch.Generator().manual_seed(3)
    x1 = torch.rand(8, 1, size, size, generator=g)
    x2 = (x1 + 0.1 * torch.rand(8, 1, size, size, generator=g)).clamp(0, 1) if correlated else torch.rand(8, 1, size, size, generator=g)
    losses = fixed_batch_losses(m, (x1, x2), torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9))
    assert losses[-1] < 0.5 * losses[0], losses


def _global_batch():
    g = torch.Generator().manual_seed(4)
    return torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)


def _ddp_worker(method: str, rank: int, world: int, out: str) -> None:
    m = _method(method, **FIXED_BATCH[method][0])
    torch.manual_seed(0)
    lin = nn.Linear(6, 12)
    ddp = nn.parallel.DistributedDataParallel(lin)
    x1, x2 = _global_batch()
    part = slice(rank * 5, (rank + 1) * 5)
    loss = m.loss(ddp(x1[part]), ddp(x2[part]))
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": lin.weight.grad.clone(), "bias": lin.bias.grad.clone()},
               f"{out}/rank{rank}.pt")


@pytest.mark.slow  # two spawned processes per method: ~25 s each on the shared 2-core machine
@pytest.mark.parametrize("method", sorted(FIXED_BATCH))
def test_ddp_ranks_equal_one_process_on_the_global_batch(method, tmp_path):
    """Two gloo processes with 5 pairs each vs one process with all 10: the same loss on every
    rank, and DDP's averaged gradients equal the single-process ones. The loss of the local half
    alone differs (the loss is over the gathered global batch): checked too."""
    run_gloo(functools.partial(_ddp_worker, method), tmp_path)
    m = _method(method, **FIXED_BATCH[method][0])
    torch.manual_seed(0)
    lin = nn.Linear(6, 12)
    x1, x2 = _global_batch()
    loss = m.loss(lin(x1), lin(x2))
    loss.backward()
    with torch.no_grad():
        local = m.loss(lin(x1[:5]), lin(x2[:5]))
    assert not torch.allclose(local, loss, rtol=1e-3)
    # BarlowTwins standardises each dimension over the batch: the bias gradient is zero up to rounding
    assert_ranks_match(tmp_path, loss, lin, bias=method != "barlowtwins")
