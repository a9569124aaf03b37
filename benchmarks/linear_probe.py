"""Linear probe: the head trained on cached features against a backbone forward every epoch.

``sonossl evaluate``'s linear protocol computes the frozen backbone's features once per init and
trains ``Standardise -> Dropout -> Linear`` on them (``sonossl.downstream.classifier.fit``). The
naive alternative runs the frozen backbone (eval mode, no grad) on every training batch of every
epoch and on the validation set at every evaluation. Both paths here use the same ``fit``, the
same settings, the same initial head and the same dropout stream, on a small synthetic labelled
set (``sonossl.data.synthetic.synthesize``), and score the test split once:

- cached: features of train/valid/test (one forward each) + head fit + test prediction;
- per-epoch: head fit through ``frozen backbone -> head`` + test prediction.

Printed: median wall time of each (``--repeats`` interleaved runs after a warm-up run), the
speed-up (target >= 10x) and both test macro-F1 (should be equal: the features agree to float
rounding). The speed-up grows with the epochs (``--epochs``, docs/protocol.md: 100) and, in a real
grid, with every fraction x seed sharing one feature pass.

    python benchmarks/linear_probe.py [--per-class 20 10 10] [--epochs 20] [--repeats 5] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from common import machine, median, now, write_json
from sonossl.data.labelled import load_labelled
from sonossl.data.synthetic import synthesize
from sonossl.downstream.classifier import Classifier, FitSettings, fit, predict_logits
from sonossl.downstream.metrics import scores
from sonossl.models.backbones import build_encoder


class FrozenBackbone(nn.Module):
    """The encoder in eval mode without gradient, whatever ``train()`` says: (B,1,S,S) -> (B, dim)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(x)


def cached_run(encoder, head, data, settings, n_classes):
    feats = {s.name: predict_logits(encoder, s.images, 256, "cpu") for s in (data.train, data.valid, data.test)}
    fit(head, feats["train"], data.train.labels, feats["valid"], data.valid.labels, n_classes, settings)
    return predict_logits(head, feats["test"], 256, "cpu").argmax(1).numpy()


def per_epoch_run(encoder, head, data, settings, n_classes):
    model = nn.Sequential(FrozenBackbone(encoder), head)
    fit(model, data.train.images, data.train.labels, data.valid.images, data.valid.labels, n_classes, settings)
    return predict_logits(model, data.test.images, 256, "cpu").argmax(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, nargs=3, default=[20, 10, 10], metavar=("TRAIN", "VALID", "TEST"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), videos=1, frames=2, size=64, seed=0, labelled_per_class=tuple(a.per_class))
        data = load_labelled(Path(tmp) / "labelled", size=64)
    n_classes = len(data.class_names)
    torch.manual_seed(0)
    clf = Classifier(build_encoder("resnet18"), n_classes)  # a random init: the cost is the same for any
    encoder = clf.encoder.eval().requires_grad_(False)
    train_feats = predict_logits(encoder, data.train.images, 256, "cpu")
    clf.head[0].fit(train_feats)  # Standardise: fitted once, as evaluate() does, shared by both paths
    head0 = clf.head
    settings = FitSettings(epochs=a.epochs, batch_size=128, seed=0, device="cpu")
    runs = {"cached": cached_run, "per_epoch": per_epoch_run}
    times: dict[str, list[float]] = {k: [] for k in runs}
    f1: dict[str, float] = {}
    print(f"train {len(data.train)} / valid {len(data.valid)} / test {len(data.test)} images, 64 px, resnet18, "
          f"{a.epochs} epochs", flush=True)
    for r in range(a.repeats + 1):  # r = 0: warm-up
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t = now()
            pred = runs[name](encoder, copy.deepcopy(head0), data, settings, n_classes)
            dt = now() - t
            if r:
                times[name].append(dt)
            f1[name] = scores(data.test.labels.numpy(), pred, n_classes)["macro_f1"]
    med = {k: median(v) for k, v in times.items()}
    speedup = med["per_epoch"] / med["cached"]
    print(f"cached features:     {med['cached']:7.2f} s   test macro-F1 {f1['cached']:.4f}")
    print(f"per-epoch backbone:  {med['per_epoch']:7.2f} s   test macro-F1 {f1['per_epoch']:.4f}")
    print(f"speed-up {speedup:.1f}x (target >= 10x), same F1: {abs(f1['cached'] - f1['per_epoch']) < 1e-9}")
    write_json(a.json, {"figure": "linear_probe", "machine": machine(), "epochs": a.epochs,
                        "n": {"train": len(data.train), "valid": len(data.valid), "test": len(data.test)},
                        "seconds": {k: round(v, 3) for k, v in med.items()}, "speedup": round(speedup, 2),
                        "macro_f1": f1, "raw_s": times})


if __name__ == "__main__":
    main()
