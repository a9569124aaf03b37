"""The Python API: each command of the command line as one function, for notebooks and scripts.

The command line is a thin layer over these functions: the same typed configs
(:mod:`sonossl.config`), the same checks, the same outputs. Settings are keyword arguments named
as the config fields (the flags without ``--``, ``_`` for ``-``); ``config`` is a YAML/JSON file
or a dict of the same settings, which keyword arguments override. Bad input raises
:class:`~sonossl.errors.SonosslError` with one line naming the setting.

    import sonossl

    sonossl.synth("data", videos=12, frames=8, size=48)
    sonossl.ingest(["data/videos"], "frames.h5", frame_skip=2, size=32)
    run = sonossl.pretrain(method="simclr", frames="frames.h5", out="runs/simclr", max_steps=20)
    results = sonossl.evaluate(labels="data/labelled", init=run, out="evals/simclr", fractions=[10, 100])
    sonossl.report("evals/simclr")
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from sonossl.config import (BASELINE_INITS, DemoConfig, EmbedConfig, EvaluateConfig, ExportConfig, IngestConfig, PredictConfig,
                            LabelsImportConfig, PretrainConfig, SelectConfig, StudyRunConfig, SynthConfig, build_config, read_config_file,
                            read_preset)
from sonossl.errors import SonosslError
from sonossl.outlock import check_apart, lock_output, releasing

ConfigSource = str | Path | dict[str, Any] | None


def _command(fn: Callable) -> Callable:
    """A command of the API: the output locks it takes are released when it returns or raises,
    so a notebook that runs it keeps no finished output locked (:mod:`sonossl.outlock`)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with releasing():
            return fn(*args, **kwargs)
    return run


def _model_file(model: Path) -> Path:
    return Path(model) / "model.pt" if Path(model).is_dir() else Path(model)


def _claim_file(out: Path, command: str, inputs: list[tuple[str, Path | str | None]]) -> None:
    """An output file (or its folder of side files) is apart from the inputs, with one writer."""
    check_apart(out, inputs)
    lock_output(out, command)


def _layer(config: ConfigSource) -> dict[str, Any]:
    if config is None:
        return {}
    return dict(config) if isinstance(config, dict) else read_config_file(config)


def _source(config: ConfigSource, command: str) -> str:
    return str(config) if isinstance(config, (str, Path)) else command


def pretrain_config(config: ConfigSource = None, *, preset: str | None = None, **options: Any) -> PretrainConfig:
    """The resolved :class:`PretrainConfig`: model defaults < ``preset`` (default ``cpu``; a
    ``preset:`` key of ``config`` when not given) with its recipe for the method < ``config`` <
    ``options``."""
    layer = _layer(config)
    preset = preset or layer.pop("preset", None) or "cpu"
    method = options.get("method") or layer.get("method") or PretrainConfig.model_fields["method"].default
    return build_config(PretrainConfig, read_preset(preset, method), layer, options, source=_source(config, "pretrain"))


@_command
def synth(out: str | Path, *, overwrite: bool = False, **options: Any) -> dict:
    """Write the synthetic fetal-echo dataset (``videos/``, ``labelled/``) into ``out``; returns
    its summary (``videos``: clip paths, ``labelled``: images per split and class)."""
    from sonossl.data.synthetic import synthesize
    from sonossl.outputs import claim_output_dir

    cfg = build_config(SynthConfig, {"out": out, **options}, source="synth")
    claim_output_dir(cfg.out, command="synth", overwrite=overwrite, can_resume=False)
    return synthesize(cfg.out, videos=cfg.videos, frames=cfg.frames, size=cfg.size, seed=cfg.seed, fmt=cfg.format,
                      labelled_per_class=cfg.labelled)


@_command
def ingest(sources: list[str | Path] | str | Path, out: str | Path, *, resume: bool = False, overwrite: bool = False,
           progress: bool = True, **options: Any):
    """Ingest scan files or folders into the frame store ``out`` (an ``IngestSummary``)."""
    from sonossl.data.ingest import ingest as run

    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    cfg = build_config(IngestConfig, {"sources": sources, "out": out, **options}, source="ingest")
    return run(cfg, resume=resume, overwrite=overwrite, progress=progress)


