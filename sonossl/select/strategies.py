"""Which frames to label: four seeded, deterministic selection strategies over backbone features.

Every strategy takes L2-normalised features ``(N, D)`` and returns the indices it picks, in the
order it picked them. Distances are Euclidean on the unit sphere (``|a - b|^2 = 2 - 2 a.b``, the
same order as cosine distance). Sources and details are in ``docs/selection.md``:

- ``random``: a seeded permutation;
- ``kcenter``: greedy k-center (Sener & Savarese, ICLR 2018): repeatedly the point farthest from
  everything chosen so far;
- ``typiclust``: TypiClust (Hacohen et al., ICML 2022): k-means into ``|chosen| + budget``
  clusters (at most 500), then, from the cluster with the fewest chosen points (the largest
  among equals), its most typical point (the inverse mean distance to its 20 nearest
  neighbours within the cluster);
- ``probcover``: ProbCover (Yehuda et al., NeurIPS 2022): a ball radius chosen so that 95 % of
  the balls are pure with respect to k-means pseudo-classes, then greedy maximum coverage.

All four extend a previous selection (``already``) greedily, so label fractions can be nested.
``groups`` and ``cap`` limit how many points of one group (a clip) are chosen: neighbouring
frames of one clip are near-duplicates, and the cap keeps them from taking the whole budget.

Nothing here builds an ``N x N`` matrix: k-center costs ``budget x N x D``, TypiClust's
typicality is computed within the clusters it visits (against at most ``TYPICALITY_SAMPLE``
points of a cluster), and ProbCover's ball graph is exact up to ``EXACT_MAX`` points and an
inverted-file search (``IVF_PROBE`` nearest of ``sqrt(N)`` k-means cells) above.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from sonossl.errors import SonosslError

Strategy = Literal["random", "kcenter", "typiclust", "probcover"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
TYPICLUST_MAX_CLUSTERS = 500  # Hacohen et al.: K = |L| + B, capped
TYPICLUST_KNN = 20  # neighbours of the typicality
TYPICLUST_MIN_CLUSTER = 5  # smaller clusters are visited only once every larger one is
TYPICALITY_SAMPLE = 10_000  # a cluster's typicality is measured against at most this many of its points
PROBCOVER_PURITY = 0.95  # Yehuda et al.: the largest radius whose balls are 95 % pure
PROBCOVER_CLASSES = 10  # pseudo-classes of the purity when the number of classes is unknown
PURITY_SAMPLE = 2_000  # points whose ball purity is measured
EXACT_MAX = 20_000  # up to this N the ball graph is exact (brute force in chunks)
IVF_PROBE = 8  # cells searched per cell above EXACT_MAX
CHUNK = 2048  # rows per block of a distance computation


class _Picker:
    """The chosen set and what may still be chosen (not chosen, its group under the cap)."""

    def __init__(self, n: int, groups: np.ndarray | None, cap: int | None, already: np.ndarray):
        self.groups = np.zeros(n, np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
        self.cap = cap
        self.count = np.zeros(int(self.groups.max()) + 1 if n else 0, np.int64)
        self.allowed = np.ones(n, bool)
        self.chosen: list[int] = []
        for i in already:
            self._take(int(i))
        self.chosen = []  # only the new picks are returned

    def _take(self, i: int) -> None:
        self.allowed[i] = False
        g = self.groups[i]
        self.count[g] += 1
        if self.cap is not None and self.count[g] >= self.cap:
            self.allowed[self.groups == g] = False

    def take(self, i: int) -> None:
        if not self.allowed[i]:
            raise AssertionError(f"point {i} is not selectable")
        self.chosen.append(i)
        self._take(i)

    def capacity(self) -> int:
        """How many more points the cap and the pool allow."""
        if self.cap is None:
            return int(self.allowed.sum())
        per_group = np.bincount(self.groups[self.allowed], minlength=len(self.count))
        return int(np.minimum(per_group, np.maximum(self.cap - self.count, 0)).sum())


def check_budget(n: int, budget: int, detail: str = "") -> None:
    """A budget of at least one and at most the ``n`` images that can still be chosen."""
    if budget < 1:
        raise SonosslError(f"--budget: {budget}; expected at least 1 image to label")
    if budget > n:
        raise SonosslError(f"--budget: {budget} is larger than the pool of {n} candidate images{detail}")


def select(feats: np.ndarray, budget: int, strategy: str, seed: int = 0, *, groups: np.ndarray | None = None,
           cap: int | None = None, already: np.ndarray | None = None, classes: int = PROBCOVER_CLASSES) -> np.ndarray:
    """Pick ``budget`` more points of ``feats`` (``(N, D)``, L2-normalised) by ``strategy``.

    groups: ``(N,)`` group (clip) of each point; cap: at most this many chosen per group (counting
    ``already``); already: indices chosen before, kept and extended; classes: ProbCover's
    pseudo-classes. Returns the new indices ``(budget,)`` int64 in the order picked.
    """
    if strategy not in STRATEGIES:
        raise SonosslError(f"selection strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}")
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    already = np.asarray([] if already is None else already, dtype=np.int64)
    picker = _Picker(len(feats), groups, cap, already)
    cap_text = f", at most {cap} per clip" if cap is not None else ""
    check_budget(picker.capacity(), budget, f" that can still be chosen ({len(feats)} in all{cap_text}, "
                                            f"{len(already)} chosen before)")
    rng = np.random.default_rng(seed)
    {"random": _random, "kcenter": _kcenter, "typiclust": _typiclust, "probcover": _probcover}[strategy](
        feats, budget, picker, rng, already=already, classes=classes)
    return np.asarray(picker.chosen, dtype=np.int64)


def _random(feats, budget, picker, rng, **_) -> None:
    for i in rng.permutation(len(feats)):  # one permutation per seed: fractions nest
        if len(picker.chosen) == budget:
            return
        if picker.allowed[i]:
            picker.take(int(i))


def _kcenter(feats, budget, picker, rng, *, already, **_) -> None:
    """Greedy k-center: the allowed point farthest (cosine) from every chosen point."""
    min_d = np.full(len(feats), np.inf, dtype=np.float32)
    for i in already:
        np.minimum(min_d, 1.0 - feats @ feats[i], out=min_d)
    for _ in range(budget):
        if np.isinf(min_d).all():  # nothing chosen yet: a seeded first centre
            cand = np.flatnonzero(picker.allowed)
            i = int(cand[rng.integers(len(cand))])
        else:
            i = int(np.argmax(np.where(picker.allowed, min_d, -np.inf)))
        picker.take(i)
        np.minimum(min_d, 1.0 - feats @ feats[i], out=min_d)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` squared distances of unit vectors."""
    return np.maximum(2.0 - 2.0 * (a @ b.T), 0.0)


