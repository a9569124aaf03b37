"""Selection as an axis of the limited-label protocol (``sonossl evaluate --selection STRATEGY``).

The protocol's labelled subset of a fraction is normally a stratified random draw
(:func:`sonossl.downstream.protocol.stratified_subset`). With a selection strategy it is chosen
from the labelled train split by that strategy on backbone features instead, without looking at
the labels, as a user choosing frames to annotate would have to: ``round(fraction % x N)``
images in all (not per class), so a class may get no image, which is recorded.

Fractions nest: the subset of each fraction extends the one of the next smaller fraction of the
ladder (the evaluation's fractions, or a study's whole list), greedily, so 5 % is inside 10 %.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from sonossl.errors import SonosslError
from sonossl.select.strategies import PROBCOVER_CLASSES, select


def fraction_budget(fraction: float, n: int, source: str = "train") -> int:
    """Images of ``fraction`` percent of ``n`` (half rounds up, as the stratified draw rounds)."""
    k = int(np.floor(fraction / 100.0 * n + 0.5))
    if k < 1:
        raise SonosslError(f"{source}: fraction {fraction:g}% of {n} images is no image; expected a fraction of at "
                           f"least {50.0 / max(n, 1):.3g}%")
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

