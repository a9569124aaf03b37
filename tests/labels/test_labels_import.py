"""``sonossl labels import``: every task accounted for, the split by clip, a second round with
--append keeping each clip's split, and bad input as one line (exit 2). The exports here are
written in Label Studio's JSON export format by hand (the real server's: test_label_studio_server.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import TRUTH, select_argv

from sonossl.cli import main


@pytest.fixture(scope="module")
def selection(pool, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sel") / "sel"
    assert main(select_argv(pool, out, "--label-classes", "3VV,4CH,LVOT")) == 0
    return out


def annotation(cls: str | None, cancelled: bool = False, user: int = 1) -> dict:
    result = [] if cls is None else [{"from_name": "plane", "to_name": "image", "type": "choices",
                                      "value": {"choices": [cls]}}]
    return {"id": 100 + user, "completed_by": user, "result": result, "was_cancelled": cancelled}


def export(selection: Path, path: Path, annotate) -> Path:
    """The selection's tasks as Label Studio exports them, ``annotate(i, data)`` giving each one's annotations."""
    tasks = json.loads((selection / "label-studio" / "tasks.json").read_text())
    path.write_text(json.dumps([{"id": i + 1, "data": t["data"], "annotations": annotate(i, t["data"]), "predictions": []}
                                for i, t in enumerate(tasks)]))
    return path


def read(folder: Path, name: str) -> list[dict]:
    return list(csv.DictReader(open(folder / name)))


def every_status(i: int, d: dict) -> list[dict]:
    truth = TRUTH[d["clip_id"]]
    other = "4CH" if truth != "4CH" else "3VV"
    return {0: [annotation(None, cancelled=True)], 1: [],  # skipped; not annotated
            2: [annotation(truth), annotation(other, user=2)],  # a tie
            3: [annotation(truth), annotation(truth, user=2), annotation(other, user=3)],  # a majority
            4: [annotation("RVOT")]}.get(i, [annotation(truth)])  # a class not in the config


def test_every_task_accounted_for_and_no_clip_in_two_splits(selection, tmp_path, capsys):
    ex = export(selection, tmp_path / "export.json", every_status)
    planes = tmp_path / "planes"
    argv = ["labels", "import", str(ex), "--selection", str(selection), "--valid", "0.2", "--test", "0.2", "--seed", "1"]
    assert main([*argv, "--out", str(planes), "--on-conflict", "majority"]) == 0
    ledger = read(planes, "labels_import.csv")
    assert [r["status"] for r in ledger[:5]] == ["skipped", "no_annotation", "disagreement", "imported", "unknown_class"]
    assert "majority of" in ledger[3]["detail"] and len(ledger) == 12
    seen = {}
    for split in ("train", "valid", "test"):
        for r in read(planes, f"{split}.csv"):
            clip = next(x["clip_id"] for x in ledger if x["image_path"] == r["image_path"])
            assert r["class"] == TRUTH[clip] and (planes / r["image_path"]).is_file()
            assert seen.setdefault(clip, split) == split
    assert len(seen) == 8 and {"train", "valid", "test"} <= set(seen.values())
    # refuse: the majority task is left out too, and said so
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 0
    assert read(tmp_path / "refused", "labels_import.csv")[3]["status"] == "disagreement"
    # an image gone from the selection is a row, not a crash
    gone = selection / ledger[5]["image_path"].replace(f"images/{ledger[5]['split']}/r1_", "frames/")
    kept = gone.read_bytes()
    gone.unlink()
    try:
        assert main([*argv, "--out", str(tmp_path / "gone")]) == 0
        assert read(tmp_path / "gone", "labels_import.csv")[5]["status"] == "image_missing"
    finally:
        gone.write_bytes(kept)


def test_append_keeps_each_clip_in_its_split(selection, tmp_path):
    first = export(selection, tmp_path / "r1.json", lambda i, d: [annotation(TRUTH[d["clip_id"]])] if i < 12 else [])
    planes = tmp_path / "planes"
    assert main(["labels", "import", str(first), "--selection", str(selection), "--out", str(planes)]) == 0
    before = {r["clip_id"]: r["split"] for r in read(planes, "labels_import.csv") if r["status"] == "imported"}
    # round 2: the same clips labelled again (another seed would draw other splits for new clips)
    assert main(["labels", "import", str(first), "--selection", str(selection), "--append", str(planes), "--seed", "7"]) == 0
    ledger = read(planes, "labels_import.csv")
    assert {r["round"] for r in ledger} == {"1", "2"} and len(ledger) == 24
    assert all(before[r["clip_id"]] == r["split"] for r in ledger if r["round"] == "2")
    n = sum(len(read(planes, f"{s}.csv")) for s in ("train", "valid", "test"))
    assert n == 24  # both rounds' images, none lost


@pytest.mark.parametrize("content, expected", [
    ("not json", "not JSON"),
    ('{"tasks": []}', "not a Label Studio JSON export"),
    ("[]", "holds no task"),
    ('[{"id": 1, "data": {"image": "x.png"}, "annotations": []}]', "no data.png"),
])
def test_bad_export_is_one_line(selection, tmp_path, capsys, content, expected):
    ex = tmp_path / "export.json"
    ex.write_text(content)
    assert main(["labels", "import", str(ex), "--selection", str(selection), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and str(ex) in err and not (tmp_path / "p").exists()


def test_a_class_without_a_train_image_is_refused(selection, tmp_path, capsys):
    # 9 clips labelled, one of them LVOT: with --valid 0.45 --test 0.45 one clip is left for train, so classes lack one
    def one_lvot(i, d):
        return [annotation(TRUTH[d["clip_id"]])] if TRUTH[d["clip_id"]] != "LVOT" or d["clip_id"] == "vid08" else []

    ex = export(selection, tmp_path / "export.json", one_lvot)
    argv = ["labels", "import", str(ex), "--selection", str(selection), "--out", str(tmp_path / "p"), "--valid", "0.45",
            "--test", "0.45"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no train image of" in err and not (tmp_path / "p").exists()
    assert main([*argv[:-4], "--valid", "0.5", "--test", "0.5"]) == 2 and "sum below 1" in capsys.readouterr().err
