"""``pretrain --tune lr``: the learning rate chosen on the user's own data before the run.

A recipe tuned on one data set can hurt on another (docs/methods.md, "Choosing the rate on your
data"), so the sweep runs on the data at hand:

1. One candidate per factor of ``tune_factors``: the paper preset's base rates of the method
   (``lr_weights``, ``lr_biases``) times the factor, everything else as configured. Each trains
   ``tune_share`` of the run's optimiser steps **on the full run's schedule** (warm-up and cosine
   over the whole run), in ``RUN/tune/lr-x<factor>/``, a run folder of its own.
2. Each is scored by a criterion that reads no test label: the kNN accuracy of the backbone's
   features on ``--monitor-labels``' valid split (train images as the memory) where labels are
   given, else RankMe (the effective rank of the features of the store's val frames; Garrido et
   al., ICML 2023). Both are recorded for every candidate, so the two choices can be compared. A
   candidate that diverged (NaN/inf) or collapsed is out of the running.
3. The winner's run goes on from its last step to the full budget in ``RUN/`` itself (its
   checkpoint and curve copied there), so the sweep costs ``(len(tune_factors) - 1) x
   tune_share`` of a run, not ``len(tune_factors)`` runs.

``RUN/tune/choice.json`` and ``summary.json``'s ``tune`` hold every candidate's rates, score,
health and wall time. Resumable: a scored candidate is not trained again, a chosen sweep is not
redone.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from pytorch_lightning.callbacks import Callback

from sonossl.config import PretrainConfig, read_preset, resolve_image_size
from sonossl.data.framestore import FrameStore
from sonossl.errors import DivergenceError, SonosslError
from sonossl.methods.monitors import Monitors
from sonossl.methods.runfolder import CKPT_NAME
from sonossl.models.backbones import build_encoder
from sonossl.models.init import flagged
from sonossl.outputs import atomic_write_text, claim_output_dir

RunOne = Callable[..., Path]  # train.run_single(cfg, *, resume, overwrite, progress, callbacks, first)


class StopAt(Callback):
    """Stop a run after ``share`` of its optimiser steps, its schedule unchanged (a candidate is
    the start of the run it would become). First in the callbacks, so the checkpoint of that
    batch is written (``RunCheckpoint`` saves at a stopping batch)."""

    def __init__(self, share: float):
        self.share = share

    def stop_step(self, trainer) -> int:
        return max(1, math.ceil(self.share * int(trainer.estimated_stepping_batches)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.stop_step(trainer):
            trainer.should_stop = True


def base_rates(method: str) -> tuple[float, float]:
    """The paper preset's ``(lr_weights, lr_biases)`` of ``method``: what the factors multiply."""
    paper = read_preset("paper", method)
    return float(paper["lr_weights"]), float(paper["lr_biases"])


def candidates(cfg: PretrainConfig) -> list[dict[str, Any]]:
    """One ``{factor, lr_weights, lr_biases, name}`` per factor, in the declared order."""
    w, b = base_rates(cfg.method)
    return [{"factor": f, "lr_weights": w * f, "lr_biases": b * f, "name": f"lr-x{f:g}"} for f in cfg.tune_factors]


def criterion(cfg: PretrainConfig) -> str:
    return "knn10_accuracy" if cfg.monitor_labels is not None else "rankme"