def kmeans_labels(feats: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``(N,)`` cluster of each point: scikit-learn's MiniBatchKMeans, seeded."""
    from sklearn.cluster import MiniBatchKMeans

    k = max(1, min(k, len(feats)))
    km = MiniBatchKMeans(n_clusters=k, random_state=int(seed), n_init=1, batch_size=2048, max_iter=100)
    return km.fit_predict(feats).astype(np.int64)


def typicality(x: np.ndarray, rng: np.random.Generator, k: int = TYPICLUST_KNN) -> np.ndarray:
    """``(n,)``: 1 / mean distance of each point of ``x`` ``(n, D)`` to its ``k`` nearest others
    (``min(k, n // 2)``, at least 1), against at most ``TYPICALITY_SAMPLE`` points of ``x``."""
    n = len(x)
    if n < 2:
        return np.ones(n)
    ref = x if n <= TYPICALITY_SAMPLE else x[np.sort(rng.choice(n, TYPICALITY_SAMPLE, replace=False))]
    k = max(1, min(k, n // 2, len(ref) - 1))
    out = np.empty(n)
    for lo in range(0, n, CHUNK):
        d = np.sqrt(np.partition(_sq_dists(x[lo:lo + CHUNK], ref), k, axis=1)[:, : k + 1])
        out[lo:lo + CHUNK] = 1.0 / ((d.sum(axis=1) - d.min(axis=1)) / k + 1e-5)  # the smallest: the point itself
    return out


def _typiclust(feats, budget, picker, rng, *, already, **_) -> None:
    labels = kmeans_labels(feats, min(len(already) + budget, TYPICLUST_MAX_CLUSTERS), int(rng.integers(2**31)))
    n_clusters = int(labels.max()) + 1
    size = np.bincount(labels, minlength=n_clusters)
    covered = np.bincount(labels[already], minlength=n_clusters) if len(already) else np.zeros(n_clusters, np.int64)
    members = {c: np.flatnonzero(labels == c) for c in range(n_clusters)}
    typ: dict[int, np.ndarray] = {}
    while len(picker.chosen) < budget:
        open_ = [c for c in range(n_clusters) if picker.allowed[members[c]].any()]
        # fewest chosen first, then clusters of at least the minimum size, then the largest
        c = min(open_, key=lambda c: (covered[c], size[c] < TYPICLUST_MIN_CLUSTER, -size[c], c))
        if c not in typ:
            typ[c] = typicality(feats[members[c]], rng)
        t = np.where(picker.allowed[members[c]], typ[c], -np.inf)
        picker.take(int(members[c][int(np.argmax(t))]))
        covered[c] += 1


def purity_radius(feats: np.ndarray, classes: int, rng: np.random.Generator, purity: float = PROBCOVER_PURITY) -> float:
    """The largest radius at which a fraction ``purity`` of the balls hold one k-means pseudo-class.

    A ball around x of radius r is pure iff r is below the distance from x to the nearest point of
    another pseudo-class, so the radius is that distance's ``1 - purity`` quantile over a sample
    of ``PURITY_SAMPLE`` points (against all N)."""
    labels = kmeans_labels(feats, classes, int(rng.integers(2**31)))
    q = np.sort(rng.choice(len(feats), min(PURITY_SAMPLE, len(feats)), replace=False))
    nearest_other = np.full(len(q), np.inf)
    for lo in range(0, len(feats), CHUNK):
        d = _sq_dists(feats[q], feats[lo:lo + CHUNK])
        d[labels[q][:, None] == labels[lo:lo + CHUNK][None, :]] = np.inf
        nearest_other = np.minimum(nearest_other, d.min(axis=1))
    finite = np.sqrt(nearest_other[np.isfinite(nearest_other)])
    if not len(finite):  # one pseudo-class: every ball is pure
        return 2.0
    return float(max(np.quantile(finite, 1.0 - purity), 1e-6))


def ball_graph(feats: np.ndarray, radius: float, rng: np.random.Generator):
    """Symmetric sparse ``(N, N)`` graph of the pairs within ``radius`` (each point its own neighbour)."""
    from scipy import sparse

    n, r2 = len(feats), radius * radius
    rows, cols = [], []
    if n <= EXACT_MAX:
        blocks = [(np.arange(lo, min(lo + CHUNK, n)), np.arange(n)) for lo in range(0, n, CHUNK)]
    else:  # inverted file: each cell against its IVF_PROBE nearest cells
        cells = kmeans_labels(feats, int(np.sqrt(n)), int(rng.integers(2**31)))
        members = [np.flatnonzero(cells == c) for c in np.unique(cells)]  # k-means may leave a cell empty
        centres = np.stack([feats[m].mean(0) for m in members])
        near = np.argsort(_sq_dists(centres, centres), axis=1)[:, :IVF_PROBE]
        blocks = [(members[c], np.concatenate([members[d] for d in near[c]])) for c in range(len(members))]
    for q, ref in blocks:
        i, j = np.nonzero(_sq_dists(feats[q], feats[ref]) <= r2)
        rows.append(q[i])
        cols.append(ref[j])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    g = sparse.csr_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    return ((g + g.T) > 0).astype(np.int8).tocsr()


def _probcover(feats, budget, picker, rng, *, already, classes, **_) -> None:
    graph = ball_graph(feats, purity_radius(feats, classes, rng), rng)
    covered = np.zeros(len(feats), bool)
    for i in already:
        covered[graph.indices[graph.indptr[i]:graph.indptr[i + 1]]] = True
    gain = np.asarray(graph[:, ~covered].sum(axis=1)).ravel().astype(np.int64)  # uncovered points in each ball
    for _ in range(budget):
        g = np.where(picker.allowed, gain, -1)
        if g.max() <= 0:  # everything is covered: the rest at random, as in the paper
            cand = np.flatnonzero(picker.allowed)
            i = int(cand[rng.integers(len(cand))])
        else:
            i = int(np.argmax(g))
        picker.take(i)
        ball = graph.indices[graph.indptr[i]:graph.indptr[i + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        if len(new):  # the balls that held a newly covered point each lose it
            sub = graph[new]
            gain -= np.bincount(sub.indices, minlength=len(feats))
