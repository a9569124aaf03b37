"""``sonossl demo``: the whole study, small, on built-in synthetic data, on a CPU, in minutes.

synth -> ingest -> BarlowTwins pretraining (cpu preset, a wall-clock budget) -> evaluate
random vs BarlowTwins (and ImageNet when torchvision's cache holds the weights), linear and
fine-tune, several label fractions and seeds -> ``results.csv``, ``summary.csv``,
``differences.csv``, ``report.html`` and a printed table of what was measured.

Every stage writes into ``OUT/`` and is skipped on ``--resume`` once its output is complete, so
an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sonossl.config import EvaluateConfig, PretrainConfig, build_config, read_preset
from sonossl.outputs import claim_output_dir


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and budgets; ``full`` fits 15 minutes on 2 cores, ``quick`` 3 minutes."""

    videos: int
    frames: int
    frame_skip: int
    pretrain_seconds: float  # a cap; the schedule (warmup + cosine) is sized by pretrain_epochs
    pretrain_epochs: int
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    finetune_max_steps: int
    finetune_min_steps: int
    synth_size: int = 128
    image_size: int = 64
    labelled_per_class: tuple[int, int, int] = (100, 20, 40)
    protocols: tuple[str, ...] = ("linear", "finetune")


# Sized on 2 cores (~85 BarlowTwins pairs/s at 64 px): FULL's 18 epochs of ~20 steps end near
# 300 s, so the learning-rate schedule completes instead of being cut by the time cap.
FULL = DemoPlan(videos=120, frames=24, frame_skip=2, pretrain_seconds=330, pretrain_epochs=18, fractions=(1, 10, 100),
                seeds=(0, 1, 2), finetune_max_steps=150, finetune_min_steps=60)
QUICK = DemoPlan(videos=40, frames=16, frame_skip=2, pretrain_seconds=60, pretrain_epochs=15, fractions=(10, 100),
                 seeds=(0, 1), finetune_max_steps=40, finetune_min_steps=20)


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_demo(out: Path, *, quick: bool = False, resume: bool = False, overwrite: bool = False, seeds: list[int] | None = None) -> Path:
    from sonossl.data.ingest import ingest
    from sonossl.data.synthetic import synthesize
    from sonossl.downstream.evaluate import RESULT_COLUMNS, evaluate, read_results, write_csv_atomic
    from sonossl.methods.train import run_pretrain
    from sonossl.models.backbones import imagenet_available
    from sonossl.study.report import format_table, load_results, paired_differences, summarise, write_report

    plan = QUICK if quick else FULL
    if seeds:
        plan = DemoPlan(**{**asdict(plan), "seeds": tuple(seeds)})
    out = claim_output_dir(out, resume=resume, overwrite=overwrite)
    t_start = time.time()
    timings: dict[str, float] = {}

    data = out / "data"
    if not (data / "labelled" / "test.csv").is_file():
        _say(f"synthesising {plan.videos} unlabelled clips of {plan.frames} frames and "
             f"{sum(plan.labelled_per_class) * 5} labelled images (seed 0)")
        t = time.time()
        if data.exists():
            shutil.rmtree(data)
        synthesize(data, videos=plan.videos, frames=plan.frames, size=plan.synth_size, seed=0, fmt="dicom",
                   labelled_per_class=plan.labelled_per_class)
        timings["synth_s"] = time.time() - t

    frames = out / "frames.h5"
    if not frames.is_file():
        _say("ingesting the clips into the frame store (fan crop, text blanked, pseudonymous ids)")
        t = time.time()
        summary = ingest([data / "videos"], frames, frame_skip=plan.frame_skip, size=plan.image_size, val_fraction=0.1,
                         overwrite=True, progress=False)
        timings["ingest_s"] = time.time() - t
        _say(f"{summary.ok} clips ingested ({summary.error} errors), {summary.frames_kept} frames")

    run = out / "pretrain" / "barlowtwins"
    if not (run / "backbone.pt").is_file():
        _say(f"BarlowTwins pretraining, cpu preset, {plan.pretrain_epochs} epochs, capped at {plan.pretrain_seconds:.0f} s")
        t = time.time()
        cfg = build_config(PretrainConfig, read_preset("cpu", "barlowtwins"),
                           {"method": "barlowtwins", "frames": frames, "out": run, "max_time_s": plan.pretrain_seconds,
                            "epochs": plan.pretrain_epochs, "monitor_labels": data / "labelled",
                            "image_size": plan.image_size, "seed": 0}, source="demo")
        run_pretrain(cfg, resume=True, progress=False)
        timings["pretrain_s"] = time.time() - t
        epochs = [json.loads(line) for line in open(run / "stats.jsonl") if '"kind": "epoch"' in line]
        if epochs:
            _say("pretraining kNN accuracy (k=10, valid) by epoch: "
                 + " ".join(f"{e['knn10_accuracy']:.2f}" for e in epochs if "knn10_accuracy" in e))

    inits = ["random", str(run)] + (["imagenet"] if imagenet_available("resnet18") else [])
    if "imagenet" not in inits:
        _say("ImageNet weights for resnet18 are not in torchvision's cache: comparing random and BarlowTwins only")
    rows: list[dict] = []
    for init in inits:
        name = "barlowtwins" if init == str(run) else init
        t = time.time()
        _say(f"evaluating init={name}: {', '.join(plan.protocols)} x fractions {list(plan.fractions)} x seeds {list(plan.seeds)}")
        cfg = build_config(EvaluateConfig, {
            "labels": data / "labelled", "init": init, "backbone": "resnet18", "protocol": list(plan.protocols),
            "fractions": list(plan.fractions), "seeds": list(plan.seeds), "out": out / "evals" / name,
            "image_size": plan.image_size, "batch_size": 32, "max_steps": plan.finetune_max_steps,
            "min_steps": plan.finetune_min_steps}, source="demo")
        path = evaluate(cfg, resume=True, progress=lambda m: _say("  " + m), save_models=False)
        rows += read_results(path)
        timings[f"evaluate_{name}_s"] = time.time() - t
    write_csv_atomic(out / "results.csv", rows, RESULT_COLUMNS)

    context = {"data": f"synthetic fetal echo, {plan.videos} unlabelled clips x {plan.frames} frames (skip {plan.frame_skip}), "
                       f"{plan.labelled_per_class} labelled images per class (train, valid, test)",
               "pretraining": f"BarlowTwins, ResNet-18, {plan.image_size} px, {plan.pretrain_epochs} epochs capped at {plan.pretrain_seconds:.0f} s",
               "evaluation": f"{', '.join(plan.protocols)}; fractions {list(plan.fractions)} %; seeds {list(plan.seeds)}",
               "wall time": f"{time.time() - t_start:.0f} s this invocation"}
    paths = write_report(out, context=context)
    df = load_results(out / "results.csv")
    print()
    print(format_table(summarise(df), paired_differences(df)))
    print(f"\nseeds {list(plan.seeds)}; 95 % CIs are Student t over seeds; 'real' = the paired CI excludes zero.")
    print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {time.time() - t_start:.0f}s")
    print(f"wrote {out / 'results.csv'}, {paths['summary']}, {paths['differences']}, {paths['report']}")
    return out / "results.csv"
