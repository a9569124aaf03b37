"""How the representation evolves over one long pretraining, against random initialisation.

One run per method through the product's own pretraining (``run_pretrain``: the cpu preset,
the frame store written by ``ingest``, the same views, optimiser and schedule as ``sonossl
pretrain``), with the backbone saved at log-spaced steps. Each snapshot is then scored on the
built-in labelled set (100 images per class in each of train, valid and test, so that a curve
is not noise):

- kNN accuracy (k = 10, cosine, train images as memory) on the valid and on the test split;
- a linear probe (multinomial logistic regression by L-BFGS on L2-normalised frozen features
  scaled by sqrt(dim), its weight decay chosen on the valid split from 1e-4, 1e-3, 1e-2) trained on 1, 10 and 100 % of
  the train labels (stratified, nested, as the protocol draws them), seeds 0, 1, 2; macro-F1 on
  valid and test.

Random initialisation is scored the same way over ``--random-seeds`` encoders and drawn as a
band (min to max) on the same axes. The crossover, the first snapshot from which the method's
mean stays above the random band's top, is printed per metric.

Phases (each resumable; a finished phase is skipped on a rerun):

    python benchmarks/ssl_learning_curve.py prepare  --out bench_out/curve
    python benchmarks/ssl_learning_curve.py pretrain --out bench_out/curve --method barlowtwins --steps 3000
    python benchmarks/ssl_learning_curve.py score    --out bench_out/curve
    python benchmarks/ssl_learning_curve.py plot     --out bench_out/curve --results benchmarks/results

``pretrain`` resumes from its last checkpoint when interrupted (the snapshots already written
stay). Two methods can pretrain at once in two processes (``--threads 1`` each).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from pytorch_lightning.callbacks import Callback

from sonossl.config import PretrainConfig, build_config, read_preset
from sonossl.config import IngestConfig
from sonossl.data.ingest import ingest
from sonossl.data.labelled import load_labelled
from sonossl.data.synthetic import synthesize
from sonossl.downstream.protocol import stratified_subset
from sonossl.methods.monitors import knn_accuracy
from sonossl.models.features import features
from sonossl.methods.train import run_pretrain
from sonossl.outputs import atomic_torch_save
from sonossl.models.backbones import build_encoder

FRACTIONS = (1.0, 10.0, 100.0)
PROBE_SEEDS = (0, 1, 2)
WD_GRID = (1e-4, 1e-3, 1e-2)
COLUMNS = ["init", "step", "pairs_seen", "minutes", "metric", "split", "fraction", "seed", "value"]


def snapshot_steps(total: int) -> list[int]:
    """0, 10, 20, 40, ... doubling, and the last step."""
    steps, s = [0], 10
    while s < total:
        steps.append(s)
        s *= 2
    return sorted(set(steps + [total]))


class Snapshots(Callback):
    """Saves the encoder trunk (a torchvision state_dict, as ``backbone.pt``) at given optimiser steps."""

    def __init__(self, folder: Path, steps: list[int]):
        self.folder, self.steps = Path(folder), set(steps)

    def _save(self, trainer, pl_module) -> None:
        step = trainer.global_step
        path = self.folder / f"step_{step:06d}.pt"
        if step in self.steps and trainer.is_global_zero and not path.exists():
            trunk = {k: v.detach().cpu().clone() for k, v in pl_module.export_encoder().trunk.state_dict().items()}
            atomic_torch_save(trunk, path)
            meta = {"step": step, "pairs_seen": pl_module.images_seen, "train_s": round(pl_module.elapsed(), 1)}
            (self.folder / f"step_{step:06d}.json").write_text(json.dumps(meta) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._save(trainer, pl_module)


# ------------------------------------------------------------------------------------------ phases
def prepare(out: Path, videos: int, frames: int, seed: int) -> None:
    src = out / "source"
    if not (src / "labelled" / "test.csv").is_file():
        synthesize(src, videos=videos, frames=frames, size=128, seed=seed, fmt="dicom", labelled_per_class=(100, 100, 100))
    if not (out / "frames.h5").is_file():
        ingest(IngestConfig(sources=[src / "videos"], out=out / "frames.h5", frame_skip=1, size=64,
                            val_fraction=0.1), progress=False)


def pretrain(out: Path, method: str, steps: int, threads: int, seed: int, name: str | None = None,
             options: Path | None = None) -> None:
    """Pretrain ``method`` (run and snapshots named ``name``, default the method) with the cpu
    preset, overridden by the YAML mapping in ``options`` (e.g. an ``augment:`` block)."""
    torch.set_num_threads(threads)
    name = name or method
    layer = read_preset("cpu", method)
    extra = yaml.safe_load(options.read_text()) if options else {}
    cfg = build_config(PretrainConfig, layer, extra, {
        "method": method, "frames": out / "frames.h5", "out": out / "runs" / name, "seed": seed,
        "max_steps": steps, "epochs": 10_000, "num_workers": 1, "monitor_labels": None,
    }, source=f"learning curve ({name})")
    run = out / "runs" / name
    resume = (run / "checkpoints" / "last.ckpt").is_file()
    if (run / "backbone.pt").is_file():
        print(f"{run}: finished")
        return
    snaps = Snapshots(out / "snapshots" / name, snapshot_steps(steps))
    snaps.folder.mkdir(parents=True, exist_ok=True)
    run_pretrain(cfg, resume=resume, overwrite=not resume, progress=False, callbacks=[snaps])


def softmax_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float) -> torch.nn.Linear:
    """Multinomial logistic regression, mean cross-entropy + weight_decay * ||W||^2, by L-BFGS
    (deterministic; milliseconds on a few hundred 512-d rows). x: (N, dim) float, y: (N,) int64."""
    head = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _macro_f1(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    from sklearn.metrics import f1_score

    with torch.no_grad():
        return float(f1_score(y.numpy(), head(x).argmax(1).numpy(), average="macro"))


def _probe(f: dict, y: dict, fraction: float, seed: int, classes: list[str]) -> tuple[float, float]:
    """(valid, test) macro-F1 of the probe whose weight decay scored best on valid."""
    idx = torch.from_numpy(stratified_subset(y["train"].numpy(), fraction, seed, classes))
    best = (-1.0, 0.0)
    for wd in WD_GRID:
        head = softmax_regression(f["train"][idx], y["train"][idx], len(classes), wd)
        v = _macro_f1(head, f["valid"], y["valid"])
        if v > best[0]:
            best = (v, _macro_f1(head, f["test"], y["test"]))
    return best


def score_encoder(encoder, labelled) -> list[dict]:
    """Rows of (metric, split, fraction, seed, value) for one encoder."""
    f = {s: features(encoder.eval(), getattr(labelled, s).images, torch.device("cpu")) for s in ("train", "valid", "test")}
    y = {s: getattr(labelled, s).labels for s in ("train", "valid", "test")}
    rows = [{"metric": "knn10", "split": s, "fraction": 100.0, "seed": 0,
             "value": knn_accuracy(f["train"], y["train"], f[s], y[s], 10)} for s in ("valid", "test")]
    scaled = {s: f[s] * math.sqrt(f[s].shape[1]) for s in f}  # unit-norm rows scaled so coordinates are ~1
    for frac in FRACTIONS:
        for seed in PROBE_SEEDS:
            v, t = _probe(scaled, y, frac, seed, labelled.class_names)
            rows += [{"metric": "linear_f1", "split": "valid", "fraction": frac, "seed": seed, "value": v},
                     {"metric": "linear_f1", "split": "test", "fraction": frac, "seed": seed, "value": t}]
    return rows


def score(out: Path, random_seeds: int, threads: int) -> Path:
    torch.set_num_threads(threads)
    path = out / "curve.csv"
    done = set()
    if path.is_file():
        done = {(r["init"], int(r["step"])) for r in csv.DictReader(open(path))}
    new = not path.is_file()
    labelled = load_labelled(out / "source" / "labelled", size=64)
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        if new:
            w.writeheader()
        for s in range(random_seeds):
            if (f"random{s}", 0) not in done:
                torch.manual_seed(1000 + s)
                for r in score_encoder(build_encoder("resnet18"), labelled):
                    w.writerow({"init": f"random{s}", "step": 0, "pairs_seen": 0, "minutes": 0, **r})
                fh.flush()
        for meta_path in sorted((out / "snapshots").glob("*/step_*.json")):
            method, meta = meta_path.parent.name, json.loads(meta_path.read_text())
            if (method, meta["step"]) in done:
                continue
            enc = build_encoder("resnet18", meta_path.with_suffix(".pt"))
            for r in score_encoder(enc, labelled):
                w.writerow({"init": method, "step": meta["step"], "pairs_seen": meta["pairs_seen"],
                            "minutes": round(meta["train_s"] / 60, 2), **r})
            fh.flush()
            print(f"scored {method} step {meta['step']}", flush=True)
    return path


# ------------------------------------------------------------------------------------------ report
def _series(rows: list[dict], init: str, metric: str, split: str, fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean over seeds, minutes) for one init."""
    by_step: dict[int, list[float]] = {}
    minutes: dict[int, float] = {}
    for r in rows:
        if r["init"] == init and r["metric"] == metric and r["split"] == split and float(r["fraction"]) == fraction:
            by_step.setdefault(int(r["step"]), []).append(float(r["value"]))
            minutes[int(r["step"])] = float(r["minutes"])
    steps = np.array(sorted(by_step))
    return steps, np.array([np.mean(by_step[s]) for s in steps]), np.array([minutes[s] for s in steps])


