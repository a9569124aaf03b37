"""A tiny labelled set whose classes a linear probe can tell apart (bar orientation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_labelled


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    return make_labelled(tmp_path / "labelled", {"train": 20, "valid": 4, "test": 6})
