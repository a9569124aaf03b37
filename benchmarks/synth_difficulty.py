"""How hard is the synthetic dataset? Two reference points at 64 px (what the demo evaluates at).

(a) logistic regression on standardised raw pixels, all train images: should stay near chance
    (macro-F1 below ~0.35; chance is 0.2) -- no global pixel cue gives the class away;
(b) a randomly initialised ResNet-18 trained on all train labels on the CPU for a few minutes:
    should be clearly above chance (macro-F1 >= 0.5) -- the classes are learnable from shape.

Also printed: logistic regression on three global cues (mean, std, dark fraction), which should
be near chance too, and the generation time of the labelled set.

    python benchmarks/synth_difficulty.py [--seed 0] [--budget-s 170] [--threads 2] [--no-cnn]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sonossl.data.synthetic import CLASSES, synthesize

SIZE = 64


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 64, 64) resized from the PNGs, labels int (N,)."""
    with open(root / f"{split}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    x = np.stack([np.asarray(Image.open(root / r["image_path"]).convert("L").resize((SIZE, SIZE), Image.BILINEAR))
                  for r in rows])
    y = np.array([CLASSES.index(r["class"]) for r in rows])
    return x, y


def macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    return float(f1_score(y, p, average="macro"))


def logistic(train, test, features) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(features(train[0]), train[1])
    return macro_f1(test[1], clf.predict(features(test[0])))


def global_cues(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    return np.stack([x.mean(1), x.std(1), (x < 40).mean(1)], axis=1)


def resnet18(train, valid, test, budget_s: float, seed: int) -> tuple[float, int, float]:
    """Train from scratch until the time budget; model chosen on valid macro-F1; (test F1, epochs, s)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def tensor(x):  # grey -> 3 channels, [0, 1] then roughly centred
        t = torch.from_numpy(x).float().div(255.0).sub(0.25).div(0.25)
        return t[:, None].expand(-1, 3, -1, -1).contiguous()

    xtr, ytr = tensor(train[0]), torch.from_numpy(train[1])
    pad = 6

    def augment(x):  # random shift (zero padding, like the black outside the sector); no flips
        xp = torch.nn.functional.pad(x, (pad,) * 4, value=float(x.min()))
        i, j = torch.randint(0, 2 * pad + 1, (2, len(x)), generator=g)
        return torch.stack([xp[k, :, i[k]:i[k] + SIZE, j[k]:j[k] + SIZE] for k in range(len(x))])

    def predict(x):
        model.eval()
        with torch.no_grad():
            return torch.cat([model(tensor(x[k:k + 256])).argmax(1) for k in range(0, len(x), 256)]).numpy()

    t0, epoch, best, best_state = time.time(), 0, -1.0, None
    while time.time() - t0 < budget_s:
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for k in range(0, len(perm), 50):
            b = perm[k:k + 50]
            loss = torch.nn.functional.cross_entropy(model(augment(xtr[b])), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
        f1 = macro_f1(valid[1], predict(valid[0]))
        print(f"  epoch {epoch:3d}  loss {loss.item():.3f}  valid macro-F1 {f1:.3f}  ({time.time() - t0:.0f} s)")
        if f1 > best:
            best, best_state = f1, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return macro_f1(test[1], predict(test[0])), epoch, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=170.0, help="ResNet-18 training time budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-cnn", action="store_true", help="only the (fast) logistic-regression checks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        synthesize(Path(tmp), videos=0, seed=args.seed, labelled_per_class=(100, 20, 300))
        gen_s = time.time() - t0
        root = Path(tmp) / "labelled"
        train, valid, test = (load_split(root, s) for s in ("train", "valid", "test"))
    print(f"labelled set (100/20/300 per class, 128 px) generated in {gen_s:.1f} s; evaluated at {SIZE} px")
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32)  # noqa: E731
    f1_lr = logistic(train, test, flat)
    f1_cues = logistic(train, test, global_cues)
    print(f"(a) logistic regression, raw pixels:       test macro-F1 {f1_lr:.3f}  (target < 0.35, chance 0.20)")
    print(f"    logistic regression, mean/std/dark:    test macro-F1 {f1_cues:.3f}")
    if args.no_cnn:
        return
    f1_cnn, epochs, secs = resnet18(train, valid, test, args.budget_s, args.seed)
    print(f"(b) ResNet-18 from scratch, {epochs} epochs, {secs:.0f} s CPU ({args.threads} threads): "
          f"test macro-F1 {f1_cnn:.3f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
