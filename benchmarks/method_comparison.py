"""Seven methods x two pair modes on the demo data, one budget each: the issue-3 comparison table.

For every method and ``--pairs augment|temporal`` (the AutoEncoder reconstructs one view, so it
has no temporal row) this pretrains ResNet-18 with the cpu preset for the same number of epochs
(and the same wall-clock cap), then evaluates linear probe and fine-tuning at 10 % labels over
seeds 0, 1, 2, with random initialisation as the baseline. It prints one markdown row per run:
pretraining images/s (median over epochs after the first), final kNN accuracy (k=10, valid), and
macro-F1 mean [95 % t-CI] per protocol.

    python benchmarks/method_comparison.py --out DIR --epochs 5 --cap-s 150   # ~35 min on 2 idle cores

Resumable: rerun the same command and finished pretrainings and evaluations are skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from sonossl.config import EvaluateConfig, PretrainConfig, build_config, read_preset
from sonossl.config import FULL
from sonossl.methods import METHODS

SEEDS = (0, 1, 2)


def _stats(run: Path) -> tuple[float, float, int]:
    epochs = [json.loads(line) for line in open(run / "stats.jsonl") if '"kind": "epoch"' in line]
    ips = [e["images_per_s"] for e in epochs[1:]] or [e["images_per_s"] for e in epochs]
    knn = [e["knn10_accuracy"] for e in epochs if "knn10_accuracy" in e]
    return statistics.median(ips), (knn[-1] if knn else float("nan")), len(epochs)


def main() -> None:
    from sonossl.config import IngestConfig
    from sonossl.data.ingest import ingest
    from sonossl.data.synthetic import synthesize
    from sonossl.downstream.evaluate import evaluate
    from sonossl.methods.train import run_pretrain
    from sonossl.study.stats import load_results, summarise

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="working folder (data, runs, evaluations)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--cap-s", type=float, default=240.0, help="wall-clock cap per pretraining")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--finetune-steps", default="60,30", help="max,min optimiser steps per fine-tuning run")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data, frames = out / "data", out / "frames.h5"
    if not (data / "labelled" / "test.csv").is_file():
        synthesize(data, videos=FULL.videos, frames=FULL.frames, size=FULL.synth_size, seed=0, fmt="dicom",
                   labelled_per_class=FULL.labelled_per_class)
    if not frames.is_file():
        ingest(IngestConfig(sources=[data / "videos"], out=frames, frame_skip=FULL.frame_skip, size=FULL.image_size,
                            val_fraction=0.1), overwrite=True, progress=False)

    ft_max, ft_min = (int(v) for v in args.finetune_steps.split(","))

    def run_eval(init: str, name: str) -> Path:
        cfg = build_config(EvaluateConfig, {
            "labels": data / "labelled", "init": init, "backbone": "resnet18", "protocol": ["linear", "finetune"],
            "fractions": [10], "seeds": list(SEEDS), "out": out / f"evals-ft{ft_max}" / name, "image_size": FULL.image_size,
            "batch_size": 32, "max_steps": ft_max, "min_steps": ft_min},
            source="method_comparison")
        evaluate(cfg, resume=True, progress=None, save_models=False)
        return cfg.out / "results.csv"

    rows = [("random", "-", 0, float("nan"), float("nan"), run_eval("random", "random"))]
    for method in args.methods.split(","):
        for pairs in ("augment", "temporal"):
            if method == "ae" and pairs == "temporal":
                continue
            run = out / "pretrain" / f"{method}-{pairs}"
            t = time.time()
            if not (run / "backbone.pt").is_file():
                cfg = build_config(PretrainConfig, read_preset("cpu", method), {
                    "method": method, "frames": frames, "out": run, "pairs": pairs, "epochs": args.epochs,
                    "max_time_s": args.cap_s, "monitor_labels": data / "labelled", "seed": 0},
                    source="method_comparison")
                run_pretrain(cfg, resume=True, progress=False)
            ips, knn, n_ep = _stats(run)
            rows.append((method, pairs, n_ep, ips, knn, run_eval(str(run), f"{method}-{pairs}")))
            print(f"[{time.strftime('%H:%M:%S')}] {method}/{pairs}: {n_ep} epochs, {ips:.0f} img/s, kNN {knn:.3f}, "
                  f"{time.time() - t:.0f} s", flush=True)

    print("\n| method | pairs | epochs | pretrain images/s | final kNN | linear 10 % macro-F1 | fine-tune 10 % macro-F1 |")
    print("|---|---|---|---|---|---|---|")
    for method, pairs, n_ep, ips, knn, res in rows:
        summary = summarise(load_results(res))
        cells = []
        for protocol in ("linear", "finetune"):
            s = summary[summary["protocol"] == protocol].iloc[0]
            cells.append(f"{s['macro_f1_mean']:.3f} [{s['macro_f1_ci_low']:.3f}, {s['macro_f1_ci_high']:.3f}]")
        ips_s = "-" if ips != ips else f"{ips:.0f}"
        knn_s = "-" if knn != knn else f"{knn:.3f}"
        print(f"| {method} | {pairs} | {n_ep or '-'} | {ips_s} | {knn_s} | {cells[0]} | {cells[1]} |")
    print(f"\nResNet-18, 64 px, cpu preset, {args.epochs} epochs (cap {args.cap_s:.0f} s) per pretraining; "
          f"evaluation seeds {list(SEEDS)}, fine-tuning {ft_max} steps (at least {ft_min}), batch 32; "
          "95 % CI Student t over seeds.")


if __name__ == "__main__":
    main()
