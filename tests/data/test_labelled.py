"""Labelled sets: CSV splits read strictly, images decoded and resized as evaluation sees them."""

import numpy as np
import pytest
from helpers import make_labelled
from PIL import Image

from sonossl.data.labelled import load_image, load_labelled, read_csv_rows
from sonossl.errors import SonosslError


def test_splits_classes_and_sizes(tmp_path):
    root = make_labelled(tmp_path / "L", {"train": 3, "valid": 1, "test": 2}, size=20)
    data = load_labelled(root, size=16)
    assert len(data.class_names) == 3
    assert [len(s.labels) for s in (data.train, data.valid, data.test)] == [9, 3, 6]
    assert data.train.images.shape == (9, 1, 16, 16) and data.train.images.dtype.is_floating_point is False
    assert sorted(set(data.train.labels.tolist())) == [0, 1, 2]


@pytest.mark.parametrize("csv_text, expected", [
    ("path,label\nimg/a.png,x\n", "missing column(s) image_path, class"),
    ("image_path,class\n../outside.png,x\n", "leaves the data root"),
    ("image_path,class\nimg/missing.png,x\n", "not found under"),
    ("image_path,class\n", "split is empty"),
    ("image_path,class\n,x\n", ":2: empty image_path or class"),
])
def test_a_bad_csv_is_one_line_naming_the_file_and_row(tmp_path, csv_text, expected):
    (tmp_path / "img").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "outside.png")
    (tmp_path / "train.csv").write_text(csv_text)
    with pytest.raises(SonosslError, match=expected.replace("(", r"\(").replace(")", r"\)")) as exc:
        read_csv_rows(tmp_path / "train.csv", tmp_path / "img")
    assert "train.csv" in str(exc.value) and "\n" not in str(exc.value)


def test_a_16_bit_image_is_scaled_by_its_range_and_colour_becomes_luma(tmp_path):
    ramp = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000 + 5000)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    grey = load_image(tmp_path / "deep.png", 4)
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    assert int(load_image(tmp_path / "red.png", 4)[0, 0]) == 76  # 0.299 x 255
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(SonosslError, match="junk.png: not a readable image"):
        load_image(tmp_path / "junk.png", 4)
