"""The variance-against-size table from the study ``benchmarks/variance_vs_size.yaml``.

Two pretraining sets hold the same number of frames: many clips with few frames each, and few
clips with many frames each. Each is pretrained with several seeds. The unit of replication for
the comparison between the sets is the **pretraining seed**: per (set, pretraining seed,
fraction) the linear-probe macro-F1 is first averaged over the evaluation seeds, then

- **set**: the mean over pretraining seeds, with the range (min-max) across them, which is the
  pretraining's own seed-to-seed spread;
- **gain over random**: the set's score minus random initialisation's (same evaluation seeds,
  hence the same labelled subsets), with a 95 % t interval over pretraining seeds;
- **many - few**: the difference of the two sets' means, with a Welch 95 % interval over their
  pretraining seeds (``real`` when it excludes zero).

    python benchmarks/variance_vs_size.py bench_out/vvs/study [--csv benchmarks/results/variance_vs_size.csv]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
from scipy import stats

from sonossl.study.stats import load_results, t_interval

SEED = re.compile(r"-s(\d+)$")


def random_scores(df: pd.DataFrame) -> pd.Series:
    """fraction -> random initialisation's linear-probe macro-F1, mean over evaluation seeds."""
    return df[(df["protocol"] == "linear") & (df["init"] == "random")].groupby("fraction")["macro_f1"].mean()


def per_pretraining(df: pd.DataFrame, random: pd.Series) -> pd.DataFrame:
    """(variant, pretrain_seed, fraction) -> score (mean macro-F1 over evaluation seeds) and gain
    over ``random`` (:func:`random_scores`, the same evaluation seeds)."""
    lin = df[df["protocol"] == "linear"]
    rows = []
    for (init, variant, fraction), g in lin[lin["init"] != "random"].groupby(["init", "data_variant", "fraction"]):
        seed = SEED.search(init)
        rows.append({"variant": variant, "pretrain_seed": int(seed.group(1)) if seed else 0, "fraction": fraction,
                     "eval_seeds": len(g), "score": g["macro_f1"].mean(), "gain": g["macro_f1"].mean() - random[fraction]})
    return pd.DataFrame(rows)


def table(per: pd.DataFrame, random: pd.Series, a: str, b: str) -> pd.DataFrame:
    rows = []
    for fraction, g in per.groupby("fraction"):
        row = {"fraction": fraction, "random": random[fraction]}
        for v in (a, b):
            s = g[g["variant"] == v]
            _, lo, hi = t_interval(s["gain"].to_numpy())
            row.update({f"{v}": s["score"].mean(), f"{v}_min": s["score"].min(), f"{v}_max": s["score"].max(),
                        f"{v}_pretrain_seeds": len(s), f"{v}_gain": s["gain"].mean(), f"{v}_gain_ci_low": lo,
                        f"{v}_gain_ci_high": hi})
        sa, sb = g[g["variant"] == a]["score"].to_numpy(), g[g["variant"] == b]["score"].to_numpy()
        test = stats.ttest_ind(sa, sb, equal_var=False)
        ci = test.confidence_interval(0.95)
        row.update({"diff": sa.mean() - sb.mean(), "diff_ci_low": ci.low, "diff_ci_high": ci.high, "p_welch": test.pvalue,
                    "real": bool(ci.low > 0 or ci.high < 0)})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(t: pd.DataFrame, a: str, b: str) -> str:
    lines = [f"| labels | random | {a} (range over seeds) | gain over random | {b} (range) | gain over random | "
             f"{a} - {b} (Welch 95 % CI) |", "|---|---|---|---|---|---|---|"]
    for r in t.to_dict("records"):
        cells = [f"{r['fraction']:g} %", f"{r['random']:.3f}"]
        for v in (a, b):
            cells += [f"{r[v]:.3f} ({r[v + '_min']:.3f}-{r[v + '_max']:.3f})",
                      f"{r[v + '_gain']:+.3f} [{r[v + '_gain_ci_low']:+.3f}, {r[v + '_gain_ci_high']:+.3f}]"]
        cells.append(f"{r['diff']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}] "
                     + ("real" if r["real"] else "noise"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="the study folder (its results.csv)")
    ap.add_argument("--variants", nargs=2, default=["many-clips", "few-clips"], metavar=("A", "B"),
                    help="the two data variants compared, A - B (default: many-clips few-clips)")
    ap.add_argument("--csv", type=Path, default=None, help="write the table as CSV here (default: none)")
    args = ap.parse_args()
    df = load_results(args.study / "results.csv")
    random = random_scores(df)
    per = per_pretraining(df, random)
    a, b = args.variants
    t = table(per, random, a, b)
    eval_seeds = sorted(int(s) for s in df["seed"].unique())
    pretrain_seeds = sorted(int(s) for s in per["pretrain_seed"].unique())
    print(f"linear probe macro-F1 (test split), mean over evaluation seeds {eval_seeds}, then over pretraining seeds "
          f"{pretrain_seeds}")
    print(markdown(t, a, b))
    print("\nper pretraining:")
    print(per.sort_values(["fraction", "variant", "pretrain_seed"]).to_string(index=False, float_format="%.3f"))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        t.to_csv(args.csv, index=False, float_format="%.6f")
        per.to_csv(args.csv.with_name(args.csv.stem + "_per_pretraining.csv"), index=False, float_format="%.6f")
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
