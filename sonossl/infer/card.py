"""Model cards: what a user of an exported classifier needs to know (no PHI, no paths)."""

from __future__ import annotations

from typing import Any

from sonossl.downstream.modelfile import LoadedModel

# run.json fields that describe the training; paths (init_source) are left out of model cards
RUN_FIELDS = ("init", "protocol", "fraction", "seed", "n_train", "best_epoch", "epochs", "steps", "best_val_balanced_accuracy")


def model_card(m: LoadedModel, **extra: Any) -> dict[str, Any]:
    """What a user of an export needs to know, with no PHI and no paths: classes, preprocessing,
    backbone, initialisation, training data counts per class and split, test metrics."""
    run = m.meta.get("run") or {}
    return {
        "sonossl_model_format": m.meta.get("format"),
        "backbone": m.backbone,
        "class_names": m.class_names,
        "preprocessing": m.meta.get("preprocessing", {}),
        "init": m.meta.get("init"),
        "training": {k: run[k] for k in RUN_FIELDS if k in run},
        "training_data_counts": m.meta.get("train_counts", {}),
        "test_metrics": m.meta.get("metrics", {}),
        **extra,
    }
