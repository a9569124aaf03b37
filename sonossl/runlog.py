"""Training curves where Lightning users look: TensorBoard event files (or Lightning's CSV
logs) beside a run's own records (``stats.jsonl``, ``history.json``).

Tags are stable: a pretraining logs every scalar of a ``stats.jsonl`` line under
``train/<key>`` (a line per log interval) or ``epoch/<key>`` (a line per epoch, with the
monitors' figures); an evaluation run logs ``finetune/<key>`` or ``linear/<key>`` (train loss,
validation balanced accuracy, learning rate) at its optimiser step. ``tensorboard --logdir
runs/`` then shows every run below ``runs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

RunLogger = Literal["tensorboard", "csv", "none"]
LOG_DIR = {"tensorboard": "tensorboard", "csv": "csv_logs"}  # the logger's folder inside a run folder


def make_logger(kind: RunLogger, folder: Path, *, version: str = "", purge_step: int | None = None):
    """A Lightning logger writing into ``folder/<LOG_DIR[kind]>/<version>``, or None for ``none``.

    purge_step: a resumed run's first step; TensorBoard drops the events a killed run wrote at
    or after it, as :func:`~sonossl.methods.runfolder.trim_stats` does for ``stats.jsonl``."""
    if kind == "none":
        return None
    if kind == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        extra = {} if purge_step is None else {"purge_step": purge_step}
        return TensorBoardLogger(save_dir=str(folder), name=LOG_DIR[kind], version=version, default_hp_metric=False,
                                 **extra)
    from pytorch_lightning.loggers import CSVLogger

    return CSVLogger(save_dir=str(folder), name=LOG_DIR[kind], version=version)


def scalars(row: dict[str, Any], prefix: str, skip: tuple[str, ...] = ("kind", "step", "epoch")) -> dict[str, float]:
    """The numeric values of ``row`` as ``{prefix/key: value}`` (booleans, text and lists left out)."""
    return {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_hparams(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as one level of ``a.b`` keys, lists as text (what TensorBoard's hparams take)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
