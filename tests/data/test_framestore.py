"""The frame store writer after a crash: a clip cut off mid-write, a partial file made unreadable."""

from __future__ import annotations

import h5py
import numpy as np

from sonossl.data.framestore import TMP_SUFFIX, FrameStore, FrameStoreWriter


def _frames(t: int = 3, value: int = 5) -> np.ndarray:
    return np.full((t, 8, 8), value, np.uint8)


def test_a_clip_cut_off_by_a_kill_is_dropped_on_resume(tmp_path):
    path = tmp_path / "f.h5"
    w = FrameStoreWriter(path)
    w.add_video("a", _frames(), video_id="a", group_id="g")
    w._f.create_dataset("b" + TMP_SUFFIX, data=_frames(2))  # the state a kill inside add_video("b") leaves
    w._f.flush()
    w._f.close()  # the process dies: no rename to f.h5
    assert not path.exists()

    with FrameStoreWriter(path, resume=True) as w:
        assert [r.key for r in w.records()] == ["a"]
        w.add_video("b", _frames(4, 9), video_id="b", group_id="g")
    store = FrameStore(path)
    assert sorted(v.key for v in store.videos) == ["a", "b"]
    assert store.read_clip("b").shape == (4, 8, 8) and int(store.read("b", 0).max()) == 9


def test_an_unreadable_partial_file_is_set_aside_and_the_store_started_again(tmp_path):
    path = tmp_path / "f.h5"
    partial = tmp_path / "f.h5.partial"
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # a header and nothing else
    with FrameStoreWriter(path, resume=True) as w:
        assert w.records() == []
        w.add_video("a", _frames(), video_id="a", group_id="g")
    assert (tmp_path / "f.h5.partial.corrupt").is_file()
    with h5py.File(path) as f:
        assert list(f.keys()) == ["a"]
