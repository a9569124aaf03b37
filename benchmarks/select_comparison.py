"""Which images to label, measured: selection strategies against the stratified random draw.

For each init (random initialisation, and each ``--pretrained`` backbone) and each strategy,
``sonossl evaluate --selection STRATEGY`` runs the linear probe at the lowest budgets (fractions
of the train split; with 100 train images per class, 5 / 10 / 20 % are 5 / 10 / 20 images per
class on average) over ``--seeds``. The strategy sees the init's own features and not the labels;
the baseline (``random``) is the protocol's stratified random draw, which does see the labels
(one image per class at least), so a strategy's gain over it is a conservative estimate of its
gain over a random draw a user could actually make.

Printed (and written to ``OUT/comparison.md``): per init x fraction, macro-F1 mean [95 % t CI]
of each selection, and each strategy minus the random draw paired by seed (t and bootstrap
95 % CIs, Wilcoxon p, from :func:`sonossl.study.stats.paired_differences`), with how many runs
drew no image of some class.

    python benchmarks/select_comparison.py --labels DIR --out DIR [--pretrained RUN ...]
        [--strategies typiclust,probcover] [--pretrained-strategies S] [--fractions 5,10,20] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from common import machine, write_json
from sonossl.config import EvaluateConfig
from sonossl.downstream.evaluate import evaluate
from sonossl.study.stats import load_results, paired_differences, summarise


def run(labels: Path, out: Path, inits: dict[str, list[str]], fractions: list[float], seeds: list[int],
        image_size: int) -> pd.DataFrame:
    """inits: {init: strategies compared with the random draw for it}."""
    frames = []
    for init, strategies in inits.items():
        for sel in ["random", *strategies]:
            name = f"{Path(init).name if init != 'random' else 'random'}-{sel}"
            cfg = EvaluateConfig(labels=labels, init=init, protocol=["linear"], fractions=fractions, seeds=seeds,
                                 image_size=image_size, selection=sel, out=out / name, accelerator="cpu",
                                 backbone="resnet18" if init == "random" else None)
            t = time.time()
            evaluate(cfg, resume=True, progress=None, save_models=False)
            print(f"{name}: {time.time() - t:.0f} s", flush=True)
            frames.append(pd.read_csv(cfg.out / "results.csv"))
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(out / "results.csv", index=False)
    return load_results(out / "results.csv")


def table(df: pd.DataFrame) -> str:
    summary = summarise(df).set_index(["init", "fraction"])
    diffs = paired_differences(df)
    lines = ["| init | labels | selection | n | macro-F1 [95 % CI] | minus random draw [t 95 % CI] | bootstrap 95 % CI | "
             "Wilcoxon p | runs with a class missing |", "|---|---|---|---|---|---|---|---|---|"]
    for (init, fraction), r in summary.sort_index().iterrows():
        base, _, sel = init.partition("@")
        missed = df[(df["init"] == init) & (df["fraction"] == fraction)]["classes_missed"]
        cells = [base, f"{fraction:g} %", sel or "random (stratified)", str(int(r["n_train"])),
                 f"{r['macro_f1_mean']:.3f} [{r['macro_f1_ci_low']:.3f}, {r['macro_f1_ci_high']:.3f}]"]
        d = diffs[(diffs["init"] == init) & (diffs["baseline"] == base) & (diffs["fraction"] == fraction)]
        if len(d):
            d = d.iloc[0]
            cells += [f"{d['diff_mean']:+.3f} [{d['diff_ci_low']:+.3f}, {d['diff_ci_high']:+.3f}]"
                      + (" real" if d["real"] else ""),
                      f"[{d['boot_ci_low']:+.3f}, {d['boot_ci_high']:+.3f}]", f"{d['wilcoxon_p']:.3g}"]
        else:
            cells += ["", "", ""]
        cells.append(f"{int((missed > 0).sum())} of {len(missed)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labels", required=True, type=Path, help="labelled set (train/valid/test.csv)")
    p.add_argument("--out", required=True, type=Path, help="folder of the evaluations and comparison.md")
    p.add_argument("--pretrained", nargs="*", default=[], help="pretrain run folders or backbone.pt files (default none)")
    p.add_argument("--strategies", default="typiclust,probcover", help="compared with the random draw (default typiclust,probcover)")
    p.add_argument("--pretrained-strategies", help="the same for the pretrained inits (default --strategies)")
    p.add_argument("--fractions", default="5,10,20", help="percent of the train split (default 5,10,20)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="paired seeds (default 0,1,2,3,4)")
    p.add_argument("--image-size", type=int, default=64, help="pixels (default 64)")
    p.add_argument("--table-only", action="store_true", help="only tabulate OUT/*/results.csv (runs made before, e.g. in "
                   "parallel with the same settings by sonossl evaluate)")
    a = p.parse_args()
    t0 = time.time()
    a.out.mkdir(parents=True, exist_ok=True)
    inits = {"random": a.strategies.split(","), **{p: (a.pretrained_strategies or a.strategies).split(",") for p in a.pretrained}}
    if a.table_only:
        pd.concat([pd.read_csv(f) for f in sorted(a.out.glob("*/results.csv"))]).to_csv(a.out / "results.csv", index=False)
        df = load_results(a.out / "results.csv")
    else:
        df = run(a.labels, a.out, inits, [float(f) for f in a.fractions.split(",")], [int(s) for s in a.seeds.split(",")],
                 a.image_size)
    text = table(df)
    info = {**machine(), "wall_s": round(time.time() - t0, 1)}
    (a.out / "comparison.md").write_text(text + "\n")
    write_json(a.out / "comparison.json", info)
    print(text)
    print(f"{info}")


if __name__ == "__main__":
    main()
