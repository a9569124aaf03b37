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
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sonossl.config import LONG, PLANS, DemoPlan, EvaluateConfig
from sonossl.errors import SonosslError
from sonossl.outputs import claim_output_dir

if TYPE_CHECKING:
    import pandas as pd


METHOD = "barlowtwins"
# Units run at once, each with cores / DEMO_WORKERS threads: random initialisation's evaluations
# then overlap the pretraining, and a fine-tuning at batch 32 does 1.4x more per core on one
# thread than on two (benchmarks/README.md, "The demo's budget").
DEMO_WORKERS = 2


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def synthetic_key(data: Path) -> Path:
    """The pseudonym key of the built-in synthetic data: a fixed one, written beside it, so the
    demo's ids, splits and numbers repeat on every machine. The data hold no patient, so there
    is nothing to protect; real scans get a random key (docs/data-safety.md)."""
    import hashlib

    path = data / "synthetic.key"
    if not path.is_file():
        path.write_text(hashlib.sha256(b"sonossl built-in synthetic data").hexdigest() + "\n")
    return path


def precision_line(plan: DemoPlan) -> str:
    """What the runs trained in and why (the fast path's choice on this machine, as the pretraining
    made it), and what that means for the plan's time."""
    from sonossl.models.fastpath import choose

    fast = choose("resnet18", plan.image_size)  # the machine's recorded choice: no new measurement
    line = str(fast)
    if fast.amp_dtype is None and "no bf16 units" in fast.reason:
        line += (f"; this CPU has no bf16 units, so the plan runs in float32: about {plan.minutes_float32} minutes on "
                 f"2 idle cores, against {plan.minutes} on a CPU with AMX or AVX-512 BF16 units, where the whole "
                 "pretraining step measured 1.7-1.8x faster in bf16 + channels_last (benchmarks/README.md)")
    return line


