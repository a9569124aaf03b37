"""Sharded ingestion: ``ingest --shard I/N`` parts read as one store equal one ingest of
everything (clips, frames, splits, groups), and a part killed with SIGKILL resumes alone."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import kill_when, run_cli_process, spawn_cli

from sonossl.cli import main
from sonossl.data.framestore import FrameStore, part_name
from sonossl.config import IngestConfig
from sonossl.data.ingest import ingest, shard_of
from sonossl.data.synthetic import synthesize
from sonossl.errors import SonosslError

# one pseudonym key for every store of this module, so a sharded store and one ingest give the same ids
OPTS = dict(frame_skip=1, size=32, val_fraction=0.3,
            salt_file=Path(tempfile.mkdtemp(prefix="sonossl-test-key-")) / "shared.key")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """12 tiny synthetic DICOM clips (3 per patient group) and one ingest of all of them."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, videos=12, frames=6, size=32, seed=0, labelled_per_class=(1, 1, 1))
    ingest(IngestConfig(sources=[root / "videos"], out=root / "all.h5", **OPTS), progress=False)
    return root


def _sharded(clips: Path, out: Path, n: int = 3) -> FrameStore:
    for i in range(n):
        ingest(IngestConfig(sources=[clips / "videos"], out=out, shard=f"{i}/{n}", **OPTS), progress=False)
    return FrameStore(out)


def _same_store(a: FrameStore, b: FrameStore) -> None:
    assert [v.key for v in a.videos] == [v.key for v in b.videos]
    for va, vb in zip(a.videos, b.videos):
        assert (va.video_id, va.group_id, va.split, va.n_frames) == (vb.video_id, vb.group_id, vb.split, vb.n_frames)
        assert np.array_equal(a.read_clip(va.key), b.read_clip(vb.key)), va.key
    assert a.frame_size == b.frame_size


def test_three_shards_read_as_one_store_equal_one_ingest(clips, tmp_path):
    whole = FrameStore(clips / "all.h5")
    parts = _sharded(clips, tmp_path / "shards")
    assert len(parts.parts) == 3 and all(len(h5py.File(p, "r").keys()) for p in parts.parts)  # no part empty
    _same_store(whole, parts)
    assert {v.split for v in parts.videos} == {"train", "val"}
    for s in ("train", "val"):  # splits by group over every part: no group in both
        assert [v.key for v in whole.split(s)] == [v.key for v in parts.split(s)]
    assert not {v.group_id for v in parts.split("train")} & {v.group_id for v in parts.split("val")}
    # a part's own split attributes were assigned over its groups only; the union re-assigns them
    listing = tmp_path / "shards.txt"
    listing.write_text("".join(f"shards/{part_name(i, 3)}\n" for i in (2, 0, 1)))
    _same_store(whole, FrameStore(listing))


def _part_sources(manifest: Path) -> list[str]:
    with open(manifest, newline="") as f:
        return sorted(Path(r["source"]).name for r in csv.DictReader(f))


def test_the_split_of_sources_does_not_depend_on_their_order_or_location(clips, tmp_path):
    files = sorted((clips / "videos").glob("*.dcm"))
    expected = [p.name for p in files if shard_of(p.name, 3) == 1]
    # files given singly, in reverse
    one_by_one = ingest(IngestConfig(sources=files[::-1], out=tmp_path / "a", shard="1/3", **OPTS), progress=False)
    moved = tmp_path / "elsewhere" / "videos"
    moved.parent.mkdir()
    (clips / "videos").rename(moved)
    try:
        # the folder mounted elsewhere
        elsewhere = ingest(IngestConfig(sources=[moved], out=tmp_path / "b", shard="1/3", **OPTS), progress=False)
    finally:
        moved.rename(clips / "videos")
    assert _part_sources(one_by_one.manifest) == _part_sources(elsewhere.manifest) == expected
    assert 0 < len(expected) < len(files)


