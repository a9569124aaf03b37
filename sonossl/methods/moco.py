"""MoCo v2 (Chen, Fan, Girshick, He, 2020, arXiv:2003.04297), built on MoCo (He, Fan, Wu, Xie,
Girshick, CVPR 2020, arXiv:1911.05722).

A query encoder ``f_q`` (backbone + MLP head) learns to pick the key ``k+`` of the other view of
the same frame out of ``K`` keys of earlier batches kept in a queue. The key encoder ``f_k`` is
a momentum (EMA) copy of ``f_q`` and gets no gradient. InfoNCE (MoCo, eq. 1):

    L_q = -log exp(q . k+ / tau) / (exp(q . k+ / tau) + sum_{i=1..K} exp(q . k_i / tau)),

``q`` and the keys L2-normalised. After each step the batch's keys are enqueued and the oldest
are dropped.

As in facebookresearch/moco (``moco/builder.py``):

- a process's loss is the mean over its own queries; DDP averages the gradients, which then
  equal those of one process on the global batch. Keys are gathered from every process before
  they are enqueued, so every process holds the same queue of global-batch keys;
- shuffling BN (MoCo, sec. 3.3): with several processes the key encoder sees the global batch
  in a permuted order, so a key's BatchNorm statistics come from other frames than its query's.
  The permutation is drawn from ``(seed, step)``: the same on every process without a
  broadcast, and the same again after a resume. On one process it would change nothing, and is
  skipped;
- the queue and its pointer are registered buffers, so checkpoints carry them and a resumed run
  continues with the same negatives. The key encoder is a module: checkpointed too.

One difference: the official queue needs ``K % batch == 0`` and drops an epoch's short last
batch. Here the pointer wraps around (indices modulo ``K``), so a short batch, or a ``K`` that
is not a multiple of the batch (the paper's 65536 with the seed's batch 288), keeps the queue
first-in-first-out. ``K`` must hold at least one global batch, else a batch's keys would
overwrite each other; that is checked before a run starts.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from sonossl.config import PretrainConfig
from sonossl.data.transforms import ViewTransform
from sonossl.errors import SonosslError
from sonossl.methods.base import MethodOptions, SSLMethod


class MoCoOptions(MethodOptions):
    # "we replace the fc head in MoCo with a 2-layer MLP head (hidden layer 2048-d, with ReLU)"
    # (MoCo v2, sec. 2); "The last fully-connected layer ... has a fixed-dimensional output
    # (128-D)" (MoCo, sec. 3.3). Seed code: 2048-2048-128, i.e. [hidden, output] = [2048, 128].
    projector: list[int] = Field(default_factory=lambda: [2048, 128], min_length=1)
    # "K = 65536" (MoCo, fig. 3 and sec. 4.1; facebookresearch/moco --moco-k 65536)
    queue_size: int = Field(65536, ge=1)
    # "switching to the optimal value for MLP (0.2), the accuracy increases to 66.2%" (MoCo v2, sec. 2)
    temperature: float = Field(0.2, gt=0)
    # "a relatively large momentum (e.g., m = 0.999, our default) works much better than a
    # smaller value (e.g., m = 0.9)" (MoCo, sec. 3.2)
    momentum: float = Field(0.999, ge=0, le=1)


def mlp_head(in_dim: int, dims: list[int]) -> nn.Sequential:
    """``in_dim -> dims[0] -> ... -> dims[-1]``: (Linear, ReLU) per hidden layer, then a Linear;
    no BatchNorm (facebookresearch/moco ``builder.py``). x: (batch, in_dim) -> (batch, dims[-1])."""
    sizes = [in_dim, *dims]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def _world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside DDP."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """(local_batch, ...) from every process, concatenated in rank order: (global_batch, ...).
    No gradient (keys need none). Identity outside DDP."""
    _, world = _world()
    if world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world)]
    torch.distributed.all_gather(out, x.contiguous())
    return torch.cat(out)


class MoCo(SSLMethod):
    name = "moco"
    Options = MoCoOptions

    @classmethod
    def check_config(cls, cfg: PretrainConfig, options: MoCoOptions) -> None:
        super().check_config(cfg, options)
        if options.queue_size < cfg.batch_size:
            raise SonosslError(
                f"method_options (moco): queue_size {options.queue_size} is smaller than batch_size "
                f"{cfg.batch_size}; the queue must hold at least one global batch of keys"
            )

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        o = self.options
        self.projector = mlp_head(self.encoder.feature_dim, o.projector)
        # "f_k.params = f_q.params # initialize" (MoCo, Algorithm 1)
        self.key_encoder = copy.deepcopy(self.encoder)
        self.key_projector = copy.deepcopy(self.projector)
        for p in [*self.key_encoder.parameters(), *self.key_projector.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(o.queue_size, o.projector[-1]), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    # ---- hooks of the shared loop ---------------------------------------------------------------
    def default_views(self) -> list[ViewTransform]:
        """MoCo v2 takes SimCLR's augmentation for both views: blur p 0.5, no solarisation."""
        t = ViewTransform(size=self.cfg.image_size, blur_p=0.5, solarize_p=0.0)
        return [t, t]

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.key_encoder), (self.projector, self.key_projector)]

    def momentum(self) -> float:
        """Constant ``m`` ("f_k.params = m*f_k.params+(1-m)*f_q.params", MoCo Algorithm 1)."""
        return self.options.momentum

    # ---- MoCo ---------------------------------------------------------------------------------
    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """x: (local_batch, 1, S, S) key views -> (local_batch, dim) L2-normalised float32 keys,
        with shuffled BN across processes (sec. 3.3)."""
        rank, world = _world()
        if world == 1:
            return F.normalize(self.key_projector(self.key_encoder(x)).float(), dim=1)
        n = x.shape[0]
        x_all = concat_all_gather(x)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.global_step)
        perm = torch.randperm(x_all.shape[0], generator=g).to(x.device)
        mine = perm[rank * n : (rank + 1) * n]
        k = F.normalize(self.key_projector(self.key_encoder(x_all[mine])).float(), dim=1)
        k_all = concat_all_gather(k)  # row j: key of frame perm[j]
        return k_all[torch.argsort(perm)][rank * n : (rank + 1) * n]

    def loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q: (local_batch, dim) queries, k: (local_batch, dim) keys of the other views (no
        gradient) -> scalar InfoNCE, the mean over the local queries, the queue's K keys being
        the negatives. Both are L2-normalised here; float32 with autocast off."""
        if q.shape != k.shape or q.ndim != 2 or q.shape[0] < 1:
            shapes = f"{tuple(q.shape)}, {tuple(k.shape)}"
            raise ValueError(f"expected queries and keys of equal shape (batch, dim), got {shapes}")
        if q.shape[1] != self.queue.shape[1]:
            raise ValueError(f"embedding dim {q.shape[1]} != queue dim {self.queue.shape[1]}")
        with torch.autocast(device_type=q.device.type, enabled=False):
            q = F.normalize(q.float(), dim=1)
            k = F.normalize(k.detach().float(), dim=1)
            l_pos = (q * k).sum(1, keepdim=True)  # (batch, 1)
            l_neg = q @ self.queue.clone().T  # (batch, K); a copy: the queue changes before backward
            logits = torch.cat([l_pos, l_neg], 1) / self.options.temperature
            labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
            return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """k: (local_batch, dim) keys. Gathers the keys of every process, (global_batch, dim) in
        rank order, writes them over the oldest entries and advances the pointer (modulo K)."""
        k = concat_all_gather(k)
        n, size = k.shape[0], self.queue.shape[0]
        if n > size:
            raise ValueError(f"{n} keys do not fit a queue of {size}")
        idx = (self.queue_ptr + torch.arange(n, device=k.device)) % size
        self.queue[idx] = k.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def forward_loss(self, batch):
        """batch: (query views, key views), each (batch_size, 1, S, S)."""
        x_q, x_k = batch
        q = self.projector(self.encoder(x_q))
        k = self.keys(x_k)
        loss = self.loss(q, k)
        self.enqueue(k)
        return loss, {}
