"""Selection as a protocol axis: ``evaluate --selection``, the report's paired comparison, a study sweeping it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import helpers
import numpy as np
import pandas as pd

from sonossl.config import EvaluateConfig
from sonossl.downstream.evaluate import evaluate
from sonossl.study.report import write_report
from sonossl.study.stats import load_results, paired_differences


def _subset(run: Path) -> set[int]:
    return set(json.loads((run / "subset.json").read_text())["indices"])


def test_evaluate_draws_nested_subsets_by_the_strategy_and_records_it(tmp_path):
    labels = helpers.make_labelled(tmp_path / "labelled", {"train": 12, "valid": 3, "test": 3})
    cfg = EvaluateConfig(labels=labels, init="random", protocol=["linear"], fractions=[10, 25], seeds=[0, 1], image_size=24,
                         linear_epochs=3, batch_size=16, out=tmp_path / "ev", accelerator="cpu", selection="kcenter")
    rows, path = evaluate(cfg, progress=None, save_models=False), tmp_path / "ev" / "results.csv"
    assert rows == list(csv.DictReader(open(path)))  # what it returns is what it wrote
    assert [r["selection"] for r in rows] == ["kcenter"] * 4
    assert [int(r["n_train"]) for r in rows] == [4, 4, 9, 9]  # round(10 % and 25 % of 36), in all, not per class
    for seed in (0, 1):
        small, big = (tmp_path / "ev" / f"random@kcenter_linear_f{f}_s{seed}" for f in (10, 25))
        assert _subset(small) < _subset(big)  # nested
        info = json.loads((small / "run.json").read_text())
        y = np.array([r.split(",")[1] for r in (labels / "train.csv").read_text().splitlines()[1:]])
        picked = set(y[sorted(_subset(small))])
        assert info["classes_missed"] == sorted({"a", "b", "c"} - picked)
        assert int(rows[seed]["classes_missed"]) == len(info["classes_missed"])
    # the stratified random draw and the strategy differ, and a resumed evaluation runs nothing again
    stratified = EvaluateConfig(**{**cfg.model_dump(), "selection": "random", "out": tmp_path / "st"})
    evaluate(stratified, progress=None, save_models=False)
    assert _subset(tmp_path / "st" / "random_linear_f25_s0") != _subset(tmp_path / "ev" / "random@kcenter_linear_f25_s0")
    before = path.read_bytes()
    assert evaluate(cfg, resume=True, progress=None, save_models=False) == rows  # the earlier runs' rows
    assert path.read_bytes() == before


def test_report_compares_a_strategy_with_the_same_init_paired_by_seed(tmp_path):
    rows = []
    for init in ("random", "barlowtwins"):
        for selection, gain in (("random", 0.0), ("typiclust", 0.1)):
            for seed in range(5):
                f1 = 0.3 + (0.05 if init == "barlowtwins" else 0) + gain + 0.01 * seed
                rows.append({"init": init, "protocol": "linear", "fraction": 5, "seed": seed, "n_train": 25,
                             "macro_f1": f1, "balanced_accuracy": f1, "accuracy": f1, "selection": selection,
                             "classes_missed": int(selection == "typiclust" and seed == 0)})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    diffs = paired_differences(load_results(tmp_path / "results.csv"))
    own = diffs[(diffs["init"] == "barlowtwins@typiclust") & (diffs["baseline"] == "barlowtwins")].iloc[0]
    assert own["pairs"] == 5 and abs(own["diff_mean"] - 0.1) < 1e-9 and own["real"]
    rnd = diffs[(diffs["init"] == "random@typiclust") & (diffs["baseline"] == "random")].iloc[0]
    assert abs(rnd["diff_mean"] - 0.1) < 1e-9
    html = write_report(tmp_path)["report"].read_text()
    assert "classes without an image" in html and "2 of 20 runs" in html


def test_a_study_sweeps_selection_in_the_quick_demo_plan(tmp_path):
    """The quick demo's study (synthetic clips, BarlowTwins, random and pretrained inits, fractions
    10 and 100 %, seeds 0 and 1), made tiny, with the axis ``selection: [random, typiclust]``."""
    from sonossl.data.synthetic import synthesize
    from sonossl.study.grid import StudySpec, expand
    from sonossl.study.runner import run_study

    data = tmp_path / "data"
    synthesize(data, videos=6, frames=8, size=48, seed=0, labelled_per_class=(10, 3, 4))
    study = {
        "name": "quick-demo-selection",
        "data": {"unlabelled": str(data / "videos"), "labelled": {"synthetic": str(data / "labelled")}},
        "ingest": {"size": 32, "val_fraction": 0.1},
        "variants": {"all": {"frame_skip": 2}},
        "pretrain": {"preset": "cpu", "methods": ["barlowtwins"], "variants": ["all"],
                     "options": {"epochs": 1, "max_steps": 2, "batch_size": 8, "num_workers": 0, "image_size": 32,
                                 "method_options": {"projector": [64, 64]}}},
        "evaluate": {"inits": ["random", "pretrained"], "protocols": ["linear"], "fractions": [10, 100], "seeds": [0, 1],
                     "selection": ["random", "typiclust"],
                     "options": {"backbone": "resnet18", "image_size": 32, "batch_size": 32, "linear_epochs": 3}},
    }
    from sonossl.config import validated

    plan = expand(validated(StudySpec, study, "test"), tmp_path, "test")
    assert len(plan.evals) == 16 and "x 2 selections" in plan.describe()
    summary = run_study(plan, tmp_path / "study", log=lambda m: None)
    assert not summary.failed and not summary.blocked
    res = list(csv.DictReader(open(tmp_path / "study" / "results.csv")))
    assert {(r["init"], r["selection"]) for r in res} == {(i, s) for i in ("random", "barlowtwins-augment-all")
                                                          for s in ("random", "typiclust")}
    diffs = list(csv.DictReader(open(tmp_path / "study" / "differences.csv")))
    assert {("barlowtwins-augment-all@typiclust", "barlowtwins-augment-all"), ("random@typiclust", "random")} <= \
        {(d["init"], d["baseline"]) for d in diffs}
    small = tmp_path / "study" / "evals" / "synthetic" / "random@typiclust"
    assert _subset(next(small.glob("linear-10-s0/*/subset.json")).parent) < \
        _subset(next(small.glob("linear-100-s0/*/subset.json")).parent)
