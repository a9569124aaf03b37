"""Small builders shared by the tests (importable as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["a", "b", "c"]


def make_labelled(root: Path, per_class: dict[str, int], size: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in per_class.items():
        lines = ["image_path,class"]
        for ci, cls in enumerate(CLASSES):
            for k in range(n):
                img = rng.integers(0, 60, (size, size)).astype(np.uint8)
                if ci == 0:
                    img[size // 2 - 2 : size // 2 + 2, :] = 220
                elif ci == 1:
                    img[:, size // 2 - 2 : size // 2 + 2] = 220
                else:
                    np.fill_diagonal(img, 220)
                rel = f"img/{split}/{cls}_{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / rel)
                lines.append(f"{rel},{cls}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root
