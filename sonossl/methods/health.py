"""A pretraining's health: divergence and collapse caught while it runs, said in one line, kept
in ``summary.json`` (``health``) for ``evaluate``, the study report and the demo verdict.

Three signs, each a flag ``{"kind", "step", "message"}``:

- ``loss_rising``: the median of the last ``WINDOW`` logged losses is more than ``RISE`` (as a
  share of the loss's scale) above the lowest such median seen earlier, at ``PATIENCE`` log
  lines in a row, once the warm-up is over (a median over ``WINDOW`` lines, held that long, is
  not one noisy batch).
  Only for methods whose loss is a fixed objective of the weights (``SSLMethod.loss_is_objective``):
  BYOL's and DINO's losses are measured against a moving target network and rise in healthy runs.
- ``collapsed``: RankMe (:func:`rankme`, the effective rank of the backbone's features of stored
  frames) at an epoch's end below ``COLLAPSE_RANK``, i.e. the frames map onto a few directions
  (judged on samples of at least ``COLLAPSE_MIN_FRAMES`` frames: fewer bound the rank themselves).
- ``knn_below_random``: at the end of the run the kNN monitor (``--monitor-labels``) is below
  randomly initialised encoders' (the pretraining made the features worse for the labels).

What makes a finished backbone suspect, read back from ``summary.json`` by ``evaluate``, the study
report and the demo: :func:`sonossl.models.init.flagged` (a layer below, so all of them can).

Recovery (``on_divergence: recover``, one process only): when the loss rises, the weights and the
optimiser's state of the best window so far are restored (kept in memory) and every base learning
rate is multiplied by ``RECOVER_FACTOR``; a ``recovered`` flag says so. At most ``MAX_RECOVERIES``
times, then the run continues and warns. A non-finite loss still stops the run (``check_finite``).
"""

from __future__ import annotations

import copy
import statistics
from collections import deque
from typing import Any, Callable

import torch
from pytorch_lightning.callbacks import Callback

WINDOW = 10           # logged losses per median (log_every_n_steps apart)
RISE = 0.10           # a rise of the window median over its best by this share of |best| is a divergence
PATIENCE = 3          # ... held at this many log lines in a row
COLLAPSE_RANK = 4.0   # RankMe below this: the features span fewer than ~4 directions
COLLAPSE_MIN_FRAMES = 32
RECOVER_FACTOR = 0.2  # base learning rates x this at a recovery
MAX_RECOVERIES = 2


def rankme(feats: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023, eq. 1): ``exp(-sum_k p_k log p_k)`` with
    ``p_k = sigma_k / ||sigma||_1 + eps``, the singular values of ``feats``.

    feats: ``(N, dim)``, N >= 2 -> effective rank in [1, min(N, dim)]."""
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"rankme: expected (N >= 2, dim) features, got {tuple(feats.shape)}")
    s = torch.linalg.svdvals(feats.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


class LossWatch:
    """The ``loss_rising`` rule over a run's logged losses (state kept across a resume)."""

    def __init__(self, window: int = WINDOW, rise: float = RISE, patience: int = PATIENCE):
        self.window, self.rise, self.patience = window, rise, patience
        self.recent: deque[float] = deque(maxlen=window)
        self.best: float | None = None
        self.best_step: int | None = None
        self.above = 0  # log lines in a row with the median above the line

    def update(self, step: int, loss: float) -> str | None:
        """Add one logged loss; returns ``"best"`` at a new best window, ``"rising"`` when the
        rule fires (at every line while it holds), else None."""
        self.recent.append(loss)
        if len(self.recent) < self.window:
            return None
        med = statistics.median(self.recent)
        if self.best is None or med < self.best:
            self.best, self.best_step, self.above = med, step, 0
            return "best"
        self.above = self.above + 1 if med - self.best > self.rise * abs(self.best) else 0
        return "rising" if self.above >= self.patience else None

    def reset(self) -> None:
        """After a recovery: the next windows are measured from the restored weights."""
        self.recent.clear()
        self.above = 0

    def state(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "best": self.best, "best_step": self.best_step, "above": self.above}

    def load(self, state: dict[str, Any]) -> None:
        self.recent = deque(state.get("recent", []), maxlen=self.window)
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.above = int(state.get("above", 0))


