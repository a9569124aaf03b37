"""``sonossl predict``: the plane of every frame of new scans, and the best frame of each plane.

Inputs are read as the model's training data was:

- clips and DICOM images (DICOM cine or single frame, MP4, AVI, ...) exactly as ingestion reads
  them: :func:`~sonossl.data.readers.read_source` (grey uint8), the scan region found by
  :func:`~sonossl.data.sector.locate_scan_region` (``crop="auto"``, ingestion's default),
  blanked outside, cropped, padded square and resized by
  :func:`~sonossl.data.sector.crop_to_region` to the model's ``image_size``;
- PNG/JPEG/... images as labelled images are: :func:`~sonossl.data.labelled.load_image`.

Outputs (``OUT`` = the CSV given, e.g. ``predictions.csv``):

- ``OUT``: one row per frame, ``source,frame,predicted,p_<class>...`` (``frame`` is the index
  in the source, so with ``frame_skip`` k it steps by k);
- ``OUT_STEM_clips/`` for each clip of two frames or more: ``<n>_<name>/timeline.png`` (each
  class's probability over the frames, moving-average smoothed over ``smooth`` frames when
  asked) and ``<n>_<name>/best_<class>_frame<i>_p<score>.png`` (the cropped scan region of that
  frame; nothing outside it, so no burned-in text); ``best_frames.csv`` lists them
  (``source,class,frame,score,image``; the score is the curve the timeline shows);
- ``OUT_STEM_errors.csv`` (``source,message``) when some inputs could not be read; each is also
  reported on stderr, and the rest are predicted. Nothing predicted at all is a
  :class:`SonosslError` and leaves no output behind.

No DICOM attribute value is written anywhere: names of sources are the user's own paths.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sonossl.data.labelled import IMAGE_SUFFIXES, load_image
from sonossl.data.readers import find_sources, read_source
from sonossl.data.sector import CROPS, Crop, crop_to_region, scan_region
from sonossl.errors import SonosslError
from sonossl.downstream.classifier import predict_logits
from sonossl.downstream.modelfile import LoadedModel, load_model
from sonossl.progress import progress_bar

PROGRESS_MIN_INPUTS = 4  # a progress bar from this many inputs on


@dataclass
class Frames:
    """One input, ready for the model: ``frames`` uint8 ``(T, S, S)``; ``index`` ``(T,)`` source
    frame numbers; ``display(i)`` the i-th frame's scan region at its own resolution."""

    frames: np.ndarray
    index: np.ndarray
    raw: np.ndarray | None = None  # uint8 (T, H, W) before cropping (clips only)
    box: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = None

    def display(self, i: int, max_side: int = 512) -> np.ndarray:
        """uint8 ``(D, D)``: the scan region of frame ``i``, as ingestion crops it, at source resolution (at most ``max_side``)."""
        if self.raw is None:
            return self.frames[i]
        x0, y0, x1, y1 = self.box
        side = min(max(x1 - x0, y1 - y0), max_side)
        return crop_to_region(self.raw[i : i + 1], self.box, self.mask, side)[0]


@dataclass
class PredictSummary:
    sources: int  # inputs predicted
    frames: int  # CSV rows
    clips: int  # inputs with a timeline and best frames
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, message)
    csv: Path | None = None
    clips_dir: Path | None = None
    best_frames: Path | None = None
    errors_csv: Path | None = None
    precision: str = ""  # what the model ran in, and why (FastPath)


