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
