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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback

from sonossl.data.framestore import FrameStore
from sonossl.data.labelled import load_labelled
from sonossl.data.pairs import to_grey
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

    def __init__(self, store: FrameStore, image_size: int, labels: Path | None = None, k: int = 10, sample: int = 256):
        self.k = k
        self.logs: dict[str, float] = {}  # the last epoch's figures
        self.labels = load_labelled(labels, size=image_size) if labels is not None else None
        self.random_knn: float | None = None  # kNN of random initialisation, computed once
        rng = np.random.default_rng(0)  # a fixed sample: the figure moves with the encoder only
        index = [(v.key, i) for v in store.split("train") for i in range(v.n_frames)]
        chosen = sorted(rng.choice(len(index), size=min(sample, len(index)), replace=False).tolist())
        frames = [to_grey(store.read(*index[j])) for j in chosen]
        self.frames = torch.stack([torch.from_numpy(np.ascontiguousarray(f)) for f in frames])[:, None]
        if self.frames.shape[-1] != image_size:
            self.frames = torch.nn.functional.interpolate(self.frames.float(), size=(image_size, image_size), mode="bilinear",
                                                          antialias=True).round().clamp(0, 255).to(torch.uint8)

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

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        encoder = pl_module.export_encoder()
        was_training = encoder.training
        encoder.eval()
        device = pl_module.device
        logs: dict[str, float] = {}
        f = features(encoder, self.frames, device)
        logs["collapse_std"] = collapse_std(f)
        logs["collapse_ref"] = float(1 / np.sqrt(f.shape[1]))
        if self.labels is not None:
            logs[f"knn{self.k}_accuracy"] = self._knn(encoder, device)
            if self.random_knn is None:
                self.random_knn = self._random_reference(pl_module.cfg.backbone, device)
            logs[f"knn{self.k}_random"] = self.random_knn
        encoder.train(was_training)
        self.logs = logs
        for name, value in logs.items():
            if name != "collapse_ref":
                pl_module.log(name, value, prog_bar=True, rank_zero_only=True)