def _random_band(rows: list[dict], metric: str, split: str, fraction: float) -> tuple[float, float, float]:
    per_init: dict[str, list[float]] = {}
    for r in rows:
        if r["init"].startswith("random") and r["metric"] == metric and r["split"] == split and float(r["fraction"]) == fraction:
            per_init.setdefault(r["init"], []).append(float(r["value"]))
    means = [np.mean(v) for v in per_init.values()]
    return float(np.min(means)), float(np.mean(means)), float(np.max(means))


PANELS = [("knn10", 100.0, "kNN-10 accuracy"), ("linear_f1", 1.0, "linear probe macro-F1, 1 % labels"),
          ("linear_f1", 10.0, "linear probe macro-F1, 10 % labels"), ("linear_f1", 100.0, "linear probe macro-F1, 100 % labels")]


def crossover(rows: list[dict], init: str, metric: str, split: str, fraction: float) -> dict | None:
    """The first snapshot from which the method's mean stays above the top of the random band."""
    steps, means, minutes = _series(rows, init, metric, split, fraction)
    top = _random_band(rows, metric, split, fraction)[2]
    for i in range(len(steps)):
        if steps[i] > 0 and np.all(means[i:] > top):
            return {"step": int(steps[i]), "minutes": float(minutes[i]), "value": float(means[i]), "random_top": top}
    return None


