"""``model.pt``, the trained classifier of an evaluate run: its one writer and its one reader.

A ``model.pt`` is a dict of tensors and plain values (format :data:`MODEL_FORMAT`), written
atomically by :func:`save_model` and read with ``weights_only=True`` (no pickled code runs) by
:func:`load_model`: ``format``, ``backbone``, ``class_names``, ``preprocessing``
(``image_size``, ...), ``dropout``, ``state_dict`` of the :class:`Classifier`, ``init``,
``metrics``, ``run``, ``train_counts``. Everything ``predict``, ``export`` and ``embed`` need
comes from it, so their results never depend on flags given again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sonossl.downstream.classifier import Classifier
from sonossl.errors import SonosslError
from sonossl.models.backbones import build_encoder, get_spec, load_error
from sonossl.models.devices import resolve_device
from sonossl.models.fastpath import FastPath, choose
from sonossl.outputs import atomic_torch_save

MODEL_FORMAT = 1

REQUIRED_KEYS = ("format", "backbone", "class_names", "preprocessing", "state_dict")


@dataclass
class LoadedModel:
    """A classifier in eval mode on ``device``, in ``fast``'s memory layout; ``(B, 1, S, S)`` uint8
    or float [0, 1] -> logits ``(B, C)`` (run it with ``fast.amp_dtype``, as ``predict_logits`` does)."""

    classifier: Classifier
    class_names: list[str]
    backbone: str
    image_size: int
    path: Path
    device: str
    meta: dict[str, Any] = field(default_factory=dict)  # the bundle without its state_dict
    fast: FastPath = field(default_factory=lambda: FastPath("32-true", False, "given"))  # precision and layout


def model_file(model: Path) -> Path:
    """An evaluate run folder (holding ``model.pt``) or a ``model.pt`` file -> the file."""
    model = Path(model)
    if model.is_dir():
        path = model / "model.pt"
        if not path.is_file():
            raise SonosslError(f"{model}: no model.pt in this folder; expected an evaluate run folder (e.g. EVAL/random_linear_f100_s0) or a model.pt file")
        return path
    if not model.is_file():
        raise SonosslError(f"{model}: model not found; expected an evaluate run folder or a model.pt file")
    return model


def load_model(model: Path, device: str = "cpu", precision: str = "32-true") -> LoadedModel:
    """Read ``model.pt`` (see the module docstring) and rebuild its classifier, in eval mode.
    ``precision``: ``32-true`` (float32 NCHW, the reference), ``auto`` (the fast path evaluate
    scores in on this machine, :func:`sonossl.models.fastpath.choose`) or a Lightning precision."""
    path = model_file(model)
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or pickled code
        raise SonosslError(f"{path}: not a loadable model.pt ({load_error(exc)})") from None
    if not isinstance(bundle, dict) or any(k not in bundle for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(bundle, dict) or k not in bundle]
        raise SonosslError(f"{path}: not a sonossl model.pt (missing {', '.join(missing)}); expected the model.pt of an evaluate run")
    if bundle["format"] != MODEL_FORMAT:
        raise SonosslError(f"{path}: model.pt format {bundle['format']}; this sonossl reads format {MODEL_FORMAT}")
    name, classes = bundle["backbone"], list(bundle["class_names"])
    get_spec(name)
    size = int(bundle["preprocessing"].get("image_size", 0))
    if size < 8 or len(classes) < 2:
        raise SonosslError(f"{path}: preprocessing.image_size {size} or class_names {classes} out of range")
    classifier = Classifier(build_encoder(name, "random"), len(classes), float(bundle.get("dropout", 0.5)))
    try:
        classifier.load_state_dict(bundle["state_dict"])
    except RuntimeError as exc:
        raise SonosslError(f"{path}: weights do not fit a {name} classifier with {len(classes)} classes ({str(exc).splitlines()[0]})") from None
    device = resolve_device(device)
    fast = choose(name, size, device, precision)
    classifier.to(device, memory_format=fast.memory_format).eval()
    meta = {k: v for k, v in bundle.items() if k != "state_dict"}
    return LoadedModel(classifier, classes, name, size, path, device, meta, fast)


def save_model(path: Path, classifier: Classifier, *, backbone: str, class_names: list[str], image_size: int,
               dropout: float, init: str, metrics: dict, run: dict, train_counts: dict) -> None:
    """Write ``model.pt`` (see the module docstring) atomically; ``image_size`` is the side in
    pixels of the square grey input the classifier was trained on."""
    bundle = {
        "format": MODEL_FORMAT,
        "backbone": backbone,
        "class_names": list(class_names),
        "preprocessing": {"image_size": image_size, "channels": 1, "input": "grey uint8, resized (bilinear, antialiased)",
                          "normalisation": "x/255, grey replicated to 3 channels, ImageNet mean/std (inside the model)"},
        "dropout": dropout,
        "state_dict": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
        "init": init,
        "metrics": metrics,
        "run": run,
        "train_counts": train_counts,
    }
    atomic_torch_save(bundle, path)
