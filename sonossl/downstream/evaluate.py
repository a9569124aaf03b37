"""``sonossl evaluate``: the limited-label protocol over inits x protocols x fractions x seeds.

Everything that can be wrong with the input (splits, classes, fractions, the init checkpoint) is
checked before the output folder is created, so bad input leaves nothing behind. Each finished
run appends its row to ``results.csv`` (rewritten atomically); ``--resume`` skips the rows
already there, so an interrupted evaluation loses at most the run in progress.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sonossl.config import BASELINE_INITS, LINEAR_SETTINGS, EvaluateConfig, dump_config, resolve_image_size
from sonossl.data.labelled import LabelledData, load_labelled
from sonossl.downstream.classifier import Classifier, FitSettings, finetune_augment, fit, predict_logits
from sonossl.downstream.modelfile import save_model
from sonossl.downstream.metrics import per_class_report, save_confusion_png, scores
from sonossl.downstream.protocol import RESULT_COLUMNS, selection_label, stratified_subset
from sonossl.errors import SonosslError
from sonossl.models.devices import accelerator_device
from sonossl.models.fastpath import choose as choose_fast_path
from sonossl.models.init import InitSpec, resolve_init
from sonossl.outlock import check_apart
from sonossl.outputs import atomic_write, atomic_write_csv, atomic_write_text, claim_output_dir
from sonossl.runlog import LOG_DIR, make_logger, scalars



def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def evaluation_image_size(image_size: int | None, init: InitSpec, say: Callable[[str], None] | None = print) -> int:
    """The evaluation's image size (:func:`~sonossl.data.framestore.resolve_image_size`: the one
    asked for, else the pretraining's), with a one-line note through ``say`` when the one asked
    for differs from the init's pretraining size."""
    if image_size and init.image_size and image_size != init.image_size and say is not None:
        say(f"note: image_size {image_size} px differs from the {init.image_size} px {init.label} was pretrained at")
    return resolve_image_size(image_size, pretrained=init.image_size)


def run_key(label: str, protocol: str, fraction: float, seed: int) -> str:
    return f"{label}_{protocol}_f{fraction:g}_s{seed}"


def draw_subsets(cfg: EvaluateConfig, data: LabelledData, init: InitSpec, cache: dict | None, data_key: tuple,
                 device: str) -> dict[tuple[float, int], np.ndarray]:
    """``{(fraction, seed): indices into the train split}``: the stratified random draw, or the
    ``cfg.selection`` strategy on the features of ``cfg.selection_init`` (default the init's own)."""
    y_train = data.train.labels.numpy()
    if cfg.selection == "random":
        return {(f, s): stratified_subset(y_train, f, s, data.class_names, str(data.train.source))
                for s in cfg.seeds for f in cfg.fractions}
    from sonossl.downstream.protocol import selected_subsets
    from sonossl.models.features import check_features, features

    spec = init if cfg.selection_init is None else resolve_init(
        cfg.selection_init, cfg.backbone if cfg.selection_init in BASELINE_INITS else None, cfg.imagenet_weights)
    cache = cache if cache is not None else {}

    def embed(seed: int):
        key = ("selection-features", spec.source, spec.backbone, data_key, seed if spec.source == "random" else None)
        if key not in cache:
            torch.manual_seed(seed)  # a random init: the encoder the classifier of this seed starts from
            cache[key] = features(spec.build(cfg.imagenet_weights).to(device).eval(), data.train.images,
                                  torch.device(device)).numpy()
            check_features(cache[key], f"--selection-init {cfg.selection_init or cfg.init}")
        return cache[key]

    return selected_subsets(embed, len(y_train), cfg.fractions, cfg.seeds, cfg.selection, ladder=cfg.selection_fractions,
                            classes=len(data.class_names), source=str(data.train.source))


@dataclass
class _Run:
    """One (protocol, fraction, seed) run of an evaluation: everything the grid shares."""

    cfg: EvaluateConfig
    init: InitSpec
    data: object  # LabelledData
    data_key: tuple
    device: str
    amp: torch.dtype | None
    cache: dict
    channels_last: bool = False


def _labelled(cfg: EvaluateConfig, cache: dict | None):
    """The labelled set at ``cfg.image_size`` (from ``cache`` when it holds it) and its cache key."""
    data_key = ("data", str(cfg.labels), str(cfg.train_csv), str(cfg.val_csv), str(cfg.test_csv), cfg.image_size)
    data = cache.get(data_key) if cache is not None else None
    if data is None:
        data = load_labelled(cfg.labels, train_csv=cfg.train_csv, val_csv=cfg.val_csv, test_csv=cfg.test_csv, size=cfg.image_size,
                             allow_outside_root=cfg.allow_outside_root)
        if cache is not None:  # one labelled set at a time; features of up to 8 inits
            for k in [k for k in cache if k[0] == "data" or (k[0] in ("features", "selection-features") and k[3] != data_key)]:
                del cache[k]
            cache[data_key] = data
    return data, data_key


