"""What an encoded frame says about itself, read without decoding it.

The pixel budget is checked against a file's header (a DICOM's Rows x Columns x frames, an
image's size). A decoder, though, allocates what the *codestream* declares, and a crafted file's
codestream can declare 20000 x 20000 inside a 64 x 64 header. So before a frame is decoded its
own declared size is read from the first bytes of its codestream, seeking over everything else:

- JPEG (the SOF0-SOF15 frame header) and JPEG-LS (SOF55): lines, samples per line, components;
  a JPEG that leaves its height to a later DNL marker (0 lines) is refused;
- JPEG 2000 (the SIZ marker, in a raw codestream or in a JP2 file's ``jp2c`` box):
  ``Xsiz - XOsiz`` by ``Ysiz - YOsiz``, ``Csiz`` components;
- RLE Lossless (DICOM): the segment count of the 64-byte header, and each segment's decoded
  length, the sum of its runs counted without writing them;
- PNG: the IHDR chunk.

:func:`check_dicom_frames` refuses a DICOM whose encapsulated frames disagree with its header
(which the pixel budget has passed), :func:`check_image_file` an image whose declared size is
over the budget or differs from what Pillow reads. Both raise :class:`SonosslError` with one
line naming the file, the frame and both sizes.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

from sonossl.errors import SonosslError

JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
JPEG_LS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}  # SOF55, walked as JPEG's markers are
J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                "1.2.840.10008.1.2.4.203"}
RLE_SYNTAX = "1.2.840.10008.1.2.5"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_SEGMENTS = 4096  # marker segments (or JP2 boxes) walked before a frame header must have come
MAX_FRAGMENTS = 1_000_000  # items of encapsulated pixel data


class Declared(NamedTuple):
    """A codestream's own account of its frame: width, height, components, and the marker said so."""

    width: int
    height: int
    components: int
    marker: str


class _Spans:
    """The bytes of ``(offset, length)`` spans of ``fh`` (a frame's fragments) read as one stream:
    ``read(n)`` (fewer bytes at the end) and ``skip(n)``, without holding more than is read."""

    def __init__(self, fh: BinaryIO, spans: list[tuple[int, int]]):
        self.fh, self.spans, self.i, self.pos = fh, spans, 0, 0

    def read(self, n: int) -> bytes:
        out = b""
        while n > 0 and self.i < len(self.spans):
            offset, length = self.spans[self.i]
            take = min(n, length - self.pos)
            self.fh.seek(offset + self.pos)
            got = self.fh.read(take)
            out, n, self.pos = out + got, n - len(got), self.pos + len(got)
            if len(got) < take:  # the file ends inside the span
                self.i = len(self.spans)
            elif self.pos >= length:
                self.i, self.pos = self.i + 1, 0
        return out

    def skip(self, n: int) -> None:
        while n > 0 and self.i < len(self.spans):
            take = min(n, self.spans[self.i][1] - self.pos)
            n, self.pos = n - take, self.pos + take
            if self.pos >= self.spans[self.i][1]:
                self.i, self.pos = self.i + 1, 0

    def left(self) -> int:
        return sum(length for _, length in self.spans[self.i :]) - self.pos


def _exact(r: _Spans, n: int, what: str) -> bytes:
    data = r.read(n)
    if len(data) < n:
        raise SonosslError(f"truncated {what}")
    return data


