"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun, ICLR 2022,
arXiv:2105.04906).

Two augmented views of a frame go through the same encoder and expander (projector). The loss
has three named terms, each with its own weight (as in facebookresearch/vicreg ``main_vicreg.py``):

- ``repr_loss`` (invariance): mean squared error between the two embeddings;
- ``std_loss`` (variance): a hinge keeping every dimension's standard deviation over the batch
  at or above 1, averaged over dimensions and over the two branches;
- ``cov_loss`` (covariance): the squared off-diagonal entries of each branch's covariance
  matrix, summed and divided by the dimension, added over the two branches.

``loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss``.

The terms are lightly's ``invariance_loss``/``variance_loss``/``covariance_loss``, which
normalise by the batch in hand (the covariance by ``n - 1`` with ``n = z.shape[0]``; the authors
divide by the configured batch size, which mis-scales a short last batch; docs/methods.md, "Conventions").

DDP: the variance and covariance are statistics of the *global* batch, as in the authors' code
(``FullGatherLayer``): the embeddings of every process are gathered with gradients first. The
invariance term is computed on the gathered batch too, so every process evaluates the same
global-batch loss (the authors compute it per process; after DDP's gradient averaging the two
give the same gradients, the gathered form also gives the same logged value).
"""

from __future__ import annotations

import torch
from lightly.loss.vicreg_loss import covariance_loss, invariance_loss, variance_loss
from pydantic import Field, PositiveInt, model_validator

from sonossl.config import PretrainConfig
from sonossl.methods.base import MethodOptions, SSLMethod, gather_batch
from sonossl.models.heads import ProjectionHead


class VICRegOptions(MethodOptions):
    # "The expander h_phi is composed of two fully-connected layers with batch normalization (BN)
    # and ReLU, and a third linear layer. The sizes of all 3 layers were set to 8192." (sec. 4.1,
    # Implementation details); the cpu preset shrinks it.
    projector: list[PositiveInt] = Field(default_factory=lambda: [8192, 8192, 8192], min_length=1)
    # "Coefficients lambda and mu are 25 and nu is 1 in Eq. (6), and epsilon is 0.0001 in Eq. (1)."
    # (sec. 4.1); named as in main_vicreg.py (--sim-coeff, --std-coeff, --cov-coeff).
    sim_coeff: float = Field(25.0, ge=0)
    std_coeff: float = Field(25.0, ge=0)
    cov_coeff: float = Field(1.0, ge=0)
    eps: float = Field(1e-4, gt=0)

    @model_validator(mode="after")
    def _some_weight(self) -> "VICRegOptions":
        if self.sim_coeff == self.std_coeff == self.cov_coeff == 0:
            raise ValueError("sim_coeff, std_coeff and cov_coeff are all 0: the loss would be constant")
        return self


class VICReg(SSLMethod):
    name = "vicreg"
    Options = VICRegOptions

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self.projector = ProjectionHead(self.encoder.feature_dim, self.options.projector)

    def loss_terms(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        """z1, z2: (local_batch, dim) embeddings -> {"repr", "std", "cov"} scalar terms over the
        global batch (gathered across DDP processes with gradients), unweighted.

        Computed in float32 with autocast off: bf16 covariances of 8192-d embeddings lose the
        off-diagonal terms' precision."""
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ValueError(f"expected two (batch, dim) embeddings of equal shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1, z2 = gather_batch(z1.float()), gather_batch(z2.float())
            if z1.shape[0] < 2:
                raise ValueError(f"VICReg's variance and covariance need a batch of >= 2 embeddings, got {z1.shape[0]}")
            eps = self.options.eps
            return {
                "repr": invariance_loss(z1, z2),
                "std": 0.5 * (variance_loss(z1, eps) + variance_loss(z2, eps)),
                "cov": covariance_loss(z1) + covariance_loss(z2),
            }

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """z1, z2: (local_batch, dim) -> the weighted scalar loss over the global batch."""
        return self._weighted(self.loss_terms(z1, z2))

    def _weighted(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        o = self.options
        return o.sim_coeff * t["repr"] + o.std_coeff * t["std"] + o.cov_coeff * t["cov"]

    def forward_loss(self, batch):
        """batch: (view1, view2), each (batch_size, 1, S, S)."""
        x1, x2 = batch
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        terms = self.loss_terms(z1, z2)
        return self._weighted(terms), {f"{k}_loss": v.detach() for k, v in terms.items()}
