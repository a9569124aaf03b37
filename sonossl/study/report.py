"""Tables and ``report.html`` for an evaluation or a whole study folder (the statistics are
:mod:`sonossl.study.stats`).

Inputs (only ``results.csv`` is required; a missing file or column skips that part of the report):

    DIR/results.csv    init,protocol,fraction,seed,n_train,macro_f1,balanced_accuracy,accuracy
                       [,dataset,pretrain,method,pairs,data_variant,selection,classes_missed,chosen]
    DIR/runs.csv       init,protocol,fraction,seed,dataset,run_dir[,selection]  (run_dir relative to
                       DIR, holding predictions.csv and confusion.png)
    DIR/pretrain/<name>/stats.jsonl   pretraining logs ("kind": "step" | "epoch" lines)
    DIR/study.json     {"name": ..., "context": {...}}

Outputs:

``summary.csv`` and ``differences.csv``: see :mod:`sonossl.study.stats`. ``report.html``: one
self-contained page with the tables, figures and what won.

A run recorded twice (same cell and seed, e.g. after a resume) counts once: the last record.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from sonossl.errors import SonosslError
from sonossl.models.init import health_line
from sonossl.outputs import atomic_write, atomic_write_text
from sonossl.study.stats import (BASELINES, BOOTSTRAP_RESAMPLES, fold_selection, load_results, order_inits,
                                  paired_differences, summarise)
from sonossl.study.figures import (
    Figure,
    confusion_figure,
    curve_figures,
    file_data_uri,
    pretrain_figure,
    protocol_name,
    ranking_figures,
)

TEMPLATES = Path(__file__).parent / "templates"

__all__ = ["format_table", "what_won", "write_report", "read_study_description"]


def _ci(lo: float, hi: float, signed: bool = False) -> str:
    if np.isnan(lo):
        return "n<2"
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(lo)} to {f.format(hi)}"


def what_won(summary: pd.DataFrame, diffs: pd.DataFrame, metric: str = "macro_f1") -> list[dict]:
    """The best init (highest mean ``metric``) per (dataset,) protocol and fraction, in words.

    Returns one dict per (dataset, protocol): {dataset, protocol, title, cells}; each cell:
    {fraction, best, where, score, runner_up, headline, comparisons: [{numbers, words, text, verdict}]}
    where verdict is 'real', 'noise' or 'undetermined' and headline/text are the whole sentences."""
    multi = "dataset" in summary.columns and summary["dataset"].nunique() > 1
    groups = ["dataset", "protocol"] if "dataset" in summary.columns else ["protocol"]
    out = []
    for key, g in summary.groupby(groups, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        dataset = key[0] if len(key) == 2 else ""
        protocol = key[-1]
        items = []
        for fraction, cell in g.groupby("fraction", sort=True):
            cell = cell.sort_values(f"{metric}_mean", ascending=False)
            best = cell.iloc[0]
            label = metric.replace("_", " ").replace(" f1", " F1")
            where = f"{fraction:g} % of the labels"
            if pd.notna(best.get("n_train")):
                where += f" ({int(best['n_train'])} training images)"
            score = (f"{label} {best[f'{metric}_mean']:.3f} (95 % CI {_ci(best[f'{metric}_ci_low'], best[f'{metric}_ci_high'])}, "
                     f"{int(best['runs'])} seed{'s' if best['runs'] != 1 else ''})")
            runner_up = f"runner-up {cell.iloc[1]['init']} {cell.iloc[1][f'{metric}_mean']:.3f}" if len(cell) > 1 else ""
            headline = f"{where}: {best['init']} scored {score}" + (f"; {runner_up}" if runner_up else "")
            comparisons = []
            for baseline in BASELINES:
                if baseline == best["init"] or baseline not in set(cell["init"]) or diffs.empty:
                    continue
                sel = (diffs["init"] == best["init"]) & (diffs["baseline"] == baseline) & (diffs["protocol"] == protocol) \
                    & np.isclose(diffs["fraction"], fraction)
                if "dataset" in diffs.columns and dataset:
                    sel &= diffs["dataset"] == dataset
                if not sel.any():
                    continue
                d = diffs[sel].iloc[0]
                name = "ImageNet" if baseline == "imagenet" else "random initialisation"
                if d["pairs"] < 2:
                    verdict, words = "undetermined", "cannot tell with fewer than 2 paired seeds"
                elif d["real"]:
                    verdict, words = "real", "a real difference (both intervals exclude zero)"
                else:
                    verdict, words = "noise", f"not distinguishable from noise with {int(d['pairs'])} seeds"
                p = f", Wilcoxon p = {d['wilcoxon_p']:.3g}" if not np.isnan(d["wilcoxon_p"]) else ""
                numbers = (f"vs {name}: {d['diff_mean']:+.3f} (95 % t CI {_ci(d['diff_ci_low'], d['diff_ci_high'], True)}; "
                           f"bootstrap {_ci(d['boot_ci_low'], d['boot_ci_high'], True)}{p})")
                comparisons.append({"verdict": verdict, "numbers": numbers, "words": words, "text": f"{numbers}: {words}"})
            items.append({"fraction": fraction, "best": best["init"], "where": where, "score": score, "runner_up": runner_up,
                          "headline": headline, "comparisons": comparisons})
        title = protocol_name(protocol) + (f" on {dataset}" if multi else "")
        out.append({"dataset": dataset, "protocol": protocol, "title": title, "cells": items})
    return out


def format_table(summary: pd.DataFrame, diffs: pd.DataFrame, metric: str = "macro_f1") -> str:
    """The plain-text table the demo and ``sonossl report`` print: mean [95 % CI] per cell, and each
    init minus random, and each ``INIT@STRATEGY`` minus ``INIT`` (real/noise as in ``differences.csv``)."""
    multi = "dataset" in summary.columns and summary["dataset"].nunique() > 1
    width = max(14, *(len(i) for i in summary["init"]))
    lines = []
    header = (f"{'dataset':<12} " if multi else "") + \
        f"{'protocol':<9} {'fraction':>8} {'init':<{width}} {'runs':>4} {metric + ' mean [95% CI]':>28}   diff vs random (INIT@STRATEGY: vs INIT) [95% CI]"
    lines.append(header)
    lines.append("-" * len(header))
    sort = (["dataset"] if "dataset" in summary.columns else []) + ["protocol", "fraction", "init"]
    for _, r in summary.sort_values(sort).iterrows():
        ci = f"[{r[f'{metric}_ci_low']:.3f}, {r[f'{metric}_ci_high']:.3f}]" if not np.isnan(r[f"{metric}_ci_low"]) else "[n<2]"
        dtxt = ""
        if len(diffs):
            base = r["init"].split("@", 1)[0] if "@" in r["init"] else "random"
            sel = (diffs["init"] == r["init"]) & (diffs["baseline"] == base) & (diffs["protocol"] == r["protocol"]) \
                & np.isclose(diffs["fraction"], r["fraction"])
            if "dataset" in diffs.columns and "dataset" in r:
                sel &= diffs["dataset"] == r["dataset"]
            if sel.any():
                d = diffs[sel].iloc[0]
                dci = f"[{d['diff_ci_low']:+.3f}, {d['diff_ci_high']:+.3f}]" if not np.isnan(d["diff_ci_low"]) else "[n<2]"
                dtxt = f"{d['diff_mean']:+.3f} {dci}{'  real' if d['real'] else '  noise'}"
        lines.append((f"{str(r['dataset'])[:12]:<12} " if multi else "") +
                     f"{r['protocol']:<9} {r['fraction']:>7g}% {r['init']:<{width}} {int(r['runs']):>4} "
                     f"{r[f'{metric}_mean']:>12.3f} {ci:>15}   {dtxt}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- the rest of a study folder
def read_study_description(out: Path) -> dict:
    """``DIR/study.json`` as a dict ({} when absent)."""
    path = out / "study.json"
    if not path.is_file():
        return {}
    try:
        study = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SonosslError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(study, dict):
        raise SonosslError(f"{path}: expected a JSON object")
    return study


def load_pretrain_curves(out: Path) -> dict[str, list[dict]]:
    """``DIR/pretrain/<name>/stats.jsonl`` -> {name: records}. Lines that do not parse (e.g. the last
    line of a killed run) are skipped."""
    curves = {}
    for path in sorted(out.glob("pretrain/*/stats.jsonl")):
        recs = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                recs.append(rec)
        if recs:
            curves[path.parent.name] = recs
    return curves


def _confusion_from_predictions(paths: list[Path]) -> tuple[np.ndarray, list[str], int]:
    """Pooled confusion matrix (classes, classes), rows = true, from predictions.csv files
    (columns true, predicted[, p_<class>...]); class order from the p_ columns, else sorted. Also returns
    how many files were read (unreadable ones are skipped)."""
    frames = []
    for p in paths:
        try:
            f = pd.read_csv(p)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if {"true", "predicted"} <= set(f.columns):
            frames.append(f)
    if not frames:
        return np.zeros((0, 0), dtype=int), [], 0
    prob_cols = [c[2:] for c in frames[0].columns if c.startswith("p_")]
    names = prob_cols or sorted(set().union(*(set(f["true"].astype(str)) | set(f["predicted"].astype(str)) for f in frames)))
    index = {c: i for i, c in enumerate(names)}
    cm = np.zeros((len(names), len(names)), dtype=int)
    for f in frames:
        for t, p in zip(f["true"].astype(str), f["predicted"].astype(str)):
            if t in index and p in index:
                cm[index[t], index[p]] += 1
    return cm, names, len(frames)


def confusion_figures(out: Path, df: pd.DataFrame, summary: pd.DataFrame, metric: str = "macro_f1") -> list[Figure]:
    """For each (dataset,) protocol: the best init at the smallest and at the largest fraction. Its
    confusion matrix is pooled over all its seeds from each run's predictions.csv (via runs.csv); when
    no predictions.csv exists, the confusion.png of the seed whose score is closest to the cell median
    is shown instead. Skipped without ``runs.csv``."""
    path = out / "runs.csv"
    if not path.is_file():
        return []
    try:
        runs = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return []
    if not {"init", "protocol", "fraction", "seed", "run_dir"} <= set(runs.columns):
        return []
    runs["fraction"] = runs["fraction"].astype(float)
    fold_selection(runs)
    by_ds = "dataset" in summary.columns and "dataset" in runs.columns
    if by_ds:
        runs["dataset"] = runs["dataset"].fillna("").astype(str)
    multi = "dataset" in summary.columns and summary["dataset"].nunique() > 1
    figs = []
    for key, g in summary.groupby((["dataset"] if "dataset" in summary.columns else []) + ["protocol"], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        dataset, protocol = (key[0] if len(key) == 2 else ""), key[-1]
        fractions = sorted(g["fraction"].unique())
        for fraction in dict.fromkeys([fractions[0], fractions[-1]]):
            cell = g[np.isclose(g["fraction"], fraction)].sort_values(f"{metric}_mean", ascending=False)
            init = cell.iloc[0]["init"]
            sel = (runs["init"] == init) & (runs["protocol"] == protocol) & np.isclose(runs["fraction"], fraction)
            if by_ds:
                sel &= runs["dataset"] == dataset
            dirs = [(int(r.seed), out / str(r.run_dir)) for r in runs[sel].itertuples()]
            where = f"{init}, {protocol_name(protocol)}, {fraction:g} % labels" + (f" [{dataset}]" if multi else "")
            preds = [d / "predictions.csv" for _, d in dirs if (d / "predictions.csv").is_file()]
            cm, names, n_read = _confusion_from_predictions(preds) if preds else (None, [], 0)
            if names:
                uri = confusion_figure(cm, names, f"{where}\n{n_read} seed(s) pooled")
                caption = f"{n_read} seed(s) pooled; rows: true class, columns: predicted"
            else:
                pngs = {s: d / "confusion.png" for s, d in dirs if (d / "confusion.png").is_file()}
                if not pngs:
                    continue
                scores = df[(df["init"] == init) & (df["protocol"] == protocol) & np.isclose(df["fraction"], fraction)]
                if by_ds and "dataset" in df.columns:
                    scores = scores[scores["dataset"] == dataset]
                scores = scores[scores["seed"].isin(list(pngs))].set_index("seed")[metric]
                seed = int((scores - scores.median()).abs().idxmin()) if len(scores) else next(iter(pngs))
                uri = file_data_uri(pngs[seed])
                caption = f"seed {seed} (the run closest to the median of its cell)"
            figs.append(Figure("confusion", where,
                               f"Confusion matrix of the best initialisation, {where}: rows are the true class, "
                               "columns the predicted class, diagonal cells are correct predictions", uri, caption))
    return figs


# ------------------------------------------------------------------------------------------ report
def _facts(df: pd.DataFrame, summary: pd.DataFrame) -> dict[str, str]:
    """What was run, read off the results themselves."""
    facts = {}
    if "dataset" in df.columns and df["dataset"].str.len().gt(0).any():
        facts["labelled data"] = ", ".join(sorted(set(df["dataset"]) - {""}))
    inits = []
    for init in order_inits(df["init"]):
        row = summary[summary["init"] == init].iloc[0]
        desc = [f"{c.replace('_', ' ')} {row[c]}" for c in ("method", "pairs", "data_variant") if c in row and row[c]]
        inits.append(init + (f" ({', '.join(desc)})" if desc else ""))
    facts["initialisations"] = "; ".join(inits)
    facts["protocols"] = ", ".join(protocol_name(p) for p in sorted(df["protocol"].unique()))
    facts["label fractions"] = ", ".join(f"{f:g} %" for f in sorted(df["fraction"].unique()))
    facts["seeds"] = f"{df['seed'].nunique()} ({', '.join(str(s) for s in sorted(df['seed'].unique()))})"
    facts["downstream runs"] = str(len(df))
    if "classes_missed" in df.columns and (df["classes_missed"].fillna(0) > 0).any():
        bad = df[df["classes_missed"].fillna(0) > 0]
        facts["classes without an image"] = (
            f"{len(bad)} of {len(df)} runs had no training image of at least one class (a selection strategy does not "
            "see the labels): " + "; ".join(f"{r.init} {r.protocol} {r.fraction:g} % seed {r.seed}: {int(r.classes_missed)}"
                                            for r in bad.head(12).itertuples()) + ("; ..." if len(bad) > 12 else ""))
    return facts


def pretrain_warnings(summaries: dict[str, dict]) -> list[str]:
    """One line per pretraining whose ``summary.json`` says it diverged or collapsed
    (:func:`sonossl.models.init.health_line`), from ``{name: summary}``."""
    return [line for name, s in sorted(summaries.items()) if (line := health_line(name, s)) is not None]


def load_pretrain_summaries(out: Path) -> dict[str, dict]:
    """``DIR/pretrain/<name>/summary.json`` -> {name: summary} (the finished pretrainings)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("pretrain/*/summary.json"))}


