"""The report's figures, each a PNG embedded as a ``data:`` URI (nothing is fetched when the page opens).

- ``curve_figures``: metric against label fraction, one line per init with its 95 % CI band (clipped to
  [0, 1] for display), per protocol.
- ``ranking_figures``: init x fraction heat-map of the mean metric, each cell annotated with its rank.
- ``confusion_figure``: a confusion matrix (counts, rows = true class) from arrays.
- ``pretrain_figure``: pretraining loss per step and kNN accuracy per epoch, one line per pretraining,
  with random initialisation's kNN as a dashed reference line.

All functions draw with matplotlib's Agg backend and close their figures.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROTOCOL_NAMES = {"linear": "linear probe (frozen backbone)", "finetune": "full fine-tuning"}


@dataclass
class Figure:
    """One embedded figure: ``uri`` is ``data:image/png;base64,...``; ``alt`` describes it for screen readers."""

    section: str
    title: str
    alt: str
    uri: str
    caption: str = ""


def protocol_name(protocol: str) -> str:
    return PROTOCOL_NAMES.get(protocol, protocol)


def _plt():
    from sonossl.plotting import pyplot

    return pyplot()


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def file_data_uri(path: Path) -> str:
    """A PNG file on disk as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def init_colors(inits: list[str]) -> dict[str, tuple]:
    """One fixed colour per init, the same in every figure (baselines grey/black-ish first)."""
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    fixed = {"random": (0.45, 0.45, 0.45, 1.0), "imagenet": (0.0, 0.0, 0.0, 1.0)}
    others = [i for i in inits if i not in fixed]
    return {**{i: fixed[i] for i in inits if i in fixed}, **{i: cmap(k % 10) for k, i in enumerate(others)}}


def _panels(summary: pd.DataFrame):
    """(dataset or None, protocol, rows) per panel; the dataset only splits panels when there are several."""
    multi = "dataset" in summary.columns and summary["dataset"].nunique() > 1
    keys = ["dataset", "protocol"] if multi else ["protocol"]
    for key, g in summary.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield (key[0] if multi else None), key[-1], g


def _where(dataset: str | None) -> str:
    return f" [{dataset}]" if dataset else ""


def curve_figures(summary: pd.DataFrame, metric: str = "macro_f1", order: list[str] | None = None) -> list[Figure]:
    """Metric against label fraction (log x), one line per init with its 95 % CI band, one figure per protocol
    (and per dataset when there are several)."""
    plt = _plt()
    order = order or sorted(summary["init"].unique())
    colors = init_colors(order)
    label = metric.replace("_", " ").replace(" f1", " F1")
    figs = []
    for dataset, protocol, g in _panels(summary):
        fig, ax = plt.subplots(figsize=(5.4, 3.7))
        for init in [i for i in order if i in set(g["init"])]:
            h = g[g["init"] == init].sort_values("fraction")
            ax.plot(h["fraction"], h[f"{metric}_mean"], marker="o", label=init, color=colors[init])
            if h[f"{metric}_ci_low"].notna().any():
                # display only: an interval past [0, 1] is drawn clipped; the CSVs keep the raw bounds
                ax.fill_between(h["fraction"], h[f"{metric}_ci_low"].clip(0, 1), h[f"{metric}_ci_high"].clip(0, 1),
                                alpha=0.15, color=colors[init])
        ax.set_xscale("log")
        ticks = sorted(g["fraction"].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled training images used (%)")
        ax.set_ylabel(label)
        ax.set_title(f"{protocol_name(protocol)}{_where(dataset)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        figs.append(Figure("curves", f"{protocol_name(protocol)}{_where(dataset)}",
                           f"Line chart of {label} against the percentage of labelled training images, {protocol_name(protocol)}"
                           f"{_where(dataset)}, one line per initialisation with shaded 95% confidence bands",
                           png_data_uri(fig), "mean over seeds; shaded: 95 % t confidence interval"))
        plt.close(fig)
    return figs


