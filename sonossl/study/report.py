"""Tables, statistics and ``report.html`` from a ``results.csv``.

``summary.csv``: one row per (init, protocol, fraction): runs, mean, std and a 95 % confidence
interval over seeds (Student t, n - 1 degrees of freedom) for each metric.
``differences.csv``: each init against a baseline (``random``, and ``imagenet`` when present),
paired by seed: mean difference in macro F1 with its 95 % t interval; a difference is called
*real* only when that interval excludes zero.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from scipy import stats

from sonossl.errors import SonosslError

METRICS = ["macro_f1", "balanced_accuracy", "accuracy"]
TEMPLATES = Path(__file__).parent / "templates"


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t confidence interval; (mean, nan, nan) for fewer than two values."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def load_results(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SonosslError(f"{path}: results.csv not found")
    df = pd.read_csv(path)
    missing = [c for c in ["init", "protocol", "fraction", "seed", *METRICS] if c not in df.columns]
    if missing:
        raise SonosslError(f"{path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise SonosslError(f"{path}: no results yet")
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (init, protocol, fraction), g in df.groupby(["init", "protocol", "fraction"], sort=True):
        row = {"init": init, "protocol": protocol, "fraction": fraction, "runs": len(g), "n_train": int(g["n_train"].iloc[0]) if "n_train" in g else None}
        for m in METRICS:
            mean, lo, hi = t_interval(g[m].to_numpy())
            row.update({f"{m}_mean": mean, f"{m}_std": float(g[m].std(ddof=1)) if len(g) > 1 else float("nan"), f"{m}_ci_low": lo, f"{m}_ci_high": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(df: pd.DataFrame, metric: str = "macro_f1") -> pd.DataFrame:
    """Each init minus each baseline present, paired on (protocol, fraction, seed)."""
    rows = []
    for baseline in [b for b in ("random", "imagenet") if b in set(df["init"])]:
        base = df[df["init"] == baseline].set_index(["protocol", "fraction", "seed"])[metric]
        for init in sorted(set(df["init"]) - {baseline}):
            cur = df[df["init"] == init].set_index(["protocol", "fraction", "seed"])[metric]
            joined = pd.concat([cur.rename("x"), base.rename("b")], axis=1, join="inner").reset_index()
            for (protocol, fraction), g in joined.groupby(["protocol", "fraction"], sort=True):
                diff = (g["x"] - g["b"]).to_numpy()
                mean, lo, hi = t_interval(diff)
                real = bool(len(diff) > 1 and (lo > 0 or hi < 0))
                rows.append({"init": init, "baseline": baseline, "protocol": protocol, "fraction": fraction, "pairs": len(diff),
                             "diff_mean": mean, "diff_ci_low": lo, "diff_ci_high": hi, "real": real})
    return pd.DataFrame(rows)


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def curve_figures(summary: pd.DataFrame, metric: str = "macro_f1") -> dict[str, str]:
    """Metric against label fraction (log x), one line per init with its 95 % CI band, per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    for protocol, g in summary.groupby("protocol"):
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for init, h in g.groupby("init"):
            h = h.sort_values("fraction")
            (line,) = ax.plot(h["fraction"], h[f"{metric}_mean"], marker="o", label=init)
            if h[f"{metric}_ci_low"].notna().any():
                ax.fill_between(h["fraction"], h[f"{metric}_ci_low"], h[f"{metric}_ci_high"], alpha=0.2, color=line.get_color())
        ax.set_xscale("log")
        ticks = sorted(g["fraction"].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled train images used (%)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{protocol}: {metric.replace('_', ' ')} vs label fraction (mean, 95% CI)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        figs[protocol] = _png_data_uri(fig)
        plt.close(fig)
    return figs


def format_table(summary: pd.DataFrame, diffs: pd.DataFrame, metric: str = "macro_f1") -> str:
    """The plain-text table the demo prints: mean [95 % CI] per cell, and each init minus random."""
    lines = []
    header = f"{'protocol':<9} {'fraction':>8} {'init':<14} {'runs':>4} {metric + ' mean [95% CI]':>28}   diff vs random [95% CI]"
    lines.append(header)
    lines.append("-" * len(header))
    for _, r in summary.sort_values(["protocol", "fraction", "init"]).iterrows():
        ci = f"[{r[f'{metric}_ci_low']:.3f}, {r[f'{metric}_ci_high']:.3f}]" if not np.isnan(r[f"{metric}_ci_low"]) else "[n<2]"
        d = diffs[(diffs["init"] == r["init"]) & (diffs["baseline"] == "random") & (diffs["protocol"] == r["protocol"]) & (diffs["fraction"] == r["fraction"])] if len(diffs) else diffs
        dtxt = ""
        if len(d):
            d = d.iloc[0]
            dci = f"[{d['diff_ci_low']:+.3f}, {d['diff_ci_high']:+.3f}]" if not np.isnan(d["diff_ci_low"]) else "[n<2]"
            dtxt = f"{d['diff_mean']:+.3f} {dci}{'  real' if d['real'] else '  noise'}"
        lines.append(f"{r['protocol']:<9} {r['fraction']:>7g}% {r['init']:<14} {int(r['runs']):>4} {r[f'{metric}_mean']:>12.3f} {ci:>15}   {dtxt}")
    return "\n".join(lines)


def write_report(out: Path, results_csv: Path | None = None, context: dict | None = None) -> dict[str, Path]:
    """Write ``summary.csv``, ``differences.csv`` and ``report.html`` into ``out``."""
    results_csv = results_csv or out / "results.csv"
    df = load_results(results_csv)
    summary = summarise(df)
    diffs = paired_differences(df)
    paths = {"summary": out / "summary.csv", "differences": out / "differences.csv", "report": out / "report.html"}
    summary.to_csv(paths["summary"], index=False, float_format="%.6f")
    diffs.to_csv(paths["differences"], index=False, float_format="%.6f")
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    html = env.get_template("report.html.j2").render(
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        context=context or {},
        figures=curve_figures(summary),
        summary=summary.to_dict("records"),
        diffs=diffs.to_dict("records"),
        n_runs=len(df),
        inits=sorted(set(df["init"])),
    )
    tmp = paths["report"].with_suffix(".html.tmp")
    tmp.write_text(html)
    tmp.replace(paths["report"])
    return paths
