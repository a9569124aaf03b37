"""The demo is a small study: synth -> the study runner -> the report; it resumes, keeps its best
fine-tuned model, and the `sonossl predict` command it prints works on a clip."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

import pytest

from sonossl.cli import main
from sonossl.config import PLANS, DemoPlan
from sonossl.demo import demo_study, run_demo

# The quick plan's shape (linear at two fractions, fine-tuning at 100 % that keeps its model), tiny.
TINY = DemoPlan("tiny", videos=6, frames=8, frame_skip=2, pretrain_steps=2, pretrain_seconds=60, fractions=(50, 100),
                seeds=(0, 1), finetune_fractions=(100,), finetune_seeds=(0,), finetune_epochs=1, synth_size=48,
                image_size=32, labelled_per_class=(6, 3, 3))


def test_tiny_demo_runs_the_study_keeps_a_model_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `make demo` passes a relative --out
    out = Path("demo")
    run_demo(out, plan=TINY)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["init"] for r in rows} >= {"random", "barlowtwins-augment-all"}
    assert {(r["protocol"], r["fraction"]) for r in rows} == {("linear", "50"), ("linear", "100"), ("finetune", "100")}
    assert all(0 <= float(r["macro_f1"]) <= 1 for r in rows)
    for name in ("summary.csv", "differences.csv", "report.html", "study.db", "pretrain/barlowtwins-augment-all/backbone.pt"):
        assert (out / name).is_file(), name
    kept = sorted(out.glob("evals/**/model.pt"))
    assert len(kept) == 1 and "finetune" in str(kept[0])  # the best fine-tuned run only; linear runs keep none
    printed = capsys.readouterr().out
    assert "barlowtwins-augment-all" in printed and "seeds [0, 1]" in printed and "verdict: " in printed
    assert "BarlowTwins pretraining: 2 steps of 2 planned" in printed and "(stopped by schedule)" in printed

    predict = next(line.strip() for line in printed.splitlines() if line.strip().startswith("sonossl predict"))
    assert main(shlex.split(predict)[1:]) == 0
    assert (out / "predictions.csv").is_file() and list(out.glob("**/*timeline*.png"))

    before = (out / "results.csv").read_bytes()
    run_demo(out, plan=TINY, resume=True)
    assert "0 to run" in capsys.readouterr().out
    assert (out / "results.csv").read_bytes() == before


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_plan_is_a_valid_study_with_one_image_size(tmp_path, name):
    from sonossl.config import validated
    from sonossl.study.grid import StudySpec, expand

    study = demo_study(tmp_path, PLANS[name], imagenet=False)
    assert "image_size" not in study["pretrain"]["options"] and "image_size" not in study["evaluate"]["options"]
    plan = expand(validated(StudySpec, study, "demo"), tmp_path, "demo")
    fine = [u for u in plan.evals if u.protocol == "finetune"]
    assert {u.fraction for u in fine} == set(PLANS[name].finetune_fractions)
    assert plan.pretrains[0].config["max_steps"] == PLANS[name].pretrain_steps


def test_verdict_names_the_cells_that_won_and_the_budget_still_to_try():
    import pandas as pd

    from sonossl.config import FULL, LONG, QUICK
    from sonossl.demo import verdict

    def diffs(*cells):
        return pd.DataFrame([{"baseline": "random", "init": "barlowtwins", "protocol": "linear", "fraction": f,
                              "diff_mean": d, "real": real} for f, d, real in cells])

    assert verdict(diffs((10, 0.05, True), (100, 0.09, True)), FULL).startswith(
        "pretraining beat random initialisation at <= 10 % labels: linear 10 % (+0.050)")
    short = verdict(diffs((10, 0.01, False), (100, -0.02, False)), QUICK)  # a pretraining shorter than the long plan's
    assert short.startswith("no real gain") and "more labels" not in short and "`make demo-long` pretrains 1000" in short
    fewer = verdict(diffs((10, 0.01, False),), FULL)  # a shorter pretraining than the long plan's
    assert "`make demo-long` pretrains 1000 steps" in fewer
    same = verdict(diffs((10, 0.01, False),), FULL, steps=LONG.pretrain_steps)  # the long plan's budget, fewer seeds
    assert "`make demo-long` probes with 10 seeds" in same and "pretrains" not in same
    long = verdict(diffs((10, 0.014, False), (100, 0.088, True)), LONG)
    assert "a real gain with more labels: linear 100 % (+0.088)" in long and "make demo-long" not in long
    cut = verdict(diffs((10, 0.01, False),), FULL, steps=120)  # a pretraining stopped by its time cap
    assert "after 120 pretraining steps" in cut

    tuned = diffs((10, 0.05, True))
    tuned = pd.concat([tuned, pd.DataFrame([{"baseline": "random", "init": "barlowtwins", "protocol": "finetune",
                                             "fraction": 10, "diff_mean": -0.012, "real": False, "pairs": 5,
                                             "diff_ci_low": -0.04, "diff_ci_high": 0.016}])])
    said = verdict(tuned, FULL)  # the fine-tuning difference is stated whatever its sign, with its interval
    assert said.startswith("pretraining beat random") and said.endswith(
        "Fine-tuning at 10 %: -0.012 [-0.040, +0.016], noise (5 seeds).")
    warned = verdict(tuned, FULL, warning="warning: the pretraining barlowtwins was flagged (collapsed): RankMe 1.2")
    assert warned.endswith("(5 seeds). Warning: the pretraining barlowtwins was flagged (collapsed): RankMe 1.2")


def test_the_demo_says_what_precision_it_trains_in_and_why(monkeypatch):
    from sonossl.config import FULL
    from sonossl.demo import precision_line
    from sonossl.models import fastpath

    slow = fastpath.FastPath("32-true", False, "measured fastest on this CPU (no bf16 units, bf16 not tried): x1.00")
    monkeypatch.setattr(fastpath, "choose", lambda *a, **k: slow)
    line = precision_line(FULL)
    assert line.startswith("32-true, NCHW (measured") and f"about {FULL.minutes_float32} minutes" in line
    fast = fastpath.FastPath("bf16-mixed", True, "measured fastest on this CPU (amx_bf16): x3.40")
    monkeypatch.setattr(fastpath, "choose", lambda *a, **k: fast)
    assert precision_line(FULL) == "bf16-mixed, channels_last (measured fastest on this CPU (amx_bf16): x3.40)"