def write_report(out: Path, results_csv: Path | None = None, context: dict | None = None,
                 curves: dict[str, list[dict]] | None = None, summaries: dict[str, dict] | None = None) -> dict[str, Path]:
    """Write ``summary.csv``, ``differences.csv`` and ``report.html`` into ``out``; returns their paths
    (keys summary, differences, report). ``context`` (e.g. {"data": ..., "pretraining": ...}) overrides
    ``out/study.json``'s ``context``; ``curves`` (name -> stats records, e.g. a ledger's) stand in
    for ``out/pretrain/*/stats.jsonl``, ``summaries`` (name -> summary.json) for
    ``out/pretrain/*/summary.json``: a pretraining flagged as diverged or collapsed is named among
    the report's facts."""
    out = Path(out)
    results_csv = results_csv or out / "results.csv"
    df = load_results(results_csv)
    summary = summarise(df)
    diffs = paired_differences(df)
    paths = {"summary": out / "summary.csv", "differences": out / "differences.csv", "report": out / "report.html"}
    pct = "{:g}".format  # fractions as written in results.csv (1, 12.5, 100), not 1.000000
    for table, key in ((summary, "summary"), (diffs, "differences")):
        with atomic_write(paths[key], newline="") as fh:
            table.assign(fraction=table["fraction"].map(pct)).to_csv(fh, index=False, float_format="%.6f")

    study = read_study_description(out)
    ctx = {**(study.get("context") or {}), **(context or {})}
    order = order_inits(df["init"])
    figures: list[Figure] = curve_figures(summary, order=order) + ranking_figures(summary)
    figures += confusion_figures(out, df, summary)
    pre = pretrain_figure(load_pretrain_curves(out) if curves is None else curves)
    figures += [pre] if pre else []

    warned = pretrain_warnings(load_pretrain_summaries(out) if summaries is None else summaries)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(
        title=str(study.get("name") or ""),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        context={str(k): str(v) for k, v in ctx.items()},
        facts={**_facts(df, summary), **({"pretraining warnings": " ".join(warned)} if warned else {})},
        won=what_won(summary, diffs),
        seeds_min=int(summary["runs"].min()), seeds_max=int(summary["runs"].max()),
        n_resamples=BOOTSTRAP_RESAMPLES,
        figures=figures,
        sections=[("curves", "Macro F1 against the fraction of labels"), ("ranking", "Which initialisation ranks first at each fraction"),
                  ("confusion", "Where the best models go wrong"), ("pretraining", "Pretraining curves")],
        summary=summary.to_dict("records"),
        diffs=diffs.to_dict("records"),
        has_dataset="dataset" in summary.columns and summary["dataset"].nunique() > 1,
        n_runs=len(df),
        inits=order,
    )
    atomic_write_text(paths["report"], html)
    return paths
