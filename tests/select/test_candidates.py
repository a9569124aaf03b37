"""Candidates for selection: a folder's clip ids are keyed pseudonyms, collapsed features are refused."""

import numpy as np
import pytest
from PIL import Image

from sonossl.errors import SonosslError
from sonossl.models.features import check_features
from sonossl.select.candidates import folder_pool, open_pool


def _folders(root):
    for clip in ("DOE_JANE_1980", "SMITH_JOHN_1975"):
        (root / clip).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / clip / f"{i}.png")
    return root


def test_folder_ids_are_keyed_and_name_no_file(tmp_path):
    root = _folders(tmp_path / "imgs")
    a, b = folder_pool(root, "11" * 32), folder_pool(root, "22" * 32)
    assert len(a) == 6 and list(a.frames) == [0, 1, 2, 0, 1, 2] and list(a.groups) == [0, 0, 0, 1, 1, 1]
    assert set(a.clip_ids) & set(b.clip_ids) == set()  # another key, other ids
    assert not any("DOE" in i or "SMITH" in i for i in a.clip_ids)
    assert a.read(4).shape == (8, 8) and int(a.read(4)[0, 0]) == 40
    keyless = open_pool(root), open_pool(root)
    assert set(keyless[0].clip_ids) != set(keyless[1].clip_ids)  # no --salt-file: a random key per run


def test_collapsed_features_are_refused():
    check_features(np.random.default_rng(0).normal(size=(5, 4)), "--init x")
    with pytest.raises(SonosslError, match="--init x: the backbone's features are the same for all 5"):
        check_features(np.ones((5, 4)), "--init x")