@_command
def pretrain(config: ConfigSource = None, *, preset: str | None = None, resume: bool = False, overwrite: bool = False,
             progress: bool = True, **options: Any) -> Path:
    """Self-supervised pretraining (settings: :class:`PretrainConfig`); returns the run folder,
    which holds ``backbone.pt`` (a torchvision state_dict), ``stats.jsonl`` and ``config.yaml``.
    With ``launcher`` slurm or submitit-local the run is one submitted job, waited for."""
    from sonossl.methods.train import run_pretrain

    cfg = pretrain_config(config, preset=preset, **options)
    for key in ("frames", "out"):
        if getattr(cfg, key) is None:
            raise SonosslError(f"pretrain: {key} is required (--{key})")
    if cfg.launcher != "local":  # one job of num_nodes x devices tasks; wait for it (it runs on if this stops)
        from sonossl.methods.train import submit_pretrain

        job = submit_pretrain(cfg, resume=resume, overwrite=overwrite)
        if progress:
            print(f"pretrain: submitted job {job.job_id} ({cfg.launcher}, {cfg.num_nodes} node(s) x {cfg.devices} "
                  f"task(s)); its log is in {cfg.out}/submitit/; waiting for it (Ctrl-C stops waiting, not the job)")
        try:
            return Path(job.result())
        except Exception as exc:  # the job's own error (a SonosslError in it too) arrives as text
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise SonosslError(f"pretrain job {job.job_id} failed: {last} (its log: {cfg.out}/submitit/)") from None
    return run_pretrain(cfg, resume=resume, overwrite=overwrite, progress=progress)


@_command
def evaluate(config: ConfigSource = None, *, resume: bool = False, overwrite: bool = False,
             progress: Callable[[str], None] | None = print, **options: Any) -> Path:
    """The limited-label protocol (settings: :class:`EvaluateConfig`); ``init`` may be a
    pretraining run folder as :func:`pretrain` returns. Returns the path of ``results.csv``."""
    from sonossl.downstream.evaluate import evaluate as run

    cfg = build_config(EvaluateConfig, _layer(config), options, source=_source(config, "evaluate"))
    if cfg.labels is None and cfg.train_csv is None:
        raise SonosslError("evaluate: give labels (--labels DIR) or train_csv/val_csv/test_csv")
    run(cfg, resume=resume, overwrite=overwrite, progress=progress, save_models=cfg.save_models)
    return Path(cfg.out) / "results.csv"


def load_study(study: str | Path | None = None, *, preset: str | None = None):
    """A study file (or built-in ``preset``) validated and expanded into its ``Plan``."""
    from sonossl.study.grid import load_study as load

    if study is None and preset is None:
        raise SonosslError("study: give a study file or a preset")
    return load(study, preset=preset)


@_command
def run_study(study: str | Path | None = None, out: str | Path | None = None, *, preset: str | None = None,
              resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = print, **options: Any):
    """Run a whole study (settings of the run: :class:`StudyRunConfig`); returns its
    ``StudySummary`` (``results``, ``report`` paths, ``failed`` runs)."""
    from sonossl.study.runner import run_study as run

    cfg = build_config(StudyRunConfig, {"study": study, "out": out, "preset": preset, **options}, source="study")
    if cfg.out is None:
        raise SonosslError("study: out is required (the study folder)")
    slurm = {"partition": cfg.slurm_partition, "timeout_min": cfg.slurm_timeout_min, "gpus": cfg.slurm_gpus,
             "cpus": cfg.slurm_cpus, "mem": cfg.slurm_mem}
    return run(load_study(cfg.study, preset=cfg.preset), cfg.out, workers=cfg.workers, launcher=cfg.launcher,
               resume=resume, overwrite=overwrite, imagenet_weights=cfg.imagenet_weights, save_models=cfg.save_models,
               slurm=slurm, ingest_shards=cfg.ingest_shards, ledger=cfg.ledger, log=log)


