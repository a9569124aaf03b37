"""VICReg: loss against the authors' formula and lightly, the variance hinge, DDP gathering,
training through ``run_pretrain`` (smoke, resume) and refusal of bad settings."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from lightly.loss import VICRegLoss

from sonossl.config import PretrainConfig, validated
from sonossl.errors import SonosslError
from sonossl.methods import get_method
from sonossl.methods.train import run_pretrain
from sonossl.methods.vicreg import VICReg


def authors_loss(x: torch.Tensor, y: torch.Tensor, sim=25.0, std=25.0, cov=1.0) -> torch.Tensor:
    """facebookresearch/vicreg main_vicreg.py, VICReg.forward after the projector, written out
    (one process, ``args.batch_size`` = the batch in hand)."""
    x, y = x.double(), y.double()
    n, d = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)

    def off_diagonal(m):
        k = m.shape[0]
        return m.flatten()[:-1].view(k - 1, k + 1)[:, 1:].flatten()

    cov_loss = off_diagonal(cov_x).pow(2).sum().div(d) + off_diagonal(cov_y).pow(2).sum().div(d)
    return sim * repr_loss + std * std_loss + cov * cov_loss


def _method(**options) -> VICReg:
    cfg = PretrainConfig(method="vicreg", image_size=32, method_options={"projector": [32, 16], **options})
    return VICReg(cfg)


@pytest.fixture(scope="module")
def method() -> VICReg:
    return _method()


def _pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g) * 0.5  # std < 1, so the variance hinge is active
    z2 = 0.6 * z1 + 0.4 * torch.randn(n, d, generator=g)  # correlated views
    return z1, z2


def test_loss_equals_authors_formula_and_lightly(method):
    z1, z2 = _pair(16, 12, 0)
    ours = method.loss(z1, z2).double()
    assert torch.allclose(ours, authors_loss(z1, z2), rtol=1e-5)
    assert torch.allclose(ours, VICRegLoss()(z1.double(), z2.double()), rtol=1e-5)
    assert get_method("vicreg") is VICReg


def test_coefficients_weight_the_named_terms():
    z1, z2 = _pair(10, 8, 1)
    m = _method(sim_coeff=2.0, std_coeff=3.0, cov_coeff=0.5)
    assert torch.allclose(m.loss(z1, z2).double(), authors_loss(z1, z2, 2.0, 3.0, 0.5), rtol=1e-5)
    _, logs = m.forward_loss((torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)))
    assert set(logs) == {"repr_loss", "std_loss", "cov_loss"}


def test_variance_term_is_zero_iff_every_dimension_has_std_at_least_one(method):
    z1, z2 = _pair(32, 8, 2)
    z1 = (z1 - z1.mean(0)) / z1.std(0) * 1.5  # every dimension's std = 1.5
    z2 = (z2 - z2.mean(0)) / z2.std(0) * 1.5
    assert method.loss_terms(z1, z2)["std"] == 0
    z2[:, 3] = 0.2 * z2[:, 3]  # one dimension below 1: the hinge is active again
    assert method.loss_terms(z1, z2)["std"] > 0


def test_short_last_batch_is_normalised_by_its_own_size(method):
    z1, z2 = _pair(7, 10, 3)
    assert torch.allclose(method.loss(z1, z2).double(), authors_loss(z1, z2), rtol=1e-5)


# ---- through run_pretrain ---------------------------------------------------------------------

def _cfg(frames, out, **kw) -> PretrainConfig:
    # warm-up covers every step: its rate does not depend on max_steps (see test_base's resume test)
    base = dict(method="vicreg", frames=frames, out=out, image_size=32, batch_size=4, epochs=3, num_workers=0,
                log_every_n_steps=1, warmup_epochs=10, method_options={"projector": [32, 32]})
    return PretrainConfig(**{**base, **kw})


def test_bad_settings_fail_at_start_with_one_line(frames, tmp_path):
    with pytest.raises(SonosslError, match="batch_size"):  # batch of 1: no variance to measure
        validated(PretrainConfig, {"method": "vicreg", "batch_size": 1}, "config")
    with pytest.raises(SonosslError, match="batch_size"):  # 2 over 2 processes: 1 each
        run_pretrain(_cfg(frames, tmp_path / "x", batch_size=2, devices=2, accelerator="cpu"), progress=False)
    with pytest.raises(SonosslError, match="all 0"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"sim_coeff": 0, "std_coeff": 0, "cov_coeff": 0}),
                     progress=False)
    with pytest.raises(SonosslError, match="std_coef"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"std_coef": 25}), progress=False)
    with pytest.raises(SonosslError, match="projector"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"projector": []}), progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=">= 2"):
        _method().loss(torch.randn(1, 4), torch.randn(1, 4))
