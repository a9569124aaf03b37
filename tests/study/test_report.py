import csv
import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from sonossl.cli import main
from sonossl.study.report import what_won, write_report
from sonossl.study.stats import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_interval,
    load_results,
    paired_differences,
    summarise,
    t_interval,
    wilcoxon_test,
)

PLAIN = ["init", "protocol", "fraction", "seed", "n_train", "macro_f1", "balanced_accuracy", "accuracy"]
STUDY = PLAIN + ["dataset", "pretrain", "method", "pairs", "data_variant"]
CLASSES = ["4CH", "LVOT", "RVOT", "3VV", "3VT"]
PRETRAININGS = {"barlowtwins-augment-all": ("barlowtwins", "augment", "all"),
                "vicreg-temporal-all": ("vicreg", "temporal", "all")}


def write_results(path, rows, cols=PLAIN):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def rows_for(init, protocol, fraction, values, **extra):
    return [{"init": init, "protocol": protocol, "fraction": fraction, "seed": s, "n_train": 10, "macro_f1": v,
             "balanced_accuracy": v, "accuracy": v, **extra} for s, v in enumerate(values)]


def make_study(root, seeds=(0, 1, 2), fractions=(1, 10, 100)):
    """A study folder as the runner writes it: random, imagenet and two pretrainings x linear/finetune x
    fractions x seeds on one dataset; runs.csv and run folders (predictions.csv, except for finetune at the
    smallest fraction, which only has confusion.png); two pretraining stats.jsonl; study.json.
    Scores: barlowtwins > imagenet > vicreg > random by clear margins, with seed noise."""
    rng = np.random.default_rng(0)
    base = {"random": 0.30, "imagenet": 0.50, "barlowtwins-augment-all": 0.62, "vicreg-temporal-all": 0.45}
    rows, runs = [], []
    for init, protocol, fraction, seed in itertools.product(base, ["linear", "finetune"], fractions, seeds):
        score = float(np.clip(base[init] + 0.08 * np.log10(fraction) + 0.01 * rng.standard_normal(), 0, 1))
        method, pairs, variant = PRETRAININGS.get(init, ("", "", ""))
        rows.append({"init": init, "protocol": protocol, "fraction": fraction, "seed": seed, "n_train": int(2 * fraction),
                     "macro_f1": round(score, 6), "balanced_accuracy": round(score + 0.01, 6), "accuracy": round(score + 0.02, 6),
                     "dataset": "sfcp-synthetic", "pretrain": init if method else "", "method": method, "pairs": pairs,
                     "data_variant": variant})
        run_dir = f"evals/{init}/{protocol}-f{fraction}-s{seed}"
        (root / run_dir).mkdir(parents=True)
        runs.append({"init": init, "protocol": protocol, "fraction": fraction, "seed": seed, "dataset": "sfcp-synthetic",
                     "run_dir": run_dir})
        if protocol == "finetune" and fraction == min(fractions):
            img = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(root / run_dir / "confusion.png")
            continue
        with open(root / run_dir / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_path", "true", "predicted", *[f"p_{c}" for c in CLASSES]])
            for i in range(20):
                t = CLASSES[i % 5]
                p = t if rng.random() < score else CLASSES[(i + 1) % 5]
                w.writerow([f"img/{i}.png", t, p, *["0.2"] * 5])
    write_results(root / "results.csv", rows, STUDY)
    with open(root / "runs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["init", "protocol", "fraction", "seed", "dataset", "run_dir"])
        w.writeheader()
        w.writerows(runs)
    for k, name in enumerate(PRETRAININGS):
        d = root / "pretrain" / name
        d.mkdir(parents=True)
        lines = []
        for step in range(0, 50, 5):
            lines.append({"kind": "step", "step": step, "epoch": step // 10, "loss": 10.0 / (1 + step) + k, "lr": 0.1})
            if step % 10 == 5:
                lines.append({"kind": "epoch", "step": step, "epoch": step // 10, "loss": 10.0 / (1 + step) + k,
                              "images_per_s": 100.0, "knn10_accuracy": 0.3 + 0.1 * (step // 10) - 0.05 * k, "collapse_std": 0.1})
        (d / "stats.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"kind": "step", "st')  # killed mid-line
    (root / "study.json").write_text(json.dumps({"name": "tiny study", "context": {
        "data": "synthetic fetal echo clips", "pretraining": "BarlowTwins and VICReg, ResNet-18",
        "evaluation": "linear and finetune"}}))
    return root


N_STUDY_FIGURES = 2 + 2 + 4 + 1  # curves and rankings per protocol, confusion at 2 fractions x 2 protocols, pretraining


# ------------------------------------------------------------------------------------- statistics
def test_t_interval_matches_scipy():
    x = np.array([0.4, 0.55, 0.5, 0.45])
    mean, lo, hi = t_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean()) and (lo, hi) == pytest.approx(ref)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    d = np.array([0.02, 0.05, 0.11, -0.01, 0.08])
    # the exact bootstrap distribution: all 5**5 equally likely ordered resamples
    means = np.sort(np.array([d[list(idx)].mean() for idx in itertools.product(range(len(d)), repeat=len(d))]))
    exact = (means[int(0.025 * len(means))], means[int(np.ceil(0.975 * len(means))) - 1])
    lo, hi = bootstrap_interval(d, n_resamples=40000)
    assert (lo, hi) == pytest.approx(exact, abs=0.003)
    ref = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=40000, rng=1).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=0.003)
    assert BOOTSTRAP_RESAMPLES >= 2000
    assert bootstrap_interval(d) == bootstrap_interval(d)  # fixed RNG: reproducible files
    assert np.isnan(bootstrap_interval(d[:1])).all()


def _exact_wilcoxon_p(d):
    """Two-sided exact signed-rank p by enumerating all 2**n sign patterns (no ties, no zeros)."""
    ranks = stats.rankdata(np.abs(d))
    t_obs = ranks[d > 0].sum()
    t_all = np.array([ranks[np.array(s, bool)].sum() for s in itertools.product([0, 1], repeat=len(d))])
    return min(1.0, 2 * min((t_all <= t_obs).mean(), (t_all >= t_obs).mean()))


def test_wilcoxon_matches_exact_enumeration_and_explains_small_n():
    d = np.array([0.05, -0.01, 0.12, 0.08, 0.03, -0.02, 0.07])
    p, note = wilcoxon_test(d)
    assert p == pytest.approx(_exact_wilcoxon_p(d)) and note == ""
    p, note = wilcoxon_test(np.array([0.1, 0.2, 0.15]))  # every seed better, still p = 2/2**3
    assert p == pytest.approx(0.25) and "cannot reach 0.05" in note and "0.25" in note
    p, note = wilcoxon_test(np.array([0.1, 0.2, 0.15, 0.3, 0.25, 0.12]))
    assert p == pytest.approx(2 / 2 ** 6) and note == ""
    assert np.isnan(wilcoxon_test(np.zeros(4))[0]) and "zero" in wilcoxon_test(np.zeros(4))[1]
    assert np.isnan(wilcoxon_test(np.array([0.1]))[0])


def test_paired_difference_real_only_when_ci_excludes_zero(tmp_path):
    rows = rows_for("random", "linear", 10, [0.30, 0.35, 0.32]) + rows_for("bt", "linear", 10, [0.50, 0.56, 0.51])
    rows += rows_for("random", "linear", 100, [0.60, 0.70, 0.65]) + rows_for("bt", "linear", 100, [0.70, 0.62, 0.66])
    write_results(tmp_path / "results.csv", rows)
    df = load_results(tmp_path / "results.csv")
    d = paired_differences(df).set_index("fraction")
    assert d.loc[10, "real"] and d.loc[10, "diff_mean"] == pytest.approx(0.2)
    assert d.loc[10, "boot_ci_low"] > 0 and d.loc[10, "wilcoxon_p"] == pytest.approx(0.25) and "cannot reach" in d.loc[10, "note"]
    assert not d.loc[100, "real"]
    s = summarise(df)
    assert set(s["runs"]) == {3}


# --------------------------------------------------------------------------------------- reports
def test_report_command_writes_self_contained_html(tmp_path, capsys):
    rows = rows_for("random", "finetune", 1, [0.2, 0.25]) + rows_for("bt", "finetune", 1, [0.4, 0.45])
    write_results(tmp_path / "results.csv", rows)
    assert main(["report", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert (tmp_path / "summary.csv").is_file()
    assert "+0.200" in capsys.readouterr().out


def test_report_on_missing_results_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "results.csv not found" in capsys.readouterr().err


def test_plain_evaluate_folder_gets_curves_rankings_and_reproducible_differences(tmp_path):
    rows = []
    for protocol in ("linear", "finetune"):
        for f, shift in ((1, 0.0), (100, 0.3)):
            rows += rows_for("random", protocol, f, [0.30 + shift, 0.32 + shift, 0.31 + shift])
            rows += rows_for("imagenet", protocol, f, [0.40 + shift, 0.45 + shift, 0.41 + shift])
            rows += rows_for("/runs/bt", protocol, f, [0.50 + shift, 0.56 + shift, 0.52 + shift])
    write_results(tmp_path / "results.csv", rows)
    paths = write_report(tmp_path, context={"data": "my planes"})
    first, html = paths["differences"].read_bytes(), paths["report"].read_text()
    diffs = pd.read_csv(paths["differences"])
    assert {"boot_ci_low", "boot_ci_high", "wilcoxon_p", "note", "real"} <= set(diffs.columns)
    assert "dataset" not in pd.read_csv(paths["summary"]).columns
    assert write_report(tmp_path)["differences"].read_bytes() == first
    imgs = re.findall(r"<img [^>]*>", html)
    assert len(imgs) == 4 and all(re.search(r'alt="[^"]{20,}"', i) for i in imgs)  # 2 curves + 2 rankings
    assert "Where the best models go wrong" not in html and "Pretraining curves" not in html
    assert "my planes" in html and "What won" in html and "How sure we are" in html


def test_two_datasets_are_summarised_and_paired_separately(tmp_path):
    rows = []
    for ds, sign in (("clinic-a", 1), ("clinic-b", -1)):
        extra = {"dataset": ds, "pretrain": "", "method": "", "pairs": "", "data_variant": ""}
        rows += rows_for("random", "linear", 10, [0.40, 0.42, 0.41], **extra)
        rows += rows_for("bt", "linear", 10, [0.40 + sign * 0.2, 0.42 + sign * 0.21, 0.41 + sign * 0.19],
                         **{**extra, "pretrain": "bt", "method": "barlowtwins", "pairs": "augment", "data_variant": "all"})
    write_results(tmp_path / "results.csv", rows, STUDY)
    df = load_results(tmp_path / "results.csv")
    s = summarise(df)
    assert len(s) == 4 and set(s["dataset"]) == {"clinic-a", "clinic-b"}
    assert set(s.loc[s["init"] == "bt", "method"]) == {"barlowtwins"}
    d = paired_differences(df).set_index("dataset")
    assert d.loc["clinic-a", "diff_mean"] == pytest.approx(0.2) and d.loc["clinic-b", "diff_mean"] == pytest.approx(-0.2)
    assert d["real"].all()  # pooled over datasets it would be noise
    won = {g["dataset"]: g["cells"][0]["best"] for g in what_won(s, paired_differences(df))}
    assert won == {"clinic-a": "bt", "clinic-b": "random"}
    html = write_report(tmp_path)["report"].read_text()
    assert "linear probe (frozen backbone) on clinic-a" in html and "on clinic-b" in html
    assert len(re.findall(r"<img ", html)) == 4  # curves + ranking per dataset


def test_study_folder_report_has_every_figure_and_the_study_context(tmp_path):
    make_study(tmp_path)
    paths = write_report(tmp_path)
    html = paths["report"].read_text()
    imgs = re.findall(r"<img [^>]*>", html)
    assert len(imgs) == N_STUDY_FIGURES and all('src="data:image/png;base64,' in i for i in imgs)
    assert all(re.search(r'alt="[^"]{20,}"', i) for i in imgs)
    assert "tiny study" in html and "synthetic fetal echo clips" in html and "sfcp-synthetic" in html
    assert "closest to the median" in html and "3 seed(s) pooled" in html
    assert "data:image/png" in html and "http" not in html.replace("http-equiv", "")
    s = pd.read_csv(paths["summary"])
    assert {"dataset", "pretrain", "method", "pairs", "data_variant"} <= set(s.columns)
    won = what_won(summarise(load_results(tmp_path / "results.csv")), pd.read_csv(paths["differences"]))
    assert all(it["best"] == "barlowtwins-augment-all" for g in won for it in g["cells"])
    assert all(c["verdict"] == "real" for g in won for it in g["cells"] for c in it["comparisons"])
    assert "vs ImageNet: +0.1" in html and "a real difference" in html


def test_a_collapsed_pretraining_is_flagged_in_the_report(tmp_path):
    make_study(tmp_path)
    healthy = {"steps": 400, "health": {"flags": []}}
    collapsed = {"steps": 400, "health": {"flags": [{"kind": "collapsed", "step": 120,
                                                    "message": "RankMe 1.03 (the features span 1 direction)"}]}}
    (tmp_path / "pretrain" / "barlowtwins-augment-all" / "summary.json").write_text(json.dumps(healthy))
    (tmp_path / "pretrain" / "vicreg-temporal-all" / "summary.json").write_text(json.dumps(collapsed))
    html = (write_report(tmp_path)["report"]).read_text()
    assert "pretraining warnings" in html
    assert "vicreg-temporal-all was flagged (collapsed): RankMe 1.03" in html
    assert "barlowtwins-augment-all was flagged" not in html
