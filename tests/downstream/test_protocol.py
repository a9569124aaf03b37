import numpy as np
import pytest

from sonossl.downstream.protocol import stratified_subset
from sonossl.errors import SonosslError

LABELS = np.repeat(np.arange(3), [100, 50, 20])
NAMES = ["a", "b", "c"]


def test_subsets_are_stratified_nested_and_fixed_by_seed():
    s1, s10, s100 = (stratified_subset(LABELS, f, seed=3, class_names=NAMES) for f in (5, 10, 100))
    assert np.bincount(LABELS[s10]).tolist() == [10, 5, 2]
    assert set(s1) <= set(s10) <= set(s100) and len(s100) == len(LABELS)
    assert np.array_equal(s10, stratified_subset(LABELS, 10, seed=3, class_names=NAMES))
    assert not np.array_equal(s10, stratified_subset(LABELS, 10, seed=4, class_names=NAMES))


def test_fraction_too_small_for_a_class_is_an_error_naming_it():
    with pytest.raises(SonosslError, match=r"class 'c' \(20 images\) no image; expected a fraction of at least 2.5%"):
        stratified_subset(LABELS, 1, seed=0, class_names=NAMES, source="train.csv")
