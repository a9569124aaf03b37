"""Online monitors of a pretraining run, once per epoch (into ``stats.jsonl`` and the progress bar).

- ``knn_accuracy``: k-nearest-neighbour accuracy (cosine similarity, majority of k) of the
  backbone's pooled features, labelled ``train`` images as the memory and ``valid`` images as
  queries, when ``--monitor-labels DIR`` names a labelled set. It follows the representation
  without training anything, the usual SSL health check (e.g. solo-learn's and lightly's kNN
  callbacks).
- ``knn10_random``: the same kNN accuracy for randomly initialised encoders of the same backbone
  (mean of 3 fixed seeds, computed once), the reference a pretraining has to rise above.
- ``collapse_std``: the mean over dimensions of the per-dimension standard deviation of
  L2-normalised backbone features of a fixed sample of stored frames. A collapsed encoder (every
  frame mapped to one point) gives 0; features spread evenly over the unit sphere give about
  ``1 / sqrt(dim)``, written beside it as ``collapse_ref``.
- ``rankme``: the effective rank of the backbone's features (:func:`sonossl.methods.health.rankme`)
  of a fixed sample of the store's ``val`` frames (``train`` frames when it has none): a
  label-free measure that tracks downstream accuracy across methods and their hyperparameters
  (Garrido et al., ICML 2023), and the learning-rate sweep's criterion without labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback

from sonossl.data.framestore import FrameStore
from sonossl.data.labelled import load_labelled
from sonossl.data.pairs import to_grey
from sonossl.methods.health import rankme
from sonossl.models.features import features


def knn_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, query_f: torch.Tensor, query_y: torch.Tensor, k: int = 10) -> float:
    """Majority vote of the ``k`` most cosine-similar memory items; features L2-normalised ``(N, dim)``."""
    k = min(k, len(train_f))
    idx = (query_f @ train_f.T).topk(k, dim=1).indices
    votes = torch.nn.functional.one_hot(train_y[idx], int(train_y.max()) + 1).sum(1)
    return float((votes.argmax(1) == query_y).float().mean())


def collapse_std(feats: torch.Tensor) -> float:
    """feats: L2-normalised ``(N, dim)``, N >= 2 -> mean per-dimension std."""
    return float(feats.std(0).mean())


class Monitors(Callback):
    """Computes the monitors at the end of each epoch on global rank 0 and hands them to
    its ``logs`` (which the stats writer, running after this callback, writes into ``stats.jsonl``)."""

    def __init__(self, store: FrameStore, image_size: int, labels: Path | None = None, k: int = 10, sample: int = 256,
                 rank_sample: int = 1024):
        self.k = k
        self.logs: dict[str, float] = {}  # the last epoch's figures
        self.labels = load_labelled(labels, size=image_size, with_test=False) if labels is not None else None
        self.random_knn: float | None = None  # kNN of random initialisation, computed once
        self.frames = _sample_frames(store, "train", sample, image_size)
        self.val_frames = _sample_frames(store, "val" if store.split("val") else "train", rank_sample, image_size)

    def _knn(self, encoder: torch.nn.Module, device: torch.device) -> float:
        tr = features(encoder, self.labels.train.images, device)
        va = features(encoder, self.labels.valid.images, device)
        return knn_accuracy(tr, self.labels.train.labels, va, self.labels.valid.labels, self.k)

    def _random_reference(self, backbone: str, device: torch.device, seeds: int = 3) -> float:
        """Mean kNN accuracy of ``seeds`` randomly initialised encoders (fixed seeds, the global RNG
        left as it was): the line a pretraining must rise above."""
        from sonossl.models.backbones import build_encoder

        accs = []
        with torch.random.fork_rng(devices=[]):
            for s in range(seeds):
                torch.manual_seed(10_000 + s)
                accs.append(self._knn(build_encoder(backbone).to(device).eval(), device))
        return float(np.mean(accs))

    def measure(self, encoder: torch.nn.Module, device: torch.device, backbone: str) -> dict[str, float]:
        """Every monitor's figure for ``encoder`` (in eval mode): collapse, RankMe, and with labels
        the kNN accuracy beside random initialisation's (computed once). The labelled set's test
        split is never read."""
        logs: dict[str, float] = {}
        f = features(encoder, self.frames, device)
        logs["collapse_std"] = collapse_std(f)
        logs["collapse_ref"] = float(1 / np.sqrt(f.shape[1]))
        logs["rankme"] = rankme(features(encoder, self.val_frames, device))
        if self.labels is not None:
            logs[f"knn{self.k}_accuracy"] = self._knn(encoder, device)
            if self.random_knn is None:
                self.random_knn = self._random_reference(backbone, device)
            logs[f"knn{self.k}_random"] = self.random_knn
        return logs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        encoder = pl_module.export_encoder()
        was_training = encoder.training
        encoder.eval()
        self.logs = self.measure(encoder, pl_module.device, pl_module.cfg.backbone)
        encoder.train(was_training)
        for name, value in self.logs.items():
            if name != "collapse_ref":
                pl_module.log(name, value, prog_bar=True, rank_zero_only=True)


def _sample_frames(store: FrameStore, split: str, sample: int, image_size: int) -> torch.Tensor:
    """A fixed sample (seed 0) of ``split``'s stored frames, uint8 ``(n, 1, S, S)`` at ``image_size``:
    the figures move with the encoder only."""
    index = [(v.key, i) for v in store.split(split) for i in range(v.n_frames)]
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(len(index), size=min(sample, len(index)), replace=False).tolist())
    frames = torch.stack([torch.from_numpy(np.ascontiguousarray(to_grey(store.read(*index[j])))) for j in chosen])[:, None]
    if frames.shape[-1] != image_size:
        frames = torch.nn.functional.interpolate(frames.float(), size=(image_size, image_size), mode="bilinear",
                                                 antialias=True).round().clamp(0, 255).to(torch.uint8)
    return frames
