import csv

import numpy as np
import pytest
from scipy import stats

from sonossl.cli import main
from sonossl.study.report import load_results, paired_differences, summarise, t_interval


def write_results(path, rows):
    cols = ["init", "protocol", "fraction", "seed", "n_train", "macro_f1", "balanced_accuracy", "accuracy"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def rows_for(init, protocol, fraction, values):
    return [{"init": init, "protocol": protocol, "fraction": fraction, "seed": s, "n_train": 10, "macro_f1": v,
             "balanced_accuracy": v, "accuracy": v} for s, v in enumerate(values)]


def test_t_interval_matches_scipy():
    x = np.array([0.4, 0.55, 0.5, 0.45])
    mean, lo, hi = t_interval(x)
    ref = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean()) and (lo, hi) == pytest.approx(ref)


def test_paired_difference_real_only_when_ci_excludes_zero(tmp_path):
    rows = rows_for("random", "linear", 10, [0.30, 0.35, 0.32]) + rows_for("bt", "linear", 10, [0.50, 0.56, 0.51])
    rows += rows_for("random", "linear", 100, [0.60, 0.70, 0.65]) + rows_for("bt", "linear", 100, [0.70, 0.62, 0.66])
    write_results(tmp_path / "results.csv", rows)
    df = load_results(tmp_path / "results.csv")
    d = paired_differences(df).set_index("fraction")
    assert d.loc[10, "real"] and d.loc[10, "diff_mean"] == pytest.approx(0.2)
    assert not d.loc[100, "real"]
    s = summarise(df)
    assert set(s["runs"]) == {3}


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
