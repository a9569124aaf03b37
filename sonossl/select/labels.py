"""``sonossl labels import``: a Label Studio JSON export back to a labelled set.

Reads the export of a project made from ``sonossl select --label-studio`` and the selection
folder its tasks came from (``label-studio/label_config.xml`` for the classes, ``frames/`` for
the images), and writes (``--out``, or adds a round to ``--append``):

- ``train.csv``, ``valid.csv``, ``test.csv`` (``image_path,class``, paths relative to the CSV),
  the images copied into ``images/<split>/``;
- ``labels_import.csv``, one row per task of every round: ``round, task_id, clip_id,
  frame_index, status, class, split, image_path, detail``. ``status`` is ``imported``,
  ``skipped`` (every annotator skipped it), ``no_annotation``, ``disagreement`` (annotators chose
  different classes and ``--on-conflict`` left it out), ``unknown_class`` (a class not in
  label_config.xml) or ``image_missing``. Nothing is dropped without a row.

The split is by clip: this round's new clips are shuffled with ``--seed`` and ``--test`` /
``--valid`` of them go to test / valid, the rest to train; a clip of an earlier round stays in
the split it was in, so no clip's frames sit in two splits.
"""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from sonossl.config import LabelsImportConfig
from sonossl.errors import SonosslError
from sonossl.outlock import check_apart, lock_output, read_marker, write_marker
from sonossl.outputs import atomic_write_csv, claim_output_dir

COMMAND = "labels import"
SPLITS = ("train", "valid", "test")
LEDGER = "labels_import.csv"
LEDGER_COLUMNS = ("round", "task_id", "clip_id", "frame_index", "status", "class", "split", "image_path", "detail")


def read_export(path: Path) -> list[dict]:
    """The export's tasks; :class:`SonosslError` when it is not a Label Studio JSON export or is empty."""
    try:
        tasks = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SonosslError(f"{path}: file not found; expected Label Studio's JSON export") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SonosslError(f"{path}: not JSON ({type(exc).__name__}); expected Label Studio's JSON export") from None
    if not isinstance(tasks, list) or any(not isinstance(t, dict) or not isinstance(t.get("data"), dict) for t in tasks):
        raise SonosslError(f"{path}: not a Label Studio JSON export; expected a list of tasks, each with data and "
                           "annotations (Export > JSON)")
    if not tasks:
        raise SonosslError(f"{path}: the export holds no task; expected Label Studio's JSON export of the project")
    for t in tasks:
        if "png" not in t["data"] or "clip_id" not in t["data"]:
            raise SonosslError(f"{path}: task {t.get('id')} has no data.png / data.clip_id; expected the export of a "
                               "project made from `sonossl select --label-studio`'s tasks.json")
    return tasks


def read_classes(selection: Path) -> list[str]:
    """The choices of ``selection/label-studio/label_config.xml``."""
    path = Path(selection) / "label-studio" / "label_config.xml"
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        raise SonosslError(f"{path}: missing or not XML; expected the label_config.xml of `sonossl select "
                           "--label-studio`") from None
    classes = [c.get("value") for c in root.iter("Choice") if c.get("value")]
    if not classes:
        raise SonosslError(f"{path}: no <Choice value=...>; expected a single choice over the classes")
    return classes


def _choices(annotation: dict) -> list[str]:
    return [c for r in annotation.get("result") or [] if r.get("type") == "choices"
            for c in (r.get("value") or {}).get("choices") or []]


def decide(task: dict, classes: list[str], on_conflict: str) -> tuple[str, str, str]:
    """``(status, class, detail)`` of one task from its annotations (see the module docstring)."""
    anns = task.get("annotations") or []
    if not anns:
        return "no_annotation", "", ""
    done = [a for a in anns if not a.get("was_cancelled")]
    if not done:
        return "skipped", "", f"{len(anns)} annotator(s) skipped it"
    votes = Counter(c for a in done for c in _choices(a)[:1])
    if not votes:
        return "no_annotation", "", f"{len(done)} annotation(s) without a choice"
    if len(votes) > 1:
        detail = "; ".join(f"{k}: {v}" for k, v in votes.most_common())
        top = votes.most_common(2)
        if on_conflict == "refuse" or top[0][1] == top[1][1]:
            return "disagreement", "", f"{detail} (--on-conflict {on_conflict}{', a tie' if on_conflict == 'majority' else ''})"
        cls, detail = top[0][0], f"majority of {detail}"
    else:
        cls, detail = next(iter(votes)), ""
    if cls not in classes:
        return "unknown_class", cls, f"not in label_config.xml ({','.join(classes)})"
    return "imported", cls, detail


def assign_splits(clips: list[str], prior: dict[str, str], valid: float, test: float, seed: int) -> dict[str, str]:
    """Each clip's split: its earlier one, else a seeded draw of the new clips (test, then valid, then train)."""
    new = sorted(set(clips) - set(prior))
    order = [new[i] for i in np.random.default_rng(seed).permutation(len(new))]
    n_test, n_valid = round(len(new) * test), round(len(new) * valid)
    split = dict(prior)
    for k, clip in enumerate(order):
        split[clip] = "test" if k < n_test else "valid" if k < n_test + n_valid else "train"
    return split