class Health(Callback):
    """Watches the run (global rank 0 decides; recovery only in a one-process run): flags in
    ``self.flags``, each said once through ``say``. Runs after the monitors (their epoch figures)
    and before the final outputs (which write ``flags`` into ``summary.json``)."""

    def __init__(self, monitors, recover: bool = False, say: Callable[[str], None] = print):
        self.monitors = monitors
        self.recover = recover
        self.say = say
        self.flags: list[dict[str, Any]] = []
        self.watch = LossWatch()
        self._snapshot: dict[str, Any] | None = None
        self._seen_step = -1
        self._fired = False  # loss_rising said once per rise, until a new best window

    def _flag(self, kind: str, step: int, message: str) -> None:
        self.flags.append({"kind": kind, "step": int(step), "message": message})
        self.say(f"warning: pretraining {kind.replace('_', ' ')} at step {step}: {message}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logs = pl_module.last_logs
        step = trainer.global_step
        if logs.get("step") != step or step == self._seen_step or not pl_module.loss_is_objective:
            return
        self._seen_step = step
        warm = round(pl_module.cfg.warmup_epochs * max(1, int(trainer.num_training_batches)))
        if step <= warm:
            return
        verdict = self.watch.update(step, float(logs["loss"]))
        if verdict == "best":
            self._fired = False
            if self.recover and trainer.world_size == 1:
                self._snapshot = {"step": step, "model": copy.deepcopy(pl_module.state_dict()),
                                  "optim": copy.deepcopy(pl_module.optimizers(use_pl_optimizer=False).state_dict())}
        elif verdict == "rising" and not self._fired:
            self._fired = True
            self._flag("loss_rising", step, f"the median loss of the last {self.watch.window} logs is "
                       f"{statistics.median(self.watch.recent):.4g}, more than {self.watch.rise:.0%} above its best "
                       f"{self.watch.best:.4g} (step {self.watch.best_step}) for {self.watch.patience} logs")
            if self._snapshot is not None and self._recoveries() < MAX_RECOVERIES:
                self._restore(pl_module, step)

    def _recoveries(self) -> int:
        return sum(f["kind"] == "recovered" for f in self.flags)

    def _restore(self, pl_module, step: int) -> None:
        snap = self._snapshot
        pl_module.load_state_dict(snap["model"])
        opt = pl_module.optimizers(use_pl_optimizer=False)
        opt.load_state_dict(snap["optim"])
        for g in opt.param_groups:
            g["base_lr"] *= RECOVER_FACTOR
        self.watch.reset()
        self._fired = False
        self._flag("recovered", step, f"restored the weights and optimiser state of step {snap['step']} and "
                   f"multiplied every base learning rate by {RECOVER_FACTOR} (lr_weights now "
                   f"{opt.param_groups[0]['base_lr']:.4g} per step)")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.monitors is None:
            return
        rank = self.monitors.logs.get("rankme")
        if len(self.monitors.val_frames) < COLLAPSE_MIN_FRAMES:
            return
        if rank is not None and rank < COLLAPSE_RANK and not any(f["kind"] == "collapsed" for f in self.flags):
            self._flag("collapsed", trainer.global_step, f"RankMe {rank:.2f} (the features of stored frames span "
                       f"fewer than {COLLAPSE_RANK:g} directions)")

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.monitors is None:
            return
        logs = self.monitors.logs
        knn = next((v for k, v in logs.items() if k.startswith("knn") and k.endswith("_accuracy")), None)
        ref = next((v for k, v in logs.items() if k.startswith("knn") and k.endswith("_random")), None)
        if knn is not None and ref is not None and knn < ref:
            self._flag("knn_below_random", trainer.global_step, f"the kNN monitor ends at {knn:.3f}, below randomly "
                       f"initialised encoders' {ref:.3f}: these features are worse for the labels than none")

    def state_dict(self) -> dict[str, Any]:
        return {"flags": self.flags, "watch": self.watch.state(), "fired": self._fired}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flags = list(state.get("flags", []))
        self.watch.load(state.get("watch", {}))
        self._fired = bool(state.get("fired", False))
