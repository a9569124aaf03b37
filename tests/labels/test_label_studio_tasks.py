"""``sonossl select --label-studio``: the tasks, the labelling config, the model's guesses (as
``sonossl predict`` gives them for the same PNG), no machine path in a task, bad options."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

from conftest import CLASSES, select_argv

from sonossl.cli import main


def test_tasks_carry_the_models_guess_as_predict_gives_it(pool, trained, tmp_path):
    out = tmp_path / "sel"
    assert main(select_argv(pool, out, "--model", trained / "model.pt")) == 0
    tasks = json.loads((out / "label-studio" / "tasks.json").read_text())
    to_label = list(csv.DictReader(open(out / "to_label.csv")))
    assert len(tasks) == len(to_label) == 12
    root = ET.parse(out / "label-studio" / "label_config.xml").getroot()
    assert [c.get("value") for c in root.iter("Choice")] == CLASSES  # the model's classes
    assert root.find("Choices").get("choice") == "single"
    # the guess is what `sonossl predict` says of the same PNG
    assert main(["predict", str(out / "frames"), "--model", str(trained), "--out", str(tmp_path / "pred.csv"),
                 "--precision", "32-true", "--quiet"]) == 0
    pred = {r["source"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(tmp_path / "pred.csv"))}
    for task, row in zip(tasks, to_label):
        d = task["data"]
        assert set(d) == {"image", "clip_id", "frame_index", "rank", "png"}
        assert d["image"] == "/data/local-files/?d=" + row["png"] and d["clip_id"] == row["clip_id"]
        (p,) = task["predictions"]
        assert p["model_version"] == trained.name
        guess = p["result"][0]["value"]["choices"][0]
        want = pred[row["png"].rsplit("/", 1)[-1]]
        assert guess == want["predicted"] and abs(p["score"] - float(want[f"p_{guess}"])) < 1e-4
    text = "".join(f.read_text() for f in (out / "label-studio").iterdir())
    assert str(tmp_path) not in text and str(pool) not in text  # no machine path
    assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in (out / "label-studio" / "README.txt").read_text()


def test_classes_given_and_url_prefix_without_model(pool, tmp_path):
    out = tmp_path / "sel"
    assert main(select_argv(pool, out, "--label-classes", "4CH,LVOT,RVOT,3VV,3VT", "--image-url",
                            "http://127.0.0.1:8081/")) == 0
    tasks = json.loads((out / "label-studio" / "tasks.json").read_text())
    assert all("predictions" not in t for t in tasks)
    assert tasks[0]["data"]["image"] == "http://127.0.0.1:8081/" + tasks[0]["data"]["png"]
    root = ET.parse(out / "label-studio" / "label_config.xml").getroot()
    assert [c.get("value") for c in root.iter("Choice")] == ["4CH", "LVOT", "RVOT", "3VV", "3VT"]


def test_bad_options_are_one_line_and_write_nothing(pool, trained, tmp_path, capsys):
    out = tmp_path / "sel"
    assert main(select_argv(pool, out)) == 2  # no classes, no model
    assert "--label-classes" in capsys.readouterr().err and not out.exists()
    assert main(select_argv(pool, out, "--model", trained / "model.pt", "--label-classes", "4CH,RVOT")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not all in --label-classes" in err and not out.exists()
    argv = [a for a in select_argv(pool, out, "--label-classes", "A,B") if a != "--label-studio"]
    assert main(argv) == 2 and "add --label-studio" in capsys.readouterr().err and not out.exists()
