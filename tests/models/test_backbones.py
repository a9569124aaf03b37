import pytest
import torch
import torchvision

from sonossl.errors import SonosslError
from sonossl.models.backbones import BACKBONES, build_encoder, imagenet_cache_path


def test_grey_input_equals_replicated_rgb_input():
    enc = build_encoder("resnet18").eval()
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc(grey), enc(grey.expand(-1, 3, -1, -1).clone()))
        assert torch.allclose(enc((grey * 255).round().to(torch.uint8)), enc((grey * 255).round() / 255), atol=1e-5)
    assert enc(grey).shape == (2, 512)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_trunk_state_dict_loads_into_torchvision_constructor(name, tmp_path):
    enc = build_encoder(name)
    torch.save(enc.trunk.state_dict(), tmp_path / "backbone.pt")
    model = getattr(torchvision.models, name)()
    missing, unexpected = model.load_state_dict(torch.load(tmp_path / "backbone.pt", weights_only=True), strict=False)
    assert unexpected == [] and all(k.startswith(("fc.", "classifier.2.")) for k in missing) and missing
    again = build_encoder(name, tmp_path / "backbone.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.trunk.state_dict().values(), enc.trunk.state_dict().values()))


def test_imagenet_without_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SonosslError, match=r"ImageNet weights for resnet18 not found at .*resnet18-f37072fd\.pth.*--imagenet-weights FILE"):
        build_encoder("resnet18", "imagenet")


def test_imagenet_from_a_local_file(tmp_path):
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    enc = build_encoder("resnet18", "imagenet", imagenet_weights=tmp_path / "r18.pth")
    assert torch.equal(enc.trunk.conv1.weight, reference.conv1.weight)


def test_pickled_code_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"conv1.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SonosslError, match="not a loadable weights-only checkpoint"):
        build_encoder("resnet18", tmp_path / "evil.pt")


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(SonosslError, match="unknown backbone 'resnet99'; expected one of: resnet18, resnet34, resnet50, convnext_tiny"):
        build_encoder("resnet99")
    assert imagenet_cache_path("resnet50").name.startswith("resnet50-")
