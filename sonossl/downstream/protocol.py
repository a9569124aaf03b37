"""Limited-label subsets of the train split: a stratified random draw, or a selection strategy.

**Stratified** (the protocol's default): for a seed, each class's train indices are shuffled
once; a fraction ``f`` % keeps the first ``round(f/100 * n_class)`` of them. So the 1 % subset
lies inside the 10 % subset, which lies inside 100 %: a curve over fractions measures the
labels, not a new draw. A fraction that would leave a class without an image is an error, not a
silent promotion to one image.

**Selected** (``sonossl evaluate --selection STRATEGY``): chosen from the train split by that
strategy on backbone features instead, without looking at the labels, as a user choosing frames
to annotate would have to: ``round(f/100 * N)`` images in all (not per class), so a class may
get no image, which is recorded. Fractions nest here too: the subset of each fraction extends
the one of the next smaller fraction of the ladder (the evaluation's fractions, or a study's
whole list), greedily, so 5 % is inside 10 %.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from sonossl.errors import SonosslError
from sonossl.select.strategies import PROBCOVER_CLASSES, select

RESULT_COLUMNS = ["init", "protocol", "fraction", "seed", "n_train", "macro_f1", "balanced_accuracy", "accuracy", "selection",
                  "classes_missed", "chosen"]  # a row of results.csv: one trained classifier ("chosen": on valid)


def selection_label(label: str, selection: str | None) -> str:
    """An init's label in run keys and reports: ``INIT`` with the stratified random draw, else ``INIT@STRATEGY``."""
    return label if selection in (None, "", "random") else f"{label}@{selection}"


def fraction_count(fraction: float, n: int) -> int:
    """Images of ``fraction`` percent of ``n``: ``round(f/100 * n)``, half rounding up (not to even)."""
    return int(np.floor(fraction / 100.0 * n + 0.5))


def min_fraction(n: int) -> float:
    """The smallest fraction that gives one of ``n`` images: ``round(f/100 * n) >= 1  <=>  f >= 50/n``."""
    return 50.0 / max(n, 1)


def stratified_subset(labels: np.ndarray, fraction: float, seed: int, class_names: list[str], source: str = "train") -> np.ndarray:
    """Indices into ``labels`` (sorted) for ``fraction`` percent, per class, nested over fractions."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        order = rng.permutation(idx)  # one permutation per class and seed, whatever the fraction
        k = fraction_count(fraction, len(idx))
        if k < 1:
            raise SonosslError(
                f"{source}: fraction {fraction:g}% gives class {name!r} ({len(idx)} images) no image; "
                f"expected a fraction of at least {min_fraction(len(idx)):.3g}%"
            )
        chosen.append(order[:k])
    return np.sort(np.concatenate(chosen))


def fraction_budget(fraction: float, n: int, source: str = "train") -> int:
    """Images of ``fraction`` percent of ``n`` for a selection; none is an error."""
    k = fraction_count(fraction, n)
    if k < 1:
        raise SonosslError(f"{source}: fraction {fraction:g}% of {n} images is no image; expected a fraction of at "
                           f"least {min_fraction(n):.3g}%")
    return k


def selected_subsets(embed: Callable[[int], np.ndarray], n: int, fractions: Iterable[float], seeds: Iterable[int],
                     strategy: str, *, ladder: Iterable[float] | None = None, classes: int = PROBCOVER_CLASSES,
                     source: str = "train") -> dict[tuple[float, int], np.ndarray]:
    """``{(fraction, seed): sorted indices}`` into the ``n`` train images.

    embed(seed): the ``(n, D)`` L2-normalised features the strategy sees for that seed.
    ladder: the fractions the subsets grow along (default ``fractions``); each fraction's
    subset contains every smaller fraction's of the ladder."""
    fractions = sorted(set(fractions))
    steps = sorted({f for f in (ladder or fractions) if f <= fractions[-1]} | set(fractions))
    out = {}
    for seed in seeds:
        feats = embed(seed)
        chosen = np.zeros(0, np.int64)
        for f in steps:
            k = fraction_budget(f, n, source)
            if k == n:  # every image: nothing to choose
                chosen = np.concatenate([chosen, np.setdiff1d(np.arange(n), chosen)])
            elif k > len(chosen):
                chosen = np.concatenate([chosen, select(feats, k - len(chosen), strategy, seed, already=chosen,
                                                        classes=classes)])
            if f in fractions:
                out[(f, seed)] = np.sort(chosen)
    return out