def jpeg_declared(r: _Spans) -> Declared:
    """The frame header of a JPEG or JPEG-LS codestream: marker segments are skipped by their
    lengths up to the first SOFn (n != 4, 8, 12) or SOF55."""
    if r.read(2) != b"\xff\xd8":
        raise SonosslError("not a JPEG codestream (no SOI marker)")
    for _ in range(MAX_SEGMENTS):
        marker = _exact(r, 2, "JPEG marker")
        while marker[0] == 0xFF and marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + _exact(r, 1, "JPEG marker")
        if marker[0] != 0xFF:
            raise SonosslError(f"JPEG codestream: a marker expected, found 0x{marker.hex()}")
        code = marker[1]
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # standalone markers
            continue
        if code in (0xD9, 0xDA):
            raise SonosslError("JPEG codestream without a frame header (SOF) before its scan")
        (length,) = struct.unpack(">H", _exact(r, 2, "JPEG segment length"))
        if length < 2:
            raise SonosslError(f"JPEG codestream: a segment of length {length}")
        if (0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC)) or code == 0xF7:
            _, height, width, components = struct.unpack(">BHHB", _exact(r, 6, "JPEG frame header"))
            return Declared(width, height, components, "SOF55" if code == 0xF7 else f"SOF{code - 0xC0}")
        r.skip(length - 2)
    raise SonosslError(f"JPEG codestream: no frame header (SOF) in its first {MAX_SEGMENTS} segments")


def _siz(r: _Spans) -> Declared:
    """The SIZ marker's body, after the SOC and SIZ markers."""
    siz = _exact(r, 38, "JPEG 2000 SIZ marker")
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", siz[4:20])
    (components,) = struct.unpack(">H", siz[36:38])
    return Declared(max(xsiz - xosiz, 0), max(ysiz - yosiz, 0), components, "SIZ")


def j2k_declared(r: _Spans) -> Declared:
    """The SIZ marker of a JPEG 2000 codestream, raw or inside a JP2 file (its ``jp2c`` box)."""
    head = r.read(4)
    if head == b"\xff\x4f\xff\x51":
        return _siz(r)
    if head + r.read(8) != JP2_SIGNATURE:
        raise SonosslError("not a JPEG 2000 codestream (no SOC and SIZ markers, no JP2 signature)")
    for _ in range(MAX_SEGMENTS):
        lbox, tbox = struct.unpack(">I4s", _exact(r, 8, "JP2 box"))
        size, header = lbox, 8
        if lbox == 1:
            (size,) = struct.unpack(">Q", _exact(r, 8, "JP2 box length"))
            header = 16
        if tbox == b"jp2c":
            if r.read(4) != b"\xff\x4f\xff\x51":
                raise SonosslError("JP2 file: its codestream box holds no SOC and SIZ markers")
            return _siz(r)
        if size < header:
            raise SonosslError("JP2 file: a box without a length before its codestream")
        r.skip(size - header)
    raise SonosslError(f"JP2 file: no codestream box in its first {MAX_SEGMENTS} boxes")


def _rle_length(data: bytes, limit: int) -> int:
    """The decoded length of one RLE segment (PackBits), counted up to just past ``limit``."""
    n, pos, end = 0, 0, len(data)
    while pos < end and n <= limit:
        h = data[pos]
        if h < 128:  # a literal run of h + 1 bytes
            n, pos = n + h + 1, pos + h + 2
        elif h > 128:  # one byte repeated 257 - h times
            n, pos = n + 257 - h, pos + 2
        else:
            pos += 1
    return n


def rle_check(r: _Spans, rows: int, cols: int, segments: int) -> None:
    """A DICOM RLE frame: ``segments`` segments (samples x bytes a sample), each at most twice the
    length any encoding of ``rows x cols`` bytes needs, and each decoding to ``rows x cols``
    bytes (one byte of padding a row at most)."""
    header = _exact(r, 64, "RLE header")
    count, *offsets = struct.unpack("<16I", header)
    if count != segments:
        raise SonosslError(f"declares {count} RLE segments, the header's pixels need {segments}")
    total, plane = r.left() + 64, rows * cols
    bounds = offsets[:count] + [total]
    if bounds[0] != 64 or any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise SonosslError(f"RLE header: segment offsets {offsets[:count]} are not increasing within its {total} bytes")
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if b - a > 2 * plane + 2 * rows + 16:
            raise SonosslError(f"RLE segment {k} holds {b - a:,} bytes, more than any encoding of {cols}x{rows} needs")
        r.skip(a - (total - r.left()))
        decoded = _rle_length(r.read(b - a), plane + rows)
        if decoded > plane + rows:
            raise SonosslError(f"RLE segment {k} decodes to more than {plane + rows:,} bytes, the header declares "
                               f"{cols}x{rows}")


