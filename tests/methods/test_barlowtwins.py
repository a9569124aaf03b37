"""BarlowTwins: loss against the authors' formula, invariances, normalisation, DDP gathering."""

from __future__ import annotations


import pytest
import torch
from torch import nn


from sonossl.config import PretrainConfig
from sonossl.errors import SonosslError
from sonossl.methods import METHODS, get_method
from sonossl.methods.barlowtwins import BarlowTwins

LAMBDA = 0.0051


def authors_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = LAMBDA) -> torch.Tensor:
    """facebookresearch/barlowtwins main.py, BarlowTwins.forward, written out."""
    n, d = z1.shape
    bn = nn.BatchNorm1d(d, affine=False).double()
    c = bn(z1.double()).T @ bn(z2.double())
    c.div_(n)
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()
    off_diag = off.pow_(2).sum()
    return on_diag + lambd * off_diag


def _method(**options) -> BarlowTwins:
    cfg = PretrainConfig(image_size=32, method_options={"projector": [32, 16], **options})
    return BarlowTwins(cfg)


@pytest.fixture(scope="module")
def method() -> BarlowTwins:
    return _method()


def test_loss_equals_authors_formula(method):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 12, generator=g), torch.randn(16, 12, generator=g)
    z2 = z2 + 0.7 * z1  # correlated, so off-diagonal terms matter
    assert torch.allclose(method.loss(z1, z2).double(), authors_loss(z1, z2), rtol=1e-5)


def test_loss_invariant_to_affine_rescaling_per_dimension(method):
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(32, 8, generator=g), torch.randn(32, 8, generator=g)
    a, b = torch.rand(8, generator=g) * 5 + 0.1, torch.randn(8, generator=g) * 3
    assert torch.allclose(method.loss(z1, z2), method.loss(a * z1 + b, z2 * a.flip(0) - b), rtol=1e-4)


def test_short_last_batch_is_normalised_by_its_own_size(method):
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(7, 10, generator=g), torch.randn(7, 10, generator=g)
    assert torch.allclose(method.loss(z1, z2).double(), authors_loss(z1, z2), rtol=1e-5)
    # dividing by a configured batch (e.g. 8) instead would give a different value
    assert not torch.allclose(method.loss(z1, z2).double(), _loss_with_n(z1, z2, 8), rtol=1e-3)


def _loss_with_n(z1, z2, n_conf):
    n, d = z1.shape
    bn = nn.BatchNorm1d(d, affine=False).double()
    c = bn(z1.double()).T @ bn(z2.double()) / n_conf
    return torch.diagonal(c).add(-1).pow(2).sum() + LAMBDA * (c - torch.diag(torch.diagonal(c))).pow(2).sum()


def test_forward_loss_runs_on_views_and_options_are_validated(method):
    x = torch.rand(4, 1, 32, 32)
    loss, logs = method.forward_loss((x, x.flip(-1)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert method.projector.out_dim == 16 and method.criterion.lambda_param == LAMBDA
    with pytest.raises(SonosslError, match="lamda"):
        _method(lamda=0.1)


def test_registry_lists_valid_names():
    assert get_method("barlowtwins") is BarlowTwins
    with pytest.raises(SonosslError, match="barlowtwins"):
        get_method("barlow")
    assert set(METHODS) == {"ae", "simclr", "moco", "byol", "dino", "barlowtwins", "vicreg"}