def ranking_figures(summary: pd.DataFrame, metric: str = "macro_f1") -> list[Figure]:
    """Heat-map per protocol: rows = inits (best average rank on top), columns = label fractions, colour =
    mean metric over seeds, text = mean and rank within the column (#1 = best at that fraction)."""
    plt = _plt()
    label = metric.replace("_", " ").replace(" f1", " F1")
    figs = []
    for dataset, protocol, g in _panels(summary):
        table = g.pivot_table(index="init", columns="fraction", values=f"{metric}_mean")
        ranks = table.rank(axis=0, ascending=False, method="min")
        order = ranks.mean(axis=1).sort_values().index
        table, ranks = table.loc[order], ranks.loc[order]
        values = table.to_numpy(dtype=float)
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * table.shape[1] + 0.08 * max(len(i) for i in order), 0.9 + 0.42 * table.shape[0]))
        im = ax.imshow(values, cmap="viridis", aspect="auto", vmin=np.nanmin(values), vmax=np.nanmax(values))
        ax.set_xticks(range(table.shape[1]), [f"{f:g} %" for f in table.columns])
        ax.set_yticks(range(table.shape[0]), list(table.index))
        ax.set_xlabel("labelled training images used")
        lo, hi = np.nanmin(values), np.nanmax(values)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if np.isnan(values[i, j]):
                    continue
                light = (values[i, j] - lo) / (hi - lo + 1e-12) > 0.6  # viridis is light at the top end
                ax.text(j, i, f"{values[i, j]:.2f}\n#{int(ranks.iloc[i, j])}", ha="center", va="center", fontsize=7,
                        color="black" if light else "white", fontweight="bold" if ranks.iloc[i, j] == 1 else "normal")
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).set_label(f"mean {label}", fontsize=7)
        ax.set_title(f"ranking, {protocol_name(protocol)}{_where(dataset)}", fontsize=9)
        figs.append(Figure("ranking", f"ranking, {protocol_name(protocol)}{_where(dataset)}",
                           f"Heat-map of mean {label} for each initialisation (rows) at each label fraction (columns), "
                           f"{protocol_name(protocol)}{_where(dataset)}, with the rank at each fraction written in each cell",
                           png_data_uri(fig), "#1 = highest mean at that fraction; rows sorted by average rank"))
        plt.close(fig)
    return figs


def confusion_figure(cm: np.ndarray, class_names: list[str], title: str) -> str:
    """cm: (classes, classes) counts, rows = true, columns = predicted -> PNG data URI."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.9, 3.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title, fontsize=8)
    uri = png_data_uri(fig)
    plt.close(fig)
    return uri


def pretrain_figure(curves: dict[str, list[dict]]) -> Figure | None:
    """curves: pretraining name -> its ``stats.jsonl`` records. Left: loss per optimiser step (the ``step``
    lines, or the ``epoch`` lines when there are none); right: kNN-10 accuracy per epoch when logged."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    loss = {}
    knn = {}
    random_ref: dict[str, float] = {}  # kNN of random initialisation, as logged by the monitor
    for name, recs in curves.items():
        steps = [r for r in recs if r.get("kind") == "step" and "loss" in r and "step" in r]
        epochs = [r for r in recs if r.get("kind") == "epoch"]
        pts = steps or [r for r in epochs if "loss" in r and "step" in r]
        if pts:
            loss[name] = ([r["step"] for r in pts], [r["loss"] for r in pts])
        k = [r for r in epochs if r.get("knn10_accuracy") is not None and "epoch" in r]
        if k:
            knn[name] = ([r["epoch"] + 1 for r in k], [r["knn10_accuracy"] for r in k])
            ref = [r["knn10_random"] for r in k if r.get("knn10_random") is not None]
            if ref:
                random_ref[name] = float(ref[-1])
    if not loss and not knn:
        return None
    colors = init_colors(sorted(curves))
    fig, axes = plt.subplots(1, 2 if (loss and knn) else 1, figsize=(10 if (loss and knn) else 5.4, 3.6), squeeze=False)
    axes = list(axes[0])
    if loss:
        ax = axes.pop(0)
        for name, (x, y) in loss.items():
            ax.plot(x, y, label=name, color=colors[name], lw=1.2, marker="o" if len(x) <= 30 else None, ms=3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("pretraining loss")
        ax.set_title("self-supervised loss", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if knn:
        ax = axes.pop(0)
        for name, (x, y) in knn.items():
            ax.plot(x, y, marker="o", label=name, color=colors[name])
            if name in random_ref:
                ax.axhline(random_ref[name], ls="--", lw=1, color=colors[name], alpha=0.7,
                           label=f"random init ({name}'s backbone)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("kNN-10 accuracy (valid)")
        ax.set_title("label-free monitor: k-nearest-neighbour accuracy", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in fig.axes:  # one logged point: give the integer axis some room instead of ticks at 1.975, 2.0, ...
        lo, hi = ax.get_xlim()
        if hi - lo < 2:
            mid = (lo + hi) / 2
            ax.set_xlim(mid - 1, mid + 1)
    fig.tight_layout()
    uri = png_data_uri(fig)
    plt.close(fig)
    parts = ["loss per optimiser step"] + (["kNN-10 validation accuracy per epoch"] if knn else [])
    return Figure("pretraining", "pretraining curves",
                  f"Line charts of {' and '.join(parts)} for each pretraining run: {', '.join(sorted(curves))}", uri,
                  "each loss is on its own method's scale; compare shapes, not levels, across methods")