def markdown_table(rows: list[dict], inits: list[str]) -> str:
    """Per init and snapshot: minutes, pairs seen, kNN and linear-probe means as valid / test."""
    head = "| init | step | pairs seen | minutes | " + " | ".join(t for _, _, t in PANELS) + " |"
    lines = [head, "|---" * (4 + len(PANELS)) + "|"]

    def cell(init, step, metric, frac):
        vals = []
        for split in ("valid", "test"):
            v = [float(r["value"]) for r in rows if r["init"] == init and int(r["step"]) == step and r["metric"] == metric
                 and r["split"] == split and float(r["fraction"]) == frac]
            vals.append(f"{np.mean(v):.3f}")
        return " / ".join(vals)

    for metric_row in [("random", "random (5 seeds)")]:
        cells = []
        for metric, frac, _ in PANELS:
            lo_v, mid_v, hi_v = _random_band(rows, metric, "valid", frac)
            lo_t, mid_t, hi_t = _random_band(rows, metric, "test", frac)
            cells.append(f"{mid_v:.3f} / {mid_t:.3f} (max {hi_v:.3f} / {hi_t:.3f})")
        lines.append(f"| {metric_row[1]} | 0 | 0 | 0 | " + " | ".join(cells) + " |")
    for init in inits:
        steps = sorted({int(r["step"]) for r in rows if r["init"] == init})
        for step in steps:
            r0 = next(r for r in rows if r["init"] == init and int(r["step"]) == step)
            lines.append(f"| {init} | {step} | {r0['pairs_seen']} | {float(r0['minutes']):.1f} | "
                         + " | ".join(cell(init, step, m, f) for m, f, _ in PANELS) + " |")
    return "\n".join(lines)