def _features(r: _Run, model: Classifier, seed: int) -> dict[str, torch.Tensor]:
    """The frozen backbone's features of each split (batch, dim), computed once per backbone: a
    pretrained or ImageNet one is shared by every fraction and seed; a random one is drawn per seed."""
    key = ("features", r.init.source, r.init.backbone, r.data_key, seed if r.init.source == "random" else None)
    features = r.cache.get(key)
    if features is None:
        enc = model.encoder.to(r.device)
        features = {s.name: predict_logits(enc, s.images, 256, r.device, r.amp) for s in (r.data.train, r.data.valid, r.data.test)}
        feats = [k for k in r.cache if k[0] == "features"]
        for k in feats[:max(0, len(feats) - 7)]:
            del r.cache[k]
        r.cache[key] = features
    return features


def candidates(cfg: EvaluateConfig, protocol: str) -> list[tuple[dict, EvaluateConfig]]:
    """``(chosen, settings)`` per combination of ``cfg.select_on_valid`` a run of ``protocol`` tries,
    in declared order (a linear probe varies :data:`~sonossl.config.LINEAR_SETTINGS` only); one
    ``({}, cfg)`` without a grid."""
    keys = [k for k in cfg.select_on_valid if protocol == "finetune" or k in LINEAR_SETTINGS]
    combos = [dict(zip(keys, values)) for values in itertools.product(*(cfg.select_on_valid[k] for k in keys))]
    return [(c, cfg.model_copy(update=c)) for c in combos if c] or [({}, cfg)]


def chosen_text(chosen: dict) -> str:
    """``lr=0.0003;lp_ft=True``: the ``chosen`` column of results.csv ('' without a grid)."""
    return ";".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())


def _test_logits(r: _Run, protocol: str, model: Classifier, seed: int) -> torch.Tensor:
    """The test split's logits (n_test, classes), scored once, by the selected classifier."""
    if protocol == "linear":
        return predict_logits(model.head, _features(r, model, seed)["test"], 256, r.device, r.amp)
    return predict_logits(model, r.data.test.images, 256, r.device, r.amp)


class _Curves:
    """A run's training curves to its logger (``RUN/tensorboard``, one sub-run per candidate of a
    grid): ``stage(name)`` is the ``on_eval`` of :func:`fit` for that stage (linear, finetune),
    each validation pass logged under ``<stage>/<key>`` at its optimiser step."""

    def __init__(self, kind: str, run_dir: Path | None, chosen: dict):
        self.logger = None if run_dir is None else make_logger(kind, run_dir, version=chosen_text(chosen))

    def stage(self, name: str):
        if self.logger is None:
            return None
        return lambda row: self.logger.log_metrics(scalars(row, name), step=row["step"])

    def close(self) -> None:
        if self.logger is not None:
            self.logger.finalize("success")


def _select(r: _Run, protocol: str, seed: int, idx: torch.Tensor, run_dir: Path | None = None):
    """Train every candidate of ``cfg.select_on_valid`` on ``idx``; keep the best on valid.
    Returns (chosen, classifier, fit result, [each candidate's chosen values and valid score])."""
    best, tried = None, []
    for chosen, cfg in candidates(r.cfg, protocol):
        curves = _Curves(r.cfg.logger, run_dir, chosen)
        model, result = _train(replace(r, cfg=cfg), protocol, seed, idx, curves)
        curves.close()
        tried.append({**chosen, "best_val_balanced_accuracy": result.best_val_balanced_accuracy})
        if best is None or result.best_val_balanced_accuracy > best[2].best_val_balanced_accuracy:
            best = (chosen, model, result)
        del model
    return (*best, tried)


