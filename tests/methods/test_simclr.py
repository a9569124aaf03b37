"""SimCLR: NT-Xent against the paper's formula written out, symmetry in the views, DDP
negatives over the global batch, training through ``run_pretrain`` (smoke, resume) and refusal
of bad settings."""

from __future__ import annotations

import math

import pytest
import torch

from sonossl.config import PretrainConfig
from sonossl.errors import SonosslError
from sonossl.methods import get_method
from sonossl.methods.simclr import SimCLR
from sonossl.methods.train import run_pretrain


def paper_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """SimCLR eq. 1 and Algorithm 1, written out in float64 with explicit loops:
    ``l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)``, ``s`` the cosine
    similarity, averaged over the 2N ordered positive pairs (2k-1, 2k) and (2k, 2k-1)."""
    n = z1.shape[0]
    z = [None] * (2 * n)
    for k in range(n):  # interleaved as in the paper: views of sample k at 2k and 2k+1
        z[2 * k], z[2 * k + 1] = z1[k].double(), z2[k].double()

    def sim(u, v):
        return float(u @ v) / (float(u.norm()) * float(v.norm()))

    def ell(i, j):
        denom = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(sim(z[i], z[j]) / tau) / denom)

    total = sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n))
    return torch.tensor(total / (2 * n), dtype=torch.float64)


def _method(**options) -> SimCLR:
    cfg = PretrainConfig(method="simclr", image_size=32, method_options={"projector": [32, 16], **options})
    return SimCLR(cfg)


@pytest.fixture(scope="module")
def method() -> SimCLR:
    return _method()


def _pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g)
    return z1, 0.7 * z1 + 0.5 * torch.randn(n, d, generator=g)  # correlated views


def test_loss_equals_the_papers_formula(method):
    z1, z2 = _pair(7, 12, 0)
    assert torch.allclose(method.loss(z1, z2).double(), paper_loss(z1, z2), rtol=1e-5)
    m = _method(temperature=0.1)
    assert torch.allclose(m.loss(z1, z2).double(), paper_loss(z1, z2, 0.1), rtol=1e-5)
    assert get_method("simclr") is SimCLR


def test_loss_is_symmetric_in_the_views_and_ignores_embedding_scale(method):
    z1, z2 = _pair(9, 8, 1)
    assert torch.allclose(method.loss(z1, z2), method.loss(z2, z1), rtol=1e-6)
    assert torch.allclose(method.loss(z1, z2), method.loss(3.0 * z1, 0.2 * z2), rtol=1e-5)
    # a positive that is also the nearest neighbour lowers the loss; a shuffled pairing does not
    assert method.loss(z1, z1 + 0.01 * z2) < method.loss(z1, z2[torch.randperm(9)])


def test_forward_loss_on_views_and_view_transforms(method):
    x = torch.rand(4, 1, 32, 32)
    loss, logs = method.forward_loss((x, x.flip(-1)))
    assert loss.ndim == 0 and torch.isfinite(loss) and logs == {}
    t1, t2 = method.view_transforms()
    assert t1 == t2 and t1.size == 32 and t1.blur_p == 0.5 and t1.solarize_p == 0.0


# ---- through run_pretrain ---------------------------------------------------------------------

def _cfg(frames, out, **kw) -> PretrainConfig:
    # warm-up covers every step: its rate does not depend on max_steps (see test_base's resume test)
    base = dict(method="simclr", frames=frames, out=out, image_size=32, batch_size=4, epochs=3, num_workers=0,
                log_every_n_steps=1, warmup_epochs=10, method_options={"projector": [32, 16]})
    return PretrainConfig(**{**base, **kw})


def test_bad_settings_fail_at_start_with_one_line(frames, tmp_path):
    with pytest.raises(SonosslError, match="temperature"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"temperature": 0}), progress=False)
    with pytest.raises(SonosslError, match="projector"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"projector": []}), progress=False)
    with pytest.raises(SonosslError, match="temprature"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"temprature": 0.1}), progress=False)
    with pytest.raises(SonosslError, match="batch_size"):  # 2 over 2 processes: 1 each, no negatives
        run_pretrain(_cfg(frames, tmp_path / "x", batch_size=2, devices=2, accelerator="cpu"), progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="equal shape"):
        _method().loss(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="at least 2"):  # one pair has no negative
        _method().loss(torch.randn(1, 8), torch.randn(1, 8))
