import csv
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from sonossl.data.ingest import process_source
from sonossl.errors import SonosslError
from sonossl.infer.predict import moving_average, predict, read_input

CLASSES, SIZE = ["3VV", "4CH", "LVOT"], 32  # those of the `trained` fixture (conftest.py)



def ybr_cine() -> Path:
    """pydicom's genuine 30-frame cardiac cine loop (YBR, JPEG baseline), shipped with pydicom."""
    path = pydicom.data.get_testdata_file("examples_ybr_color.dcm")
    if path is None:  # pydicom 3 ships it; missing means a broken install, which must not pass silently
        pytest.fail("examples_ybr_color.dcm not found among pydicom's shipped test files")
    return Path(path)


def phi_values(path: Path) -> list[str]:
    """The non-empty patient/institution attribute values and every date of a DICOM file."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    values = [str(ds.get(k) or "").strip() for k in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName")]
    values += [str(e.value).strip() for e in ds.iterall() if e.VR == "DA" and e.value]
    return sorted({v for v in values if v})


def assert_no_phi(files: list[Path], values: list[str]) -> None:
    """Text outputs: no value as a token. PNGs: none in their text chunks, and none of 6 characters or
    more anywhere in their bytes (a 3-byte value like '204' turns up by chance in compressed pixels)."""
    assert files
    for f in files:
        data = f.read_bytes()
        if f.suffix in (".csv", ".json"):
            text = data.decode()
            for v in values:
                assert not re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", text), (f, v)
        else:
            with Image.open(f) as im:
                meta = " ".join(f"{k} {v}" for k, v in im.info.items())
            for v in values:
                assert v not in meta, (f, v)
                if len(v) >= 6:
                    assert v.encode() not in data, (f, v)


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_cine_loops_and_images(trained, tmp_path: Path, scans):
    ybr = ybr_cine()
    more = tmp_path / "more" / "sub"  # a folder, walked
    more.mkdir(parents=True)
    fake = scans.dicom(more / "scan_a.dcm", scans.clip(t=8))  # fake PHI in attributes and burned-in text
    Image.open(trained["labels"] / "img/test/4CH_0.png").save(more / "plane.png")
    out = tmp_path / "out" / "pred.csv"

    s = predict(trained["run"], [ybr, tmp_path / "more"], out, smooth=3, device="cpu", progress=False)

    assert (trained["classes"], trained["size"]) == (CLASSES, SIZE)
    assert (s.sources, s.clips, s.frames, s.errors) == (3, 2, 30 + 8 + 1, [])
    rows = rows_of(out)
    assert list(rows[0]) == ["source", "frame", "predicted", *[f"p_{c}" for c in CLASSES]]
    by_source = {src: [r for r in rows if r["source"] == src] for src in {r["source"] for r in rows}}
    assert [int(r["frame"]) for r in by_source[str(ybr)]] == list(range(30))
    assert [int(r["frame"]) for r in by_source[str(fake)]] == list(range(8))
    assert len(by_source[str(more / "plane.png")]) == 1
    for r in rows:
        p = np.array([float(r[f"p_{c}"]) for c in CLASSES])
        assert abs(p.sum() - 1) < 1e-3 and r["predicted"] == CLASSES[int(p.argmax())]

    clips = out.parent / "pred_clips"
    folders = sorted(d for d in clips.iterdir() if d.is_dir())
    assert [d.name for d in folders] == ["001_examples_ybr_color", "002_scan_a"]
    for d in folders:
        assert Image.open(d / "timeline.png").size[0] > 300
        best = sorted(d.glob("best_*.png"))
        assert sorted(b.name.split("_")[1] for b in best) == sorted(CLASSES)
    best_rows = rows_of(clips / "best_frames.csv")
    assert len(best_rows) == 2 * len(CLASSES)
    for r in best_rows:  # the file named in the CSV exists, is the cropped scan region, and names frame and score
        img = clips / r["image"]
        assert img.is_file() and f"frame{r['frame']}_p{float(r['score']):.3f}" in img.name
        assert 0 <= int(r["frame"]) < (30 if r["source"] == str(ybr) else 8)
    ybr_best = next(r for r in best_rows if r["source"] == str(ybr))
    assert Image.open(clips / ybr_best["image"]).size[0] > SIZE  # shown at source resolution, not 32 px
    assert not (out.parent / "pred_errors.csv").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.csv", "pred_clips"]  # no leftovers

    outputs = [p for p in out.parent.rglob("*") if p.is_file()]
    assert_no_phi(outputs, phi_values(ybr))
    assert set(phi_values(fake)) >= {scans.FAKE_NAME, scans.FAKE_ID, "PHI General Hospital", "20240131"}
    assert_no_phi(outputs, phi_values(fake))


def test_clip_frames_are_ingestion_frames_and_images_are_evaluation_inputs(trained, tmp_path: Path):
    """Preprocessing parity: clips as ingestion crops them, images as evaluate scored them."""
    ybr = ybr_cine()
    ingested = process_source(ybr, {"frame_skip": 1, "size": SIZE, "crop": "auto", "salt": "x", "max_frames": None})
    assert ingested["status"] == "ok"
    np.testing.assert_array_equal(read_input(ybr, SIZE).frames, ingested["frames"])

    out = tmp_path / "p.csv"
    summary = predict(trained["run"], [trained["labels"] / "img" / "test"], out, device="cpu", precision="32-true",
                      progress=False)  # the fixture scored its test split in float32
    assert summary.precision.startswith("32-true, NCHW")
    ours = {Path(r["source"]).relative_to(trained["labels"]).as_posix(): r for r in rows_of(out)}
    theirs = rows_of(trained["run"] / "predictions.csv")
    assert len(ours) == len(theirs) == 3 * 5
    for r in theirs:
        for c in CLASSES:
            assert abs(float(ours[r["image_path"]][f"p_{c}"]) - float(r[f"p_{c}"])) < 1e-4


def test_predict_in_bf16_channels_last_agrees_with_float32(trained, tmp_path: Path):
    """The fast path evaluate can choose (bf16 autocast, channels_last) predicts what float32 does,
    to bf16's precision (8 mantissa bits: ~1e-2 on a probability)."""
    from sonossl.downstream.modelfile import load_model

    m = load_model(trained["run"], "cpu", "bf16-mixed")
    assert m.fast.amp_dtype is torch.bfloat16 and m.fast.channels_last
    assert m.classifier.encoder.trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = [trained["labels"] / "img" / "test"]
    p32, p16 = tmp_path / "f32.csv", tmp_path / "bf16.csv"
    predict(trained["run"], images, p32, device="cpu", precision="32-true", progress=False)
    s = predict(trained["run"], images, p16, device="cpu", precision="bf16-mixed", progress=False)
    assert s.precision.startswith("bf16-mixed, channels_last")
    a, b = rows_of(p32), rows_of(p16)
    assert [r["source"] for r in a] == [r["source"] for r in b] and len(a) == 15
    for x, y in zip(a, b):
        assert max(abs(float(x[f"p_{c}"]) - float(y[f"p_{c}"])) for c in CLASSES) < 3e-2


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's notes on the broken file
def test_unreadable_inputs_are_reported_and_the_rest_predicted(trained, tmp_path: Path, scans, cli, capsys):
    (tmp_path / "in").mkdir()
    good = scans.dicom(tmp_path / "in" / "good.dcm", scans.clip(t=7))
    video = scans.video(tmp_path / "in" / "clip.mp4", scans.clip(t=6, seed=1))
    single = scans.dicom(tmp_path / "in" / "single.dcm", scans.clip(t=1, seed=2))  # a DICOM image: one row, no timeline
    (tmp_path / "in" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 10)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "pred.csv"
    assert cli(["predict", str(tmp_path / "in"), "--model", str(trained["run"]), "--out", str(out),
                "--frame-skip", "3", "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("sonossl predict: skipped ") for line in err)
    errors = rows_of(tmp_path / "pred_errors.csv")
    assert sorted(Path(r["source"]).name for r in errors) == ["broken.dcm", "broken.png"]
    assert all(r["message"] for r in errors)
    frames = {}
    for r in rows_of(out):
        frames.setdefault(r["source"], []).append(int(r["frame"]))
    assert frames == {str(good): [0, 3, 6], str(video): [0, 3], str(single): [0]}
    assert sorted(d.name for d in (tmp_path / "pred_clips").iterdir()) == ["001_clip", "002_good", "best_frames.csv"]

def test_nothing_predictable_is_exit_2_and_leaves_nothing(trained, tmp_path: Path, cli, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"x" * 50)
    out = tmp_path / "out" / "pred.csv"
    assert cli(["predict", str(bad), "--model", str(trained["run"]), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sonossl predict: error: no input could be predicted")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_model_folder_without_model_pt(tmp_path: Path, cli, capsys):
    (tmp_path / "run").mkdir()
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(img)
    assert cli(["predict", str(img), "--model", str(tmp_path / "run"), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'run'}: no model.pt" in err[0]
    assert not (tmp_path / "p.csv").exists()


def test_existing_output_needs_overwrite(trained, tmp_path: Path):
    img = trained["labels"] / "img/test/3VV_0.png"
    out = tmp_path / "p.csv"
    predict(trained["run"], [img], out, device="cpu", progress=False)
    with pytest.raises(SonosslError, match="--overwrite"):
        predict(trained["run"], [img], out, device="cpu", progress=False)
    assert predict(trained["run"], [img], out, device="cpu", progress=False, overwrite=True).frames == 1


def test_moving_average():
    p = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert moving_average(p, 0) is p and moving_average(p, 1) is p
    np.testing.assert_allclose(moving_average(p, 3)[:, 0], [0.5, 1 / 3, 2 / 3, 0.5])
    np.testing.assert_allclose(moving_average(np.full((5, 3), 0.25), 4), 0.25)
