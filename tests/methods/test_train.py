"""The run folder's guards: image size against the store, inputs apart, checkpoints and stats on resume."""

import json

import pytest
import torch

from sonossl.config import PretrainConfig
from sonossl.data.framestore import FrameStore, FrameStoreWriter
from sonossl.errors import SonosslError
from sonossl.methods.runfolder import check_checkpoint, trim_stats
from sonossl.methods.train import check_image_size, pretrain_inputs, run_pretrain


def _store(path):
    import numpy as np

    with FrameStoreWriter(path) as w:
        w.add_video("v", np.zeros((4, 32, 32), np.uint8), video_id="v", group_id="g")
    return FrameStore(path)


def test_image_size_comes_from_the_store_and_larger_is_refused(tmp_path):
    store = _store(tmp_path / "f.h5")
    assert check_image_size(None, store) == 32 and check_image_size(24, store) == 24
    with pytest.raises(SonosslError, match="larger than the 32 px frames"):
        check_image_size(48, store)


def test_the_run_folder_is_apart_from_its_inputs(tmp_path):
    _store(tmp_path / "d" / "f.h5")
    cfg = PretrainConfig(frames=tmp_path / "d" / "f.h5", out=tmp_path / "d" / "run", max_steps=1)
    assert ("--frames", tmp_path / "d" / "f.h5") in pretrain_inputs(cfg)
    with pytest.raises(SonosslError, match="sits inside the input --frames"):
        run_pretrain(cfg.model_copy(update={"out": tmp_path / "d" / "f.h5" / "x"}), progress=False)


def test_a_pickled_checkpoint_is_refused_and_stats_after_it_are_dropped(tmp_path):
    bad = tmp_path / "last.ckpt"
    torch.save({"global_step": 3, "obj": SonosslError("pickled object")}, bad)  # not tensors only
    with pytest.raises(SonosslError, match="last.ckpt: not a loadable weights-only checkpoint"):
        check_checkpoint(bad)
    good = tmp_path / "ok.ckpt"
    torch.save({"global_step": 7}, good)
    assert check_checkpoint(good) == 7
    stats = tmp_path / "stats.jsonl"
    stats.write_text("".join(json.dumps({"step": s}) + "\n" for s in (5, 10, 15)) + '{"step": 2')
    trim_stats(stats, 10)
    assert [json.loads(x)["step"] for x in stats.read_text().splitlines()] == [5, 10]
