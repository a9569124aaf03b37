"""``sonossl export``: a trained classifier in a form other code loads without sonossl.

Three formats, each written to ``out`` with a model card ``<out stem>.card.json`` beside it
(classes, preprocessing, backbone, init, training data counts, test metrics; no PHI, no paths):

- ``torchvision``: the trunk's ``state_dict`` (``out``), which loads into the matching
  torchvision constructor, e.g. ``torchvision.models.resnet18()``, with ``strict=False``
  reporting only the classifier layer's keys (``fc.weight``, ``fc.bias``) missing; and that layer
  in ``<out stem>.head.pth`` (``fc.weight``, ``fc.bias`` for a ``num_classes``-way layer, with
  the probe's feature standardisation folded in), so ``resnet18(num_classes=C)`` loads
  ``{**trunk, **head}`` strictly and gives the classifier's logits. Its input is what torchvision
  expects: ``(B, 3, S, S)``, grey replicated to 3 channels, ImageNet mean/std normalised.
- ``torchscript``: the whole classifier traced; input ``(B, 1, S, S)`` float in [0, 1] (grey),
  normalisation inside; output logits ``(B, C)``.
- ``onnx``: the same graph (input ``image`` ``(batch, 1, S, S)`` float in [0, 1], output
  ``logits`` ``(batch, C)``), dynamic batch, through torch's TorchScript-based exporter
  (``dynamo=False``: it needs no package beyond ``onnx``, and the graph is a plain CNN).

TorchScript and ONNX outputs are compared with PyTorch's on a random batch right after export
(ONNX through onnxruntime when it is installed); the largest difference goes into the card, and a
difference above 1e-4 (times the largest logit's magnitude, when above 1) is an error.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from sonossl.downstream.classifier import Standardise
from sonossl.errors import SonosslError
from sonossl.downstream.modelfile import LoadedModel, load_model
from sonossl.infer.card import model_card
from sonossl.models.backbones import IMAGENET_MEAN, IMAGENET_STD, get_spec

TOLERANCE = 1e-4
SUFFIX = {"torchvision": ".pth", "torchscript": ".torchscript.pt", "onnx": ".onnx"}


def folded_head(m: LoadedModel) -> nn.Linear:
    """The classifier's head ``standardise -> dropout -> linear`` as one ``nn.Linear`` (eval mode).

    ``W ((f - mean) / std) + b = (W / std) f + (b - (W / std) mean)``.
    """
    standardise, _, linear = m.classifier.head
    assert isinstance(standardise, Standardise) and isinstance(linear, nn.Linear)
    w = linear.weight.detach().cpu().double() / standardise.std.detach().cpu().double()
    b = linear.bias.detach().cpu().double() - w @ standardise.mean.detach().cpu().double()
    out = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        out.weight.copy_(w.float())
        out.bias.copy_(b.float())
    return out


def companion_paths(out: Path) -> tuple[Path, Path]:
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(stem + ".card.json"), out.with_name(stem + ".head.pth")


def _example(m: LoadedModel, batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 1, m.image_size, m.image_size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _reference(m: LoadedModel, x: torch.Tensor) -> np.ndarray:
    return m.classifier(x.to(m.device)).float().cpu().numpy()


def _check(name: str, ours: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference; an error above ``TOLERANCE`` (relative to the logits' scale when
    they exceed 1 in magnitude: float32 cannot hold a logit of 1e4 to within 1e-4)."""
    diff = float(np.abs(ours - ref).max())
    allowed = TOLERANCE * max(1.0, float(np.abs(ref).max()))
    if not diff <= allowed:
        raise SonosslError(f"export {name}: outputs differ from PyTorch's by {diff:.2e} (> {allowed:.1e}); not written")
    return diff