def plot(out: Path, results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(out / "curve.csv")))
    inits = sorted({r["init"] for r in rows if not r["init"].startswith("random")})
    results.mkdir(parents=True, exist_ok=True)
    summary = {}
    for split in ("valid", "test"):
        fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
        for ax, (metric, frac, title) in zip(axes, PANELS):
            lo, mid, hi = _random_band(rows, metric, split, frac)
            ax.axhspan(lo, hi, color="grey", alpha=0.3, label="random init (min-max over seeds)")
            ax.axhline(mid, color="grey", lw=1)
            for init in inits:
                steps, means, _ = _series(rows, init, metric, split, frac)
                ax.plot(np.maximum(steps, 1), means, marker="o", ms=3, label=init)
                summary[f"{init} {metric} {frac:g}% {split}"] = crossover(rows, init, metric, split, frac)
            ax.set_xscale("log")
            ax.set_xlabel("pretraining step (batch 64; step 0 drawn at 1)")
            ax.set_title(title, fontsize=9)
            ax.set_ylim(0, 1)
        axes[0].legend(fontsize=7, loc="lower left")
        fig.suptitle(f"SSL learning curve on the built-in synthetic data ({split} split), ResNet-18 64 px, cpu preset")
        fig.tight_layout()
        fig.savefig(results / f"ssl_learning_curve_{split}.png", dpi=110)
        plt.close(fig)
    (results / "ssl_learning_curve.csv").write_text((out / "curve.csv").read_text())
    print(markdown_table(rows, inits))
    (results / "ssl_learning_curve_crossover.json").write_text(json.dumps(summary, indent=1) + "\n")
    for k, v in summary.items():
        print(f"{k}: " + ("no crossover" if v is None else f"step {v['step']} ({v['minutes']:.1f} min): {v['value']:.3f} "
                                                          f"> random top {v['random_top']:.3f}"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["prepare", "pretrain", "score", "plot"], help="what to do (see the module docstring)")
    p.add_argument("--out", type=Path, required=True, help="working folder (data, runs, snapshots, curve.csv)")
    p.add_argument("--method", default="barlowtwins", help="pretrain: SSL method (default barlowtwins)")
    p.add_argument("--name", default=None, help="pretrain: name of the run and its curve (default: the method)")
    p.add_argument("--options", type=Path, default=None,
                   help="pretrain: YAML mapping of pretraining settings over the cpu preset, e.g. an augment: block "
                        "(default: none)")
    p.add_argument("--steps", type=int, default=3000, help="pretrain: optimiser steps of the schedule (default 3000)")
    p.add_argument("--videos", type=int, default=600, help="prepare: unlabelled clips (default 600)")
    p.add_argument("--frames", type=int, default=8, help="prepare: frames per clip (default 8)")
    p.add_argument("--seed", type=int, default=0, help="data and pretraining seed (default 0)")
    p.add_argument("--random-seeds", type=int, default=5, help="score: random-init encoders in the band (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="plot: where PNG/CSV go")
    a = p.parse_args()
    t = time.time()
    if a.phase == "prepare":
        prepare(a.out, a.videos, a.frames, a.seed)
    elif a.phase == "pretrain":
        pretrain(a.out, a.method, a.steps, a.threads, a.seed, a.name, a.options)
    elif a.phase == "score":
        score(a.out, a.random_seeds, a.threads)
    else:
        plot(a.out, a.results)
    print(f"{a.phase}: {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
