"""The whole chain through the command line, tiny: synth -> ingest -> pretrain -> evaluate -> report."""

import csv
from pathlib import Path

import pytest
import torch
import torchvision

from sonossl.cli import main
from sonossl.methods import METHODS
from sonossl.models.backbones import BACKBONES

PHI = [b"SYNTH^PATIENT", b"SYN0000", b"SYNTH PATIENT"]


def all_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in folder.rglob("*") if p.is_file()]


def test_end_to_end_through_the_cli(tmp_path: Path, capsys):
    data, frames = tmp_path / "data", tmp_path / "frames.h5"
    assert main(["synth", "--out", str(data), "--videos", "4", "--frames", "6", "--labelled", "10,4,4"]) == 0
    assert main(["ingest", str(data / "videos"), "--out", str(frames), "--frame-skip", "1", "--size", "32", "--quiet"]) == 0
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "barlowtwins", "--frames", str(frames), "--out", str(run), "--image-size", "32",
                 "--batch-size", "8", "--max-steps", "2", "--num-workers", "0", "--quiet"]) == 0
    state = torch.load(run / "backbone.pt", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    ev = tmp_path / "eval"
    assert main(["evaluate", "--labels", str(data / "labelled"), "--init", str(run), "--fractions", "10,100", "--seeds", "0",
                 "--image-size", "32", "--epochs", "1", "--linear-epochs", "5", "--out", str(ev), "--quiet"]) == 0
    rows = list(csv.DictReader(open(ev / "results.csv")))
    assert {r["init"] for r in rows} == {"barlowtwins"} and len(rows) == 4
    assert main(["report", str(ev)]) == 0
    assert (ev / "report.html").is_file()
    # the trained classifier on a new scan, and exported
    clip = sorted((data / "videos").glob("*.dcm"))[0]
    run_dir = ev / "barlowtwins_finetune_f100_s0"
    assert main(["predict", "--model", str(run_dir), str(clip), "--out", str(tmp_path / "pred.csv"), "--quiet"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "pred.csv")))) == 6
    assert main(["export", "--model", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 0
    assert main(["export", "--model", str(run_dir), "--format", "tflite"]) == 2
    # no patient attribute value (names, ids) reaches the store, the run or the evaluation
    for folder in (run, ev, tmp_path / "pred_clips"):
        for path, blob in all_bytes(folder):
            assert not any(s in blob for s in PHI), path
    assert not any(s in frames.read_bytes() for s in PHI)
    # the synthetic DICOMs do carry them: the check above can fail
    assert any(PHI[0] in b for _, b in all_bytes(data / "videos"))


def test_argparse_and_unknown_method_errors_exit_2(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--fractions", "ten"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sonossl evaluate: error: argument --fractions: expected comma-separated numbers, got 'ten' (see sonossl evaluate --help)"]
    (tmp_path / "f.h5").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:  # a flag: its choices are the registry's names
        main(["pretrain", "--method", "simclr2", "--frames", str(tmp_path / "f.h5"), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'simclr2'" in err[0] and all(f"'{m}'" in err[0] for m in METHODS)
    (tmp_path / "c.yaml").write_text("method: simclr2\n")  # a config file: the registry's own check
    assert main(["pretrain", "--config", str(tmp_path / "c.yaml"), "--frames", str(tmp_path / "f.h5"),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'simclr2'" in err[0] and "barlowtwins" in err[0]


def test_registry_names_are_the_choices_of_their_flags(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ", ".join(sorted(METHODS)) in text and ", ".join(BACKBONES) in text
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--backbone", "resnet19"])
    assert exc.value.code == 2 and "'resnet19'" in capsys.readouterr().err


def test_pretrain_defaults_to_the_store_size_and_refuses_a_larger_one(tmp_path: Path, capsys):
    import numpy as np

    from sonossl.data.framestore import FrameStore, FrameStoreWriter

    store = tmp_path / "frames.h5"
    with FrameStoreWriter(store) as w:
        w.add_video("v0", np.zeros((4, 64, 64), np.uint8), video_id="v0", group_id="g0")
    assert FrameStore(store).frame_size == 64
    out = tmp_path / "run"
    assert main(["pretrain", "--frames", str(store), "--out", str(out), "--image-size", "128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_size: 128 px is larger than the 64 px frames" in err[0], err
    assert not out.exists()


def test_evaluate_takes_the_pretraining_size_and_says_when_told_otherwise():
    from sonossl.config import DEFAULT_IMAGE_SIZE
    from sonossl.downstream.evaluate import evaluation_image_size
    from sonossl.models.init import InitSpec

    pretrained, said = InitSpec("barlowtwins", "resnet18", "backbone.pt", 96), []
    assert evaluation_image_size(None, pretrained, said.append) == 96 and said == []
    assert evaluation_image_size(128, pretrained, said.append) == 128
    assert len(said) == 1 and "128 px differs from the 96 px barlowtwins was pretrained at" in said[0]
    assert evaluation_image_size(None, InitSpec("random", "resnet18", "random"), said.append) == DEFAULT_IMAGE_SIZE


def _subparsers(parser):
    import argparse

    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_flag_of_every_sub_command_has_a_help_line_with_its_default():
    from sonossl.cli import COMMANDS, LABELS_COMMANDS, build_parser

    parser = build_parser()
    commands = _subparsers(parser)
    assert sorted(commands) == sorted([c.name for c in COMMANDS] + ["labels"]) and len(commands) == 13
    labels = _subparsers(commands["labels"])
    assert sorted(labels) == sorted(c.name for c in LABELS_COMMANDS)
    for name, sub in [*commands.items(), *((f"labels {k}", v) for k, v in labels.items())]:
        assert sub.description, name
        for action in sub._actions:
            where = f"sonossl {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where}: no help"
            takes_value = action.nargs != 0 and action.option_strings and action.dest not in ("config", "preset", "help")
            if takes_value:
                assert "(default: " in action.help, f"{where}: help does not give the default: {action.help!r}"
    for action in parser._actions:
        assert action.help, action.dest


def test_flags_are_the_config_fields_and_version(capsys):
    from sonossl.config import EvaluateConfig, PretrainConfig
    from sonossl.cli import build_parser

    commands = _subparsers(build_parser())
    for name, cls, config_only in (("pretrain", PretrainConfig, {"method_options", "augment"}), ("evaluate", EvaluateConfig, set())):
        dests = {a.dest for a in commands[name]._actions}
        assert set(cls.model_fields) - config_only <= dests, set(cls.model_fields) - dests
    a = build_parser().parse_args(["evaluate", "--protocol", "linear", "--fractions", "1,10", "--no-augment"])
    assert (a.protocol, a.fractions, a.augment, a.lr) == (["linear"], [1.0, 10.0], False, None)
    grid = build_parser().parse_args(["evaluate", "--select-on-valid", "lr=1e-3,3e-4; lp_ft=false,true"]).select_on_valid
    assert EvaluateConfig(select_on_valid=grid).select_on_valid == {"lr": [1e-3, 3e-4], "lp_ft": [False, True]}
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == "sonossl 0.1.0"


def test_an_abbreviated_flag_is_an_error_not_a_guess(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ingest", str(tmp_path), "--out", str(tmp_path / "f.h5"), "--salt", "k"])
    assert exc.value.code == 2 and "unrecognized arguments: --salt" in capsys.readouterr().err
    assert not (tmp_path / "k").exists() and not list(tmp_path.iterdir())


def test_a_reader_that_leaves_early_ends_the_command_quietly(monkeypatch, capsys):
    """`sonossl study --dry-run | head -1`: no traceback when head has closed the pipe."""
    import os
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    with capsys.disabled():
        pipe = os.fdopen(write, "w", buffering=1)  # each line written through, as a full buffer would be
        monkeypatch.setattr(sys, "stdout", pipe)
        assert main(["study", "--preset", "paper", "--dry-run"]) == 141
        pipe.write("after")  # what Python's exit flush would do: the pipe is now devnull, no second error
        pipe.flush()
        monkeypatch.undo()
        pipe.close()
