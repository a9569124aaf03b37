"""BYOL: Bootstrap Your Own Latent (Grill, Strub, Altché, Tallec, Richemond, Buchatskaya, Doersch,
Pires, Guo, Azar, Piot, Kavukcuoglu, Munos, Valko, NeurIPS 2020, arXiv:2006.07733).

An *online* network (encoder, projector, predictor) learns to predict the projection that a
*target* network (encoder, projector) makes of another view of the same frame. The target gets
no gradient; its weights are an exponential moving average of the online ones (sec. 3.1):
``xi <- tau * xi + (1 - tau) * theta`` after every step, ``tau`` rising from ``tau_base`` to 1
(sec. 3.3): ``tau = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2``.

Loss (eq. 2, symmetrised): the mean squared error between the L2-normalised prediction and the
L2-normalised target projection, ``||q/|q| - z'/|z'| ||^2 = 2 - 2 cos(q, z')``, for view 1
predicting view 2 plus view 2 predicting view 1, averaged over the batch.

The per-sample loss needs no batch statistics, so nothing is gathered under DDP: each process
averages over its own share and DDP averages the gradients.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule
from pydantic import Field, ValidationInfo, field_validator

from sonossl.config import PretrainConfig
from sonossl.methods.base import MethodOptions, SSLMethod


class BYOLOptions(MethodOptions):
    # [hidden, output]. "This MLP consists in a linear layer with output size 4096 followed by
    # batch normalization, rectified linear units (ReLU), and a final linear layer with output
    # dimension 256." (sec. 3.3). The seed's projector output is 256 too (docs/protocol.md).
    projector: list[int] = Field(default_factory=lambda: [4096, 256], min_length=2, max_length=2)
    # [hidden, output]. "the predictor q_theta uses the same architecture as g_theta" (sec. 3.3);
    # the seed code's predictor is 256-1024-256 (docs/protocol.md), set in the presets.
    predictor: list[int] = Field(default_factory=lambda: [4096, 256], min_length=2, max_length=2)
    # "the exponential moving average parameter tau starts from tau_base = 0.996 and is
    # increased to one during training" (sec. 3.3).
    momentum: float = Field(0.996, ge=0, le=1)
    momentum_end: float = Field(1.0, ge=0, le=1)

    @field_validator("projector", "predictor")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError("dimensions must be >= 1")
        return v

    @field_validator("predictor")
    @classmethod
    def _predicts_the_projection(cls, v: list[int], info: ValidationInfo) -> list[int]:
        proj = info.data.get("projector")
        if proj and v[-1] != proj[-1]:
            raise ValueError(f"the predictor's output ({v[-1]}) must equal the projector's ({proj[-1]})")
        return v


class BYOL(SSLMethod):
    name = "byol"
    Options = BYOLOptions
    loss_is_objective = False  # measured against a moving target network: it can rise in healthy runs

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        o = self.options
        self.projector = BYOLProjectionHead(self.encoder.feature_dim, o.projector[0], o.projector[1])
        self.predictor = BYOLPredictionHead(o.projector[1], o.predictor[0], o.predictor[1])
        # "the target network ... uses a different set of weights ... an exponential moving
        # average of the online parameters" (sec. 3.1); it starts as a copy.
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        deactivate_requires_grad(self.target_encoder)
        deactivate_requires_grad(self.target_projector)

    def momentum_pairs(self):
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def momentum(self) -> float:
        """tau at the current step: cosine from ``momentum`` (tau_base) to ``momentum_end``
        over the run's optimiser steps (sec. 3.3)."""
        o = self.options
        return cosine_schedule(self.global_step, max(1, self._total_steps), o.momentum, o.momentum_end)

    @staticmethod
    def loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """p1, p2: online predictions of views 1 and 2, (batch_size, dim); z1, z2: target
        projections of views 1 and 2, (batch_size, dim) -> scalar
        ``mean_b [(2 - 2 cos(p1_b, z2_b)) + (2 - 2 cos(p2_b, z1_b))]``. No gradient reaches z.

        In float32 with autocast off (the normalisation of bf16 vectors is coarse)."""
        if not (p1.shape == p2.shape == z1.shape == z2.shape) or p1.ndim != 2 or p1.shape[0] < 1:
            raise ValueError(
                f"expected four (batch, dim) tensors of equal shape, got "
                f"{[tuple(t.shape) for t in (p1, p2, z1, z2)]}"
            )
        with torch.autocast(device_type=p1.device.type, enabled=False):
            p1, p2, z1, z2 = (t.float() for t in (p1, p2, z1, z2))
            l12 = 2 - 2 * F.cosine_similarity(p1, z2.detach(), dim=-1)
            l21 = 2 - 2 * F.cosine_similarity(p2, z1.detach(), dim=-1)
            return (l12 + l21).mean()

    def forward_loss(self, batch):
        """batch: (view1, view2), each (batch_size, 1, S, S)."""
        x1, x2 = batch
        p1 = self.predictor(self.projector(self.encoder(x1)))
        p2 = self.predictor(self.projector(self.encoder(x2)))
        with torch.no_grad():
            z1 = self.target_projector(self.target_encoder(x1))
            z2 = self.target_projector(self.target_encoder(x2))
        return self.loss(p1, p2, z1, z2), {}
