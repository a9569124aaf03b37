from pathlib import Path

import pytest
from PIL import Image

from sonossl.errors import SonosslError
from sonossl.infer.embed import embed, knn_accuracy



def test_embed_writes_map_and_prints_knn(trained, tmp_path: Path, cli, capsys):
    out = tmp_path / "maps" / "embed.png"
    assert cli(["embed", "--model", str(trained["run"]), "--labels", str(trained["labels"]), "--out", str(out),
                "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    line = next(s for s in stdout.splitlines() if s.startswith("kNN accuracy"))
    acc = float(line.rsplit(":", 1)[1])
    # three bar orientations: even a barely fine-tuned random ResNet's features tell them apart
    assert 0.6 < acc <= 1.0, line
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_embed_test_split_only_returns_counts(trained, tmp_path: Path):
    printed = []
    r = embed(trained["run"], trained["labels"], tmp_path / "e.png", split="test", k=3, device="cpu", echo=printed.append)
    assert (r["n_train"], r["n_test"], r["n_plotted"], r["k"], r["method"]) == (12 * 3, 5 * 3, 5 * 3, 3, "tsne")
    assert len(printed) == 1 and f"{r['knn_accuracy']:.4f}" in printed[0]
    with pytest.raises(SonosslError, match="--overwrite"):
        embed(trained["run"], trained["labels"], tmp_path / "e.png", echo=None)


def test_knn_accuracy_on_separable_points():
    import numpy as np

    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    assert knn_accuracy(x, y, np.array([[1, 0.05], [0.05, 1]]), np.array([0, 1]), k=1) == 1.0
    assert knn_accuracy(x, y, np.array([[1, 0.05], [0.05, 1]]), np.array([1, 0]), k=1) == 0.0


def test_bad_method_and_foreign_classes(trained, tmp_path: Path):
    with pytest.raises(SonosslError, match="tsne, umap, auto"):
        embed(trained["run"], trained["labels"], tmp_path / "e.png", method="pca", echo=None)
    other = tmp_path / "other"
    for split in ("train", "valid", "test"):
        for cls in ("RVOT", "3VT"):
            (other / split / cls).mkdir(parents=True)
            Image.open(trained["labels"] / "img/test/4CH_0.png").save(other / split / cls / "a.png")
    with pytest.raises(SonosslError, match=r"classes \['3VT', 'RVOT'\] are not the model's"):
        embed(trained["run"], other, tmp_path / "e.png", device="cpu", echo=None)
    assert not (tmp_path / "e.png").exists()
