"""The four strategies on features whose structure is known (separated clusters on the sphere)."""

from __future__ import annotations

import numpy as np
import pytest

from sonossl.errors import SonosslError
from sonossl.select import strategies
from sonossl.select.strategies import STRATEGIES, ball_graph, purity_radius, select


def blobs(sizes: list[int], dim: int = 16, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated clusters on the unit sphere: features ``(sum(sizes), dim)`` and cluster ids."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][: len(sizes)]  # orthonormal: all pairs sqrt(2) apart
    y = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


UNBALANCED = [300, 40, 20, 12, 8]  # a random draw of 5 almost never meets all five


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_selection_distinct_and_capped(strategy):
    x, _ = blobs(UNBALANCED)
    groups = np.arange(len(x)) // 4  # clips of 4 neighbouring points
    a = select(x, 25, strategy, seed=3, groups=groups, cap=1)
    assert len(a) == 25 and len(set(a.tolist())) == 25
    assert np.bincount(groups[a]).max() == 1
    assert (select(x, 25, strategy, seed=3, groups=groups, cap=1) == a).all()


@pytest.mark.parametrize("strategy", ["kcenter", "typiclust", "probcover"])
def test_diverse_strategies_meet_every_cluster_where_random_does_not(strategy):
    x, y = blobs(UNBALANCED)
    assert len(set(y[select(x, 5, strategy, seed=0, classes=5)])) == 5
    hits = [len(set(y[select(x, 5, "random", seed=s)])) for s in range(20)]
    assert np.mean(hits) < 4  # the contrast that makes the test able to fail


def test_typiclust_picks_the_most_typical_point_of_a_cluster():
    x, y = blobs([60, 60], spread=0.2)
    centre = x[y == 0].mean(0)
    pick = select(x, 2, "typiclust", seed=0)
    first_cluster = [i for i in pick if y[i] == 0][0]
    dist = np.linalg.norm(x[y == 0] - centre, axis=1)
    assert np.linalg.norm(x[first_cluster] - centre) <= np.quantile(dist, 0.25)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_extending_a_selection_keeps_it_and_adds_new_points(strategy):
    x, _ = blobs(UNBALANCED)
    first = select(x, 5, strategy, seed=1, classes=5)
    more = select(x, 10, strategy, seed=1, already=first, classes=5)
    assert len(set(first.tolist()) | set(more.tolist())) == 15


def test_kcenter_extension_equals_a_longer_greedy_run():
    x, _ = blobs(UNBALANCED)
    both = select(x, 12, "kcenter", seed=2)
    first = select(x, 5, "kcenter", seed=2)
    assert (np.concatenate([first, select(x, 7, "kcenter", seed=2, already=first)]) == both).all()


def test_budgets_the_pool_cannot_meet_are_refused():
    x, _ = blobs([10, 10])
    with pytest.raises(SonosslError, match="at least 1"):
        select(x, 0, "kcenter")
    with pytest.raises(SonosslError, match="larger than the pool of 20"):
        select(x, 21, "random")
    with pytest.raises(SonosslError, match="larger than the pool of 4 .*at most 2 per clip"):
        select(x, 5, "typiclust", groups=np.arange(20) // 10, cap=2)
    with pytest.raises(SonosslError, match="expected one of"):
        select(x, 2, "uncertainty")


def test_probcover_radius_is_the_largest_with_95_percent_pure_balls():
    x, y = blobs([50, 50, 50], spread=0.05)
    r = purity_radius(x, 3, np.random.default_rng(0))
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    impure = ((d <= r) & (y[:, None] != y[None])).any(axis=1)
    assert impure.mean() <= 0.06  # at most ~5 % of the balls reach another cluster
    slightly_larger = ((d <= r * 1.05) & (y[:, None] != y[None])).any(axis=1)
    assert slightly_larger.mean() > impure.mean() or r >= d.max()  # and it is not needlessly small


def test_ivf_ball_graph_finds_nearly_every_exact_edge(monkeypatch):
    x, _ = blobs([400, 300, 200, 100], dim=8, spread=0.15)
    rng = np.random.default_rng(0)
    exact = ball_graph(x, 0.2, rng)
    monkeypatch.setattr(strategies, "EXACT_MAX", 10)
    approx = ball_graph(x, 0.2, np.random.default_rng(0))
    assert (approx - exact).max() <= 0  # never an edge that is not there
    assert approx.nnz >= 0.95 * exact.nnz
    assert (exact.diagonal() == 1).all()
