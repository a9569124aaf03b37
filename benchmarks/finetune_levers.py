"""The fine-tuning table of issue 21: random initialisation against the BarlowTwins backbone of a
study or demo folder, with the published recipe (the study's own runs) and each fine-tuning lever
(``benchmarks/finetune_levers.sh``), every run's rate chosen on valid, paired by seed.

    python benchmarks/finetune_levers.py STUDY_DIR LEVERS_DIR [--out DIR]

Prints, per label fraction, a markdown table of test macro-F1 (each run's test split scored once,
by the candidate valid chose) with paired differences against random initialisation's published
recipe and against the same init's published recipe (t 95 % CI and bootstrap CI; both excluding
zero = real), then the comparison a user of the levers would make: each init's recipe chosen per
seed on the valid split among all it ran. Writes ``finetune_levers.csv`` (every run) and
``finetune_levers_differences.csv`` to ``--out``. Only complete pairs are compared.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pandas as pd

from sonossl.study.stats import bootstrap_interval, t_interval

RECIPES = {"plain": "published recipe", "head10": "head lr x10", "lpft": "LP-FT", "freezebn": "frozen BN statistics"}
INITS = {"pretrained": "barlowtwins", "random": "random"}


def study_rows(study: Path) -> list[dict]:
    """The study's completed fine-tuning runs (records/done/eval*.json), the published recipe."""
    rows = []
    for f in sorted((study / "records" / "done").glob("eval*.json")):
        r = json.loads(f.read_text())["row"]
        if r["protocol"] != "finetune":
            continue
        run = json.loads((study / r["run_dir"] / "run.json").read_text())
        rows.append({"init": "random" if r["init"] == "random" else "barlowtwins", "recipe": "plain",
                     "fraction": float(r["fraction"]), "seed": int(r["seed"]), "macro_f1": float(r["macro_f1"]),
                     "valid": float(run["best_val_balanced_accuracy"]), "chosen": r.get("chosen", "")})
    return rows


def lever_rows(levers: Path) -> list[dict]:
    """``LEVERS/<init>/<recipe>/s<seed>/``: one evaluate folder per lever and seed."""
    rows = []
    for folder, init in INITS.items():
        for recipe in RECIPES:
            for res in sorted((levers / folder / recipe).glob("s*/results.csv")):
                for r in csv.DictReader(open(res, newline="")):
                    run = res.parent / f"{r['init']}_finetune_f{r['fraction']}_s{r['seed']}" / "run.json"
                    rows.append({"init": init, "recipe": recipe, "fraction": float(r["fraction"]), "seed": int(r["seed"]),
                                 "macro_f1": float(r["macro_f1"]),
                                 "valid": float(json.loads(run.read_text())["best_val_balanced_accuracy"]),
                                 "chosen": r["chosen"]})
    return rows


def paired(x: pd.Series, y: pd.Series) -> dict | None:
    """``x`` minus ``y`` (each indexed by seed) on the seeds both have."""
    seeds = sorted(set(x.index) & set(y.index))
    if not seeds:
        return None
    d = (x.loc[seeds] - y.loc[seeds]).to_numpy(dtype=float)
    mean, lo, hi = t_interval(d)
    blo, bhi = bootstrap_interval(d)
    real = bool(len(d) > 1 and (lo > 0 or hi < 0) and (blo > 0 or bhi < 0))
    return {"pairs": len(d), "a": float(x.loc[seeds].mean()), "b": float(y.loc[seeds].mean()), "diff": mean,
            "t_low": lo, "t_high": hi, "boot_low": blo, "boot_high": bhi, "real": real,
            "ahead": int((d > 0).sum())}


def ci(d: dict | None) -> str:
    if d is None:
        return "-"
    return (f"{d['diff']:+.3f} [{d['t_low']:+.3f}, {d['t_high']:+.3f}] (boot [{d['boot_low']:+.3f}, {d['boot_high']:+.3f}],"
            f" {d['ahead']}/{d['pairs']} ahead){' **real**' if d['real'] else ''}")


def chosen_on_valid(df: pd.DataFrame) -> pd.DataFrame:
    """Per init, fraction and seed, the run whose recipe had the best validation score (the first
    in :data:`RECIPES` order on a tie), with its test score: what a user choosing the recipe on
    valid would get, on the seeds where the init ran every recipe. ``recipe`` keeps the one chosen."""
    ran = df.groupby("init").recipe.nunique()
    complete = df.groupby(["init", "fraction", "seed"]).recipe.transform("nunique") == df.init.map(ran)
    df = df[complete]  # only seeds where the init has every recipe it ran
    ranked = df.assign(rank=df.recipe.map({r: i for i, r in enumerate(RECIPES)})).sort_values("rank", kind="stable")
    return ranked.loc[ranked.groupby(["init", "fraction", "seed"], sort=False).valid.idxmax()].drop(columns="rank")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="the study or demo folder the levers started from")
    ap.add_argument("levers", type=Path, help="the folder finetune_levers.sh wrote")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where the csv files go")
    a = ap.parse_args()
    df = pd.DataFrame(study_rows(a.study) + lever_rows(a.levers))
    a.out.mkdir(parents=True, exist_ok=True)
    df.sort_values(["fraction", "init", "recipe", "seed"]).to_csv(a.out / "finetune_levers.csv", index=False)
    picked = chosen_on_valid(df)  # its "chosen" column: the recipe valid chose, not the rate
    full = pd.concat([df, picked.assign(chosen=picked.recipe.map(RECIPES), recipe="chosen on valid")])
    cell = lambda init, recipe, f: full[(full.init == init) & (full.recipe == recipe) & (full.fraction == f)]  # noqa: E731
    by = lambda init, recipe, f: cell(init, recipe, f).set_index("seed").macro_f1  # noqa: E731
    diffs = []
    for f in sorted(full.fraction.unique(), reverse=True):
        print(f"\n{f:g} % labels. Test macro-F1, mean over seeds; differences paired by seed\n")
        print("| init | recipe | seeds | test macro-F1 | chosen on valid | minus random, published recipe "
              "| minus the same init, published recipe |")
        print("|---|---|---|---|---|---|---|")
        for init in ("random", "barlowtwins"):
            for recipe in [*RECIPES, "chosen on valid"]:
                x = by(init, recipe, f)
                if x.empty:
                    continue
                vs_random = paired(x, by("random", "plain", f)) if (init, recipe) != ("random", "plain") else None
                vs_own = paired(x, by(init, "plain", f)) if recipe != "plain" else None
                for against, d in (("random plain", vs_random), (f"{init} plain", vs_own)):
                    if d is not None:
                        diffs.append({"fraction": f, "init": init, "recipe": recipe, "against": against, **d})
                counts = ", ".join(f"{k} x{v}" for k, v in cell(init, recipe, f).chosen.value_counts().items())
                print(f"| {init} | {RECIPES.get(recipe, recipe)} | {len(x)} | {x.mean():.3f} | {counts} | {ci(vs_random)} "
                      f"| {ci(vs_own)} |")
        if (d := paired(by("barlowtwins", "chosen on valid", f), by("random", "chosen on valid", f))) is not None:
            diffs.append({"fraction": f, "init": "barlowtwins", "recipe": "chosen on valid", "against": "random chosen on valid", **d})
            print(f"\neach init's recipe chosen on valid, BarlowTwins minus random: {ci(d)}")
    pd.DataFrame(diffs).to_csv(a.out / "finetune_levers_differences.csv", index=False)


if __name__ == "__main__":
    main()
