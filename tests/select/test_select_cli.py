"""``sonossl select`` end to end: outputs, the per-clip cap, determinism, no patient value, bad input."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from sonossl.cli import main


def run(*argv) -> int:
    return main(["select", "--map", "pca", "--batch-size", "16", *map(str, argv)])


def rows(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "to_label.csv")))


def test_cine_gives_distinct_frames_capped_and_no_patient_value(cine_store, tmp_path, capsys):
    out = tmp_path / "sel"
    assert run("--frames", cine_store["store"], "--budget", 4, "--per-clip", 4, "--strategy", "typiclust", "--map", "tsne",
               "--out", out) == 0
    chosen = rows(out)
    assert len(chosen) == 4 and len({r["frame_index"] for r in chosen}) == 4 and len({r["clip_id"] for r in chosen}) == 1
    for r in chosen:
        with Image.open(out / r["png"]) as im:
            assert im.size == (48, 48) and set(im.info) <= {"dpi", "gamma"}  # no text chunks
    for name in ("contact_sheet.png", "embedding.png", "selection.json"):
        assert (out / name).is_file()
    # text outputs hold no patient value; images hold pixels only (no text chunks to carry one)
    text = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".csv", ".json")) + capsys.readouterr().out
    assert cine_store["phi"], "the cine carries patient values to look for"
    for value in cine_store["phi"]:  # as a token of its own: the short PatientID "204" may sit inside a hex id
        assert not re.search(rf"(?<![0-9A-Za-z.]){re.escape(value)}(?![0-9A-Za-z.])", text), value
    for png in out.rglob("*.png"):
        with Image.open(png) as im:
            assert set(im.info) <= {"dpi", "gamma"}, (png.name, im.info)
    # one clip, cap 4: a fifth frame is refused, and nothing is written
    assert run("--frames", cine_store["store"], "--budget", 5, "--per-clip", 4, "--out", tmp_path / "five") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "larger than the pool of 4" in err
    assert not (tmp_path / "five").exists() and not list(tmp_path.glob(".five*"))


@pytest.mark.parametrize("strategy", ["kcenter", "probcover", "random"])
def test_same_seed_same_selection(tiny_store, tmp_path, strategy):
    for name in ("a", "b"):
        assert run("--frames", tiny_store, "--budget", 6, "--strategy", strategy, "--seed", 7, "--out", tmp_path / name) == 0
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert a == b
    assert (tmp_path / "a" / "contact_sheet.png").read_bytes() == (tmp_path / "b" / "contact_sheet.png").read_bytes()
    clips = [r["clip_id"] for r in a]
    assert max(clips.count(c) for c in clips) <= 2  # the default cap


def test_split_and_a_folder_of_images(tiny_store, tmp_path):
    assert run("--frames", tiny_store, "--budget", 2, "--split", "val", "--out", tmp_path / "val") == 0
    assert {r["clip_id"] for r in rows(tmp_path / "val")} == {"vid00"}  # clip 0 is the val split
    folder = tmp_path / "Doe_Jane_scans"
    for clip in ("patient_A", "patient_B"):
        (folder / clip).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((20, 20), 40 * k + (100 if clip.endswith("B") else 0), np.uint8)).save(
                folder / clip / f"{k}.png")
    assert run("--frames", folder, "--budget", 4, "--out", tmp_path / "folder") == 0
    got = rows(tmp_path / "folder")
    assert len({r["clip_id"] for r in got}) == 2
    text = (tmp_path / "folder" / "to_label.csv").read_text() + (tmp_path / "folder" / "selection.json").read_text()
    assert "patient" not in text and "Doe" not in text


def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_store, tmp_path, capsys):
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    zero = tmp_path / "zero.pt"
    from torchvision.models import resnet18

    torch.save({k: torch.zeros_like(v) for k, v in resnet18().state_dict().items()}, zero)
    cases = [(["--frames", tiny_store, "--budget", 0], "at least 1"),
             (["--frames", tiny_store, "--budget", 25, "--per-clip", 0], "larger than the pool of 24"),
             (["--frames", empty, "--budget", 1], "holds no clips"),
             (["--frames", tiny_store, "--budget", 1, "--split", "val", "--per-clip", 0, "--init", tmp_path / "none.pt"],
              "not found"),
             (["--frames", tiny_store, "--budget", 2, "--init", zero, "--backbone", "resnet18"], "features are the same")]
    for argv, expected in cases:
        out = tmp_path / "out"
        assert run(*argv, "--out", out) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert run("--frames", tiny_store, "--budget", 3, "--out", tmp_path / "taken") == 0  # an earlier selection
    assert run("--frames", tiny_store, "--budget", 2, "--out", tmp_path / "taken") == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert run("--frames", tiny_store, "--budget", 2, "--out", tmp_path / "taken", "--overwrite") == 0
    assert len(rows(tmp_path / "taken")) == 2
    (tmp_path / "mine").mkdir()  # a folder select did not write is never deleted
    (tmp_path / "mine" / "x").write_text("finished work")
    assert run("--frames", tiny_store, "--budget", 2, "--out", tmp_path / "mine", "--overwrite") == 2
    assert "--overwrite refused" in capsys.readouterr().err and (tmp_path / "mine" / "x").is_file()
