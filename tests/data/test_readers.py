import numpy as np
import pydicom
import pytest
from pydicom.filewriter import dcmwrite

from sonossl.data.readers import find_sources, luminance, read_source, sniff_kind
from sonossl.errors import SonosslError

# (name, frames, rows, columns) of the genuine ultrasound files pydicom ships
GENUINE = [
    ("examples_ybr_color.dcm", 30, 240, 320),  # YBR_FULL_422, JPEG baseline, cardiac cine
    ("examples_palette.dcm", 1, 350, 800),  # PALETTE COLOR, obstetric
    ("examples_jpeg2k.dcm", 1, 480, 640),  # YBR_RCT, JPEG 2000
    ("examples_rgb_color.dcm", 1, 240, 320),  # RGB, native
]


@pytest.mark.parametrize("name,t,h,w", GENUINE)
def test_genuine_ultrasound_dicoms_decode_every_frame(scans, name, t, h, w):
    clip = read_source(scans.pydicom_file(name))
    assert clip.kind == "dicom"
    assert clip.frames.shape == (t, h, w) and clip.frames.dtype == np.uint8
    assert clip.frames_in == t
    assert all(f.std() > 5 for f in clip.frames)  # every frame holds an image, not a blank


def test_colour_becomes_luminance_and_frame_skip_picks_frames(scans):
    path = scans.pydicom_file("examples_ybr_color.dcm")
    rgb = pydicom.dcmread(path).pixel_array  # pydicom converts YBR_FULL_422 to RGB
    clip = read_source(path, frame_skip=7)
    assert clip.frames_in == 30 and len(clip.frames) == 5  # frames 0, 7, 14, 21, 28
    np.testing.assert_array_equal(clip.frames, luminance(rgb[::7]))
    assert clip.fps == pytest.approx(30.0, rel=1e-3)
    assert clip.regions == [(84, 31, 596, 415)]  # as recorded (for another resolution)
    assert len(read_source(path, frame_skip=2, max_frames=4).frames) == 4


