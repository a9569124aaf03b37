"""Heads that sit on top of an encoder during SSL pretraining (discarded afterwards)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> dims[0] -> ... -> dims[-1]``: (Linear, BatchNorm, ReLU) for every hidden
    layer, then a last Linear with neither bias nor BatchNorm.

    BarlowTwins (Zbontar et al. 2021, sec. 4): "The projector network has three linear layers,
    each with 8192 output units. The first two layers of the projector are followed by a batch
    normalization layer and rectified linear units." As in facebookresearch/barlowtwins, the
    linear layers carry no bias (a bias before BatchNorm is redundant; the last layer's output
    is batch-normalised by the loss).

    x: (batch_size, in_dim) -> (batch_size, dims[-1]).
    """

    def __init__(self, in_dim: int, dims: Sequence[int]):
        super().__init__()
        if not dims:
            raise ValueError("ProjectionHead needs at least one output dimension")
        sizes = [in_dim, *dims]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.layers = nn.Sequential(*layers)
        self.out_dim = sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
