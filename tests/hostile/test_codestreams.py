"""Budgets checked against what the codestream says, not only the header: a DICOM whose header
declares 64x64 x 1 frame but whose JPEG 2000 (SIZ), JPEG (SOF), JPEG-LS (SOF55) or RLE frame
declares far more is refused before it is decoded, within a gigabyte; so is an image file whose
IHDR or SOF disagrees with what it reads as. Every file is crafted here from a real encoder's
output (openjpeg, Pillow's libjpeg, pydicom's shipped JPEG-LS codestream) with its size fields
rewritten, and wrapped by pydicom's encapsulation helpers."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless, generate_uid
from test_data_safety import GiB, ingest_peak

from sonossl.data.codestream import check_image_file, image_declared
from sonossl.data.ingest import process_source
from sonossl.data.readers import open_image, open_source
from sonossl.errors import SonosslError

OPTS = {"frame_skip": 1, "max_frames": None, "crop": "none", "size": 16, "salt": "k"}
SPECKLE = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)


def _j2k(side: int) -> bytes:
    """openjpeg's J2K codestream of a 64x64 grey image, its SIZ (image and tile) saying side x side."""
    import openjpeg

    cs = bytearray(openjpeg.encode_array(SPECKLE, codec_format=0) if hasattr(openjpeg, "encode_array")
                   else openjpeg.encode(SPECKLE, codec_format=0))
    assert cs[:4] == b"\xff\x4f\xff\x51"
    struct.pack_into(">II", cs, 8, side, side)  # Xsiz, Ysiz
    struct.pack_into(">II", cs, 24, side, side)  # XTsiz, YTsiz: one tile
    return bytes(cs)


def _sof(cs: bytes, code: int, side: int) -> bytes:
    """``cs`` with its frame header (marker 0xFF ``code``) declaring side x side."""
    i = cs.index(bytes([0xFF, code]))
    out = bytearray(cs)
    struct.pack_into(">HH", out, i + 5, side, side)  # lines, samples per line
    return bytes(out)