def test_palette_colour_goes_through_the_lut(scans):
    from pydicom.pixels import apply_color_lut

    path = scans.pydicom_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    rgb = apply_color_lut(ds.pixel_array, ds)
    rgb = (rgb // 257).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
    np.testing.assert_array_equal(read_source(path).frames[0], luminance(rgb))


def test_written_multiframe_dicom_reads_back_exactly(tmp_path, scans):
    frames = scans.clip(t=6)
    clip = read_source(scans.dicom(tmp_path / "clip.dcm", frames, fps=20.0))
    np.testing.assert_array_equal(clip.frames, frames)
    assert clip.fps == pytest.approx(20.0)
    assert scans.FAKE_ID in clip.group_key  # raw key: ingest hashes it, never stores it


def test_dicom_recognised_by_content_not_extension(tmp_path, scans):
    path = scans.dicom(tmp_path / "a.dcm", scans.clip(t=2))
    renamed = path.rename(tmp_path / "scan.bin")
    assert sniff_kind(renamed) == "dicom"
    ds = pydicom.dcmread(renamed)
    ds.preamble = None  # no 128-byte preamble, no "DICM": only a parse can tell
    dcmwrite(tmp_path / "noext", ds, enforce_file_format=False)
    assert read_source(tmp_path / "noext").frames.shape == (2, *scans.SCREEN)


def test_monochrome1_16bit_is_rescaled_and_inverted(tmp_path, scans):
    path = scans.dicom(tmp_path / "m.dcm", scans.clip(t=2))
    ds = pydicom.dcmread(path)
    raw = (np.arange(2 * 56 * 72, dtype=np.uint16) // 2).reshape(2, 56, 72)  # < 2**12
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = raw.tobytes()
    ds.save_as(path)
    out = read_source(path).frames
    expected = 255 - np.rint(raw.astype(np.float32) * 255.0 / raw.max()).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_videos_decode_within_codec_loss(tmp_path, scans, suffix):
    frames = scans.clip(t=8)
    clip = read_source(scans.video(tmp_path / f"c{suffix}", frames, fps=10))
    assert clip.kind == "video" and clip.frames.shape == frames.shape and clip.fps == pytest.approx(10)
    assert np.abs(clip.frames.astype(int) - frames).mean() < 3
    skipped = read_source(tmp_path / f"c{suffix}", frame_skip=3)
    assert len(skipped.frames) == 3 and skipped.frames_in == 8
    np.testing.assert_array_equal(skipped.frames, clip.frames[::3])


def test_bad_files_raise_clear_errors(tmp_path, scans):
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"\x00not a video" * 50)
    (tmp_path / "notes.dat").write_bytes(b"hello" * 100)
    good = scans.dicom(tmp_path / "good.dcm", scans.clip(t=4))
    (tmp_path / "trunc.dcm").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for name in ("empty.dcm", "junk.mp4", "notes.dat"):
        with pytest.raises(SonosslError, match=name):
            read_source(tmp_path / name)
    with pytest.raises(Exception):
        read_source(tmp_path / "trunc.dcm")


def test_find_sources_walks_folders_and_skips_notes(tmp_path):
    for rel in ["a/1.dcm", "a/b/2.mp4", "a/.hidden.dcm", "a/.cache/3.dcm", "a/_truth.csv",
                "a/meta.json", "a/readme.txt", "a/frames.h5.partial", "c.avi"]:  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = find_sources([tmp_path / "a", tmp_path / "c.avi", tmp_path / "a" / "1.dcm"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/1.dcm", "a/b/2.mp4", "c.avi"]
    with pytest.raises(SonosslError, match="missing"):
        find_sources([tmp_path / "missing"])


# ---------------------------------------------------------------- image folders and seed HDF5


def _write_images(folder, frames, suffix=".png", mode="L"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):  # names sort in frame order only with the zero padding
        img = Image.fromarray(f) if mode == "L" else Image.fromarray(np.stack([f, f // 2, 255 - f], -1))
        img.save(folder / f"frame_{i:03d}{suffix}")
    return folder


def test_image_folder_is_one_clip_in_name_order(tmp_path, scans):
    frames = scans.clip(t=5)
    folder = _write_images(tmp_path / "clip", frames[::-1])  # frame_000 holds the last frame
    (folder / "notes.txt").write_text("x")
    assert sniff_kind(folder) == "images"
    clip = read_source(folder)
    assert clip.kind == "images" and clip.frames_in == 5 and clip.fps is None
    np.testing.assert_array_equal(clip.frames, frames[::-1])
    assert clip.group_key == f"folder:{tmp_path.resolve()}"
    np.testing.assert_array_equal(read_source(folder, frame_skip=2, max_frames=2).frames, frames[::-1][[0, 2]])


@pytest.mark.parametrize("suffix", [".bmp", ".tif", ".jpg"])
def test_colour_images_become_luminance(tmp_path, scans, suffix):
    frames = scans.clip(t=2)
    folder = _write_images(tmp_path / "c", frames, suffix=suffix, mode="RGB")
    rgb = np.stack([frames, frames // 2, 255 - frames], -1)
    err = np.abs(read_source(folder).frames.astype(int) - luminance(rgb)).mean()
    assert err < (4 if suffix == ".jpg" else 0.01)


def test_16bit_images_are_rescaled_and_sizes_must_match(tmp_path):
    from PIL import Image

    folder = tmp_path / "deep"
    folder.mkdir()
    raw = (np.arange(2 * 8 * 10, dtype=np.uint16) * 300).reshape(2, 8, 10)
    for i, f in enumerate(raw):
        Image.fromarray(f).save(folder / f"{i}.png")
    out = read_source(folder).frames
    np.testing.assert_array_equal(out, np.rint(raw.astype(np.float32) * 255.0 / raw.max()).astype(np.uint8))
    Image.fromarray(np.zeros((9, 10), np.uint8)).save(folder / "2.png")
    with pytest.raises(SonosslError, match="2.png is 10x9, expected 10x8"):
        read_source(folder)


def test_find_sources_yields_image_folders_not_their_images(tmp_path, scans):
    frames = scans.clip(t=2)
    _write_images(tmp_path / "root" / "clipA", frames)
    _write_images(tmp_path / "root" / "clipA" / "sub", frames)  # subfolders are still walked
    mixed = _write_images(tmp_path / "root" / "mixed", frames)
    scans.dicom(mixed / "scan.dcm", frames)  # images beside a DICOM: not an image clip
    (tmp_path / "root" / "empty").mkdir()
    found = [p.relative_to(tmp_path / "root").as_posix() for p in find_sources([tmp_path / "root"], image_folders=True)]
    assert found == ["clipA", "clipA/sub", "mixed/frame_000.png", "mixed/frame_001.png", "mixed/scan.dcm"]
    singles = find_sources([tmp_path / "root" / "clipA"])  # the default (predict): one source per image
    assert [p.name for p in singles] == ["frame_000.png", "frame_001.png"] * 2
    assert sniff_kind(mixed) is None and sniff_kind(tmp_path / "root" / "empty") is None
    with pytest.raises(SonosslError, match="not an image folder"):
        read_source(mixed)


def test_seed_hdf5_datasets_read_one_at_a_time(tmp_path, scans):
    import h5py

    from sonossl.data.readers import hdf5_clips

    grey, colour = scans.clip(t=7), np.stack([scans.clip(t=3, seed=1)] * 3, -1)
    with h5py.File(tmp_path / "seed.h5", "w") as f:
        f["b_grey"], f["a_rgb"] = grey, colour
        f["bad"] = np.zeros((2, 4, 4), np.float32)
    path = tmp_path / "seed.h5"
    assert sniff_kind(path) == "hdf5" and sorted(hdf5_clips(path)) == ["a_rgb", "b_grey", "bad"]
    clip = read_source(path, dataset="b_grey", frame_skip=3)
    assert clip.kind == "hdf5" and clip.frames_in == 7
    np.testing.assert_array_equal(clip.frames, grey[::3])
    np.testing.assert_array_equal(read_source(path, dataset="b_grey", frame_skip=2, max_frames=2).frames, grey[[0, 2]])
    np.testing.assert_array_equal(read_source(path, dataset="a_rgb").frames, colour[..., 0])
    assert clip.group_key != read_source(path, dataset="a_rgb").group_key  # each dataset its own group
    with pytest.raises(SonosslError, match="expected uint8"):
        read_source(path, dataset="bad")
    with pytest.raises(SonosslError, match="holds 3 clips"):
        read_source(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5" * 20)
    with pytest.raises(SonosslError, match="not a readable HDF5"):
        hdf5_clips(tmp_path / "junk.h5")


# One genuine file per transfer syntax / photometric interpretation the issue lists; each must
# decode to grey uint8 frames of the file's size (pydicom + pylibjpeg plugins, no network).
SYNTAXES = {
    "SC_rgb_rle_2frame.dcm": "RLE, RGB, 2 frames",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless, 16-bit MONOCHROME2",
    "JPEGLSNearLossless_08.dcm": "JPEG-LS near-lossless, 8-bit",
    "SC_rgb_jls_lossy_line.dcm": "JPEG-LS lossy, RGB",
    "MR_small_jp2klossless.dcm": "JPEG 2000 lossless (YBR_RCT family)",
    "JPEG2000.dcm": "JPEG 2000 lossy",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline, YBR_FULL_422",
    "SC_ybr_full_422_uncompressed.dcm": "uncompressed YBR_FULL_422",
}


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_every_listed_transfer_syntax_decodes(scans, name):
    import pydicom

    from sonossl.data.readers import read_source

    path = scans.pydicom_file(name)
    ds = pydicom.dcmread(path)
    clip = read_source(path)
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (n, ds.Rows, ds.Columns), SYNTAXES[name]
    assert clip.frames.std() > 1  # an image, not a blank
