"""The ``sonossl`` command line: a thin layer over :mod:`sonossl.api`.

Every sub-command is a :class:`~sonossl.flags.Command` in :data:`COMMANDS`; its flags are
generated from its typed config (:mod:`sonossl.config`), so each setting is declared once, with
its help line (description, default and unit). Bad input ends in one line on stderr and exit
status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from sonossl import __version__, api
from sonossl.config import (DemoConfig, EmbedConfig, EvaluateConfig, ExportConfig, InfoConfig, IngestConfig, PredictConfig,
                            LabelsImportConfig, PretrainConfig, ReportConfig, SelectConfig, StudyRunConfig, SynthConfig)
from sonossl.errors import SonosslError
from sonossl.flags import Command, Names, flag_values, register


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the contract: one line, exit status 2), and a flag
    must be spelt out: an abbreviation is an error, not a guess (``--salt s`` once silently meant
    ``--salt-file s``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _settings(a: argparse.Namespace) -> dict:
    return flag_values(a, a.command_spec.config)


def cmd_synth(a: argparse.Namespace) -> int:
    s = api.synth(overwrite=a.overwrite, **_settings(a))
    n_img = sum(sum(c.values()) for c in s["labelled"].values())
    print(f"synthetic dataset in {a.out}: {len(s['videos'])} clips in videos/ ({s['format']}), "
          f"{n_img} labelled images in labelled/")
    return 0


def cmd_ingest(a: argparse.Namespace) -> int:
    s = api.ingest(resume=a.resume, overwrite=a.overwrite, progress=not a.quiet, **_settings(a))
    print(f"{s.ok} sources ingested, {s.skipped} skipped, {s.error} errors; {s.frames_kept} frames in {s.store}; "
          f"manifest (private: maps ids to sources) {s.manifest}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from sonossl.data.ingest import store_info

    print(json.dumps(store_info(a.frames), indent=2, default=str))
    return 0


def cmd_pretrain(a: argparse.Namespace) -> int:
    run = api.pretrain(a.config, preset=a.preset, resume=a.resume, overwrite=a.overwrite, progress=not a.quiet,
                       **_settings(a))
    print(f"pretraining done: {run}/backbone.pt")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    path = api.evaluate(a.config, resume=a.resume, overwrite=a.overwrite, progress=None if a.quiet else print,
                        **_settings(a))
    print(f"results: {path}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from sonossl.study.report import format_table
    from sonossl.study.stats import load_results, paired_differences, summarise

    paths = api.report(a.dir)
    df = load_results(a.dir / "results.csv")
    print(format_table(summarise(df), paired_differences(df)))
    print(f"\nwrote {paths['summary']}, {paths['differences']}, {paths['report']}")
    return 0


def cmd_study(a: argparse.Namespace) -> int:
    if a.dry_run:
        plan = api.load_study(a.study, preset=a.preset)
        print(plan.describe(sample=a.sample or StudyRunConfig.model_fields["sample"].default))
        for line in plan.missing_paths():
            print(f"  warning: {line}")
        return 0
    s = api.run_study(resume=a.resume, overwrite=a.overwrite, **_settings(a))
    print(f"{s.ran} runs done now, {s.already_done} were already complete"
          + (f" ({s.from_ledger} recorded in the ledger only)" if s.from_ledger else "")
          + f", {len(s.failed)} failed, {len(s.blocked)} not started (a run they need failed)")
    for key, msg in s.failed.items():
        print(f"  failed: {key}: {msg}", file=sys.stderr)
    if s.results:
        print(f"wrote {s.results}, {s.report}" + (f"; the ledger's report {s.ledger_report}" if s.ledger_report else ""))
    return 1 if s.failed or s.blocked else 0


def cmd_demo(a: argparse.Namespace) -> int:
    api.demo(resume=a.resume, overwrite=a.overwrite, **_settings(a))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    s = api.predict(overwrite=a.overwrite, progress=not a.quiet, **_settings(a))
    print(f"{s.sources} inputs predicted ({s.frames} frames) -> {s.csv}"
          + (f"; timelines and best frames of {s.clips} clips in {s.clips_dir}" if s.clips else "")
          + (f"; {len(s.errors)} unreadable, listed in {s.errors_csv}" if s.errors else "")
          + f"; precision: {s.precision}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from sonossl.infer.export import companion_paths

    out = api.export(overwrite=a.overwrite, **_settings(a))
    print(f"exported {a.format}: {out} (model card {companion_paths(out)[0].name})")
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    r = api.embed(overwrite=a.overwrite, **_settings(a))
    print(f"{r['method']} map of {r['n_plotted']} images: {r['png']}")
    return 0


def cmd_select(a: argparse.Namespace) -> int:
    r = api.select(overwrite=a.overwrite, **_settings(a))
    print(f"{len(r['chosen'])} of {r['n_candidates']} frames chosen from {r['clips']} clips in {r['wall_s']:.1f} s: "
          f"{r['out'] / 'to_label.csv'}, contact_sheet.png, embedding.png")
    return 0


def cmd_labels_import(a: argparse.Namespace) -> int:
    r = api.labels_import(overwrite=a.overwrite, **_settings(a))
    counts = ", ".join(f"{v} {k}" for k, v in sorted(r["counts"].items()))
    print(f"round {r['round']}: {counts}; train/valid/test now {r['splits']['train']}/{r['splits']['valid']}/"
          f"{r['splits']['test']} images in {r['out']} (every task in {r['out'] / 'labels_import.csv'})")
    return 0


def _preset_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["cpu", "paper"],
                   help="per-method recipe to start from: cpu (ResNet-18, minutes) or paper (the seed study's) "
                        "(default: cpu)")


def _method_names() -> list[str]:
    from sonossl.methods import METHODS

    return sorted(METHODS)


def _backbone_names() -> list[str]:
    from sonossl.models.backbones import BACKBONES

    return list(BACKBONES)


METHOD, BACKBONE = Names(_method_names), Names(_backbone_names)  # the registries own the names

COMMANDS = (
    Command("synth", "make the built-in synthetic fetal-echo dataset", SynthConfig, cmd_synth, output="overwrite"),
    Command("ingest", "scanner videos -> de-identified frame store", IngestConfig, cmd_ingest, positional=("sources",),
            quiet=True),
    Command("info", "describe a frame store", InfoConfig, cmd_info, positional=("frames",), output="none"),
    Command("pretrain", "self-supervised pretraining on a frame store", PretrainConfig, cmd_pretrain, config_file=True,
            quiet=True, extra=_preset_flag, names={"method": METHOD, "backbone": BACKBONE}),
    Command("evaluate", "limited-label evaluation of an initialisation", EvaluateConfig, cmd_evaluate, config_file=True,
            quiet=True, names={"backbone": BACKBONE}),
    Command("report", "summary.csv, paired differences and report.html from DIR/results.csv", ReportConfig, cmd_report,
            positional=("dir",), output="none"),
    Command("study", "a whole study (pretrainings x evaluations) from STUDY.yaml, resumable", StudyRunConfig, cmd_study,
            positional=("study",)),
    Command("demo", "synth -> ingest -> pretrain -> evaluate -> report on built-in data (CPU, minutes)", DemoConfig,
            cmd_demo),
    Command("predict", "plane of every frame of new scans; timeline and best frame per plane", PredictConfig,
            cmd_predict, positional=("inputs",), output="overwrite", quiet=True),
    Command("export", "the classifier as torchvision weights, TorchScript or ONNX, with a model card", ExportConfig,
            cmd_export, output="overwrite"),
    Command("embed", "2-D map of backbone features coloured by class, and kNN accuracy", EmbedConfig, cmd_embed,
            output="overwrite"),
    Command("select", "choose which frames to label: embed the candidates, pick a budget of them", SelectConfig,
            cmd_select, output="overwrite", names={"backbone": BACKBONE}),
)


LABELS_COMMANDS = (  # sonossl labels ACTION
    Command("import", "a Label Studio JSON export -> train.csv, valid.csv, test.csv split by clip", LabelsImportConfig,
            cmd_labels_import, positional=("export",), output="overwrite"),
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sonossl", description="Self-supervised learning on ultrasound scan videos.")
    p.add_argument("--version", action="version", version=f"sonossl {__version__}", help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser,
                           help="sonossl COMMAND --help lists its settings")
    for command in COMMANDS:
        register(sub, command)
    labels = sub.add_parser("labels", help="labelled sets from a labelling tool", description="labelled sets from a labelling tool")
    group = labels.add_subparsers(dest="labels_command", required=True, metavar="ACTION", parser_class=_Parser,
                                   help="sonossl labels ACTION --help lists its settings")
    for command in LABELS_COMMANDS:
        register(group, command)
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
    except BrokenPipeError:  # the reader of stdout left (`sonossl study --dry-run | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 128 + 13  # as a shell reports SIGPIPE
    except Exception as exc:  # a write out of space that no writer's own guard named: still one line
        from sonossl.diskspace import full_errno, full_message

        code = full_errno(exc)
        if code is None:
            raise
        if a.debug:
            traceback.print_exc()
        where = getattr(exc, "filename", None) or getattr(a, "out", None) or "the output"
        print(f"sonossl {a.command}: error: {full_message(Path(where), code, None, None)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
