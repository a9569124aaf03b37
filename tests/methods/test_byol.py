"""BYOL: loss against the paper's normalised MSE and lightly's, scale invariance, stop-gradient,
EMA target state through a resumed run.

No DDP test: BYOL's loss is a per-sample mean with no cross-process statistics, so DDP's
gradient averaging is the whole story (nothing of this method's to check)."""

from __future__ import annotations

import pytest
import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.utils import update_momentum

from helpers import assert_torchvision_backbone, fixed_batch_losses

from sonossl.config import PretrainConfig
from sonossl.errors import SonosslError
from sonossl.methods import get_method
from sonossl.methods.byol import BYOL
from sonossl.methods.train import run_pretrain

OPTS = {"projector": [32, 16], "predictor": [32, 16]}


def _method(**options) -> BYOL:
    return BYOL(PretrainConfig(method="byol", image_size=32, method_options={**OPTS, **options}))


def _embeddings(seed: int, n: int = 12, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for _ in range(4)]


def paper_loss(p1, p2, z1, z2):
    """Grill et al. eq. 2, symmetrised: ||p/||p|| - z/||z|| ||^2 per sample, both directions."""
    def mse(p, z):
        return ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1)

    return (mse(p1.double(), z2.double()) + mse(p2.double(), z1.double())).mean()


def test_loss_equals_the_papers_normalised_mse_and_lightly():
    p1, p2, z1, z2 = _embeddings(0)
    z2 = z2 + 0.8 * p1  # some agreement, so the value is not the random-vector 4.0
    loss = BYOL.loss(p1, p2, z1, z2)
    assert torch.allclose(loss.double(), paper_loss(p1, p2, z1, z2), rtol=1e-5)
    ncs = NegativeCosineSimilarity()  # lightly: -mean cos; ours = 4 + 2 (ncs12 + ncs21)
    assert torch.allclose(loss, 4 + 2 * (ncs(p1, z2) + ncs(p2, z1)), rtol=1e-5)


def test_loss_invariant_to_the_scale_of_each_embedding():
    p1, p2, z1, z2 = _embeddings(1)
    g = torch.Generator().manual_seed(2)
    scales = [torch.rand(12, 1, generator=g) * 10 + 0.01 for _ in range(4)]
    scaled = [s * t for s, t in zip(scales, (p1, p2, z1, z2))]
    assert torch.allclose(BYOL.loss(*scaled), BYOL.loss(p1, p2, z1, z2), rtol=1e-5)


def test_no_gradient_reaches_the_target_projections():
    p1, p2, z1, z2 = (t.requires_grad_() for t in _embeddings(3))
    BYOL.loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and p2.grad is not None
    assert z1.grad is None and z2.grad is None


def test_heads_target_and_options():
    m = _method()
    assert get_method("byol") is BYOL
    trained = {id(p) for mod in m.optim_modules() for p in mod.parameters()}
    targets = [*m.target_encoder.parameters(), *m.target_projector.parameters()]
    assert targets and not any(id(p) in trained or p.requires_grad for p in targets)
    assert {id(p) for p in m.predictor.parameters()} <= trained
    loss, _ = m.forward_loss((torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)))
    assert loss.ndim == 0 and 0 <= loss.item() <= 8
    with pytest.raises(SonosslError, match="predictor"):
        _method(predictor=[32, 8])  # cannot predict a 16-d projection
    with pytest.raises(SonosslError, match="tau"):
        _method(tau=0.99)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    m = _method()
    m.train()
    opt = torch.optim.SGD([p for mod in m.optim_modules() for p in mod.parameters()], lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.rand(6, 1, 16, 16, generator=g), torch.rand(6, 1, 16, 16, generator=g)  # tiny: 30 steps in ~2 s
    losses = fixed_batch_losses(m, (x1, x2), opt,
                                after=lambda m: [update_momentum(o, t, 0.99) for o, t in m.momentum_pairs()])
    assert losses[-1] < 0.5 * losses[0], losses


# ---- through run_pretrain -----------------------------------------------------------------

def _cfg(frames, out, **kw) -> PretrainConfig:
    # constant momentum (0.9 -> 0.9): a cosine over max_steps=3 would differ from one over 6
    base = dict(method="byol", frames=frames, out=out, image_size=32, batch_size=4, epochs=3, warmup_epochs=10,
                num_workers=0, log_every_n_steps=1, method_options={**OPTS, "momentum": 0.9, "momentum_end": 0.9})
    return PretrainConfig(**{**base, **kw})


def test_resume_equals_a_straight_run_including_the_target(frames, tmp_path):
    """6 steps straight == 3, stop, resume, 3 (crossing an epoch end): identical online and
    target weights; the 3-step run is also the smoke test of backbone.pt."""
    run_pretrain(_cfg(frames, tmp_path / "straight", max_steps=6), progress=False)
    run_pretrain(_cfg(frames, tmp_path / "split", max_steps=3), progress=False)
    assert_torchvision_backbone(tmp_path / "split/backbone.pt")
    run_pretrain(_cfg(frames, tmp_path / "split", max_steps=6), resume=True, progress=False)

    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("target_encoder.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the target is a moving average: neither the initial copy nor the online weights
    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)  # as run_pretrain: the initial weights
    init = BYOL(_cfg(frames, None)).state_dict()
    w = "encoder.trunk.conv1.weight"
    assert not torch.equal(a["target_" + w], a[w]) and not torch.equal(a["target_" + w], init["target_" + w])
    x, y = torch.load(tmp_path / "straight/backbone.pt", weights_only=True), torch.load(tmp_path / "split/backbone.pt", weights_only=True)
    assert all(torch.equal(x[k], y[k]) for k in x)