def png_declared(head: bytes) -> Declared | None:
    """The IHDR chunk of a PNG file's first 33 bytes; None when it is not a PNG."""
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or len(head) < 26:
        return None
    width, height = struct.unpack(">II", head[16:24])
    return Declared(width, height, 0, "IHDR")


def image_declared(path: Path) -> Declared | None:
    """The size a PNG (IHDR), JPEG (SOF) or JPEG 2000 (SIZ) file declares; None for other formats."""
    with open(path, "rb") as fh:
        head = fh.read(33)
        r = _Spans(fh, [(0, Path(path).stat().st_size)])
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return png_declared(head)
        if head[:2] == b"\xff\xd8":
            return jpeg_declared(r)
        if head[:4] == b"\xff\x4f\xff\x51" or head[:12] == JP2_SIGNATURE:
            return j2k_declared(r)
    return None


def check_image_file(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image whose own declared size (:func:`image_declared`) is over ``max_pixels``,
    unknown (a JPEG's DNL height) or not ``size`` (width, height), what Pillow reads."""
    try:
        d = image_declared(path)
    except SonosslError as exc:
        raise SonosslError(f"{path}: not a readable image ({exc})") from None
    if d is None:
        return
    if d.width < 1 or d.height < 1:
        raise SonosslError(f"{path}: its {d.marker} declares a {d.width}x{d.height} image (a height left to a DNL "
                           "marker?); refused before decoding")
    if d.width * d.height > max_pixels:
        raise SonosslError(f"{path}: its {d.marker} declares {d.width}x{d.height} ({d.width * d.height:,} pixels), "
                           f"over the limit of {max_pixels:,} pixels; refused before decoding")
    if (d.width, d.height) != tuple(size):
        raise SonosslError(f"{path}: its {d.marker} declares {d.width}x{d.height}, the image reads as "
                           f"{size[0]}x{size[1]}; refused before decoding")


# ---------------------------------------------------------------- DICOM encapsulated pixel data


def _items(fh: BinaryIO, frames: int) -> tuple[list[int], list[tuple[int, int]]]:
    """From the start of encapsulated pixel data's value: the basic offset table and every
    fragment's ``(offset, length)``, item headers read and their contents skipped."""
    table: list[int] | None = None
    fragments: list[tuple[int, int]] = []
    while True:
        head = fh.read(8)
        if len(head) < 8:
            break  # truncated: the decoder will say so
        group, element, length = struct.unpack("<HHI", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise SonosslError(f"encapsulated pixel data: an item expected at byte {fh.tell() - 8}, found "
                               f"({group:04X},{element:04X})")
        if table is None:
            if length > 4 * frames or length % 4:
                raise SonosslError(f"a basic offset table of {length:,} bytes for {frames} frames")
            table = list(struct.unpack(f"<{length // 4}I", _exact(_Spans(fh, [(fh.tell(), length)]), length,
                                                                   "basic offset table")))
            continue
        fragments.append((fh.tell(), length))
        if len(fragments) > MAX_FRAGMENTS:
            raise SonosslError(f"more than {MAX_FRAGMENTS:,} fragments of encapsulated pixel data")
        fh.seek(length, 1)
    return table or [], fragments


def _starts_codestream(fh: BinaryIO, span: tuple[int, int]) -> bool:
    fh.seek(span[0])
    head = fh.read(min(span[1], 12))
    return head[:2] == b"\xff\xd8" or head[:4] == b"\xff\x4f\xff\x51" or head == JP2_SIGNATURE


def _group_frames(fh: BinaryIO, offsets: list[int], fragments: list[tuple[int, int]], frames: int,
                  rle: bool) -> list[list[tuple[int, int]]]:
    """Each frame's fragments, by the offset table when there is one (relative to the first
    fragment's item), else one fragment a frame when the counts agree, else (JPEG, JPEG 2000)
    a frame at each fragment that starts a codestream."""
    if not fragments:
        return []
    if offsets:
        where = {off - fragments[0][0]: i for i, (off, _) in enumerate(fragments)}  # item tag to item tag
        if any(o not in where for o in offsets):
            raise SonosslError("an offset table entry points inside a fragment of the pixel data")
        starts = [where[o] for o in offsets]
    elif frames == 1:
        starts = [0]
    elif len(fragments) == frames:
        starts = list(range(frames))
    elif rle:
        raise SonosslError(f"{len(fragments)} RLE fragments for {frames} frames and no offset table")
    else:
        starts = [i for i, span in enumerate(fragments) if _starts_codestream(fh, span)]
    if not starts or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])):
        raise SonosslError("the offset table's frames are not in order")
    return [fragments[a:b] for a, b in zip(starts, starts[1:] + [len(fragments)])]


