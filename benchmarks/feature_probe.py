"""What do the features encode? Probes for the plane and for every nuisance the generator drew.

Only a synthetic benchmark can ask this: the generator knows, for each image, the plane and
each nuisance it drew (heart position, rotation and size, gain, dynamic range, gamma,
attenuation, blur, speckle size, thorax direction) and which clip a frame came from. For each
encoder (random initialisations, pretrained snapshots, and raw pixels as a reference), frozen
features of two frames of each of ``--anatomies`` freshly drawn anatomies are probed, training
on the first 2/3 of the anatomies and scoring on the held-out third:

- plane: multinomial logistic regression, accuracy (chance 0.2);
- each continuous nuisance: ridge regression on the L2-normalised features (alpha chosen by
  leave-one-out on the training part), R^2 on the held-out anatomies (0 = no better than the
  mean, 1 = decoded exactly; the heart's axis, an angle, as its cosine and sine);
- clip identity: for each held-out frame, whether its nearest neighbour (cosine) among all
  other held-out frames is the other frame of the same clip (chance about 1 / (2 n - 1)).

A representation that tracks pose and scanner but not the plane says which lever to pull.

    python benchmarks/feature_probe.py --snapshots bench_out/curve/snapshots --out benchmarks/results/feature_probe.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sonossl.data.synthetic import CLASSES, render_clip, sample_anatomy
from sonossl.models.features import features
from sonossl.models.backbones import build_encoder

SIZE, RENDER, FRAMES = 64, 128, 24

NUISANCES = {
    "heart_x": lambda an: an.heart_c[0],
    "heart_y": lambda an: an.heart_c[1],
    "heart_axis_cos": lambda an: math.cos(an.heart_rot),  # the axis is an angle: decode its cosine and sine
    "heart_axis_sin": lambda an: math.sin(an.heart_rot),
    "heart_size": lambda an: an.heart_r,
    "thorax_dir_cos": lambda an: math.cos(math.atan2(an.thorax_c[1] - an.heart_c[1], an.thorax_c[0] - an.heart_c[0])),
    "gain": lambda an: an.gain,
    "dynamic_range": lambda an: an.dyn_range,
    "gamma": lambda an: an.gamma,
    "attenuation": lambda an: an.att,
    "blur": lambda an: an.blur,
    "speckle_size": lambda an: an.speckle_sigma[1],
}


def probe_set(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, dict[str, np.ndarray]]:
    """Two frames of each of ``n`` anatomies (balanced planes): images uint8 (2n, 1, 64, 64),
    plane labels (2n,), and each nuisance (2n,). Frames 2k and 2k+1 share anatomy k."""
    images, planes, truth = [], [], {k: [] for k in NUISANCES}
    for k in range(n):
        rng = np.random.default_rng([seed, 7, k])
        cls = CLASSES[k % len(CLASSES)]
        an = sample_anatomy(rng, cls, FRAMES)
        t = sorted(rng.choice(FRAMES, size=2, replace=False).tolist())
        x = torch.from_numpy(render_clip(an, RENDER, rng, frames=t))[:, None].float()
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
        images.append(x)
        planes += [CLASSES.index(cls)] * 2
        for name, get in NUISANCES.items():
            truth[name] += [get(an)] * 2
    return torch.cat(images), np.array(planes), {k: np.array(v, dtype=np.float64) for k, v in truth.items()}


def probe(feats: np.ndarray, planes: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression, RidgeCV

    n = len(planes)
    cut = (2 * n // 3) // 2 * 2  # whole anatomies on each side
    # rows L2-normalised and scaled by sqrt(dim) (coordinates ~1), as the linear probes do; a
    # per-dimension standardisation blows up dimensions that are nearly constant on the training part
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12) * np.sqrt(feats.shape[1])
    tr, te = unit[:cut], unit[cut:]
    out = {"plane_acc": float((LogisticRegression(C=0.1, max_iter=3000).fit(tr, planes[:cut]).predict(te) == planes[cut:]).mean())}
    for name, y in truth.items():
        reg = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(tr, y[:cut])
        pred = reg.predict(te)
        out[f"{name}_r2"] = float(1 - ((pred - y[cut:]) ** 2).sum() / ((y[cut:] - y[cut:].mean()) ** 2).sum())
    f = feats[cut:] / np.linalg.norm(feats[cut:], axis=1, keepdims=True).clip(1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    partner = np.arange(len(f)) ^ 1
    out["clip_retrieval"] = float((sim.argmax(1) == partner).mean())
    return out


def encoders(snapshots: Path | None, random_seeds: int) -> dict[str, object]:
    found: dict[str, object] = {}
    for s in range(random_seeds):
        torch.manual_seed(2000 + s)
        found[f"random{s}"] = build_encoder("resnet18")
    if snapshots is not None:
        for method_dir in sorted(p for p in Path(snapshots).iterdir() if p.is_dir()):
            snaps = sorted(method_dir.glob("step_*.pt"))
            if len(snaps) > 1:
                found[f"{method_dir.name}@{int(snaps[-1].stem.split('_')[1])}"] = build_encoder("resnet18", snaps[-1])
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--snapshots", type=Path, default=None, help="folder of <method>/step_*.pt (ssl_learning_curve.py); "
                                                                  "the last snapshot of each method is probed (default none)")
    p.add_argument("--anatomies", type=int, default=600, help="anatomies drawn, two frames each (default 600)")
    p.add_argument("--random-seeds", type=int, default=3, help="random-init encoders (default 3)")
    p.add_argument("--seed", type=int, default=0, help="probe-set seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/feature_probe.csv"), help="CSV written")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    images, planes, truth = probe_set(a.anatomies, a.seed)
    rows = [{"features": "raw pixels (16x16)",  # the same normalisation applied to pooled pixels
             **probe(F.avg_pool2d(images.float(), 4).flatten(1).numpy(), planes, truth)}]
    for name, enc in encoders(a.snapshots, a.random_seeds).items():
        rows.append({"features": name, **probe(features(enc.eval(), images, torch.device("cpu")).numpy(), planes, truth)})
        print(f"probed {name}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])[1:]
    print("| features | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        print(f"| {r['features']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    print(f"wrote {a.out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
