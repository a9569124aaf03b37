"""The ``augment:`` block of a pretraining config: validated at the edge, applied to the views the
data loader draws, and recorded with every resolved value in the run's ``config.yaml``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import one_thread_run

from sonossl.cli import main
from sonossl.config import PretrainConfig, build_config
from sonossl.data.framestore import FrameStore
from sonossl.errors import SonosslError
from sonossl.methods import validate_method
from sonossl.methods.train import build_model

TINY = dict(image_size=32, batch_size=4, epochs=1, max_steps=1, num_workers=0, log_every_n_steps=1,
            method_options={"projector": [32, 16]})


@pytest.mark.parametrize("augment, names", [
    ({"view1": {"blur_p": 1.5}}, ("augment.view1.blur_p", "less than or equal to 1")),
    ({"view2": {"crop_scale": [0.9, 0.2]}}, ("augment.view2.crop_scale", "lo <= hi")),
    ({"view1": {"shadow_strength": [0.5, 1.5]}}, ("augment.view1.shadow_strength", "0 <= lo <= hi <= 1")),
    ({"view2": {"haze_p": -0.1}}, ("augment.view2.haze_p", "greater than or equal to 0")),
    ({"view1": {"blurp": 0.5}}, ("unknown key 'augment.view1.blurp'", "blur_p")),
    ({"view3": {}}, ("unknown key 'augment.view3'", "view1, view2")),
])
def test_a_bad_augment_setting_is_refused_in_one_line(tmp_path: Path, frames, capsys, augment, names):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"augment": augment}))
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(cfg), "--frames", str(frames), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cfg.yaml" in err[0] and all(n in err[0] for n in names), err
    assert not out.exists()


def test_an_augment_setting_reaches_the_loader_and_the_resolved_config(tmp_path: Path, frames):
    cfg = build_config(PretrainConfig, TINY, {"frames": frames, "out": tmp_path / "run",
                                             "augment": {"view2": {"blur_p": 0.33, "crop_scale": [0.5, 0.9],
                                                                   "depth_p": 0.4, "shadow_sigma": [0.1, 0.3]}}})
    views = build_model(cfg, FrameStore(frames)).train_set.transforms  # what run_pretrain hands the loader
    assert (views[1].blur_p, views[1].scale) == (0.33, (0.5, 0.9))
    assert (views[1].depth_p, views[1].shadow_sigma, views[0].depth_p) == (0.4, (0.1, 0.3), 0.0)
    assert (views[0].blur_p, views[0].scale) == (1.0, (0.3, 1.0))  # view1 keeps the BarlowTwins preset's values
    run = one_thread_run(cfg)
    written = yaml.safe_load((run / "config.yaml").read_text())["augment"]
    assert written["view2"]["blur_p"] == 0.33 and written["view2"]["crop_scale"] == [0.5, 0.9]
    assert written["view1"]["blur_p"] == 1.0 and written["view1"]["solarize_p"] == 0.0 and written["view1"]["hflip"] is False
    assert None not in written["view1"].values()  # every value used, not only the ones given


@pytest.mark.parametrize("method, augment, expected", [
    ("ae", {"view2": {"blur_p": 0.5}}, "augment.view2: ae draws one view"),
    ("dino", {"view1": {"crop_scale": [0.2, 1.0]}}, "augment.view1.crop_scale: dino's global crops"),
])
def test_method_specific_augment_refusals(method, augment, expected):
    with pytest.raises(SonosslError, match=expected):
        validate_method(PretrainConfig(method=method, image_size=32, augment=augment))