def _frame_offsets(ds) -> list[int]:
    """The Extended Offset Table's entries (64-bit), when the header has one."""
    raw = ds.get("ExtendedOffsetTable")
    if raw is None or not raw.value:
        return []
    value = bytes(raw.value)
    return list(struct.unpack(f"<{len(value) // 8}Q", value[: len(value) // 8 * 8]))


def check_dicom_frames(fh: BinaryIO, ds, path: Path) -> None:
    """Every encapsulated frame of DICOM ``ds`` (its header read from ``fh``, which stands at the
    pixel data element) against the header's Rows x Columns x SamplesPerPixel, before any is
    decoded; native pixel data and transfer syntaxes sonossl does not decode pass unread."""
    syntax = str(getattr(ds.get("file_meta"), "TransferSyntaxUID", "") or "")
    if syntax not in JPEG_SYNTAXES | J2K_SYNTAXES | {RLE_SYNTAX}:
        return
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"\xe0\x7f\x10\x00" or head[8:12] != b"\xff\xff\xff\xff":
        return  # no pixel data, or not encapsulated: the decoder reports it
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples, nbytes = int(ds.get("SamplesPerPixel", 1) or 1), -(-int(ds.get("BitsAllocated", 8) or 8) // 8)
    frames = int(str(ds.get("NumberOfFrames", 1) or 1).strip())
    name = {RLE_SYNTAX: "RLE", **dict.fromkeys(J2K_SYNTAXES, "JPEG 2000"), **dict.fromkeys(JPEG_LS_SYNTAXES, "JPEG-LS")
            }.get(syntax, "JPEG")
    try:
        offsets, fragments = _items(fh, frames)
        grouped = _group_frames(fh, _frame_offsets(ds) or offsets, fragments, frames, syntax == RLE_SYNTAX)
    except SonosslError as exc:
        raise SonosslError(f"{path}: {exc}; refused before decoding") from None
    for k, spans in enumerate(grouped):
        r = _Spans(fh, spans)
        try:
            if syntax == RLE_SYNTAX:
                rle_check(r, rows, cols, samples * nbytes)
                continue
            d = j2k_declared(r) if syntax in J2K_SYNTAXES else jpeg_declared(r)
        except SonosslError as exc:
            raise SonosslError(f"{path}: frame {k}: {exc}; refused before decoding") from None
        if (d.width, d.height) != (cols, rows) or d.components > samples:
            raise SonosslError(f"{path}: frame {k}'s {name} codestream declares {d.width}x{d.height} x "
                               f"{d.components} (its {d.marker} marker), the header {cols}x{rows} x {samples}; "
                               "refused before decoding")
