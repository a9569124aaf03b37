"""A tiny synthetic study: a few clips, a small labelled set, runs of a few steps each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def study_data(tmp_path_factory) -> Path:
    from sonossl.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("study_data")
    synthesize(root, videos=6, frames=8, size=48, seed=0, labelled_per_class=(10, 3, 4))
    return root


def write_study(path: Path, data: Path, *, methods=("barlowtwins",), inits=("random", "pretrained"),
                protocols=("linear", "finetune"), fractions=(50, 100), seeds=(0, 1), **extra) -> Path:
    spec = {
        "name": "tiny",
        "data": {"unlabelled": str(data / "videos"), "labelled": {"planes": str(data / "labelled")}},
        "ingest": {"size": 32, "val_fraction": 0.2},
        "variants": {"all": {"frame_skip": 2}},
        "pretrain": {"preset": "cpu", "methods": list(methods), "variants": ["all"],
                     "options": {"max_steps": 3, "batch_size": 8, "epochs": 1, "num_workers": 0,
                                 "method_options": {"projector": [64, 64]}} if list(methods) == ["barlowtwins"] else
                                {"max_steps": 3, "batch_size": 8, "epochs": 1, "num_workers": 0}},
        "evaluate": {"inits": list(inits), "protocols": list(protocols), "fractions": list(fractions),
                     "seeds": list(seeds), "options": {"batch_size": 8, "epochs": 2, "linear_epochs": 5,
                                                       "max_steps": 4}},
    }
    for k, v in extra.items():
        spec[k] = v
    if "pretrained" not in inits and not any("-" in i for i in inits):
        del spec["pretrain"]
    path.write_text(yaml.safe_dump(spec))
    return path
