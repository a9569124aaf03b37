"""--init resolved once: random, imagenet (from the cache or a file only), a run folder, a backbone.pt."""

import pytest
import torch
import torchvision
import yaml

from sonossl.errors import SonosslError
from sonossl.models.init import resolve_init


def test_baselines_and_a_missing_imagenet_file_say_where_to_put_it(tmp_path):
    spec = resolve_init("random", None)
    assert (spec.label, spec.backbone, spec.source, spec.image_size) == ("random", "resnet18", "random", None)
    with pytest.raises(SonosslError, match="ImageNet weights for resnet34 not found at .*pass --imagenet-weights FILE"):
        resolve_init("imagenet", "resnet34", tmp_path / "none.pth")
    with pytest.raises(SonosslError, match="unknown backbone 'resnet7'"):
        resolve_init("random", "resnet7")


def test_a_run_folder_gives_its_method_backbone_and_pretraining_size(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    trunk = torchvision.models.resnet18()
    trunk.fc = torch.nn.Identity()
    torch.save(trunk.state_dict(), run / "backbone.pt")
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "barlowtwins", "backbone": "resnet18", "image_size": 48}))
    spec = resolve_init(str(run), None)
    assert (spec.label, spec.backbone, spec.image_size) == ("barlowtwins", "resnet18", 48)
    assert spec.source == str(run / "backbone.pt")
    enc = spec.build(None)
    assert torch.equal(enc.trunk.conv1.weight, trunk.conv1.weight)
    (run / "config.yaml").unlink()
    with pytest.raises(SonosslError, match="cannot tell its backbone .* pass --backbone"):
        resolve_init(str(run / "backbone.pt"), None)
    assert resolve_init(str(run / "backbone.pt"), "resnet18").label == "run"


def test_an_unfinished_or_missing_run_is_refused(tmp_path):
    with pytest.raises(SonosslError, match="init not found; expected random, imagenet"):
        resolve_init(str(tmp_path / "nope"), None)
    (tmp_path / "half").mkdir()
    with pytest.raises(SonosslError, match="backbone checkpoint not found; has the pretraining"):
        resolve_init(str(tmp_path / "half"), None)


def test_a_pretraining_flagged_as_diverged_is_named_when_it_is_used(tmp_path, capsys):
    import json

    from sonossl.downstream.evaluate import evaluate
    from sonossl.config import EvaluateConfig
    from helpers import make_labelled

    run = tmp_path / "run"
    run.mkdir()
    trunk = torchvision.models.resnet18()
    trunk.fc = torch.nn.Identity()
    torch.save(trunk.state_dict(), run / "backbone.pt")
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "barlowtwins", "backbone": "resnet18", "image_size": 24}))
    flag = {"kind": "loss_rising", "step": 320, "message": "the median loss of the last 10 logs is 1146"}
    (run / "summary.json").write_text(json.dumps({"health": {"flags": [flag]}}))
    assert resolve_init(str(run), None).health == ("warning: the pretraining run was flagged (loss rising): the median "
                                                   "loss of the last 10 logs is 1146")
    labels = make_labelled(tmp_path / "labels", {"train": 4, "valid": 2, "test": 2}, size=24)
    evaluate(EvaluateConfig(labels=labels, init=str(run), protocol=["linear"], fractions=[100], seeds=[0],
                            linear_epochs=2, out=tmp_path / "eval"))
    assert "warning: the pretraining run was flagged (loss rising)" in capsys.readouterr().out
    (run / "summary.json").write_text(json.dumps({"health": {"flags": [flag, {**flag, "kind": "recovered"}]}}))
    assert resolve_init(str(run), None).health is None  # recovered from: the backbone is not suspect
