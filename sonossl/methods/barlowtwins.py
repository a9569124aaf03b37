"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021, arXiv:2103.03230).

Two augmented views of a frame go through the same encoder and projector; the loss drives the
cross-correlation matrix of the two batch-normalised embeddings towards the identity:
invariance on the diagonal, redundancy reduction (weight ``lambda``) off it.

The loss is lightly's ``BarlowTwinsLoss``, which normalises by the batch in hand
(``N = z_a.size(0)``). Under DDP we gather the embeddings of every process first and give the
loss the global batch, so the batch normalisation and the cross-correlation are those of the
global batch (the paper's and facebookresearch/barlowtwins' definition). lightly's own
``gather_distributed=True`` is *not* used: it averages per-process correlation matrices, each
normalised with its own process's mean and variance, which differs from the global-batch loss.
"""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss
from pydantic import Field

from sonossl.config import PretrainConfig
from sonossl.methods.base import MethodOptions, SSLMethod, gather_batch
from sonossl.models.heads import ProjectionHead


class BarlowTwinsOptions(MethodOptions):
    # "The projector network has three linear layers, each with 8192 output units." (sec. 4);
    # the cpu preset shrinks it.
    projector: list[int] = Field(default_factory=lambda: [8192, 8192, 8192], min_length=1)
    # "lambda = 0.0051" (sec. 4, Implementation details)
    lambd: float = Field(0.0051, gt=0)


class BarlowTwins(SSLMethod):
    name = "barlowtwins"
    Options = BarlowTwinsOptions

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self.projector = ProjectionHead(self.encoder.feature_dim, self.options.projector)
        self.criterion = BarlowTwinsLoss(lambda_param=self.options.lambd, gather_distributed=False)

    def loss(self, z1, z2):
        """z1, z2: (local_batch, dim) embeddings -> scalar loss over the global batch.

        Computed in float32 with autocast off: bf16 cross-correlations of 8192-d embeddings
        lose the off-diagonal terms' precision."""
        if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 2:
            raise ValueError(f"expected two (batch >= 2, dim) embeddings of equal shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            return self.criterion(gather_batch(z1.float()), gather_batch(z2.float()))

    def forward_loss(self, batch):
        """batch: (view1, view2), each (batch_size, 1, S, S)."""
        x1, x2 = batch
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        return self.loss(z1, z2), {}