def export_torchvision(m: LoadedModel, out: Path) -> dict:
    spec = get_spec(m.backbone)
    _, head_path = companion_paths(out)
    trunk = {k: v.detach().cpu().clone() for k, v in m.classifier.encoder.trunk.state_dict().items()}
    head = folded_head(m)
    torch.save(trunk, out)
    torch.save({f"{spec.head_attr}.weight": head.weight.detach().clone(), f"{spec.head_attr}.bias": head.bias.detach().clone()}, head_path)
    return {
        "file": out.name,
        "head_file": head_path.name,
        "input": f"(B, 3, {m.image_size}, {m.image_size}) float: grey in [0, 1] replicated to 3 channels, "
                 f"then (x - mean) / std per channel",
        "input_mean": list(IMAGENET_MEAN),
        "input_std": list(IMAGENET_STD),
        "output": f"logits (B, {len(m.class_names)}) in class_names order (with the head loaded)",
        "load": (f"model = torchvision.models.{m.backbone}(num_classes={len(m.class_names)}); "
                 f"model.load_state_dict({{**torch.load('{out.name}', weights_only=True), "
                 f"**torch.load('{head_path.name}', weights_only=True)}})"),
    }


def export_torchscript(m: LoadedModel, out: Path) -> dict:
    model = m.classifier.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning on the dtype branch (float input only), jit deprecation notes
        traced = torch.jit.trace(model, _example(m, 2).to(m.device), check_trace=False)
        torch.jit.save(traced, str(out))
        loaded = torch.jit.load(str(out), map_location=m.device)
    x = _example(m, 3, seed=1)
    with torch.no_grad():
        diff = _check("torchscript", loaded(x.to(m.device)).float().cpu().numpy(), _reference(m, x))
    return {
        "file": out.name,
        "input": f"(B, 1, {m.image_size}, {m.image_size}) float grey in [0, 1]; normalisation is inside the model",
        "output": f"logits (B, {len(m.class_names)}) in class_names order",
        "load": f"model = torch.jit.load('{out.name}')",
        "check": {"max_abs_diff_vs_pytorch": diff, "batch": 3},
    }


def export_onnx(m: LoadedModel, out: Path) -> dict:
    model = m.classifier.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation note, TracerWarning
        torch.onnx.export(model, (_example(m, 2).to(m.device),), str(out), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    info = {
        "file": out.name,
        "input": f"image (batch, 1, {m.image_size}, {m.image_size}) float32 grey in [0, 1]; normalisation is inside the model",
        "output": f"logits (batch, {len(m.class_names)}) in class_names order",
        "opset": 17,
        "load": f"onnxruntime.InferenceSession('{out.name}').run(None, {{'image': x}})",
    }
    try:
        import onnxruntime as ort
    except ImportError:
        info["check"] = "not checked: onnxruntime is not installed"
        return info
    x = _example(m, 3, seed=1)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    diff = _check("onnx", sess.run(None, {"image": x.numpy()})[0], _reference(m, x))
    info["check"] = {"max_abs_diff_vs_pytorch": diff, "batch": 3, "runtime": f"onnxruntime {ort.__version__}"}
    return info


EXPORTERS: dict[str, Callable[[LoadedModel, Path], dict]] = {
    "torchvision": export_torchvision,
    "torchscript": export_torchscript,
    "onnx": export_onnx,
}


def export(model: Path, format: str, out: Path | None = None, *, overwrite: bool = False) -> Path:
    """Export the classifier of ``model`` (an evaluate run folder or ``model.pt``) as ``format``.

    out: the file to write (default ``<run folder>/exports/<backbone><suffix>``); the card goes
    beside it. Returns ``out``. Raises :class:`SonosslError` for an unknown format, a bad model,
    or an existing output without ``overwrite``.
    """
    if format not in EXPORTERS:
        raise SonosslError(f"--format: unknown export format {format!r}; expected one of: {', '.join(EXPORTERS)}")
    m = load_model(model, "cpu")  # exported graphs are device-neutral; CPU keeps the check exact
    out = Path(out) if out is not None else m.path.parent / "exports" / f"{m.backbone}{SUFFIX[format]}"
    card_path, head_path = companion_paths(out)
    written = [out, card_path] + ([head_path] if format == "torchvision" else [])
    existing = [p for p in written if p.exists()]
    if existing and not overwrite:
        raise SonosslError(f"{existing[0]}: exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = EXPORTERS[format](m, out)
        card = model_card(m, export={"format": format, **info})
        card_path.write_text(json.dumps(card, indent=1, default=str) + "\n")
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return out