def _jpeg(side: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(SPECKLE).save(buf, "JPEG", quality=90)
    return _sof(buf.getvalue(), 0xC0, side)


def _jpeg_ls(side: int) -> bytes:
    """pydicom's shipped JPEG-LS frame (MR_small_jpeg_ls_lossless.dcm, 64x64 16-bit), SOF55 rewritten."""
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    return _sof(next(generate_frames(ds.PixelData, number_of_frames=1)), 0xF7, side)


def _rle(runs: int) -> bytes:
    """One RLE segment: 4096 literal bytes (a 64x64 frame) when ``runs`` is 0, else ``runs`` pairs
    each decoding to 128 zero bytes."""
    seg = b"".join(bytes([127]) + SPECKLE.tobytes()[i : i + 128] for i in range(0, 4096, 128)) if runs == 0 \
        else bytes([0x81, 0]) * runs
    return struct.pack("<16I", 1, 64, *([0] * 14)) + seg


def encapsulated_dicom(path: Path, frames: list[bytes], syntax: str, rows=64, cols=64, bits=8, **encaps) -> Path:
    """A US DICOM whose header declares ``len(frames)`` frames of rows x cols x 1, holding
    ``frames`` encapsulated as they are."""
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.3.1", generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Modality, ds.PatientID, ds.Rows, ds.Columns, ds.NumberOfFrames = "US", "P1", rows, cols, len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = 1, "MONOCHROME2", bits, bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PixelData = encapsulate(frames, **encaps)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


CODECS = {  # name: (transfer syntax, an honest 64x64 frame, a frame declaring 20000x20000, bits)
    "j2k": (JPEG2000Lossless, lambda: _j2k(64), lambda: _j2k(20000), 8),
    "jpeg": (JPEGBaseline8Bit, lambda: _jpeg(64), lambda: _jpeg(20000), 8),
    "jpeg-ls": (JPEGLSLossless, lambda: _jpeg_ls(64), lambda: _jpeg_ls(20000), 16),
    "rle": (RLELossless, lambda: _rle(0), lambda: _rle(1 << 16), 8),
}


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(codec, tmp_path):
    syntax, honest, crafted, bits = CODECS[codec]
    good = encapsulated_dicom(tmp_path / "good.dcm", [honest(), honest()], syntax, bits=bits)
    frames = list(open_source(good).frames())  # the honest file decodes: the crafting keeps the codestream valid
    assert len(frames) == 2 and frames[0].shape == (64, 64)
    bad = encapsulated_dicom(tmp_path / "bad.dcm", [honest(), crafted()], syntax, bits=bits)
    with pytest.raises(SonosslError) as err:
        open_source(bad)  # the header, then every frame's declared size: nothing is decoded
    line = str(err.value)
    assert str(bad) in line and "frame 1" in line and "refused before decoding" in line and "\n" not in line, line
    if codec != "rle":
        assert "declares 20000x20000" in line and "the header 64x64" in line, line
        names = {"j2k": "JPEG 2000 codestream", "jpeg": "JPEG codestream", "jpeg-ls": "JPEG-LS codestream"}
        assert names[codec] in line, line
    else:  # 131,072 bytes that would decode to 8 MB: longer than any encoding of 64x64 needs
        assert "RLE segment 0 holds 131,072 bytes" in line, line
    res = process_source(bad, OPTS)  # in ingest: a manifest row
    assert res["status"] == "error" and "refused before decoding" in res["message"]


@pytest.mark.parametrize("codec", ["j2k", "jpeg", "jpeg-ls"])
def test_frames_in_several_fragments_without_an_offset_table_are_each_checked(codec, tmp_path):
    """No basic offset table, each frame in two fragments: frames are found where a fragment
    starts a codestream, as the decoder finds them, and the crafted second one is refused."""
    syntax, honest, crafted, bits = CODECS[codec]
    kw = {"has_bot": False, "fragments_per_frame": 2}
    good = encapsulated_dicom(tmp_path / "good.dcm", [honest(), honest(), honest()], syntax, bits=bits, **kw)
    assert len(list(open_source(good).frames())) == 3
    bad = encapsulated_dicom(tmp_path / "bad.dcm", [honest(), crafted(), honest()], syntax, bits=bits, **kw)
    with pytest.raises(SonosslError, match="frame 1's .* declares 20000x20000"):
        open_source(bad)


def test_a_smaller_codestream_or_more_components_disagree_with_the_header(tmp_path):
    one = encapsulated_dicom(tmp_path / "small.dcm", [_j2k(32)], JPEG2000Lossless)
    with pytest.raises(SonosslError, match=r"declares 32x32 x 1 \(its SIZ marker\), the header 64x64 x 1"):
        open_source(one)
    rgb = bytearray(_jpeg(64))
    rgb[rgb.index(b"\xff\xc0") + 9] = 200  # 200 components in a grey header
    with pytest.raises(SonosslError, match="x 200 .*the header 64x64 x 1"):
        open_source(encapsulated_dicom(tmp_path / "comp.dcm", [bytes(rgb)], JPEGBaseline8Bit))
    two_segments = struct.pack("<16I", 2, 64, 70, *([0] * 13)) + bytes(80)
    two = encapsulated_dicom(tmp_path / "rle2.dcm", [two_segments], RLELossless)
    with pytest.raises(SonosslError, match="declares 2 RLE segments, the header's pixels need 1"):
        open_source(two)
    short_bomb = encapsulated_dicom(tmp_path / "rle64.dcm", [_rle(64)], RLELossless)  # 128 bytes, 8192 decoded
    with pytest.raises(SonosslError, match="RLE segment 0 decodes to more than 4,160 bytes"):
        open_source(short_bomb)


def test_genuine_compressed_files_pass_the_check(scans):
    """pydicom's shipped JPEG baseline, JPEG 2000, JPEG-LS and RLE files, multi-frame among them."""
    for name in ("examples_ybr_color.dcm", "examples_jpeg2k.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                 "SC_rgb_rle_2frame.dcm", "JPEGLSNearLossless_08.dcm", "SC_rgb_jpeg_gdcm.dcm",
                 "MR_small_jp2klossless.dcm"):
        st = open_source(scans.pydicom_file(name))
        assert len(list(st.frames())) == st.n_kept, name


def _rewrite_png(path: Path, width: int, height: int) -> None:
    import zlib

    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_image_files_are_checked_against_their_ihdr_and_sof(tmp_path):
    png, jpg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(SPECKLE).save(png)
    jpg.write_bytes(_jpeg(64))
    assert image_declared(png)[:2] == (64, 64) and image_declared(jpg)[:3] == (64, 64, 1)
    with open_image(png) as im, open_image(jpg) as im2:
        assert im.size == im2.size == (64, 64)
    exif = Image.fromarray(SPECKLE)  # an EXIF thumbnail's own SOF sits inside APP1: skipped
    exif.save(tmp_path / "exif.jpg", exif=Image.Exif(), quality=90)
    assert image_declared(tmp_path / "exif.jpg")[:2] == (64, 64)
    _rewrite_png(png, 20000, 20000)
    jpg.write_bytes(_jpeg(20000))
    for path in (png, jpg):
        assert image_declared(path)[:2] == (20000, 20000)
        with pytest.raises(SonosslError, match=f"{path}: .*refused before decoding"):
            open_image(path)
    jpg.write_bytes(_sof(_jpeg(64), 0xC0, 0))  # a height (and here a width) left to a DNL marker
    assert image_declared(jpg)[:2] == (0, 0)
    with pytest.raises(SonosslError, match="DNL"):
        check_image_file(jpg, (64, 64), 1 << 26)
    with pytest.raises(SonosslError, match=str(jpg)):
        open_image(jpg)


def test_a_crafted_jpeg2000_file_peaks_under_a_gigabyte(tmp_path):
    """The issue's file: header 64x64 x 1 frame, SIZ 20000x20000 (which decoded to a 2.0 GB peak),
    beside the other codecs' crafted frames and an honest one; ingest refuses each in a row."""
    src = tmp_path / "src"
    src.mkdir()
    for codec, (syntax, honest, crafted, bits) in CODECS.items():
        encapsulated_dicom(src / f"{codec}.dcm", [crafted()], syntax, bits=bits)
    encapsulated_dicom(src / "honest.dcm", [_j2k(64)], JPEG2000Lossless)
    rc, peak, err = ingest_peak(src, "--out", tmp_path / "f.h5", "--crop", "none", "--size", "16", "--quiet")
    assert rc == 0, err
    assert peak < GiB, peak
    print(f"peak {peak / 2**20:.0f} MiB")
    with open(tmp_path / "f.manifest.csv", newline="") as fh:
        rows = {Path(r["source"]).name: r for r in csv.DictReader(fh)}
    assert rows["honest.dcm"]["status"] == "ok"
    for codec in CODECS:
        row = rows[f"{codec}.dcm"]
        assert row["status"] == "error" and "refused before decoding" in row["message"], row
