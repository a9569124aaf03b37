"""The fine-tuning table of issue 21: random initialisation against the 2000-step BarlowTwins
backbone, each with its rate chosen on valid (the finetune-recipes study), and each fine-tuning
lever for the pretrained start (``benchmarks/finetune_levers.sh``), paired by seed.

    python benchmarks/finetune_levers.py STUDY_DIR LEVERS_DIR [--out benchmarks/results]

Prints a markdown table of test macro-F1 (scored once per run) with paired differences
(t 95 % CI and bootstrap CI, both excluding zero = real) and writes ``finetune_levers.csv`` (every
run) and ``finetune_levers_differences.csv`` to ``--out``. Only complete pairs are compared.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pandas as pd

from sonossl.study.stats import bootstrap_interval, t_interval

LEVERS = {"head10": "head lr x10", "lpft": "LP-FT", "freezebn": "frozen BN statistics"}


def study_rows(study: Path) -> list[dict]:
    """The study's completed evaluations (records/done/eval*.json) as result rows."""
    rows = []
    for f in sorted((study / "records" / "done").glob("eval*.json")):
        r = json.loads(f.read_text())["row"]
        init = "random" if r["init"] == "random" else "barlowtwins"
        rows.append({"init": init, "protocol": r["protocol"], "fraction": float(r["fraction"]), "seed": int(r["seed"]),
                     "macro_f1": float(r["macro_f1"]), "chosen": r.get("chosen", "")})
    return rows


def curves(study: Path, fraction: float = 10.0) -> pd.DataFrame:
    """Validation balanced accuracy along fine-tuning (the candidate valid chose), per init and
    optimiser step, mean over the seeds: where the pretrained start leads and where it is caught."""
    rows = []
    for f in sorted((study / "records" / "done").glob("eval*finetune*.json")):
        r = json.loads(f.read_text())["row"]
        if float(r["fraction"]) != fraction:
            continue
        for e in json.loads((study / r["run_dir"] / "history.json").read_text()):
            rows.append({"init": "random" if r["init"] == "random" else "barlowtwins", "seed": int(r["seed"]),
                         "step": e["step"], "val": e["val_balanced_accuracy"]})
    df = pd.DataFrame(rows)
    return df.groupby(["step", "init"]).val.mean().unstack("init")


def lever_rows(levers: Path) -> list[dict]:
    rows = []
    for name in LEVERS:
        for res in sorted((levers / name).glob("s*/results.csv")):
            for r in csv.DictReader(open(res, newline="")):
                rows.append({"init": f"barlowtwins+{name}", "protocol": r["protocol"], "fraction": float(r["fraction"]),
                             "seed": int(r["seed"]), "macro_f1": float(r["macro_f1"]), "chosen": "lr=0.0003"})
    return rows


def paired(df: pd.DataFrame, a: str, b: str, protocol: str, fraction: float) -> dict | None:
    """``a`` minus ``b`` on the seeds both have."""
    sel = df[(df.protocol == protocol) & (df.fraction == fraction)]
    x = sel[sel.init == a].set_index("seed").macro_f1
    y = sel[sel.init == b].set_index("seed").macro_f1
    seeds = sorted(set(x.index) & set(y.index))
    if not seeds:
        return None
    d = (x.loc[seeds] - y.loc[seeds]).to_numpy(dtype=float)
    mean, lo, hi = t_interval(d)
    blo, bhi = bootstrap_interval(d)
    real = bool(len(d) > 1 and (lo > 0 or hi < 0) and (blo > 0 or bhi < 0))
    return {"init": a, "against": b, "protocol": protocol, "fraction": fraction, "pairs": len(d),
            "a": float(x.loc[seeds].mean()), "b": float(y.loc[seeds].mean()), "diff": mean, "t_low": lo, "t_high": hi,
            "boot_low": blo, "boot_high": bhi, "real": real}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="the finetune-recipes study folder")
    ap.add_argument("levers", type=Path, help="the folder finetune_levers.sh wrote")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where the csv files go")
    a = ap.parse_args()
    df = pd.DataFrame(study_rows(a.study) + lever_rows(a.levers))
    a.out.mkdir(parents=True, exist_ok=True)
    df.sort_values(["protocol", "fraction", "init", "seed"]).to_csv(a.out / "finetune_levers.csv", index=False)
    diffs = []
    for fraction in sorted(df[df.protocol == "finetune"].fraction.unique()):
        for init in ["barlowtwins", *(f"barlowtwins+{n}" for n in LEVERS)]:
            for base in ("random", "barlowtwins"):
                if init != base and (d := paired(df, init, base, "finetune", fraction)) is not None:
                    diffs.append(d)
    out = pd.DataFrame(diffs)
    out.to_csv(a.out / "finetune_levers_differences.csv", index=False)
    print("| labels | start | seeds | its test macro-F1 | random's | difference [t 95 % CI] | bootstrap CI | real? "
          "| against plain BarlowTwins |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (fraction, init), g in out.groupby(["fraction", "init"], sort=False):
        r = g[g.against == "random"].iloc[0]
        bt = g[g.against == "barlowtwins"]
        vs_bt = (f"{bt['diff'].iloc[0]:+.3f} [{bt.t_low.iloc[0]:+.3f}, {bt.t_high.iloc[0]:+.3f}]"
                 f"{' real' if bt.real.iloc[0] else ''}") if len(bt) else "-"
        name = "BarlowTwins, rate chosen on valid" if init == "barlowtwins" else \
            f"BarlowTwins + {LEVERS[init.split('+')[1]]} (lr 3e-4)"
        print(f"| {fraction:g} % | {name} | {r.pairs} | {r.a:.3f} | {r.b:.3f} | {r['diff']:+.3f} [{r.t_low:+.3f}, "
              f"{r.t_high:+.3f}] | [{r.boot_low:+.3f}, {r.boot_high:+.3f}] | {'**real**' if r.real else 'noise'} "
              f"| {vs_bt} |")
    chosen = df[df.protocol == "finetune"].groupby(["init", "fraction"]).chosen.agg(
        lambda c: {k: int(v) for k, v in c.value_counts().items()})
    print("\nrates chosen on valid:", chosen.to_dict())
    c = curves(a.study)
    c.to_csv(a.out / "finetune_curves_10.csv")
    print("\nvalid balanced accuracy along fine-tuning at 10 % (mean over seeds):")
    print(c.iloc[[0, 2, 4, 6, 8, 10, 12, 14, 16, 19]].round(3).to_string())
    ft = df[df.protocol == "finetune"]
    for f in sorted(ft.fraction.unique()):
        have = [set(ft[(ft.init == i) & (ft.fraction == f)].seed) for i in ft.init.unique()]
        print(f"{f:g} %: seeds every start has: {sorted(set.intersection(*have))}")

if __name__ == "__main__":
    main()