def test_missing_or_foreign_parts_are_refused(clips, tmp_path):
    out = tmp_path / "shards"
    for i in (0, 2):
        ingest(IngestConfig(sources=[clips / "videos"], out=out, shard=f"{i}/3", **OPTS), progress=False)
    with pytest.raises(SonosslError, match=r"part 1 of 3 missing .*--shard 1/3"):
        FrameStore(out)
    ingest(IngestConfig(sources=[clips / "videos"], out=out, shard="1/3", **OPTS), progress=False)
    FrameStore(out)  # complete
    ingest(IngestConfig(sources=[clips / "videos"], out=out, shard="1/4", **OPTS), progress=False)
    with pytest.raises(SonosslError, match="parts of different splits"):
        FrameStore(out)
    (out / part_name(1, 4)).rename(out / part_name(3, 4))
    with pytest.raises(SonosslError, match="holds part 1 of 4, not what its name says"):
        FrameStore(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SonosslError, match="no part-I-of-N.h5"):
        FrameStore(empty)


def test_bad_shard_flag_is_one_line(clips, tmp_path, capsys):
    for bad in ("3/3", "1-3", "-1/2"):
        assert main(["ingest", str(clips / "videos"), "--out", str(tmp_path / "x"), f"--shard={bad}", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "shard" in err[0] and "I/N" in err[0]
    assert not (tmp_path / "x").exists()


def test_a_shard_killed_mid_ingest_resumes_alone(clips, tmp_path):
    """SIGKILL one part's ingest once its first clip is in the partial file; --resume of that part
    alone gives the same part (every clip once) as a straight run of it."""
    src, args = clips / "videos", ["--frame-skip", "1", "--size", "32", "--val-fraction", "0.3", "--quiet",
                                   "--salt-file", str(OPTS["salt_file"])]
    i = max(range(3), key=lambda k: sum(shard_of(p.name, 3) == k for p in src.iterdir()))  # the largest part
    ref = tmp_path / "ref"
    assert run_cli_process("ingest", src, "--out", ref, "--shard", f"{i}/3", *args, log=tmp_path / "ref.log") == 0

    out, log = tmp_path / "shards", tmp_path / "kill.log"
    partial = out / (part_name(i, 3) + ".partial")

    def first_clip_written() -> bool:
        with h5py.File(partial, "r", locking=False) as f:
            return any(not k.endswith(".writing") for k in f.keys())

    kill_when(spawn_cli("ingest", src, "--out", out, "--shard", f"{i}/3", *args, log=log), first_clip_written, log,
              slice_s=0.005)  # a part of 4 tiny clips ingests in well under a second on an idle machine
    assert not (out / part_name(i, 3)).exists()  # the part appears under its name only when complete
    assert run_cli_process("ingest", src, "--out", out, "--shard", f"{i}/3", *args, "--resume", log=log) == 0
    with h5py.File(ref / part_name(i, 3), "r") as f, h5py.File(out / part_name(i, 3), "r") as g:
        assert sorted(f) == sorted(g) and len(g) >= 2
        for k in f:
            assert np.array_equal(f[k][()], g[k][()]) and f[k].attrs["group_id"] == g[k].attrs["group_id"], k
    with open(out / part_name(i, 3).replace(".h5", ".manifest.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["video_id"] for r in rows) == sorted(g_keys(out / part_name(i, 3)))  # one row per clip
    assert any(r["status"] == "skipped" for r in rows) and not partial.exists()


def g_keys(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return list(f.keys())


def test_select_reads_a_folder_of_parts_as_the_store(clips, tmp_path):
    from sonossl.select.candidates import open_pool

    _sharded(clips, tmp_path / "shards")
    whole, parts = open_pool(clips / "all.h5", "train"), open_pool(tmp_path / "shards", "train")
    assert list(parts.clip_ids) == list(whole.clip_ids) and list(parts.frames) == list(whole.frames)
    assert np.array_equal(parts.read(len(parts) - 1), whole.read(len(whole) - 1))
