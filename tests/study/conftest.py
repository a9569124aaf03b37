"""A tiny synthetic study: a few clips, a small labelled set, runs of a few steps each."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def study_data(tmp_path_factory) -> Path:
    from sonossl.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("study_data")
    synthesize(root, videos=6, frames=8, size=48, seed=0, labelled_per_class=(10, 3, 4))
    return root
