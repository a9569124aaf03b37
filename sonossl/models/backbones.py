"""Backbone registry: torchvision ResNets and ConvNeXt-T, fed grey-scale ultrasound frames.

Grey frames reach the network as ``(batch, 1, H, W)`` floats in ``[0, 1]``. :class:`Encoder`
replicates the channel three times and applies ImageNet normalisation inside the model, so
(1) the trunk stays the *unmodified* torchvision architecture and ``backbone.pt`` loads into
the matching torchvision constructor, (2) ImageNet weights apply unchanged (replicating a grey
image is what an RGB network sees when shown a grey photograph), and (3) the data pipeline can
keep uint8 tensors until the device. Colour frames ``(batch, 3, H, W)`` pass through unchanged
apart from the normalisation.

The standard stem (7x7 stride-2 conv + max-pool) is kept at every resolution: a stride-1
small-input stem was measured ~20x slower per image on 2 CPU cores at 64 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from sonossl.config import BASELINE_INITS
from sonossl.errors import SonosslError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one torchvision trunk and where its classifier sits."""

    constructor: Callable[..., nn.Module]
    weights: torchvision.models.WeightsEnum
    feature_dim: int
    head_attr: str  # attribute path of the classifier layer that becomes nn.Identity


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1, 512, "fc"),
    "resnet34": BackboneSpec(torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1, 512, "fc"),
    "resnet50": BackboneSpec(torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1, 2048, "fc"),
    "convnext_tiny": BackboneSpec(
        torchvision.models.convnext_tiny, torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, 768, "classifier.2"
    ),
}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise SonosslError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def imagenet_cache_path(name: str) -> Path:
    """Where torchvision keeps the ImageNet checkpoint of ``name`` (it is never downloaded here)."""
    url = get_spec(name).weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_error(exc: BaseException) -> str:
    """One short line saying why ``torch.load(..., weights_only=True)`` refused a file: torch's
    own message runs over many lines (and carries terminal colour codes)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:  # a pickle that would build an object: the classic code-execution vector
        return f"it holds pickled objects, not only tensors (would call {found.group(1)}); refused"
    return f"{type(exc).__name__}: {' '.join(text.split())[:160]}"


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a tensor-only checkpoint safely (``weights_only=True``); refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise SonosslError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with code, truncated file, not a torch file
        raise SonosslError(f"{path}: not a loadable weights-only checkpoint ({load_error(exc)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SonosslError(f"{path}: expected a state_dict of tensors")
    return obj


def _strip_head(model: nn.Module, head_attr: str) -> None:
    parent = model
    *path, last = head_attr.split(".")
    for part in path:
        parent = getattr(parent, part)
    if last.isdigit():
        parent[int(last)] = nn.Identity()
    else:
        setattr(parent, last, nn.Identity())


def build_trunk(name: str, init: str = "random", imagenet_weights: Path | None = None) -> nn.Module:
    """A torchvision trunk with its classifier replaced by ``nn.Identity``.

    init: ``random`` or ``imagenet``. ImageNet weights come from ``imagenet_weights`` when
    given, else from torchvision's cache; with neither, a :class:`SonosslError` says how to
    provide them. Output: ``(batch, feature_dim)``.
    """
    spec = get_spec(name)
    model = spec.constructor(weights=None)
    if init == "imagenet":
        path = Path(imagenet_weights) if imagenet_weights else imagenet_cache_path(name)
        if not path.is_file():
            raise SonosslError(
                f"ImageNet weights for {name} not found at {path}; copy {spec.weights.url.rsplit('/', 1)[-1]} "
                f"there (torchvision's cache) or pass --imagenet-weights FILE"
            )
        state = load_state_dict_file(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith(spec.head_attr)] or unexpected:
            raise SonosslError(f"{path}: not a {name} state_dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    elif init != "random":
        raise SonosslError(f"unknown init {init!r}; expected random, imagenet or a path")
    _strip_head(model, spec.head_attr)
    return model


def imagenet_available(name: str, imagenet_weights: Path | None = None) -> bool:
    return (Path(imagenet_weights) if imagenet_weights else imagenet_cache_path(name)).is_file()


class Encoder(nn.Module):
    """Frames in, features out: ``(batch, 1|3, H, W)`` float in [0, 1] -> ``(batch, feature_dim)``."""

    def __init__(self, name: str, trunk: nn.Module):
        super().__init__()
        self.name = name
        self.feature_dim = get_spec(name).feature_dim
        self.trunk = trunk
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.trunk((x - self.mean) / self.std)


def build_encoder(name: str, init: str | Path = "random", imagenet_weights: Path | None = None) -> Encoder:
    """An :class:`Encoder` initialised randomly, from ImageNet, or from a ``backbone.pt`` file."""
    if str(init) in BASELINE_INITS:
        return Encoder(name, build_trunk(name, str(init), imagenet_weights))
    trunk = build_trunk(name, "random")
    state = load_state_dict_file(Path(init))
    head = get_spec(name).head_attr
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SonosslError(
            f"{init}: not a {name} backbone (missing {len(missing)} keys e.g. {missing[:2]}, "
            f"unexpected {len(unexpected)} e.g. {unexpected[:2]})"
        )
    return Encoder(name, trunk)