def report(folder: str | Path) -> dict[str, Path]:
    """``summary.csv``, ``differences.csv`` and ``report.html`` from ``folder/results.csv``; for a
    study ledger (``sonossl study --ledger``), ``results.csv`` too, from its records alone."""
    from sonossl.study.ledger import is_ledger
    from sonossl.study.report import write_report

    if is_ledger(Path(folder)):
        from sonossl.study.runner import report_ledger

        return report_ledger(Path(folder))
    return write_report(Path(folder))


@_command
def predict(model: str | Path, inputs: list[str | Path] | str | Path, out: str | Path = "predictions.csv", *,
            overwrite: bool = False, progress: bool = True, **options: Any):
    """The plane of every frame of ``inputs`` with an evaluate run's ``model.pt`` (a ``PredictSummary``)."""
    from sonossl.infer.predict import predict as run

    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    c = build_config(PredictConfig, {"model": model, "inputs": inputs, "out": out, **options}, source="predict")
    _claim_file(c.out, "predict", [("--model", _model_file(c.model)), *(("input", i) for i in c.inputs)])
    return run(c.model, c.inputs, c.out, smooth=c.smooth, batch_size=c.batch_size, device=c.device,
               precision=c.precision, frame_skip=c.frame_skip, crop=c.crop, overwrite=overwrite, progress=progress)


@_command
def export(model: str | Path, format: str, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
    """The classifier of ``model`` as ``torchvision``, ``torchscript`` or ``onnx``; returns the file."""
    from sonossl.infer.export import export as run

    c = build_config(ExportConfig, {"model": model, "format": format, "out": out}, source="export")
    if c.out is not None:
        _claim_file(c.out, "export", [("--model", _model_file(c.model))])
    return run(c.model, c.format, c.out, overwrite=overwrite)


@_command
def embed(model: str | Path, labels: str | Path, out: str | Path, *, overwrite: bool = False, **options: Any) -> dict:
    """A 2-D map of the model's backbone features of ``labels``, and a kNN accuracy."""
    from sonossl.infer.embed import embed as run

    c = build_config(EmbedConfig, {"model": model, "labels": labels, "out": out, **options}, source="embed")
    _claim_file(c.out, "embed", [("--model", _model_file(c.model)), ("--labels", c.labels)])
    return run(c.model, c.labels, c.out, method=c.method, split=c.split, k=c.k, seed=c.seed, device=c.device,
               precision=c.precision, overwrite=overwrite)


@_command
def select(frames: str | Path, budget: int, out: str | Path, *, overwrite: bool = False, **options: Any) -> dict:
    """Embed the candidate frames (a frame store or a folder of images) and choose ``budget`` of
    them to label (settings: :class:`SelectConfig`); writes ``out`` (``to_label.csv``, PNG crops,
    contact sheet, embedding map) and returns ``{"out", "chosen", "n_candidates", "clips", "wall_s"}``."""
    from sonossl.select.labelstudio import run_select_label_studio

    c = build_config(SelectConfig, {"frames": frames, "budget": budget, "out": out, **options}, source="select")
    _claim_file(c.out, "select", [("--frames", c.frames), ("--init", None if c.init in BASELINE_INITS else c.init),
                                    ("--salt-file", c.salt_file), ("--model", c.model)])
    return run_select_label_studio(c, overwrite=overwrite)


@_command
def labels_import(export: str | Path, selection: str | Path, *, overwrite: bool = False, **options: Any) -> dict:
    """A Label Studio JSON export of ``sonossl select --label-studio``'s tasks back to a labelled set
    (settings: :class:`LabelsImportConfig`); returns ``{"out", "round", "counts", "splits"}``."""
    from sonossl.select.labels import import_labels

    c = build_config(LabelsImportConfig, {"export": export, "selection": selection, **options}, source="labels import")
    return import_labels(c, overwrite=overwrite)


@_command
def demo(out: str | Path = "demo_out", *, resume: bool = False, overwrite: bool = False, **options: Any) -> Path:
    """The demo study on built-in synthetic data; returns the path of its ``results.csv``."""
    from sonossl.demo import run_demo

    c = build_config(DemoConfig, {"out": out, **options}, source="demo")
    return run_demo(c.out, plan="quick" if c.quick else c.plan, resume=resume, overwrite=overwrite, seeds=c.seeds)