def demo_study(data: Path, plan: DemoPlan, imagenet: bool) -> dict:
    """The demo as a study (see :mod:`sonossl.study.grid`) over the synthetic data in ``data``.
    The image size is stated once, in ``ingest.size``: pretraining and evaluation take it from there."""
    frames = plan.videos * (plan.frames // plan.frame_skip)
    epochs = max(1, math.ceil(plan.pretrain_steps / max(1, frames * 0.9 // 64)))  # ~10 % of clips go to val
    return {
        "name": f"demo-{plan.name}",
        "data": {"unlabelled": str(data / "videos"), "labelled": {"synthetic": str(data / "labelled")}},
        "ingest": {"size": plan.image_size, "val_fraction": 0.1, "salt_file": str(synthetic_key(data))},
        "variants": {"all": {"frame_skip": plan.frame_skip}},
        "pretrain": {"preset": "cpu", "methods": [METHOD], "variants": ["all"],
                     "options": {"epochs": epochs, "max_steps": plan.pretrain_steps, "max_time_s": plan.pretrain_seconds,
                                 "seed": 0}},
        "evaluate": {"inits": ["random", *(["imagenet"] if imagenet else []), "pretrained"],
                     "protocols": ["linear", "finetune"], "fractions": list(plan.fractions), "seeds": list(plan.seeds),
                     "options": {"backbone": "resnet18"},
                     "per_protocol": {
                         "linear": {"options": {"select_on_valid": dict(plan.linear_select)}},
                         "finetune": {"fractions": list(plan.finetune_fractions), "seeds": list(plan.finetune_seeds),
                                      "options": {"batch_size": 32, "epochs": plan.finetune_epochs,
                                                  "min_steps": plan.finetune_min_steps, "val_evals": plan.finetune_evals,
                                                  "lr_schedule": plan.finetune_schedule, "vflip": plan.finetune_vflip,
                                                  "select_on_valid": dict(plan.finetune_select)}}}},
        "context": {
            "data": f"synthetic fetal echo (sonossl synth, seed 0): {plan.videos} unlabelled clips x {plan.frames} frames "
                    f"(ingested with frame skip {plan.frame_skip}), {plan.labelled_per_class} labelled images per class "
                    "(train, valid, test), 5 classes",
            "pretraining": f"BarlowTwins, ResNet-18, {plan.image_size} px, cpu preset, {plan.pretrain_steps} steps of 64 "
                           f"(capped at {plan.pretrain_seconds:.0f} s)",
        },
    }


FINETUNE_LR = EvaluateConfig.model_fields["lr"].default  # the published recipe's, where no search is declared


def keep_best_model(out: Path, results: "pd.DataFrame") -> Path | None:
    """Keep the ``model.pt`` of the fine-tuning run with the best validation score (the test split
    is not used to choose); delete the others. Returns the kept run folder."""
    runs = results[results["protocol"] == "finetune"]
    best, best_score = None, -1.0
    for rel in runs["run_dir"]:
        run = out / rel
        score = json.loads((run / "run.json").read_text())["best_val_balanced_accuracy"]
        if (run / "model.pt").is_file() and score > best_score:
            best, best_score = run, score
    for rel in runs["run_dir"]:
        if out / rel != best:
            (out / rel / "model.pt").unlink(missing_ok=True)
    return best


def verdict(diffs: "pd.DataFrame", plan: DemoPlan, steps: int | None = None, warning: str | None = None) -> str:
    """One line: did pretraining beat random initialisation at <= 10 % labels, and where; if not,
    where it did (more labels), and what the learning curve says about the budget; then the
    fine-tuning difference at <= 10 % labels, whatever it is. ``steps``: the steps the pretraining
    ran (its ``summary.json``; default the plan's). ``warning``: the pretraining's health line
    (:func:`sonossl.models.init.health_line`), which ends the verdict: a diverged or collapsed
    backbone taints every figure it gave."""
    steps = plan.pretrain_steps if steps is None else steps
    vs_random = diffs[(diffs["baseline"] == "random") & (diffs["init"] != "imagenet")]
    wins = vs_random[vs_random["real"] & (vs_random["diff_mean"] > 0)]

    def cells(rows) -> str:
        return ", ".join(f"{r.protocol} {r.fraction:g} % (+{r.diff_mean:.3f})" for r in rows.itertuples())

    low = wins[wins["fraction"] <= 10]
    if len(low):
        line = f"pretraining beat random initialisation at <= 10 % labels: {cells(low)} (paired CIs exclude zero)"
    else:
        line = f"no real gain over random initialisation at <= 10 % labels after {steps} pretraining steps"
        if len(wins):
            line += f"; a real gain with more labels: {cells(wins)}"
        line += (f". The learning curve (benchmarks/README.md, 'SSL learning curve') puts the crossover at about "
                 f"{CROSSOVER_NOTE}")
        if steps < LONG.pretrain_steps:
            line += f"; `make demo-long` pretrains {LONG.pretrain_steps} steps"
        elif len(plan.seeds) < len(LONG.seeds):
            line += f"; `make demo-long` probes with {len(LONG.seeds)} seeds"
    tuned = vs_random[(vs_random["protocol"] == "finetune") & (vs_random["fraction"] <= 10)]
    for r in tuned.itertuples():
        ci = "" if r.pairs < 2 else f" [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}], " + ("real" if r.real else "noise")
        line += f". Fine-tuning at {r.fraction:g} %: {r.diff_mean:+.3f}{ci} ({int(r.pairs)} seeds)"
    return line + "." + (f" {warning[0].upper()}{warning[1:]}" if warning else "")


# What benchmarks/ssl_learning_curve.py found (benchmarks/README.md); the demo quotes it when its
# own budget is too short to show a gain. Measured, not assumed: update it with the benchmark.
CROSSOVER_NOTE = ("320-640 steps of 64 pairs for BarlowTwins at the cpu preset's rates (learning-curve probe at 10 % labels, "
                  "valid / test: 0.320 / 0.306 at step 320 and 0.374 / 0.337 at step 640 of a 1000-step schedule, against "
                  "random initialisation's 0.270 / 0.283)")


def run_demo(out: Path, *, plan: str | DemoPlan = "full", resume: bool = False, overwrite: bool = False,
             seeds: list[int] | None = None) -> Path:
    """Run the demo ``plan`` (``quick``, ``full``, ``long`` or a :class:`DemoPlan`) into ``out``;
    returns ``out/results.csv``. Prints the table, the verdict at <= 10 % labels, and the
    ``sonossl predict`` / ``sonossl export`` commands for the model it keeps."""
    import pandas as pd

    from sonossl.config import validated
    from sonossl.data.synthetic import synthesize
    from sonossl.models.backbones import imagenet_available
    from sonossl.models.init import health_line
    from sonossl.study.grid import StudySpec, expand
    from sonossl.study.report import format_table
    from sonossl.study.stats import load_results, paired_differences, summarise
    from sonossl.study.runner import run_study

    if isinstance(plan, str):
        if plan not in PLANS:
            raise SonosslError(f"demo plan {plan!r}: expected one of {', '.join(PLANS)}")
        plan = PLANS[plan]
    if seeds:
        plan = replace(plan, seeds=tuple(seeds))
    out = claim_output_dir(out, command="demo", resume=resume, overwrite=overwrite)
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
    summary = run_study(study, out, workers=DEMO_WORKERS, resume=True, save_models="finetune",
                        log=lambda m: print(m, flush=True), command="demo")
    if summary.failed or summary.blocked:
        raise SonosslError(f"demo: {len(summary.failed)} runs failed ({next(iter(summary.failed.values()), '')}); "
                           f"see {out / 'logs'}; rerun with --resume")

    pretrain_dir = out / "pretrain" / study.pretrains[0].name
    epochs = [json.loads(line) for line in open(pretrain_dir / "stats.jsonl") if '"kind": "epoch"' in line]
    knn = [e["knn10_accuracy"] for e in epochs if "knn10_accuracy" in e]
    ran = json.loads((pretrain_dir / "summary.json").read_text())
    df = load_results(out / "results.csv")
    diffs = paired_differences(df)
    best = keep_best_model(out, pd.read_csv(out / "runs.csv"))
    print()
    print(format_table(summarise(df), diffs))
    print(f"\nlinear probe: seeds {list(plan.seeds)}; fine-tuning: seeds {list(plan.finetune_seeds)}, "
          f"{plan.finetune_epochs} epochs at batch 32, {plan.finetune_schedule} learning rate"
          + ("" if plan.finetune_select else f" from {FINETUNE_LR:g} for each init") + ", "
          f"{'with' if plan.finetune_vflip else 'no'} vertical flips"
          + "".join(f"; {name} {key} chosen per init on valid among {values}"
                    for name, grid in (("probe", plan.linear_select), ("fine-tuning", plan.finetune_select))
                    for key, values in grid.items())
          + "; 95 % CIs are Student t over seeds; 'real' = the paired CI excludes zero.")
    print(f"BarlowTwins pretraining: {ran['steps']} steps of {plan.pretrain_steps} planned in {ran['wall_time_s']:.0f} s "
          f"(stopped by {ran['stopped_by']})")
    print(f"precision: {precision_line(plan)}")
    if knn:
        ref = next((e["knn10_random"] for e in reversed(epochs) if "knn10_random" in e), None)
        print("BarlowTwins kNN accuracy (k=10, valid) by epoch: " + " ".join(f"{k:.2f}" for k in knn)
              + (f"; random initialisation: {ref:.2f}" if ref is not None else ""))
    print("verdict: " + verdict(diffs, plan, ran["steps"], health_line(METHOD, ran)))
    print(f"total {time.time() - t_start:.0f} s this invocation; per-run times in {out / 'study.db'}")
    print(f"wrote {out / 'results.csv'}, {out / 'summary.csv'}, {out / 'differences.csv'}, {summary.report}")
    if best is not None:
        clip = next(iter(sorted((data / "videos").glob("*.dcm"))), None)
        print(f"kept the best fine-tuned model (by validation score): {best / 'model.pt'}")
        print("use it:")
        print(f"  sonossl predict --model {best} {clip or data / 'videos'} --out {out / 'predictions.csv'}")
        print(f"  sonossl export --model {best} --format onnx")
    return out / "results.csv"