def _train(r: _Run, protocol: str, seed: int, idx: torch.Tensor, curves: _Curves | None = None):
    """Train one classifier on the subset ``idx`` of the train split with ``r.cfg``; returns the
    classifier (holding its best-validation weights) and the fit result; ``curves`` logs it."""
    curves = curves or _Curves("none", None, {})
    cfg, data, n_classes = r.cfg, r.data, len(r.data.class_names)
    torch.manual_seed(seed)
    linear = FitSettings(lr=cfg.lr, lr_schedule=cfg.lr_schedule, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                         seed=seed, device=r.device, amp_dtype=r.amp, epochs=cfg.linear_epochs, max_evals=cfg.val_evals)
    model = Classifier(r.init.build(cfg.imagenet_weights), n_classes, cfg.dropout)
    if r.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if protocol == "linear" or cfg.lp_ft:
        features = _features(r, model, seed)
        model.encoder.requires_grad_(False)
        model.head[0].fit(features["train"][idx])
        result = fit(model.head, features["train"][idx], data.train.labels[idx], features["valid"], data.valid.labels,
                     n_classes, linear, on_eval=curves.stage("linear"))
        if protocol == "linear":
            return model, result
        model.encoder.requires_grad_(True)  # LP-FT: fine-tune everything from the probe's head (and its standardisation)
    # the step budget bounds the expensive protocol only
    settings = replace(linear, epochs=cfg.epochs, max_steps=cfg.max_steps, min_steps=cfg.min_steps,
                       head_lr_mult=cfg.head_lr_mult, freeze_bn=cfg.freeze_bn)
    augment = finetune_augment(cfg.hflip, cfg.rotate, cfg.vflip) if cfg.augment else None
    result = fit(model, data.train.images[idx], data.train.labels[idx], data.valid.images, data.valid.labels, n_classes,
                 settings, augment, on_eval=curves.stage("finetune"))
    return model, result


