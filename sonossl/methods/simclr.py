"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020, arXiv:2002.05709).

Two augmented views of each frame go through the same encoder and a small MLP projector; the
NT-Xent loss makes each embedding pick out its partner among the ``2N - 1`` other embeddings of
the batch (sec. 2.1, eq. 1):

    l(i, j) = -log exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau),

averaged over all ``2N`` ordered positive pairs, ``sim`` being the cosine similarity.

The loss is lightly's ``NTXentLoss``. Under DDP the negatives are those of the *global* batch
("A batch size of 8192 gives us 16382 negative examples per positive pair from both
augmentation views", sec. 2.2): every process gathers the
embeddings of all processes, with gradients (lightly's ``GatherLayer``), and evaluates the loss
over the global batch, so the loss on each process and DDP's averaged gradients equal a single
process's on the global batch.

Views: the same augmentation for both views (SimCLR's ``t, t' ~ T`` are drawn from one family),
with the grey-frame changes of :mod:`sonossl.data.transforms`; Gaussian blur with probability
0.5 ("We blur the image 50% of the time using a Gaussian kernel", appendix A), no solarisation.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from pydantic import Field

from sonossl.config import PretrainConfig
from sonossl.data.transforms import ViewTransform
from sonossl.methods.base import MethodOptions, SSLMethod, gather_batch
from sonossl.models.heads import ProjectionHead


class SimCLROptions(MethodOptions):
    # "We use a MLP with one hidden layer to obtain z_i = g(h_i) = W(2) sigma(W(1) h_i) where
    # sigma is a ReLU non-linearity" (sec. 2.1);
    # the seed code's projector is [512, 128] (hidden, output), with BatchNorm after the hidden
    # layer as in the authors' code (google-research/simclr) and lightly's SimCLRProjectionHead.
    projector: list[int] = Field(default_factory=lambda: [512, 128], min_length=1)
    # NT-Xent "temperature parameter" tau (eq. 1): 0.5 in the seed code (docs/protocol.md), as in the
    # authors' CIFAR-10 recipe (google-research/simclr README, --temperature=0.5) and lightly's
    # default; table 5 of the paper compares temperatures at ImageNet scale.
    temperature: float = Field(0.5, gt=0)


class SimCLR(SSLMethod):
    name = "simclr"
    Options = SimCLROptions

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self.projector = ProjectionHead(self.encoder.feature_dim, self.options.projector)
        self.criterion = NTXentLoss(temperature=self.options.temperature, gather_distributed=False)

    def default_views(self) -> list[ViewTransform]:
        """Two views from one augmentation family (blur p 0.5 each, no solarisation)."""
        t = ViewTransform(size=self.cfg.image_size, blur_p=0.5, solarize_p=0.0)
        return [t, t]

    def loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """z1, z2: (local_batch, dim) embeddings of the two views -> scalar NT-Xent over the
        global batch (row i of z1 and row i of z2 are positives; all other rows negatives).

        In float32 with autocast off: bf16 cosine similarities divided by tau lose precision."""
        if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] < 1:
            shapes = f"{tuple(z1.shape)}, {tuple(z2.shape)}"
            raise ValueError(f"expected two (batch, dim) embeddings of equal shape, got {shapes}")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1, z2 = gather_batch(z1.float()), gather_batch(z2.float())
            if z1.shape[0] < 2:
                raise ValueError("NT-Xent needs a global batch of at least 2 (the negatives are the other samples)")
            return self.criterion(z1, z2)

    def forward_loss(self, batch):
        """batch: (view1, view2), each (batch_size, 1, S, S)."""
        x1, x2 = batch
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        return self.loss(z1, z2), {}
