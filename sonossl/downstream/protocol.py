"""Limited-label subsets: stratified by class, nested across fractions, fixed by seed.

For a seed, each class's train indices are shuffled once; a fraction ``f`` % keeps the first
``round(f/100 * n_class)`` of them. So the 1 % subset lies inside the 10 % subset, which lies
inside 100 %: a curve over fractions measures the labels, not a new draw. A fraction that would
leave a class without an image is an error, not a silent promotion to one image.
"""

from __future__ import annotations

import numpy as np

from sonossl.errors import SonosslError


def stratified_subset(labels: np.ndarray, fraction: float, seed: int, class_names: list[str], source: str = "train") -> np.ndarray:
    """Indices into ``labels`` (sorted) for ``fraction`` percent, per class, nested over fractions."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        order = rng.permutation(idx)  # one permutation per class and seed, whatever the fraction
        k = int(np.floor(fraction / 100.0 * len(idx) + 0.5))  # half rounds up, not to even
        if k < 1:
            need = 50.0 / max(len(idx), 1)  # round(f/100 * n) >= 1  <=>  f >= 50/n
            raise SonosslError(
                f"{source}: fraction {fraction:g}% gives class {name!r} ({len(idx)} images) no image; "
                f"expected a fraction of at least {need:.3g}%"
            )
        chosen.append(order[:k])
    return np.sort(np.concatenate(chosen))
