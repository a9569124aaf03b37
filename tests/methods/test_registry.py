"""Every registered method through the command line with the cpu preset's own settings: two
steps on a frame store, a backbone.pt that torchvision's constructor loads."""

from __future__ import annotations

import pytest

from helpers import assert_torchvision_backbone

from sonossl import api
from sonossl.cli import main
from sonossl.errors import SonosslError
from sonossl.methods import METHODS


def test_the_registry_holds_the_seven_methods():
    assert sorted(METHODS) == ["ae", "barlowtwins", "byol", "dino", "moco", "simclr", "vicreg"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cpu_preset_pretrains_and_writes_a_torchvision_backbone(method, frames, tmp_path, capsys):
    out = tmp_path / method
    rc = main(["pretrain", "--method", method, "--preset", "cpu", "--frames", str(frames), "--out", str(out),
               "--max-steps", "2", "--batch-size", "8", "--image-size", "32", "--num-workers", "0", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert_torchvision_backbone(out / "backbone.pt")


def test_an_unknown_method_lists_the_valid_ones(frames, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # on the command line: the flag's choices are the registry's names
        main(["pretrain", "--method", "swav", "--frames", str(frames), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "'swav'" in err and all(f"'{m}'" in err for m in METHODS) and "\n" not in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SonosslError, match="unknown method 'swav'.*barlowtwins"):  # in a config: the registry's check
        api.pretrain(method="swav", frames=frames, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
