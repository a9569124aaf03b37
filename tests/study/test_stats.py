"""The study's statistics against independent computations: t intervals, the bootstrap, Wilcoxon."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sonossl.study.stats import bootstrap_interval, fold_selection, t_interval, wilcoxon_test


def test_t_interval_is_the_textbook_formula():
    x = np.array([0.61, 0.58, 0.66, 0.63, 0.60])
    mean, lo, hi = t_interval(x)
    half = sps.t.ppf(0.975, 4) * x.std(ddof=1) / np.sqrt(5)
    assert mean == pytest.approx(x.mean()) and (lo, hi) == pytest.approx((x.mean() - half, x.mean() + half))
    assert np.isnan(t_interval(np.array([0.5]))[1])


def test_bootstrap_matches_scipys_percentile_bootstrap_and_covers_the_mean():
    x = np.random.default_rng(3).normal(0.02, 0.03, 20)
    lo, hi = bootstrap_interval(x, n_resamples=20000)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.003) and hi == pytest.approx(ref.high, abs=0.003)
    assert lo < x.mean() < hi


def test_wilcoxon_is_scipys_and_says_when_it_cannot_reach_significance():
    d = np.array([0.03, 0.01, 0.04, 0.02, -0.01, 0.05, 0.02, 0.03])
    p, note = wilcoxon_test(d)
    assert p == pytest.approx(sps.wilcoxon(d).pvalue) and note == ""
    p3, note3 = wilcoxon_test(np.array([0.1, 0.2, 0.3]))
    assert p3 == pytest.approx(0.25) and "cannot go below 0.25" in note3
    assert np.isnan(wilcoxon_test(np.zeros(4))[0])


def test_an_init_with_a_selection_strategy_is_its_own_init():
    df = pd.DataFrame({"init": ["random", "bt", "bt"], "selection": ["random", "typiclust", None]})
    fold_selection(df)
    assert df["init"].tolist() == ["random", "bt@typiclust", "bt"]
