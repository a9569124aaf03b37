"""``sonossl demo``: the whole study, small, on built-in synthetic data, on a CPU, in minutes.

synth -> a small study through the same runner and report as ``sonossl study``: ingest ->
BarlowTwins pretraining (cpu preset, a wall-clock budget) -> evaluate random vs BarlowTwins (and
ImageNet when torchvision's cache holds the weights), linear and fine-tune, several label
fractions and seeds -> ``results.csv``, ``summary.csv``, ``differences.csv``, ``report.html``
and a printed table of what was measured.

Every run is recorded in ``OUT/study.db`` as it finishes and skipped on ``--resume``, so an
interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sonossl.errors import SonosslError
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


def demo_study(data: Path, plan: DemoPlan, imagenet: bool) -> dict:
    """The demo as a study (see :mod:`sonossl.study.grid`) over the synthetic data in ``data``."""
    return {
        "name": "demo",
        "data": {"unlabelled": str(data / "videos"), "labelled": {"synthetic": str(data / "labelled")}},
        "ingest": {"size": plan.image_size, "val_fraction": 0.1},
        "variants": {"all": {"frame_skip": plan.frame_skip}},
        "pretrain": {"preset": "cpu", "methods": ["barlowtwins"], "variants": ["all"],
                     "options": {"epochs": plan.pretrain_epochs, "max_time_s": plan.pretrain_seconds, "seed": 0}},
        "evaluate": {"inits": ["random", *(["imagenet"] if imagenet else []), "pretrained"],
                     "protocols": list(plan.protocols), "fractions": list(plan.fractions), "seeds": list(plan.seeds),
                     "options": {"backbone": "resnet18", "batch_size": 32,
                                 "max_steps": plan.finetune_max_steps, "min_steps": plan.finetune_min_steps}},
        "context": {
            "data": f"synthetic fetal echo (sonossl synth, seed 0): {plan.videos} unlabelled clips x {plan.frames} frames "
                    f"(ingested with frame skip {plan.frame_skip}), {plan.labelled_per_class} labelled images per class "
                    "(train, valid, test), 5 classes",
            "pretraining": f"BarlowTwins, ResNet-18, {plan.image_size} px, cpu preset, {plan.pretrain_epochs} epochs capped "
                           f"at {plan.pretrain_seconds:.0f} s",
        },
    }


def run_demo(out: Path, *, quick: bool = False, resume: bool = False, overwrite: bool = False,
             seeds: list[int] | None = None, plan: DemoPlan | None = None) -> Path:
    from sonossl.data.synthetic import synthesize
    from sonossl.models.backbones import imagenet_available
    from sonossl.config import validated
    from sonossl.study.grid import StudySpec, expand
    from sonossl.study.report import format_table
    from sonossl.study.stats import load_results, paired_differences, summarise
    from sonossl.study.runner import run_study

    plan = plan or (QUICK if quick else FULL)
    if seeds:
        plan = DemoPlan(**{**asdict(plan), "seeds": tuple(seeds)})
    out = claim_output_dir(out, resume=resume, overwrite=overwrite)
    t_start = time.time()

    data = out / "source"
    if not (data / "labelled" / "test.csv").is_file():
        _say(f"synthesising {plan.videos} unlabelled clips of {plan.frames} frames and "
             f"{sum(plan.labelled_per_class) * 5} labelled images (seed 0)")
        if data.exists():
            shutil.rmtree(data)
        synthesize(data, videos=plan.videos, frames=plan.frames, size=plan.synth_size, seed=0, fmt="dicom",
                   labelled_per_class=plan.labelled_per_class)
    imagenet = imagenet_available("resnet18")
    if not imagenet:
        _say("ImageNet weights for resnet18 are not in torchvision's cache: comparing random and BarlowTwins only")
    # absolute paths: relative ones in a study resolve against its root, not the working directory
    study = expand(validated(StudySpec, demo_study(data.resolve(), plan, imagenet), "demo"), out, "demo")
    _say(study.describe().splitlines()[0])
    summary = run_study(study, out, workers=1, resume=True, log=lambda m: print(m, flush=True))
    if summary.failed or summary.blocked:
        raise SonosslError(f"demo: {len(summary.failed)} runs failed ({next(iter(summary.failed.values()), '')}); "
                           f"see {out / 'logs'}; rerun with --resume")

    epochs = [json.loads(line) for line in open(out / "pretrain" / study.pretrains[0].name / "stats.jsonl")
              if '"kind": "epoch"' in line]
    knn = [e["knn10_accuracy"] for e in epochs if "knn10_accuracy" in e]
    df = load_results(out / "results.csv")
    print()
    print(format_table(summarise(df), paired_differences(df)))
    print(f"\nseeds {list(plan.seeds)}; 95 % CIs are Student t over seeds; 'real' = the paired CI excludes zero.")
    if knn:
        print("BarlowTwins kNN accuracy (k=10, valid) by epoch: " + " ".join(f"{k:.2f}" for k in knn))
    print(f"total {time.time() - t_start:.0f} s this invocation; per-run times in {out / 'study.db'}")
    print(f"wrote {out / 'results.csv'}, {out / 'summary.csv'}, {out / 'differences.csv'}, {summary.report}")
    return out / "results.csv"
