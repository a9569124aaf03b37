"""Hostile inputs through the real command line: each bad file, CSV or config gets exit status 2
and one line naming it and what was expected (or, in ingestion, an ``error`` row in the manifest
while the other sources go on), and nothing half-written is left behind."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_kit import TINY_PRETRAIN, tiny_store, write_yaml
from helpers import make_labelled
from PIL import Image

from sonossl.cli import main
from sonossl.data.labelled import load_labelled


def write_dicom16(path: Path, frames: np.ndarray, signed: bool, window: tuple[float, float] | None = None) -> Path:
    """A multi-frame MONOCHROME2 DICOM with 16-bit (``signed``: two's complement) pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "US", "P16"
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(frames.astype("<i2" if signed else "<u2")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp_clip(t: int, dtype, lo: int, hi: int) -> np.ndarray:
    """[t, 40, 48]: a left-to-right ramp from lo to hi plus a moving bright dot (so there is motion)."""
    x = np.linspace(lo, hi, 48)
    frames = np.broadcast_to(x, (t, 40, 48)).astype(np.float64).copy()
    for i in range(t):
        frames[i, 10 + i % 20, 10:14] = hi
    return np.rint(frames).astype(dtype)


def manifest_rows(store: Path) -> dict[str, dict]:
    with open(store.with_suffix(".manifest.csv"), newline="") as fh:
        return {Path(r["source"]).name: r for r in csv.DictReader(fh)}


# ------------------------------------------------------------------------------ ingest: files
def test_bad_scan_files_become_error_rows_and_the_rest_is_ingested(sonossl, scans, tmp_path: Path):
    src = tmp_path / "scans"
    src.mkdir()
    good = scans.dicom(src / "good.dcm", scans.clip(6))
    blob = good.read_bytes()
    (src / "truncated.dcm").write_bytes(blob[: len(blob) // 2])
    (src / "zero.dcm").write_bytes(b"")
    (src / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(3000))
    nopix = scans.dicom(src / "nopixels.dcm", scans.clip(2))
    import pydicom

    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)
    vid = scans.video(src / "good.mp4", scans.clip(6))
    vb = vid.read_bytes()
    (src / "truncated.mp4").write_bytes(vb[: len(vb) // 3])
    (src / "zero.mp4").write_bytes(b"")
    (src / "garbage.avi").write_bytes(np.random.default_rng(1).bytes(5000))
    write_dicom16(src / "u16.dcm", ramp_clip(4, np.uint16, 0, 4000), signed=False)
    write_dicom16(src / "s16.dcm", ramp_clip(4, np.int16, -2000, 2000), signed=True)
    write_dicom16(src / "s16win.dcm", ramp_clip(4, np.int16, -2000, 2000), signed=True, window=(0, 4000))

    out = tmp_path / "frames.h5"
    rc, err = sonossl("ingest", src, "--out", out, "--frame-skip", "1", "--size", "32", "--crop", "none", "--quiet")
    assert rc == 0, err
    rows = manifest_rows(out)
    assert len(rows) == 12
    bad = ["truncated.dcm", "zero.dcm", "corrupt.dcm", "nopixels.dcm", "truncated.mp4", "zero.mp4", "garbage.avi"]
    for name in bad:
        assert rows[name]["status"] == "error", (name, rows[name])
        msg = rows[name]["message"]
        assert msg and "\n" not in msg and "Traceback" not in msg and len(msg) <= 300, (name, msg)
        assert rows[name]["frames_kept"] in ("", None)
    assert "empty" in rows["zero.dcm"]["message"] and "empty" in rows["zero.mp4"]["message"]
    assert "no image" in rows["nopixels.dcm"]["message"] or "pixel" in rows["nopixels.dcm"]["message"].lower()
    for name in ("good.dcm", "good.mp4", "u16.dcm", "s16.dcm", "s16win.dcm"):
        assert rows[name]["status"] == "ok", rows[name]
    with h5py.File(out, "r") as f:
        assert len(f.keys()) == 5
        for name in ("u16.dcm", "s16.dcm", "s16win.dcm"):
            frame = f[rows[name]["video_id"]][0].astype(int)  # 40x48 padded to 48x48, then 32x32
            row = frame[16]  # through the ramp, below the dot
            # the ramp survives the 16 -> 8 bit conversion: dark at the left, bright at the right, monotone;
            # signed pixels are not wrapped around (-2000 is the darkest, not a bright 63536)
            assert row[1] < 40 and row[-2] > 215, (name, row)
            assert np.all(np.diff(row[1:-1]) >= -1), (name, row)
    assert not out.with_name(out.name + ".partial").exists()


def test_only_bad_files_exit_2_and_leave_no_store(sonossl, tmp_path: Path):
    src = tmp_path / "scans"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"")
    (src / "b.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "frames.h5"
    sonossl.refused("ingest", src, "--out", out, "--quiet", names=(str(out), "no source could be ingested"),
                    untouched=(out, out.with_name(out.name + ".partial")))
    rows = manifest_rows(out)  # the manifest says why, one error row per source
    assert [r["status"] for r in rows.values()] == ["error", "error"]


def test_a_missing_source_and_bad_ingest_options_exit_2(sonossl, scans, tmp_path: Path):
    out = tmp_path / "frames.h5"
    sonossl.refused("ingest", tmp_path / "nope", "--out", out, names=("nope", "no such file"), untouched=(out,))
    clip = scans.dicom(tmp_path / "c.dcm", scans.clip(2))
    for flag, value, key in [("--size", "0", "size"), ("--size", "-3", "size"), ("--frame-skip", "0", "frame_skip"),
                             ("--val-fraction", "1.5", "val_fraction"), ("--workers", "0", "workers"),
                             ("--max-frames-per-video", "0", "max_frames_per_video"), ("--dedup", "-1", "dedup")]:
        sonossl.refused("ingest", clip, "--out", out, flag, value, names=(key,), untouched=(out,))
    sonossl.refused("ingest", clip, "--out", out, "--size", "big", names=("--size", "int"), untouched=(out,))


def test_a_very_long_clip_is_streamed_in(sonossl, scans, tmp_path: Path):
    """2000 frames: decoded one at a time with frame_skip applied while decoding."""
    import tracemalloc

    from sonossl.data.readers import read_source

    rng = np.random.default_rng(0)
    long = np.repeat(scans.clip(20), 100, axis=0)
    long[:, 20:40, 30:50] = rng.integers(0, 255, (2000, 20, 20), dtype=np.uint8)  # every frame differs
    path = scans.dicom(tmp_path / "long.dcm", long)
    del long

    def peak(skip: int) -> int:
        tracemalloc.start()
        clip = read_source(path, frame_skip=skip)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(clip.frames) == -(-2000 // skip) and clip.frames_in == 2000
        return top

    # memory follows the frames kept, not the frames in the file (2000 x 56 x 72 = 8 MB)
    whole = peak(1)
    assert peak(100) < 0.35 * whole
    # ingest streams: two passes (a sample for the fan, then chunks cropped and resized as they are
    # decoded), so it holds its output (2000 x 16 x 16 = 0.5 MB), not the decoded source clip
    from sonossl.data.ingest import process_source

    tracemalloc.start()
    result = process_source(path, {"frame_skip": 1, "max_frames": None, "crop": "auto", "size": 16, "salt": "s"})
    _, streamed = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result["status"] == "ok", result["message"]
    assert result["frames"].shape == (2000, 16, 16) and result["frames_in"] == 2000
    assert streamed < 0.3 * whole, (streamed, whole)
    out = tmp_path / "frames.h5"
    rc, err = sonossl("ingest", path, "--out", out, "--frame-skip", "1", "--size", "16", "--quiet")
    assert rc == 0, err
    assert manifest_rows(out)["long.dcm"]["frames_kept"] == "2000"


# --------------------------------------------------------------------- labelled images and CSVs
@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    return make_labelled(tmp_path / "lab", {"train": 3, "valid": 2, "test": 2})


def _evaluate(labels: Path, out: Path) -> list[str]:
    return ["evaluate", "--labels", labels, "--init", "random", "--protocol", "linear", "--fractions", "100",
            "--seeds", "0", "--image-size", "32", "--linear-epochs", "1", "--out", out, "--quiet"]


def test_images_of_every_mode_are_read_as_grey(labelled: Path):
    """CMYK JPEG, 16-bit PNG, RGBA, palette, LA, RGB BMP and float TIFF in a split: all become the
    same grey picture (within compression error)."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (6, 6))
    blocks[0, 0], blocks[-1, -1] = 0, 255  # the full range, so min/max scaling of 16-bit/float is the identity
    grey = np.kron(blocks, np.ones((4, 4))).astype(np.uint8)  # 24x24
    base = Image.fromarray(grey)
    variants = {
        "cmyk.jpg": base.convert("CMYK"), "rgba.png": base.convert("RGBA"), "palette.png": base.convert("P"),
        "la.png": base.convert("LA"), "rgb.bmp": base.convert("RGB"),
        "u16.png": Image.fromarray(grey.astype(np.uint16) * 257), "float.tiff": Image.fromarray(grey.astype(np.float32)),
    }
    lines = ["image_path,class"]
    for name, im in variants.items():
        im.save(labelled / name, quality=100) if name.endswith(".jpg") else im.save(labelled / name)
        lines.append(f"{name},a")
    (labelled / "test.csv").write_text("\n".join(lines) + "\n")
    data = load_labelled(labelled, size=24)
    imgs = {p: data.test.images[i, 0].numpy().astype(int) for i, p in enumerate(data.test.paths)}
    for name, img in imgs.items():
        err = np.abs(img - grey.astype(int))
        assert err.mean() < (4 if name.endswith(".jpg") else 1.01), (name, err.mean())


def test_a_byte_order_mark_and_extra_columns_are_accepted(labelled: Path):
    text = (labelled / "train.csv").read_text().splitlines()
    rows = [f"{line},note {i},x" if i else "image_path,class,comment,extra" for i, line in enumerate(text)]
    (labelled / "train.csv").write_bytes("\n".join(rows).encode("utf-8-sig") + b"\n")
    (labelled / "valid.csv").write_bytes(b"\xef\xbb\xbf" + (labelled / "valid.csv").read_bytes().replace(b"\n", b"\r\n"))
    data = load_labelled(labelled, size=16)
    assert len(data.train) == 9 and data.class_names == ["a", "b", "c"] and len(data.valid) == 6


CSV_CASES = {
    # name: (split file content, fragments of the one error line)
    "missing_column": ("path,class\nimg/train/a_0.png,a\n", ("train.csv", "image_path")),
    "missing_class_column": ("image_path\nimg/train/a_0.png\n", ("train.csv", "class")),
    "parent_escape": ("image_path,class\n../outside.png,a\n", ("train.csv:2", "leaves the data root")),
    "absolute": ("image_path,class\n{outside},a\n", ("train.csv:2", "leaves the data root")),
    "missing_image": ("image_path,class\nimg/train/a_0.png,a\nimg/train/nope.png,b\n", ("train.csv:3", "nope.png", "not found")),
    "empty_split": ("image_path,class\n", ("train.csv", "empty")),
    "zero_bytes": ("", ("train.csv", "image_path")),
    "one_class": ("image_path,class\nimg/train/a_0.png,a\nimg/train/a_1.png,a\n", ("train.csv", "at least 2")),
    "empty_cell": ("image_path,class\nimg/train/a_0.png,\n", ("train.csv:2", "empty")),
    "not_an_image": ("image_path,class\nimg/train/a_0.png,a\nbroken.png,b\n", ("broken.png", "not a readable image")),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csvs_exit_2_naming_the_file_and_row(case: str, sonossl, labelled: Path, tmp_path: Path):
    outside = tmp_path / "outside.png"
    Image.new("L", (24, 24)).save(outside)
    (labelled / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    content, names = CSV_CASES[case]
    (labelled / "train.csv").write_text(content.format(outside=outside))
    out = tmp_path / "eval"
    sonossl.refused(*_evaluate(labelled, out), names=names, untouched=(out,))


def test_an_unknown_class_in_test_and_a_missing_split_exit_2(sonossl, labelled: Path, tmp_path: Path):
    out = tmp_path / "eval"
    with open(labelled / "test.csv", "a") as fh:
        fh.write("img/test/a_0.png,zebra\n")
    sonossl.refused(*_evaluate(labelled, out), names=("test.csv", "'zebra'"), untouched=(out,))
    (labelled / "test.csv").unlink()
    sonossl.refused(*_evaluate(labelled, out), names=("test.csv",), untouched=(out,))


def test_paths_outside_the_root_are_read_only_when_allowed(labelled: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir()
    Image.new("L", (24, 24), 7).save(outside)
    with open(labelled / "train.csv", "a") as fh:
        fh.write("../elsewhere/x.png,a\n")
    with pytest.raises(Exception, match="leaves the data root"):
        load_labelled(labelled, size=16)
    data = load_labelled(labelled, size=16, allow_outside_root=True)
    assert "../elsewhere/x.png" in data.train.paths
    link = labelled / "img" / "sneaky.png"  # a symlink inside the root that points outside is outside
    link.symlink_to(outside)
    (labelled / "valid.csv").write_text("image_path,class\nimg/sneaky.png,a\n")
    with pytest.raises(Exception, match="leaves the data root"):
        load_labelled(labelled, size=16, allow_outside_root=False)


def test_a_fraction_too_small_for_a_class_exits_2(sonossl, labelled: Path, tmp_path: Path):
    out = tmp_path / "eval"
    argv = _evaluate(labelled, out)
    argv[argv.index("--fractions") + 1] = "1"
    sonossl.refused(*argv, names=("train.csv", "fraction 1%", "at least"), untouched=(out,))


# ------------------------------------------------------------------------------------ configs
PRETRAIN_CONFIG_CASES = {
    "unknown_key": ({"batch_sise": 8}, ("cfg.yaml", "'batch_sise'", "valid keys")),
    "wrong_type": ({"batch_size": "lots"}, ("cfg.yaml", "batch_size")),
    "negative_size": ({"image_size": -32}, ("cfg.yaml", "image_size", "greater than 0")),
    "zero_size": ({"image_size": 0}, ("cfg.yaml", "image_size")),
    "zero_epochs": ({"epochs": 0}, ("cfg.yaml", "epochs")),
    "batch_of_one": ({"batch_size": 1}, ("cfg.yaml", "batch_size")),
    "bad_precision": ({"precision": "fp8"}, ("cfg.yaml", "precision")),
    "unknown_method": ({"method": "simclr2"}, ("simclr2", "barlowtwins")),
    "unknown_backbone": ({"backbone": "resnet7"}, ("resnet7", "resnet18")),
    "unknown_method_option": ({"method_options": {"lambda_": 3}}, ("lambda_",)),
    "bool_as_string": ({"augment": {"view1": {"hflip": "perhaps"}}}, ("cfg.yaml", "augment.view1.hflip")),
}


@pytest.mark.parametrize("case", sorted(PRETRAIN_CONFIG_CASES))
def test_bad_pretrain_configs_exit_2_naming_the_key(case: str, sonossl, tmp_path: Path):
    frames = tiny_store(tmp_path / "frames.h5")
    values, names = PRETRAIN_CONFIG_CASES[case]
    cfg = write_yaml(tmp_path / "cfg.yaml", {**TINY_PRETRAIN, "max_steps": 1, **values})
    out = tmp_path / "run"
    sonossl.refused("pretrain", "--config", cfg, "--frames", frames, "--out", out, "--quiet", names=names, untouched=(out,))


EVALUATE_CONFIG_CASES = {
    "unknown_key": ({"fractionz": [10]}, ("cfg.yaml", "'fractionz'")),
    "wrong_type": ({"seeds": "zero"}, ("cfg.yaml", "seeds")),
    "negative_size": ({"image_size": -1}, ("cfg.yaml", "image_size")),
    "zero_batch": ({"batch_size": 0}, ("cfg.yaml", "batch_size")),
    "fraction_over_100": ({"fractions": [150]}, ("cfg.yaml", "fractions", "(0, 100]")),
    "zero_fraction": ({"fractions": [0]}, ("cfg.yaml", "fractions")),
    "dropout_one": ({"dropout": 1.0}, ("cfg.yaml", "dropout")),
    "bad_protocol": ({"protocol": ["knn"]}, ("cfg.yaml", "protocol")),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_CONFIG_CASES))
def test_bad_evaluate_configs_exit_2_naming_the_key(case: str, sonossl, labelled: Path, tmp_path: Path):
    values, names = EVALUATE_CONFIG_CASES[case]
    cfg = write_yaml(tmp_path / "cfg.yaml", values)
    out = tmp_path / "eval"
    # no flags that would override the file's keys
    sonossl.refused("evaluate", "--labels", labelled, "--config", cfg, "--out", out, "--quiet", names=names, untouched=(out,))


def test_unreadable_config_files_exit_2(sonossl, labelled: Path, tmp_path: Path):
    out = tmp_path / "eval"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("fractions: [10, 20\nseeds: {")
    sonossl.refused(*_evaluate(labelled, out), "--config", bad_yaml, names=("bad.yaml", "YAML"), untouched=(out,))
    a_list = write_yaml(tmp_path / "list.yaml", [1, 2])  # type: ignore[arg-type]
    sonossl.refused(*_evaluate(labelled, out), "--config", a_list, names=("list.yaml", "mapping"), untouched=(out,))
    sonossl.refused(*_evaluate(labelled, out), "--config", tmp_path / "none.yaml", names=("none.yaml", "not found"),
                    untouched=(out,))
    sonossl.refused(*_evaluate(labelled, out), "--image-size", "0", names=("image_size",), untouched=(out,))
    sonossl.refused(*_evaluate(labelled, out), "--seeds", "1.5", names=("--seeds",), untouched=(out,))


# ------------------------------------------------------------------ frame stores and models
def test_bad_frame_stores_exit_2_and_create_no_run(sonossl, tmp_path: Path):
    cfg = write_yaml(tmp_path / "cfg.yaml", {**TINY_PRETRAIN, "max_steps": 1})
    out = tmp_path / "run"
    args = ("--config", cfg, "--out", out, "--quiet")
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    sonossl.refused("pretrain", "--frames", empty, *args, names=("empty.h5",), untouched=(out,))
    text = tmp_path / "text.h5"
    text.write_text("frames go here")
    sonossl.refused("pretrain", "--frames", text, *args, names=("text.h5", "HDF5"), untouched=(out,))
    sonossl.refused("pretrain", "--frames", tmp_path / "none.h5", *args, names=("none.h5", "not found"), untouched=(out,))
    with h5py.File(tmp_path / "floats.h5", "w") as f:
        f["v"] = np.zeros((3, 8, 8), np.float32)
    sonossl.refused("pretrain", "--frames", tmp_path / "floats.h5", *args, names=("'v'", "uint8"), untouched=(out,))
    val_only = tiny_store(tmp_path / "val_only.h5", split="val")
    sonossl.refused("pretrain", "--frames", val_only, *args, names=("val_only.h5", "train"), untouched=(out,))
    full = tiny_store(tmp_path / "full.h5")
    for value in ("0", "-5"):
        sonossl.refused("pretrain", "--frames", full, *args, "--image-size", value, names=("image_size",), untouched=(out,))


def test_bad_models_and_inputs_for_predict(sonossl, tiny_model: dict, scans, tmp_path: Path):
    out = tmp_path / "pred.csv"
    img = sorted((tiny_model["labels"] / "img" / "test").glob("*.png"))[0]
    for bad, names in [(b"", ("model.pt",)), (b"PK\x03\x04 not really a zip", ("model.pt", "not a loadable model.pt"))]:
        (tmp_path / "m").mkdir(exist_ok=True)
        (tmp_path / "m" / "model.pt").write_bytes(bad)
        sonossl.refused("predict", "--model", tmp_path / "m", img, "--out", out, "--quiet", names=names, untouched=(out,))
    truncated = tmp_path / "t" / "model.pt"
    truncated.parent.mkdir()
    blob = (tiny_model["run"] / "model.pt").read_bytes()
    truncated.write_bytes(blob[: len(blob) // 2])
    sonossl.refused("predict", "--model", truncated, img, "--out", out, "--quiet", names=(str(truncated),), untouched=(out,))
    # a corrupt input beside a good one: the good one is predicted, the bad one listed
    src = tmp_path / "inputs"
    src.mkdir()
    (src / "zero.dcm").write_bytes(b"")
    (src / "bad.mp4").write_bytes(b"rubbish")
    scans.dicom(src / "good.dcm", scans.clip(3))
    rc, err = sonossl("predict", "--model", tiny_model["run"], src, "--out", out, "--quiet")
    assert rc == 0, err
    assert sum("skipped" in line for line in err) == 2
    with open(out.with_name("pred_errors.csv")) as fh:
        assert sorted(Path(r["source"]).name for r in csv.DictReader(fh)) == ["bad.mp4", "zero.dcm"]
    # only corrupt inputs: exit 2, one line naming them, the old outputs untouched
    before = out.read_bytes()
    rc, err = sonossl("predict", "--model", tiny_model["run"], src / "zero.dcm", src / "bad.mp4", "--out", out,
                      "--overwrite", "--quiet")
    assert rc == 2 and len(err) == 1 and err[0].startswith("sonossl predict: error: no input could be predicted"), err
    assert "zero.dcm" in err[0] and "bad.mp4" in err[0]
    assert out.read_bytes() == before and not list(tmp_path.glob("*.partial"))


# ------------------------------------------------------------------------------------- safety
PACKAGE = Path(__file__).resolve().parents[2] / "sonossl"


def _calls(tree):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_checkpoint_load_in_the_package_is_weights_only():
    """Every ``torch.load`` (and Lightning ``fit(ckpt_path=...)``) says ``weights_only=True``; no
    raw pickle, no ``np.load(allow_pickle=True)``."""
    import ast

    loads, problems = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        for call, name in _calls(ast.parse(path.read_text())):
            kw = {k.arg: k.value for k in call.keywords}
            where = f"{path.relative_to(PACKAGE.parent)}:{call.lineno} {name}"
            wo = kw.get("weights_only")
            safe = isinstance(wo, ast.Constant) and wo.value is True
            if name in ("torch.load", "torch.serialization.load") or (name.endswith(".fit") and "ckpt_path" in kw):
                loads += 1
                if not safe:
                    problems.append(where)
            if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "dill.load", "joblib.load"):
                problems.append(where)
            allow = kw.get("allow_pickle")
            if name in ("np.load", "numpy.load") and not (isinstance(allow, ast.Constant) and allow.value is False):
                problems.append(where + " (np.load allows pickles unless allow_pickle=False)")
    assert loads >= 3 and not problems, problems


class Evil:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": Evil(marker)}, path)
    return path


def test_a_crafted_pickle_is_refused_by_predict_and_evaluate(sonossl, tiny_model: dict, tmp_path: Path):
    import pickle

    marker = tmp_path / "MARKER"
    evil = _evil_checkpoint(tmp_path / "evil" / "model.pt", marker)
    pickle.loads(pickle.dumps(Evil(tmp_path / "control")))  # the payload is real: plain pickle runs it
    assert (tmp_path / "control").exists()
    img = sorted((tiny_model["labels"] / "img" / "test").glob("*.png"))[0]
    out = tmp_path / "pred.csv"
    sonossl.refused("predict", "--model", evil, img, "--out", out, "--quiet",
                    names=(str(evil), "pickled objects", "refused"), untouched=(out,))
    sonossl.refused("predict", "--model", evil.parent, img, "--out", out, "--quiet", names=(str(evil),), untouched=(out,))
    backbone = _evil_checkpoint(tmp_path / "evil_run" / "backbone.pt", marker)
    for k, init in enumerate((backbone, backbone.parent)):  # a backbone.pt file, a pretrain run folder
        sonossl.refused("evaluate", "--labels", tiny_model["labels"], "--init", init, "--backbone", "resnet18",
                        "--protocol", "linear", "--fractions", "100", "--seeds", "0", "--image-size", "32",
                        "--out", tmp_path / f"eval{k}", "--quiet", names=(str(backbone), "pickled objects", "refused"))
    assert not marker.exists()


def test_a_refused_init_checkpoint_leaves_no_evaluate_folder(sonossl, tiny_model: dict, tmp_path: Path):
    evil = _evil_checkpoint(tmp_path / "evil" / "backbone.pt", tmp_path / "MARKER")
    out = tmp_path / "eval"
    sonossl.refused("evaluate", "--labels", tiny_model["labels"], "--init", evil, "--backbone", "resnet18",
                    "--protocol", "linear", "--fractions", "100", "--seeds", "0", "--out", out, "--quiet", untouched=(out,))


def test_a_crafted_pickle_is_refused_by_pretrain_resume(sonossl, tmp_path: Path):
    marker = tmp_path / "MARKER"
    frames = tiny_store(tmp_path / "frames.h5")
    cfg = write_yaml(tmp_path / "cfg.yaml", {**TINY_PRETRAIN, "max_steps": 1})
    run = tmp_path / "run"
    ckpt = _evil_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    before = sorted(p.name for p in run.rglob("*"))
    sonossl.refused("pretrain", "--config", cfg, "--frames", frames, "--out", run, "--resume", "--quiet",
                    names=(str(ckpt), "pickled objects", "refused"))
    assert not marker.exists()
    assert sorted(p.name for p in run.rglob("*")) == before  # the run folder untouched
    truncated = ckpt.read_bytes()[:100]
    ckpt.write_bytes(truncated)
    sonossl.refused("pretrain", "--config", cfg, "--frames", frames, "--out", run, "--resume", "--quiet",
                    names=(str(ckpt), "not a loadable"))


def test_evaluate_reads_outside_the_root_only_with_allow_outside_root(sonossl, labelled: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir()
    Image.new("L", (24, 24), 7).save(outside)
    with open(labelled / "train.csv", "a") as fh:
        fh.write("../elsewhere/x.png,a\n")
    out = tmp_path / "eval"
    sonossl.refused(*_evaluate(labelled, out), names=("train.csv", "leaves the data root"), untouched=(out,))
    args = [str(a) for a in _evaluate(labelled, out)] + ["--allow-outside-root"]
    assert main(args) == 0
    assert (out / "results.csv").is_file()
