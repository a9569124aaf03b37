"""A backbone's features of a batch of images, their sanity check and their 2-D map.

Shared by the pretraining monitors, evaluation's selection axis, ``select`` and ``embed``, so it
sits below all of them.
"""

from __future__ import annotations

import numpy as np
import torch

from sonossl.errors import SonosslError


@torch.no_grad()
def features(encoder: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """images: uint8 ``(N, 1, S, S)`` -> L2-normalised float ``(N, dim)`` on the CPU."""
    out = [torch.nn.functional.normalize(encoder(images[i : i + batch_size].to(device)).float(), dim=1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def check_features(feats: np.ndarray, source: str) -> None:
    """Refuse features that are the same for every image (a collapsed or zeroed backbone)."""
    if len(feats) > 1 and float(np.ptp(feats, axis=0).max()) < 1e-6:
        raise SonosslError(f"{source}: the backbone's features are the same for all {len(feats)} candidate images "
                           "(a collapsed or zeroed backbone); expected features that vary")


def project_2d(feats: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """feats: ``(N, D)`` -> ``(N, 2)`` with t-SNE (perplexity at most 30, below N) or UMAP."""
    n = len(feats)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(feats)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)
