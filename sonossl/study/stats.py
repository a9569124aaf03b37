"""Statistics of an evaluation or a study: ``results.csv`` in, per-cell summaries and paired
differences out (what :mod:`sonossl.study.report` renders into tables and ``report.html``).

``summary.csv``: one row per cell (dataset x init x protocol x fraction): runs, the pretraining
descriptors, and for each metric the mean, std and a 95 % confidence interval over seeds
(Student t, n - 1 degrees of freedom).

``differences.csv``: each init against each baseline present (``imagenet`` and ``random``), and
each ``INIT@STRATEGY`` (an init whose labelled subsets a selection strategy chose) against the
same ``INIT`` with the stratified random draw, per cell, paired by seed (the same seed draws the
same labelled subset, so the pairing removes the subset-to-subset variation). For the paired differences in macro F1 it gives

- the mean and a 95 % Student t interval;
- a 95 % percentile bootstrap interval: ``BOOTSTRAP_RESAMPLES`` resamples with replacement of the
  seed-paired differences, RNG seeded with ``BOOTSTRAP_SEED`` so the file is reproducible. With
  few seeds it under-covers (with 3 seeds there are only 10 distinct resamples), so it is a
  distribution-free check on the t interval, not a replacement;
- the two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``; exact for small n),
  computed wherever there are at least 2 pairs and not all differences are zero. With n non-zero
  differences the exact p can never go below 2 / 2**n, i.e. never below 0.05 for n < 6; the
  ``note`` column says so for those cells;
- ``real``: True only when *both* the t and the bootstrap interval exclude zero. Otherwise the
  difference is reported as noise at this number of seeds (which is not evidence of no effect).

A run recorded twice (same cell and seed, e.g. after a resume) counts once: the last record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sonossl.config import BASELINE_INITS
from sonossl.downstream.protocol import selection_label
from sonossl.errors import SonosslError

METRICS = ["macro_f1", "balanced_accuracy", "accuracy"]
DESCRIPTORS = ["pretrain", "method", "pairs", "data_variant"]
BASELINES = tuple(reversed(BASELINE_INITS))  # imagenet first, then random
BOOTSTRAP_RESAMPLES = 5000
BOOTSTRAP_SEED = 0
WILCOXON_MIN_N = 6  # the smallest n at which an exact two-sided signed-rank p can reach 0.05 (2/2**6 = 0.031)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t confidence interval; (mean, nan, nan) for fewer than two values."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def bootstrap_interval(values: np.ndarray, level: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (n,): the (1-level)/2 and (1+level)/2
    quantiles of the means of ``n_resamples`` resamples of size n drawn with replacement, from
    ``numpy.random.default_rng(seed)``. (nan, nan) for fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wilcoxon_test(values: np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank test of paired differences ``values`` (n,) against zero.

    Returns (p, note). p is nan with fewer than 2 values or when every difference is zero; zero
    differences are dropped (scipy's ``zero_method="wilcox"``). The note explains a p that cannot
    be small: with n non-zero differences the exact p is at least 2 / 2**n (0.25 for n = 3)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), f"{len(values)} paired seed(s): no test"
    nonzero = int(np.count_nonzero(values))
    if nonzero == 0:
        return float("nan"), "all paired differences are zero: no test"
    p = float(stats.wilcoxon(values).pvalue)
    if nonzero < WILCOXON_MIN_N:
        return p, (f"only {nonzero} non-zero paired difference(s): the exact two-sided p cannot go below "
                   f"{2 / 2 ** nonzero:.3g}, so it cannot reach 0.05 whatever the effect; read the intervals")
    return p, ""


def load_results(path: Path) -> pd.DataFrame:
    """``results.csv`` -> DataFrame; descriptor/dataset columns, when present, have '' for missing values."""
    if not path.is_file():
        raise SonosslError(f"{path}: results.csv not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SonosslError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in ["init", "protocol", "fraction", "seed", *METRICS] if c not in df.columns]
    if missing:
        raise SonosslError(f"{path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise SonosslError(f"{path}: no results yet")
    for c in ["dataset", *DESCRIPTORS]:
        if c in df.columns:
            df[c] = df[c].fillna("").astype(str)
    df["init"] = df["init"].astype(str)
    fold_selection(df)
    df["protocol"] = df["protocol"].astype(str)
    df["fraction"] = df["fraction"].astype(float)
    return df.drop_duplicates(subset=_cell_keys(df) + ["seed"], keep="last").reset_index(drop=True)


def fold_selection(df: pd.DataFrame) -> None:
    """In place: an init evaluated with a selection strategy (column ``selection``, not ``random``)
    becomes ``INIT@STRATEGY``, so it is summarised and compared as an init of its own."""
    if "selection" in df.columns:
        sel = df["selection"].fillna("random").astype(str)
        df["init"] = [selection_label(i, s) for i, s in zip(df["init"].astype(str), sel)]


def _cell_keys(df: pd.DataFrame) -> list[str]:
    return (["dataset"] if "dataset" in df.columns else []) + ["init", "protocol", "fraction"]


def order_inits(inits) -> list[str]:
    """Baselines first (random, imagenet), then the pretrainings alphabetically."""
    inits = set(inits)
    return [b for b in BASELINE_INITS if b in inits] + sorted(inits - set(BASELINE_INITS))


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset,) init, protocol, fraction: runs, n_train, descriptors, what
    ``select_on_valid`` chose (``chosen``: each value with its count of seeds, when a grid was
    declared), and per metric ``{m}_mean``, ``{m}_std``, ``{m}_ci_low``, ``{m}_ci_high`` (95 % t over seeds)."""
    rows = []
    for key, g in df.groupby(_cell_keys(df), sort=True):
        row = dict(zip(_cell_keys(df), key))
        row.update({"runs": len(g), "n_train": int(g["n_train"].iloc[0]) if "n_train" in g and pd.notna(g["n_train"].iloc[0]) else None})
        for c in DESCRIPTORS:
            if c in g:
                row[c] = next((v for v in g[c] if v), "")
        chosen = g["chosen"].fillna("").astype(str) if "chosen" in g else None
        if chosen is not None and (chosen != "").any():  # what select_on_valid chose, over the cell's seeds
            row["chosen"] = "; ".join(f"{v} x{n}" for v, n in chosen.value_counts(sort=True).items())
        for m in METRICS:
            mean, lo, hi = t_interval(g[m].to_numpy())
            row.update({f"{m}_mean": mean, f"{m}_std": float(g[m].std(ddof=1)) if len(g) > 1 else float("nan"),
                        f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def comparisons(inits: set[str]) -> list[tuple[str, str]]:
    """(baseline, init) pairs: every init against each baseline present, and each ``INIT@STRATEGY``
    against the same ``INIT`` with the stratified random draw (the selection strategy's effect)."""
    pairs = [(b, i) for b in BASELINES if b in inits for i in order_inits(inits - {b})]
    for i in order_inits(inits):
        base = i.split("@", 1)[0]
        if "@" in i and base in inits and base not in BASELINES:
            pairs.append((base, i))
    return pairs


def paired_differences(df: pd.DataFrame, metric: str = "macro_f1", n_resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> pd.DataFrame:
    """Each init minus each baseline present (imagenet, random), and each ``INIT@STRATEGY`` minus
    ``INIT`` (:func:`comparisons`), paired on (dataset, protocol, fraction, seed). Columns: [dataset,] init, baseline, protocol, fraction, pairs, diff_mean,
    diff_std, diff_ci_low, diff_ci_high (t), boot_ci_low, boot_ci_high, wilcoxon_p, real, note."""
    ds = ["dataset"] if "dataset" in df.columns else []
    pair_keys = ds + ["protocol", "fraction", "seed"]
    rows = []
    for baseline, init in comparisons(set(df["init"])):
        base = df[df["init"] == baseline].set_index(pair_keys)[metric]
        cur = df[df["init"] == init].set_index(pair_keys)[metric]
        joined = pd.concat([cur.rename("x"), base.rename("b")], axis=1, join="inner").reset_index()
        for key, g in joined.groupby(ds + ["protocol", "fraction"], sort=True):
            diff = (g["x"] - g["b"]).to_numpy(dtype=float)
            mean, lo, hi = t_interval(diff)
            blo, bhi = bootstrap_interval(diff, n_resamples=n_resamples, seed=seed)
            p, note = wilcoxon_test(diff)
            real = bool(len(diff) > 1 and (lo > 0 or hi < 0) and (blo > 0 or bhi < 0))
            rows.append({**dict(zip(ds + ["protocol", "fraction"], key)), "init": init, "baseline": baseline,
                         "pairs": len(diff), "diff_mean": mean,
                         "diff_std": float(diff.std(ddof=1)) if len(diff) > 1 else float("nan"),
                         "diff_ci_low": lo, "diff_ci_high": hi, "boot_ci_low": blo, "boot_ci_high": bhi,
                         "wilcoxon_p": p, "real": real, "note": note})
    cols = ds + ["init", "baseline", "protocol", "fraction", "pairs", "diff_mean", "diff_std", "diff_ci_low",
                 "diff_ci_high", "boot_ci_low", "boot_ci_high", "wilcoxon_p", "real", "note"]
    return pd.DataFrame(rows, columns=cols)