def read_input(path: Path, image_size: int, *, frame_skip: int = 1, crop: str = "auto") -> Frames:
    """One input file -> :class:`Frames` (see the module docstring); :class:`SonosslError` when unreadable."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Frames(load_image(path, image_size)[None], np.zeros(1, np.int64))
    clip = read_source(path, frame_skip=frame_skip)
    try:
        box, mask, _ = scan_region(clip.frames, clip.regions, clip.kind, crop)  # as ingest crops, so the model sees what it was trained on
    except SonosslError as exc:
        raise SonosslError(f"{path}: {exc}") from None
    frames = crop_to_region(clip.frames, box, mask, image_size)
    return Frames(frames, np.arange(len(frames), dtype=np.int64) * frame_skip, clip.frames, box, mask)


def frame_probabilities(m: LoadedModel, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """frames: uint8 ``(T, S, S)`` -> softmax probabilities float ``(T, C)``."""
    x = torch.from_numpy(np.array(frames, copy=True))[:, None]  # a writable copy: frames may be a read-only view
    logits = predict_logits(m.classifier, x, batch_size, m.device, m.fast.amp_dtype)
    return torch.softmax(logits, 1).numpy()


def moving_average(p: np.ndarray, k: int) -> np.ndarray:
    """p: ``(T, C)`` -> ``(T, C)``, centred mean over ``k`` frames (fewer at the ends); ``k <= 1``: unchanged."""
    if k <= 1 or len(p) < 2:
        return p
    kernel = np.ones(k)
    num = np.stack([np.convolve(p[:, c], kernel, mode="same") for c in range(p.shape[1])], 1)
    den = np.convolve(np.ones(len(p)), kernel, mode="same")[:, None]
    return num / den


def save_timeline(path: Path, index: np.ndarray, probs: np.ndarray, classes: list[str], title: str, smooth: int) -> None:
    """Each class's probability over the frames of one clip."""
    from sonossl.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for c, name in enumerate(classes):
        ax.plot(index, probs[:, c], label=name, lw=1.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("frame")
    ax.set_ylabel("probability" + (f" (moving average of {smooth})" if smooth > 1 else ""))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right", fontsize=7, ncol=min(len(classes), 5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "input"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _check_options(smooth: int, batch_size: int, frame_skip: int, crop: str) -> None:
    if smooth < 0:
        raise SonosslError(f"--smooth: expected an integer >= 0 (frames), got {smooth}")
    if batch_size < 1:
        raise SonosslError(f"--batch-size: expected an integer >= 1, got {batch_size}")
    if frame_skip < 1:
        raise SonosslError(f"--frame-skip: expected an integer >= 1, got {frame_skip}")
    if crop not in CROPS:
        raise SonosslError(f"--crop: expected one of {', '.join(CROPS)}, got {crop!r}")


def _outputs(out_csv: Path, overwrite: bool) -> list[Path]:
    """``[out_csv, <stem>_clips/, <stem>_errors.csv]``; refused when one exists without ``overwrite``."""
    clips_dir = out_csv.with_name(out_csv.stem + "_clips")
    errors_csv = out_csv.with_name(out_csv.stem + "_errors.csv")
    if any(p.exists() for p in (out_csv, clips_dir, errors_csv)) and not overwrite:
        raise SonosslError(f"{out_csv}: output exists; pass --overwrite to replace it (and {clips_dir.name}/, {errors_csv.name})")
    return [out_csv, clips_dir, errors_csv]


def _clip_outputs(part_dir: Path, name: str, src: Path, fr: Frames, probs: np.ndarray, classes: list[str],
                  smooth: int) -> list[list]:
    """A clip's folder ``part_dir/name``: its timeline (probabilities (T, C) smoothed over
    ``smooth`` frames) and its best frame per class; returns the best-frame rows."""
    folder = part_dir / name
    folder.mkdir(parents=True)
    curve = moving_average(probs, smooth)
    save_timeline(folder / "timeline.png", fr.index, curve, classes, src.name, smooth)
    rows = []
    for c, cls in enumerate(classes):
        k = int(curve[:, c].argmax())
        score = f"{curve[k, c]:.5f}"  # the CSV's score; the file name rounds that, so the two always agree
        img = folder / f"best_{_safe(cls)}_frame{int(fr.index[k])}_p{float(score):.3f}.png"
        Image.fromarray(fr.display(k)).save(img)
        rows.append([str(src), cls, int(fr.index[k]), score, str(img.relative_to(part_dir))])
    return rows


def predict(
    model: Path,
    inputs: list[Path],
    out_csv: Path = Path("predictions.csv"),
    *,
    smooth: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    frame_skip: int = 1,
    crop: Crop = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> PredictSummary:
    """Predict every frame of ``inputs`` (files or folders, walked) with the model of ``model``.

    model: an evaluate run folder or its ``model.pt``. Writes ``out_csv`` and, beside it,
    ``<stem>_clips/`` and ``<stem>_errors.csv`` (see the module docstring); ``precision`` as :func:`load_model`.
    Raises :class:`SonosslError` on a bad model or option, an existing output without
    ``overwrite``, and when no input could be predicted.
    """
    _check_options(smooth, batch_size, frame_skip, crop)
    m = load_model(model, device, precision)
    files = find_sources([Path(p) for p in inputs])
    if not files:
        raise SonosslError(f"{', '.join(map(str, inputs))}: no input files found")
    out_csv = Path(out_csv)
    ours = _outputs(out_csv, overwrite)
    clips_dir, errors_csv = ours[1], ours[2]
    files = [f for f in files if f.resolve() not in {p.resolve() for p in ours} and not f.resolve().is_relative_to(clips_dir.resolve())]
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    part_csv = out_csv.with_name(out_csv.name + ".partial")
    part_dir = clips_dir.with_name(clips_dir.name + ".partial")
    shutil.rmtree(part_dir, ignore_errors=True)
    classes = m.class_names
    summary = PredictSummary(0, 0, 0, precision=str(m.fast))
    best_rows: list[list] = []
    try:
        with open(part_csv, "w", newline="") as fh, progress_bar("predict", progress and len(files) >= PROGRESS_MIN_INPUTS) as bar:
            w = csv.writer(fh)
            w.writerow(["source", "frame", "predicted", *[f"p_{c}" for c in classes]])
            task = bar.add_task("predict", total=len(files))
            for src in files:
                try:
                    fr = read_input(src, m.image_size, frame_skip=frame_skip, crop=crop)
                except Exception as exc:  # one unreadable input must not stop the others
                    msg = " ".join(str(exc).split()).replace(f"{src}: ", "")[:300] or type(exc).__name__
                    summary.errors.append((str(src), msg))
                    bar.advance(task)
                    continue
                probs = frame_probabilities(m, fr.frames, batch_size)
                pred = probs.argmax(1)
                for i, p, pr in zip(fr.index, pred, probs):
                    w.writerow([str(src), int(i), classes[p], *[f"{v:.5f}" for v in pr]])
                summary.sources += 1
                summary.frames += len(probs)
                if len(probs) >= 2:
                    summary.clips += 1
                    best_rows += _clip_outputs(part_dir, f"{summary.clips:03d}_{_safe(src.stem)}", src, fr, probs, classes, smooth)
                bar.advance(task)
        if summary.sources == 0:  # one line, the first reasons in it
            raise SonosslError(f"no input could be predicted ({len(summary.errors)} unreadable: "
                               f"{'; '.join(f'{s}: {e}' for s, e in summary.errors[:3])})")
        for src, msg in summary.errors:  # some were predicted: say which were not
            print(f"sonossl predict: skipped {src}: {msg}", file=sys.stderr)
        for p in ours:  # the previous outputs (--overwrite) go only once the new ones are complete
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        if summary.clips:
            _write_csv(part_dir / "best_frames.csv", ["source", "class", "frame", "score", "image"], best_rows)
            os.replace(part_dir, clips_dir)
            summary.clips_dir, summary.best_frames = clips_dir, clips_dir / "best_frames.csv"
        if summary.errors:
            _write_csv(errors_csv, ["source", "message"], [list(e) for e in summary.errors])
            summary.errors_csv = errors_csv
        os.replace(part_csv, out_csv)
        summary.csv = out_csv
    finally:
        part_csv.unlink(missing_ok=True)
        shutil.rmtree(part_dir, ignore_errors=True)
    return summary