def _write_run(run_dir: Path, r: _Run, key: str, idx: torch.Tensor, model: Classifier, run_info: dict,
               y_true, y_pred, probs, metrics: dict, save_models: bool) -> None:
    """A run's folder: subset, history, per-class report, confusion matrix, predictions, model.pt, run.json."""
    data = r.data
    run_dir.mkdir(exist_ok=True)
    atomic_write_text(run_dir / "subset.json", json.dumps({"seed": run_info["seed"], "fraction": run_info["fraction"],
                                                     "indices": idx.tolist(),
                                                     "image_paths": [data.train.paths[j] for j in idx.tolist()]}))
    atomic_write_text(run_dir / "report.json", json.dumps(per_class_report(y_true, y_pred, data.class_names), indent=1))
    save_confusion_png(y_true, y_pred, data.class_names, run_dir / "confusion.png", key)
    with atomic_write(run_dir / "predictions.csv", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_path", "true", "predicted", *[f"p_{c}" for c in data.class_names]])
        for path, t, p, pr in zip(data.test.paths, y_true, y_pred, probs):
            w.writerow([path, data.class_names[t], data.class_names[p], *[f"{v:.5f}" for v in pr]])
    if save_models:
        save_model(run_dir / "model.pt", model.cpu(), backbone=r.init.backbone, class_names=data.class_names,
                   image_size=r.cfg.image_size, dropout=r.cfg.dropout, init=r.init.label, metrics=metrics, run=run_info,
                   train_counts=data.summary())
    atomic_write_text(run_dir / "run.json", json.dumps({**run_info, **metrics}, indent=1))


def _path(init: str | None) -> str | None:
    """An init given as a file or folder; None for one given by name (random, imagenet)."""
    return None if init in BASELINE_INITS else init


def evaluate_inputs(cfg: EvaluateConfig) -> list[tuple[str, Path | str | None]]:
    """What an evaluation reads, which its folder must stay apart from."""
    return [("--labels", cfg.labels), ("--train-csv", cfg.train_csv), ("--val-csv", cfg.val_csv),
            ("--test-csv", cfg.test_csv), ("--init", _path(cfg.init)), ("--selection-init", _path(cfg.selection_init)),
            ("--imagenet-weights", cfg.imagenet_weights)]


def valid_score(cfg: EvaluateConfig, cache: dict | None = None) -> dict[str, Any]:
    """How good ``cfg.init``'s frozen features are, on the valid split alone: the linear probe
    (``cfg``'s settings, its ``select_on_valid`` grid included) on every train label, per seed of
    ``cfg.seeds``. Returns ``{"valid_balanced_accuracy": mean over seeds, "per_seed": [...]}``;
    nothing is written and the test split is not scored, so choosing among inits by it leaves the
    test split to be scored once, by the choice."""
    init = resolve_init(cfg.init, cfg.backbone, cfg.imagenet_weights)
    cfg = cfg.model_copy(update={"image_size": evaluation_image_size(cfg.image_size, init, None)})
    data, data_key = _labelled(cfg, cache)
    device = accelerator_device(cfg.accelerator)
    fast = choose_fast_path(init.backbone, cfg.image_size, device, cfg.precision)
    r = _Run(cfg, init, data, data_key, device, fast.amp_dtype, cache if cache is not None else {}, fast.channels_last)
    idx = torch.arange(len(data.train.labels))
    per_seed = [_select(r, "linear", seed, idx)[2].best_val_balanced_accuracy for seed in cfg.seeds]
    return {"valid_balanced_accuracy": float(np.mean(per_seed)), "per_seed": per_seed}


def evaluate(cfg: EvaluateConfig, *, resume: bool = False, overwrite: bool = False,
             progress: Callable[[str], None] | None = print, save_models: bool = True,
             cache: dict | None = None) -> list[dict[str, str]]:
    """Run the grid of ``cfg``; returns the rows of ``OUT/results.csv`` as text, as a csv reader
    gives them (:data:`RESULT_COLUMNS`), those of earlier runs of a resumed folder included.

    cache: a dict kept by a caller that evaluates many single runs in one process (the study
    runner): the decoded labelled set and each init's frozen features are kept there and reused,
    instead of being recomputed per run. Results are the same with or without it.
    """
    if cfg.out is None:
        raise SonosslError("evaluate: --out is required")
    check_apart(cfg.out, evaluate_inputs(cfg))  # first: a refusal here must not depend on the other checks
    init = resolve_init(cfg.init, cfg.backbone, cfg.imagenet_weights)
    if init.health and progress is not None:
        progress(init.health)  # a diverged or collapsed pretraining: said before its numbers are read
    cfg = cfg.model_copy(update={"image_size": evaluation_image_size(cfg.image_size, init, progress)})
    data, data_key = _labelled(cfg, cache)
    device = accelerator_device(cfg.accelerator)
    subsets = draw_subsets(cfg, data, init, cache, data_key, device)
    fast = choose_fast_path(init.backbone, cfg.image_size, device, cfg.precision)
    if progress is not None and cfg.precision == "auto":
        progress(f"precision: {fast}")
    if init.source not in BASELINE_INITS:
        init.build(cfg.imagenet_weights)  # a checkpoint that will be refused is refused before --out exists
    out = claim_output_dir(cfg.out, command="evaluate", inputs=evaluate_inputs(cfg), resume=resume, overwrite=overwrite)
    dump_config(cfg, out / "config.yaml")
    results_path = out / "results.csv"
    rows = read_results(results_path)
    done = {run_key(selection_label(r["init"], r.get("selection")), r["protocol"], float(r["fraction"]), int(r["seed"]))
            for r in rows}
    label = selection_label(init.label, cfg.selection)
    # within this call at least: features once per backbone
    r = _Run(cfg, init, data, data_key, device, fast.amp_dtype, cache if cache is not None else {}, fast.channels_last)
    plan = [(p, f, s) for p in cfg.protocol for f in cfg.fractions for s in cfg.seeds]
    for i, (protocol, fraction, seed) in enumerate(plan, start=1):
        key = run_key(label, protocol, fraction, seed)
        if key in done:
            continue
        t0 = time.time()
        idx = torch.from_numpy(subsets[(fraction, seed)])
        missed = [c for k, c in enumerate(data.class_names) if not (data.train.labels[idx] == k).any()]
        (out / key).mkdir(exist_ok=True)
        for stale in LOG_DIR.values():  # the curves of a run killed before it was recorded: written again
            shutil.rmtree(out / key / stale, ignore_errors=True)
        chosen, model, result, tried = _select(r, protocol, seed, idx, out / key)
        logits = _test_logits(r, protocol, model, seed)
        y_true, probs = data.test.labels.numpy(), torch.softmax(logits, 1).numpy()
        y_pred = probs.argmax(1)
        metrics = scores(y_true, y_pred, len(data.class_names))
        run_info = {"init": init.label, "init_source": init.source, "backbone": init.backbone, "protocol": protocol,
                    "fraction": fraction, "seed": seed, "n_train": int(len(idx)), "selection": cfg.selection,
                    "classes_missed": missed, "best_epoch": result.best_epoch,
                    "epochs": result.epochs, "steps": result.steps,
                    "best_val_balanced_accuracy": result.best_val_balanced_accuracy, "wall_s": round(time.time() - t0, 2),
                    "device": device, **({"chosen": chosen, "candidates": tried} if len(tried) > 1 else {})}
        atomic_write_text(out / key / "history.json", json.dumps(result.history))
        _write_run(out / key, r, key, idx, model, run_info, y_true, y_pred, probs, metrics, save_models)
        rows.append({"init": init.label, "protocol": protocol, "fraction": f"{fraction:g}", "seed": str(seed),
                     "n_train": str(len(idx)), **{k: f"{v:.6f}" for k, v in metrics.items()}, "selection": cfg.selection,
                     "classes_missed": str(len(missed)), "chosen": chosen_text(chosen)})  # as read back from the csv
        atomic_write_csv(results_path, rows, RESULT_COLUMNS)  # the run counts as done only now
        if progress:
            progress(f"[{i}/{len(plan)}] {key}: n_train={len(idx)} macro_f1={metrics['macro_f1']:.3f} "
                     f"bal_acc={metrics['balanced_accuracy']:.3f}" + (f" chosen on valid: {chosen_text(chosen)}" if chosen else "")
                     + f" ({time.time() - t0:.1f}s)")
    return rows