def choose(scored: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The candidate with the highest ``key`` among the healthy ones (all of them when none is),
    the first declared on a tie; a candidate without a score (diverged) never wins."""
    valid = [c for c in scored if c.get(key) is not None]
    if not valid:
        raise SonosslError(f"tune: every candidate diverged ({', '.join(c['name'] for c in scored)}); "
                           "give smaller tune_factors")
    healthy = [c for c in valid if not c["flags"]] or valid
    return max(healthy, key=lambda c: c[key])  # max keeps the first of equals


def _score(run: Path, monitors: Monitors) -> dict[str, Any]:
    """The monitors' figures of the candidate's backbone, and its health flags."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    encoder = build_encoder(cfg["backbone"], run / "backbone.pt").eval()
    logs = monitors.measure(encoder, torch.device("cpu"), cfg["backbone"])
    return {**{k: v for k, v in logs.items() if k != "collapse_ref"}, "steps": summary["steps"],
            "wall_time_s": summary["wall_time_s"], "flags": [f["kind"] for f in flagged(summary)]}


def _run_candidate(cfg: PretrainConfig, cand: dict[str, Any], run_one: RunOne, tune_dir: Path, monitors: Monitors,
                   progress: bool) -> dict[str, Any]:
    run = tune_dir / cand["name"]
    score_file = run / "score.json"
    if score_file.is_file():
        return json.loads(score_file.read_text())
    ccfg = cfg.model_copy(update={"lr_weights": cand["lr_weights"], "lr_biases": cand["lr_biases"], "tune": [],
                                  "out": run})
    if progress:
        print(f"tune: {cand['name']} (lr_weights {cand['lr_weights']:.4g}, lr_biases {cand['lr_biases']:.4g}), "
              f"{cfg.tune_share:.0%} of the run", flush=True)
    try:
        run_one(ccfg, resume=True, overwrite=False, progress=False, first=(StopAt(cfg.tune_share),))
        result = {**cand, **_score(run, monitors)}
    except DivergenceError as exc:
        result = {**cand, "diverged": str(exc), "flags": ["diverged"]}
    atomic_write_text(score_file, json.dumps(result, indent=2) + "\n")
    return result


def _sweep(cfg: PretrainConfig, run_one: RunOne, out: Path, progress: bool) -> dict[str, Any]:
    choice_file = out / "tune" / "choice.json"
    if choice_file.is_file():
        return json.loads(choice_file.read_text())
    monitors = Monitors(FrameStore(cfg.frames), _image_size(cfg), cfg.monitor_labels)
    scored = [_run_candidate(cfg, c, run_one, out / "tune", monitors, progress) for c in candidates(cfg)]
    key = criterion(cfg)
    won = choose(scored, key)
    record = {"criterion": key, "share": cfg.tune_share, "candidates": scored, "chosen": won["name"],
              "lr_weights": won["lr_weights"], "lr_biases": won["lr_biases"],
              "tune_wall_time_s": round(sum(c.get("wall_time_s", 0.0) for c in scored), 3)}
    # the label-free choice beside the probe's, where both exist (how often they agree: docs/methods.md)
    if key != "rankme" and any(c.get("rankme") is not None for c in scored):
        record["rankme_choice"] = choose(scored, "rankme")["name"]
        record["choices_agree"] = record["rankme_choice"] == won["name"]
    atomic_write_text(choice_file, json.dumps(record, indent=2) + "\n")
    return record


def _image_size(cfg: PretrainConfig) -> int:
    return resolve_image_size(cfg.image_size, stored=FrameStore(cfg.frames).frame_size)


def _continue_winner(out: Path, winner: Path) -> None:
    """The winner's checkpoint and curve become the run's, unless the run has gone on already."""
    ckpt = out / "checkpoints" / CKPT_NAME
    if ckpt.is_file():
        return
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(winner / "stats.jsonl", out / "stats.jsonl")
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.copyfile(winner / "checkpoints" / CKPT_NAME, tmp)
    tmp.replace(ckpt)  # last: a crash before it leaves no checkpoint, and this runs again


def tune_then_run(cfg: PretrainConfig, run_one: RunOne, inputs: list, *, resume: bool, overwrite: bool,
                  progress: bool, callbacks: list | None) -> Path:
    """The sweep (module docstring), then the winner's run to its end in ``cfg.out``."""
    if cfg.frames is None or cfg.out is None:
        raise SonosslError("frames and out: required")
    if cfg.world_size > 1 or cfg.launcher != "local":
        raise SonosslError("tune: runs in one local process; tune on one device, then pass the chosen "
                           "lr_weights/lr_biases to the multi-device run")
    out = claim_output_dir(Path(cfg.out), command="pretrain", inputs=inputs, resume=resume, overwrite=overwrite)
    record = _sweep(cfg, run_one, out, progress)
    if progress:
        print(f"tune: chose {record['chosen']} on {record['criterion']} "
              f"({', '.join(_said(c, record['criterion']) for c in record['candidates'])})", flush=True)
    _continue_winner(out, out / "tune" / record["chosen"])
    final = cfg.model_copy(update={"lr_weights": record["lr_weights"], "lr_biases": record["lr_biases"]})
    run_one(final, resume=True, overwrite=False, progress=progress, callbacks=callbacks)
    summary_file = out / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary["tune"] = record
    atomic_write_text(summary_file, json.dumps(summary, indent=2) + "\n")
    return out


def _said(c: dict[str, Any], key: str) -> str:
    value = c.get(key)
    return f"{c['name']} {'diverged' if value is None else f'{value:.3f}'}"
