"""The ``sonossl`` command line: sub-commands that parse, validate and call the library.

Bad input ends in one line on stderr and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from sonossl.errors import SonosslError
from sonossl.infer.commands import add_embed_parser, add_export_parser, add_predict_parser
from sonossl.select.command import add_select_parser
from sonossl.select.strategies import STRATEGIES


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the contract: one line, exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _out_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue an existing output")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML or JSON file of options (flags override it)")


# ----------------------------------------------------------------------------------------- synth
def cmd_synth(a: argparse.Namespace) -> int:
    from sonossl.data.synthetic import synthesize
    from sonossl.outputs import claim_output_dir

    out = claim_output_dir(Path(a.out), overwrite=a.overwrite, can_resume=False)
    if len(a.labelled) != 3:
        raise SonosslError(f"--labelled: expected three counts TRAIN,VALID,TEST per class, got {a.labelled}")
    s = synthesize(out, videos=a.videos, frames=a.frames, size=a.size, seed=a.seed, fmt=a.format,
                   labelled_per_class=tuple(a.labelled))
    n_img = sum(sum(c.values()) for c in s["labelled"].values())
    print(f"synthetic dataset in {out}: {len(s['videos'])} clips in videos/ ({a.format}), {n_img} labelled images in labelled/")
    return 0


# ---------------------------------------------------------------------------------------- ingest
def cmd_ingest(a: argparse.Namespace) -> int:
    from sonossl.data.ingest import ingest

    s = ingest([Path(p) for p in a.sources], Path(a.out), frame_skip=a.frame_skip, size=a.size, crop=a.crop,
               val_fraction=a.val_fraction, workers=a.workers, resume=a.resume, overwrite=a.overwrite,
               salt=a.salt, max_frames_per_video=a.max_frames_per_video, dedup=a.dedup, progress=not a.quiet)
    print(f"{s.ok} sources ingested, {s.skipped} skipped, {s.error} errors; {s.frames_kept} frames in {s.store}; "
          f"manifest (private: maps ids to sources) {s.manifest}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    import json

    from sonossl.data.ingest import store_info

    print(json.dumps(store_info(Path(a.frames)), indent=2, default=str))
    return 0


# -------------------------------------------------------------------------------------- pretrain
def pretrain_config(a: argparse.Namespace):
    from sonossl.config import PretrainConfig, build_config, read_config_file, read_preset

    flags = {k: getattr(a, k) for k in ("method", "frames", "val_frames", "out", "backbone", "image_size", "batch_size",
                                        "epochs", "max_steps", "max_time_s", "pairs", "max_gap", "devices", "accelerator",
                                        "precision", "num_workers", "seed", "monitor_labels")}
    file_layer = read_config_file(a.config) if a.config else {}
    preset = a.preset or file_layer.pop("preset", None) or "cpu"
    method = a.method or file_layer.get("method") or PretrainConfig.model_fields["method"].default
    return build_config(PretrainConfig, read_preset(preset, method), file_layer, flags, source=str(a.config or "pretrain"))


def cmd_pretrain(a: argparse.Namespace) -> int:
    from sonossl.methods.train import run_pretrain

    cfg = pretrain_config(a)
    for key in ("frames", "out"):
        if getattr(cfg, key) is None:
            raise SonosslError(f"pretrain: --{key} is required")
    run = run_pretrain(cfg, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet)
    print(f"pretraining done: {run}/backbone.pt")
    return 0


# -------------------------------------------------------------------------------------- evaluate
def evaluate_config(a: argparse.Namespace):
    from sonossl.config import EvaluateConfig, build_config, read_config_file

    flags = {k: getattr(a, k) for k in ("labels", "train_csv", "val_csv", "test_csv", "init", "imagenet_weights", "backbone",
                                        "fractions", "seeds", "out", "image_size", "epochs", "linear_epochs", "batch_size",
                                        "max_steps", "min_steps", "lr", "accelerator", "selection", "selection_init")}
    flags["allow_outside_root"] = a.allow_outside_root or None
    flags["protocol"] = a.protocol.split(",") if a.protocol else None
    return build_config(EvaluateConfig, read_config_file(a.config) if a.config else {}, flags, source=str(a.config or "evaluate"))


def cmd_evaluate(a: argparse.Namespace) -> int:
    from sonossl.downstream.evaluate import evaluate

    cfg = evaluate_config(a)
    if cfg.labels is None and cfg.train_csv is None:
        raise SonosslError("evaluate: give --labels DIR or --train-csv/--val-csv/--test-csv")
    path = evaluate(cfg, resume=a.resume, overwrite=a.overwrite, progress=None if a.quiet else print,
                    save_models=not a.no_save_models)
    print(f"results: {path}")
    return 0


# ---------------------------------------------------------------------------------------- report
def cmd_report(a: argparse.Namespace) -> int:
    from sonossl.study.report import format_table, load_results, paired_differences, summarise, write_report

    out = Path(a.dir)
    paths = write_report(out)
    df = load_results(out / "results.csv")
    print(format_table(summarise(df), paired_differences(df)))
    print(f"\nwrote {paths['summary']}, {paths['differences']}, {paths['report']}")
    return 0


# ----------------------------------------------------------------------------------------- study
def cmd_study(a: argparse.Namespace) -> int:
    from sonossl.study.grid import load_study
    from sonossl.study.runner import run_study

    if a.study is None and a.preset is None:
        raise SonosslError("study: give STUDY.yaml or --preset")
    plan = load_study(a.study, preset=a.preset)
    if a.dry_run:
        print(plan.describe(sample=a.sample))
        for line in plan.missing_paths():
            print(f"  warning: {line}")
        return 0
    if a.out is None:
        raise SonosslError("study: --out is required (the study folder)")
    slurm = {"partition": a.slurm_partition, "timeout_min": a.slurm_timeout_min, "gpus": a.slurm_gpus,
             "cpus": a.slurm_cpus, "mem": a.slurm_mem}
    s = run_study(plan, a.out, workers=a.workers, launcher=a.launcher, resume=a.resume, overwrite=a.overwrite,
                  imagenet_weights=a.imagenet_weights, save_models=a.save_models, slurm=slurm)
    print(f"{s.ran} runs done now, {s.already_done} were already complete, {len(s.failed)} failed, "
          f"{len(s.blocked)} not started (a run they need failed)")
    for key, msg in s.failed.items():
        print(f"  failed: {key}: {msg}", file=sys.stderr)
    if s.results:
        print(f"wrote {s.results}, {s.report}")
    return 1 if s.failed or s.blocked else 0


# ------------------------------------------------------------------------------------------ demo
def cmd_demo(a: argparse.Namespace) -> int:
    from sonossl.demo import run_demo

    run_demo(Path(a.out), quick=a.quick, resume=a.resume, overwrite=a.overwrite, seeds=a.seeds)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sonossl", description="Self-supervised learning on ultrasound scan videos.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("synth", help="make the built-in synthetic fetal-echo dataset")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--videos", type=int, default=40)
    s.add_argument("--frames", type=int, default=32)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["dicom", "mp4"], default="dicom")
    s.add_argument("--labelled", type=_ints, default=[100, 20, 40], help="labelled images per class: TRAIN,VALID,TEST")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("ingest", help="scanner videos -> de-identified frame store")
    s.add_argument("sources", nargs="+", help="files or folders (searched recursively)")
    s.add_argument("--out", required=True, type=Path, help="frame store to write (FRAMES.h5)")
    s.add_argument("--frame-skip", type=int, default=5)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--crop", choices=["auto", "dicom", "none"], default="auto")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--salt", default="sonossl", help="key of the pseudonymous ids")
    s.add_argument("--max-frames-per-video", type=int)
    s.add_argument("--dedup", type=float, metavar="THRESHOLD",
                   help="drop a frame whose mean absolute difference (0-255, 32x32 grey) to the last kept frame is below THRESHOLD")
    s.add_argument("--quiet", action="store_true")
    _out_flags(s)
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("info", help="describe a frame store")
    s.add_argument("frames", type=Path)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("pretrain", help="self-supervised pretraining on a frame store")
    _config_flag(s)
    s.add_argument("--preset", choices=["cpu", "paper"], help="defaults to start from (default cpu)")
    s.add_argument("--method")
    s.add_argument("--frames", type=Path)
    s.add_argument("--val-frames", type=Path)
    s.add_argument("--out", type=Path)
    s.add_argument("--backbone")
    s.add_argument("--image-size", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--epochs", type=int)
    s.add_argument("--max-steps", type=int)
    s.add_argument("--max-time-s", type=float, help="wall-clock budget in seconds")
    s.add_argument("--pairs", choices=["augment", "temporal"])
    s.add_argument("--max-gap", type=int)
    s.add_argument("--devices", type=int)
    s.add_argument("--accelerator", choices=["auto", "cpu", "gpu"])
    s.add_argument("--precision")
    s.add_argument("--num-workers", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--monitor-labels", type=Path, help="labelled set (train.csv, valid.csv) for the per-epoch kNN monitor")
    s.add_argument("--quiet", action="store_true")
    _out_flags(s)
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("evaluate", help="limited-label evaluation of an initialisation")
    _config_flag(s)
    s.add_argument("--labels", type=Path, help="folder with train.csv, valid.csv, test.csv (or per-class folders)")
    s.add_argument("--train-csv", type=Path)
    s.add_argument("--val-csv", type=Path)
    s.add_argument("--test-csv", type=Path)
    s.add_argument("--init", help="random | imagenet | pretrain run folder | backbone.pt")
    s.add_argument("--imagenet-weights", type=Path)
    s.add_argument("--backbone")
    s.add_argument("--protocol", help="linear, finetune or linear,finetune")
    s.add_argument("--fractions", type=_floats, help="percent of the train split, e.g. 1,10,100")
    s.add_argument("--seeds", type=_ints, help="e.g. 0,1,2")
    s.add_argument("--out", type=Path)
    s.add_argument("--image-size", type=int)
    s.add_argument("--epochs", type=int)
    s.add_argument("--linear-epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--max-steps", type=int)
    s.add_argument("--min-steps", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--accelerator", choices=["auto", "cpu", "gpu"])
    s.add_argument("--selection", choices=STRATEGIES, help="which train images a fraction labels: random (the stratified "
                   "random draw, default) or a strategy choosing them on backbone features, blind to the labels")
    s.add_argument("--selection-init", help="features the --selection strategy sees: random | imagenet | pretrain run "
                   "folder | backbone.pt (default: the --init's own)")
    s.add_argument("--no-save-models", action="store_true", help="skip model.pt in each run folder")
    s.add_argument("--allow-outside-root", action="store_true",
                   help="let CSV image paths point outside the CSV's folder (refused by default)")
    s.add_argument("--quiet", action="store_true")
    _out_flags(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("report", help="summary.csv, paired differences and report.html from DIR/results.csv")
    s.add_argument("dir", type=Path)
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("study", help="a whole study (pretrainings x evaluations) from STUDY.yaml, resumable")
    s.add_argument("study", nargs="?", type=Path, help="study file (YAML); see sonossl/study/grid.py")
    s.add_argument("--preset", help="a built-in study (paper); a study file given too overrides its keys")
    s.add_argument("--out", type=Path)
    s.add_argument("--workers", type=int, default=1, help="units run at once (local: processes sharing the cores)")
    s.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local")
    s.add_argument("--dry-run", action="store_true", help="print the expanded grid and exit")
    s.add_argument("--sample", type=int, default=6, help="runs listed by --dry-run")
    s.add_argument("--imagenet-weights", type=Path)
    s.add_argument("--save-models", action="store_true", help="keep model.pt in every evaluation run folder")
    s.add_argument("--slurm-partition")
    s.add_argument("--slurm-timeout-min", type=int, default=24 * 60)
    s.add_argument("--slurm-gpus", type=int, default=1)
    s.add_argument("--slurm-cpus", type=int, default=8)
    s.add_argument("--slurm-mem", default="64G")
    _out_flags(s)
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("demo", help="synth -> ingest -> pretrain -> evaluate -> report on built-in data (CPU, minutes)")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.add_argument("--quick", action="store_true", help="fewer seeds and fractions: about 3 minutes")
    s.add_argument("--seeds", type=_ints, help="override the seeds (default 0,1,2; --quick 0,1)")
    _out_flags(s)
    s.set_defaults(func=cmd_demo)

    add_predict_parser(sub)
    add_export_parser(sub)
    add_embed_parser(sub)
    add_select_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.func(a)
    except SonosslError as exc:
        if a.debug:
            traceback.print_exc()
        print(f"sonossl {a.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sonossl {a.command}: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