def _read_ledger(folder: Path) -> list[dict]:
    path = folder / LEDGER
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        raise SonosslError(f"{path}: not found; --append expects a labelled set written by `sonossl labels import`") from None
    if rows and set(LEDGER_COLUMNS) - set(rows[0]):
        raise SonosslError(f"{path}: expected the columns {','.join(LEDGER_COLUMNS)}")
    return rows


def _earlier(c: LabelsImportConfig) -> list[dict]:
    """The ledger of the earlier rounds of ``--append`` (none for a new set in ``--out``)."""
    if (c.out is None) == (c.append is None):
        raise SonosslError("labels import: give one of --out (a new labelled set) or --append (an existing one)")
    if c.valid + c.test >= 1:
        raise SonosslError(f"--valid {c.valid:g} + --test {c.test:g}: expected a sum below 1, so some clips go to train")
    if c.out is not None:
        return []
    if read_marker(Path(c.append)) != COMMAND:
        raise SonosslError(f"{c.append}: --append expects a labelled set written by `sonossl labels import`")
    return _read_ledger(Path(c.append))


def _claim(c: LabelsImportConfig, overwrite: bool) -> Path:
    """The folder to write, apart from the inputs and locked; a new ``--out`` is made (or replaced with ``overwrite``)."""
    inputs = [("EXPORT", c.export), ("--selection", c.selection)]
    if c.out is not None:
        return claim_output_dir(c.out, command=COMMAND, inputs=inputs, overwrite=overwrite, can_resume=False)
    check_apart(Path(c.append), inputs)
    lock_output(Path(c.append), COMMAND)
    return Path(c.append)


def _existing_rows(folder: Path, split: str) -> list[dict]:
    path = folder / f"{split}.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{"image_path": r["image_path"], "class": r["class"]} for r in csv.DictReader(fh)]


def _ledger_rows(c: LabelsImportConfig, tasks: list[dict], classes: list[str], rnd: int, prior: dict[str, str]):
    rows = []
    for t in tasks:
        d = t["data"]
        status, cls, detail = decide(t, classes, c.on_conflict)
        src = Path(c.selection) / str(d["png"])
        if status == "imported" and not src.is_file():
            status, detail = "image_missing", f"{d['png']} not in {c.selection}"
        rows.append({"round": rnd, "task_id": t.get("id", ""), "clip_id": d["clip_id"], "frame_index": d.get("frame_index", ""),
                     "status": status, "class": cls, "split": "", "image_path": "", "detail": detail, "_src": src})
    split = assign_splits([r["clip_id"] for r in rows if r["status"] == "imported"], prior, c.valid, c.test, c.seed)
    for r in rows:
        if r["status"] == "imported":
            r["split"] = split[r["clip_id"]]
            r["image_path"] = f"images/{r['split']}/r{rnd}_{Path(str(r['_src'])).name}"
    return rows


def import_labels(c: LabelsImportConfig, overwrite: bool = False) -> dict:
    """Write or extend the labelled set (see the module docstring); returns ``{"out", "counts", "splits", "round"}``."""
    tasks = read_export(c.export)
    classes = read_classes(c.selection)
    ledger = _earlier(c)
    folder = Path(c.append or c.out)
    prior = {r["clip_id"]: r["split"] for r in ledger if r["status"] == "imported"}
    rnd = max((int(r["round"]) for r in ledger), default=0) + 1
    rows = _ledger_rows(c, tasks, classes, rnd, prior)
    new = [r for r in rows if r["status"] == "imported"]
    splits = {s: _existing_rows(folder, s) + [{"image_path": r["image_path"], "class": r["class"]}
                                            for r in new if r["split"] == s] for s in SPLITS}
    missing = [k for k in classes if k in {r["class"] for s in SPLITS for r in splits[s]}
               and k not in {r["class"] for r in splits["train"]}]
    if not splits["train"] or missing:
        raise SonosslError(f"{c.export}: no train image of {', '.join(missing) or 'any class'} after the split by clip "
                           f"({len(new)} tasks imported); expected every labelled class in train: label more clips or "
                           "lower --valid / --test")
    folder = _claim(c, overwrite)
    for r in new:
        dst = folder / r["image_path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r["_src"], dst)
    for s in SPLITS:
        atomic_write_csv(folder / f"{s}.csv", splits[s], ("image_path", "class"))
    atomic_write_csv(folder / LEDGER, ledger + [{k: r[k] for k in LEDGER_COLUMNS} for r in rows], LEDGER_COLUMNS)
    write_marker(folder, COMMAND)
    return {"out": folder, "round": rnd, "counts": dict(Counter(r["status"] for r in rows)),
            "splits": {s: len(v) for s, v in splits.items()}}
