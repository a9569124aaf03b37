"""``sonossl embed``: a 2-D map of a model's backbone features over the labelled images.

Features are the encoder's pooled output ``(N, feature_dim)`` of each labelled image (read and
resized as evaluation reads them), L2-normalised. Two views of how well they separate the planes:

- a k-nearest-neighbour classifier (cosine distance, ``k`` = 5) fitted on the train split and
  scored on the test split: its accuracy is printed and returned;
- a 2-D t-SNE map (or UMAP, when ``umap-learn`` is installed and asked for) of all splits, or
  of the test split alone, coloured by class, one marker per split, saved as a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from sonossl.data.labelled import load_labelled
from sonossl.downstream.classifier import predict_logits
from sonossl.errors import SonosslError
from sonossl.downstream.modelfile import load_model
from sonossl.models.features import project_2d

METHODS = ("tsne", "umap", "auto")
SPLITS = ("all", "test")
MARKERS = {"train": "o", "valid": "s", "test": "^"}


def umap_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 5) -> float:
    """Accuracy of a cosine kNN (``min(k, len(train))`` neighbours, distance-weighted votes ignored)."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine")
    return float(knn.fit(train_x, train_y).score(test_x, test_y))


def save_scatter(path: Path, xy: np.ndarray, labels: np.ndarray, splits: list[str], classes: list[str], title: str) -> None:
    from sonossl.plotting import pyplot

    plt = pyplot()

    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    split_arr = np.array(splits)
    for c, name in enumerate(classes):
        label = name  # once per class in the legend
        for split, marker in MARKERS.items():
            sel = (labels == c) & (split_arr == split)
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=14, marker=marker, color=cmap(c % cmap.N), label=label,
                           alpha=0.8, edgecolors="none")
                label = None
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    legend = ax.legend(title="class", fontsize=7, loc="best", markerscale=1.5)
    if len(set(splits)) > 1:
        from matplotlib.lines import Line2D

        ax.add_artist(legend)
        handles = [Line2D([], [], marker=MARKERS[s], ls="", color="grey", label=s) for s in MARKERS if s in set(splits)]
        ax.legend(handles=handles, title="split", fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def embed(
    model: Path,
    labels: Path,
    out_png: Path,
    *,
    method: Literal["tsne", "umap", "auto"] = "tsne",
    split: Literal["all", "test"] = "all",
    k: int = 5,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    echo: Callable[[str], None] | None = print,
) -> dict:
    """Map the backbone features of the labelled images in ``labels`` to 2-D; kNN accuracy train -> test.

    labels: a folder with ``train.csv``, ``valid.csv``, ``test.csv`` (or per-split class folders)
    whose classes are the model's. Returns ``{"knn_accuracy", "k", "n_train", "n_test",
    "n_plotted", "method", "png"}`` and prints the accuracy through ``echo``.
    """
    if method not in METHODS:
        raise SonosslError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if split not in SPLITS:
        raise SonosslError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if k < 1:
        raise SonosslError(f"--k: expected an integer >= 1, got {k}")
    if method == "umap" and not umap_available():
        raise SonosslError("--method umap: umap-learn is not installed; pip install umap-learn or use --method tsne")
    method = ("umap" if umap_available() else "tsne") if method == "auto" else method
    out_png = Path(out_png)
    if out_png.exists() and not overwrite:
        raise SonosslError(f"{out_png}: exists; pass --overwrite to replace it")
    m = load_model(model, device, precision)
    data = load_labelled(labels, size=m.image_size)
    unknown = sorted(set(data.class_names) - set(m.class_names))
    if unknown:
        raise SonosslError(f"{labels}: classes {unknown} are not the model's {m.class_names}")
    to_model = np.array([m.class_names.index(c) for c in data.class_names])  # label ids in the model's class order

    feats, ys, names = {}, {}, {}
    for s in (data.train, data.valid, data.test):
        f = predict_logits(m.classifier.encoder, s.images, batch_size, m.device, m.fast.amp_dtype)
        feats[s.name] = torch.nn.functional.normalize(f, dim=1).numpy()
        ys[s.name] = to_model[s.labels.numpy()]
    acc = knn_accuracy(feats["train"], ys["train"], feats["test"], ys["test"], k)
    shown = ["train", "valid", "test"] if split == "all" else ["test"]
    x = np.concatenate([feats[s] for s in shown])
    y = np.concatenate([ys[s] for s in shown])
    names = [s for s in shown for _ in range(len(feats[s]))]
    if len(x) < 3:
        raise SonosslError(f"{labels}: {len(x)} images to map; expected at least 3")
    xy = project_2d(x, method, seed)
    k_used = min(k, len(feats["train"]))
    title = f"{m.backbone} features ({m.meta.get('init')}), {method}; {k_used}-NN accuracy train->test {acc:.3f}"
    out_png.parent.mkdir(parents=True, exist_ok=True)
    save_scatter(out_png, xy, y, names, m.class_names, title)
    if echo:
        echo(f"kNN accuracy (k={k_used}, cosine, train -> test, {len(feats['test'])} images): {acc:.4f}")
    return {"knn_accuracy": acc, "k": k_used, "n_train": len(feats["train"]), "n_test": len(feats["test"]),
            "n_plotted": len(x), "method": method, "png": out_png}
