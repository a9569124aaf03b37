import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from sonossl.errors import SonosslError
from sonossl.infer.export import EXPORTERS, companion_paths, export, folded_head
from sonossl.downstream.modelfile import load_model
from sonossl.models.backbones import IMAGENET_MEAN, IMAGENET_STD

CLASSES, SIZE = ["3VV", "4CH", "LVOT"], 32  # those of the `trained` fixture (conftest.py)

TOL = 1e-4


def batch(n: int, seed: int = 7) -> torch.Tensor:
    """(n, 1, S, S) float grey in [0, 1]."""
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference(run: Path, x: torch.Tensor) -> np.ndarray:
    return load_model(run, "cpu").classifier(x).numpy()


def check_card(card_path: Path, fmt: str, tmp_path: Path) -> dict:
    text = card_path.read_text()
    card = json.loads(text)
    assert card["class_names"] == CLASSES and card["backbone"] == "resnet18"
    assert card["preprocessing"]["image_size"] == SIZE and card["export"]["format"] == fmt
    assert card["training_data_counts"]["train"] == {c: 12 for c in CLASSES}
    assert set(card["test_metrics"]) >= {"macro_f1", "balanced_accuracy", "accuracy"}
    assert card["training"]["protocol"] == "finetune"
    assert str(tmp_path.parent) not in text and "/tmp" not in text  # no paths
    return card


def test_torchvision_round_trip(trained, tmp_path: Path):
    out = export(trained["run"], "torchvision", tmp_path / "resnet18.pth")
    card_path, head_path = companion_paths(out)
    assert card_path.name == "resnet18.card.json" and head_path.name == "resnet18.head.pth"
    trunk = torch.load(out, weights_only=True)
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    # with the head, the torchvision model *is* the classifier, given torchvision's usual input
    full = torchvision.models.resnet18(num_classes=len(CLASSES))
    full.load_state_dict({**trunk, **torch.load(head_path, weights_only=True)})
    full.eval()
    x = batch(4)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = full((x.expand(-1, 3, -1, -1) - mean) / std).numpy()
    np.testing.assert_allclose(ours, reference(trained["run"], x), atol=TOL, rtol=0)
    check_card(card_path, "torchvision", tmp_path)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_round_trip(trained, tmp_path: Path):
    out = export(trained["run"], "torchscript", tmp_path / "m.torchscript.pt")
    loaded = torch.jit.load(str(out))
    x = batch(5)  # another batch size than the trace's
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), reference(trained["run"], x), atol=TOL, rtol=0)
    card = check_card(companion_paths(out)[0], "torchscript", tmp_path)
    assert card["export"]["check"]["max_abs_diff_vs_pytorch"] <= TOL


def test_onnx_round_trip(trained, tmp_path: Path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = export(trained["run"], "onnx", tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(out)))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 6):  # dynamic batch
        x = batch(n, seed=n)
        got = sess.run(["logits"], {"image": x.numpy()})[0]
        assert got.shape == (n, len(CLASSES))
        np.testing.assert_allclose(got, reference(trained["run"], x), atol=TOL, rtol=0)
    card = check_card(companion_paths(out)[0], "onnx", tmp_path)
    assert card["export"]["check"]["max_abs_diff_vs_pytorch"] <= TOL


def test_folded_head_equals_standardise_dropout_linear(trained):
    """A linear probe's head (fitted standardisation) folds into one torchvision ``fc`` layer."""
    m = load_model(trained["run"], "cpu")
    g = torch.Generator().manual_seed(0)
    standardise = m.classifier.head[0]
    standardise.mean.copy_(torch.randn(512, generator=g))
    standardise.std.copy_(torch.rand(512, generator=g) + 0.5)
    feats = torch.randn(8, 512, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(folded_head(m)(feats), m.classifier.head(feats), atol=1e-4, rtol=1e-5)


def test_default_out_goes_into_the_run_folder(trained, tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    out = export(run / "model.pt", "torchvision")
    assert out == run / "exports" / "resnet18.pth" and (run / "exports" / "resnet18.card.json").is_file()
    with pytest.raises(SonosslError, match="--overwrite"):
        export(run, "torchvision")
    assert export(run, "torchvision", overwrite=True) == out


def test_unknown_format_and_missing_model(trained, tmp_path: Path, cli, capsys):
    out = tmp_path / "x.bin"
    assert cli(["export", "--model", str(trained["run"]), "--format", "tflite", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tflite'" in err[0] and all(f in err[0] for f in EXPORTERS)
    assert not any(tmp_path.iterdir())
    (tmp_path / "empty_run").mkdir()
    assert cli(["export", "--model", str(tmp_path / "empty_run"), "--format", "onnx", "--out", str(out)]) == 2
    assert "no model.pt" in capsys.readouterr().err
    assert not out.exists()
