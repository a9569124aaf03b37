import csv
import json
from pathlib import Path

import pytest
import torch

from sonossl.cli import main
from sonossl.downstream.evaluate import RESULT_COLUMNS

FAST = ["--image-size", "24", "--epochs", "3", "--linear-epochs", "20", "--batch-size", "16", "--backbone", "resnet18"]


def run(args):
    return main(["evaluate", *args])


def test_evaluate_writes_results_runs_and_loadable_model(labelled: Path, tmp_path: Path):
    out = tmp_path / "eval"
    assert run(["--labels", str(labelled), "--init", "random", "--protocol", "linear,finetune", "--fractions", "50,100",
                "--seeds", "0", "--out", str(out), *FAST]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert list(rows[0].keys()) == RESULT_COLUMNS
    assert {(r["protocol"], r["fraction"]) for r in rows} == {("linear", "50"), ("linear", "100"), ("finetune", "50"), ("finetune", "100")}
    assert all(0 <= float(r[m]) <= 1 for r in rows for m in ("macro_f1", "balanced_accuracy", "accuracy"))
    lin = {r["fraction"]: r for r in rows if r["protocol"] == "linear"}
    assert int(lin["50"]["n_train"]) == 30 and int(lin["100"]["n_train"]) == 60
    # bars of three orientations: the frozen random ResNet's features separate them well above chance (1/3)
    assert float(lin["100"]["macro_f1"]) > 0.6
    run_dir = out / "random_linear_f50_s0"
    for f in ("model.pt", "report.json", "confusion.png", "predictions.csv", "subset.json", "run.json"):
        assert (run_dir / f).is_file(), f
    bundle = torch.load(run_dir / "model.pt", weights_only=True)
    assert bundle["class_names"] == ["a", "b", "c"] and bundle["preprocessing"]["image_size"] == 24
    subset = json.loads((run_dir / "subset.json").read_text())
    assert len(subset["indices"]) == 30


def test_existing_output_is_refused_and_resume_skips_done_runs(labelled: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval"
    args = ["--labels", str(labelled), "--init", "random", "--protocol", "linear", "--fractions", "100", "--seeds", "0",
            "--out", str(out), "--no-save-models", *FAST]
    assert run(args) == 0
    before = (out / "results.csv").read_text()
    assert run(args) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert run([*args, "--resume", "--seeds", "0,1"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["seed"] for r in rows] == ["0", "1"]
    assert (out / "results.csv").read_text().startswith(before)


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("no_class_column", r"train\.csv: missing column\(s\) class; expected header image_path,class"),
        ("unknown_class", r"valid\.csv: class 'zebra' .* is not in the train split's classes"),
        ("missing_image", r"test\.csv:2: image file 'img/test/gone\.png' not found"),
        ("escaping_path", r"test\.csv:2: image path '\.\./outside\.png' leaves the data root"),
        ("tiny_fraction", r"train\.csv: fraction 1% gives class 'a' \(20 images\) no image"),
        ("missing_checkpoint", r"nothing: init not found; expected random, imagenet, a pretrain run folder"),
        ("unfinished_run", r"run/backbone\.pt: backbone checkpoint not found; has the pretraining"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(labelled: Path, tmp_path: Path, capsys, breakage, expected):
    init, fractions = "random", "100"
    if breakage == "no_class_column":
        text = (labelled / "train.csv").read_text().replace("image_path,class", "image_path,label")
        (labelled / "train.csv").write_text(text)
    elif breakage == "unknown_class":
        with open(labelled / "valid.csv", "a") as fh:
            fh.write("img/valid/a_0.png,zebra\n")
    elif breakage in ("missing_image", "escaping_path"):
        lines = (labelled / "test.csv").read_text().splitlines()
        lines[1] = ("img/test/gone.png" if breakage == "missing_image" else "../outside.png") + ",a"
        (tmp_path / "outside.png").write_bytes((labelled / "img/test/a_0.png").read_bytes())
        (labelled / "test.csv").write_text("\n".join(lines) + "\n")
    elif breakage == "tiny_fraction":
        fractions = "1,100"
    elif breakage == "missing_checkpoint":
        init = str(tmp_path / "nothing")
    elif breakage == "unfinished_run":
        (tmp_path / "run").mkdir()
        init = str(tmp_path / "run")
    out = tmp_path / "eval"
    code = run(["--labels", str(labelled), "--init", init, "--fractions", fractions, "--seeds", "0", "--out", str(out), *FAST])
    assert code == 2
    import re

    assert re.search(expected, _err_line(capsys))
    assert not out.exists()


def test_standardise_keeps_dead_features_at_unit_scale():
    from sonossl.downstream.classifier import Standardise

    feats = torch.randn(20, 4)
    feats[:, 2] = 0.0  # a channel that never fires on the training subset
    s = Standardise(4).fit(feats)
    assert s.std[2] == 1.0 and torch.allclose(s.std[[0, 1, 3]], feats[:, [0, 1, 3]].std(0, unbiased=False))
    assert s(torch.full((1, 4), 3.0))[0, 2] == 3.0


def test_lp_ft_fine_tunes_from_the_linear_probes_head(labelled: Path, tmp_path: Path, monkeypatch):
    from sonossl.config import EvaluateConfig
    from sonossl.downstream import evaluate as ev

    calls = []
    real_fit = ev.fit

    def recording_fit(model, *args, **kwargs):
        head = model if not hasattr(model, "head") else model.head
        calls.append({"at_start": {k: v.clone() for k, v in head.state_dict().items()}, "whole": hasattr(model, "encoder"),
                      "settings": args[5]})
        result = real_fit(model, *args, **kwargs)
        calls[-1]["at_end"] = {k: v.clone() for k, v in head.state_dict().items()}
        return result

    monkeypatch.setattr(ev, "fit", recording_fit)
    cfg = EvaluateConfig(labels=labelled, init="random", protocol=["finetune"], fractions=[100.0], seeds=[0],
                         image_size=24, epochs=1, linear_epochs=3, batch_size=32, lp_ft=True, head_lr_mult=10.0,
                         out=tmp_path / "e", accelerator="cpu", precision="32-true")
    ev.evaluate(cfg, progress=None)
    probe, finetune = calls
    assert not probe["whole"] and finetune["whole"]
    for k, v in probe["at_end"].items():  # fine-tuning starts where the probe ended, standardisation included
        assert torch.equal(finetune["at_start"][k], v), k
    assert not torch.equal(probe["at_start"]["2.weight"], probe["at_end"]["2.weight"])  # the probe trained
    assert finetune["settings"].head_lr_mult == 10.0 and probe["settings"].head_lr_mult == 1.0


def test_select_on_valid_picks_the_best_valid_candidate_and_scores_test_once(labelled: Path, tmp_path: Path, monkeypatch):
    from sonossl.config import EvaluateConfig
    from sonossl.downstream import evaluate as ev

    grid = {"lr": [1e-6, 3e-2], "lp_ft": [False, True]}
    cfg = EvaluateConfig(labels=labelled, init="random", protocol=["linear"], fractions=[100.0], seeds=[0], image_size=24,
                         linear_epochs=20, batch_size=16, select_on_valid=grid, out=tmp_path / "e", accelerator="cpu",
                         precision="32-true")
    # a linear probe does not vary a fine-tuning setting; fine-tuning tries the whole product, in declared order
    assert [c for c, _ in ev.candidates(cfg, "linear")] == [{"lr": 1e-6}, {"lr": 3e-2}]
    assert [c for c, _ in ev.candidates(cfg, "finetune")] == [
        {"lr": 1e-6, "lp_ft": False}, {"lr": 1e-6, "lp_ft": True}, {"lr": 3e-2, "lp_ft": False}, {"lr": 3e-2, "lp_ft": True}]
    assert ev.candidates(cfg, "finetune")[3][1].lr == 3e-2 and ev.candidates(cfg, "finetune")[3][1].lp_ft

    scored = []
    real = ev._test_logits
    monkeypatch.setattr(ev, "_test_logits", lambda *a: scored.append(a[1]) or real(*a))
    ev.evaluate(cfg, progress=None)
    assert scored == ["linear"]  # the test split is scored once per run, by the selected classifier
    run = json.loads((tmp_path / "e" / "random_linear_f100_s0" / "run.json").read_text())
    vals = [c["best_val_balanced_accuracy"] for c in run["candidates"]]
    assert [c["lr"] for c in run["candidates"]] == [1e-6, 3e-2]
    assert run["chosen"] == {"lr": [1e-6, 3e-2][vals.index(max(vals))]}  # the best on valid, the first on a tie
    assert run["best_val_balanced_accuracy"] == max(vals)
    [row] = csv.DictReader(open(tmp_path / "e" / "results.csv"))
    assert row["chosen"] == ev.chosen_text(run["chosen"])


@pytest.mark.parametrize("grid, expected", [
    ({"seed": [0, 1]}, "'seed' cannot be chosen on valid"),
    ({"lr": []}, "non-empty list of distinct values"),
    ({"lr": [1e-3, 1e-3]}, "non-empty list of distinct values"),
    ({"lr": [-1.0]}, "lr: Input should be greater than 0"),
])
def test_select_on_valid_refuses_what_it_cannot_try(grid, expected):
    from sonossl.config import EvaluateConfig, validated
    from sonossl.errors import SonosslError

    with pytest.raises(SonosslError, match=expected):
        validated(EvaluateConfig, {"select_on_valid": grid}, "eval.yaml")


def test_each_run_logs_its_training_curve_to_tensorboard(labelled: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sonossl.config import EvaluateConfig
    from sonossl.downstream.evaluate import evaluate

    cfg = EvaluateConfig(labels=labelled, init="random", protocol=["finetune"], fractions=[100.0], seeds=[0], image_size=24,
                         epochs=3, batch_size=32, select_on_valid={"lr": [1e-3, 3e-4]}, out=tmp_path / "e",
                         accelerator="cpu", precision="32-true")
    evaluate(cfg, progress=None)
    run = tmp_path / "e" / "random_finetune_f100_s0"
    history = json.loads((run / "history.json").read_text())
    for version in ("lr=0.001", "lr=0.0003"):  # one TensorBoard run per candidate
        acc = EventAccumulator(str(run / "tensorboard" / version))
        acc.Reload()
        assert {"finetune/train_loss", "finetune/val_balanced_accuracy", "finetune/lr"} <= set(acc.Tags()["scalars"])
        assert [e.step for e in acc.Scalars("finetune/val_balanced_accuracy")] == [h["step"] for h in history]


def test_val_evals_spreads_that_many_validation_passes_from_the_first_epoch_to_the_last(labelled: Path, tmp_path: Path):
    out = tmp_path / "e"
    assert run(["--labels", str(labelled), "--init", "random", "--protocol", "finetune", "--fractions", "100",
                "--seeds", "0", "--out", str(out), *FAST[:2], "--epochs", "9", "--batch-size", "32",
                "--val-evals", "3", "--backbone", "resnet18"]) == 0
    history = json.loads((out / "random_finetune_f100_s0" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 5, 9]
