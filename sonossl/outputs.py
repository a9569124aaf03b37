"""Output rules: never overwrite finished work silently, and never leave a half-written file.

An existing non-empty folder is refused unless the user says ``resume`` (continue it: the
caller skips what is done) or ``overwrite`` (remove it first, only when sonossl wrote it); every
output is apart from the command's inputs and has one writer at a time (:mod:`sonossl.outlock`).

Every file sonossl writes as a whole goes through :func:`atomic_write`: written to ``NAME.tmp``
beside its target, flushed to disk, then renamed into place (``os.replace``, atomic on one file
system), so a crash leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import csv
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from sonossl.errors import SonosslError
from sonossl.outlock import MARKER, check_apart, check_overwrite, lock_output, read_marker, release, write_marker


def claim_output_dir(out: Path, *, command: str, inputs: Iterable[tuple[str, Path | str | None]] = (),
                     resume: bool = False, overwrite: bool = False, can_resume: bool = True) -> Path:
    """Make ``out`` ready for ``sonossl command`` to write into; returns it.

    In order, before anything is touched: ``out`` must be apart from every one of ``inputs``
    ((what, path) pairs, :func:`~sonossl.outlock.check_apart`); this process takes ``out``'s
    writer lock (:func:`~sonossl.outlock.lock_output`), held until the command ends; an
    existing non-empty ``out`` is refused unless ``resume`` (continue it) or ``overwrite``
    (replace it, only when an earlier ``sonossl command`` wrote it: its marker says so). The
    folder then gets that marker. ``can_resume=False`` for commands that cannot continue a
    previous output (their refusal then only offers ``--overwrite``)."""
    out = Path(out)
    check_apart(out, inputs)
    if out.exists() and not out.is_dir():
        raise SonosslError(f"{out}: exists and is not a folder")
    lock_output(out, command)
    try:
        if out.exists() and any(e.name != MARKER for e in out.iterdir()):
            made_by = read_marker(out)
            if overwrite:
                check_overwrite(out, command)
                shutil.rmtree(out)
            elif not (resume and can_resume):
                hint = "pass --resume to continue it or --overwrite to replace it" if can_resume else "pass --overwrite to replace it"
                raise SonosslError(f"{out}: output folder exists and is not empty; {hint}")
            elif made_by not in (None, command):
                raise SonosslError(f"{out}: --resume refused: the folder was written by `sonossl {made_by}`, not "
                                   f"`sonossl {command}`; choose another output")
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, command)
    except BaseException:
        release(out)
        raise
    return out


@contextmanager
def atomic_write(path: Path | str, mode: str = "w", need: int | None = None, **open_kwargs: Any) -> Iterator[IO]:
    """Open ``path.tmp`` for writing; on a clean exit flush, fsync and rename it to ``path``.
    On an exception the temporary file is removed and ``path`` is left as it was; a write that
    runs out of space raises :class:`sonossl.diskspace.DiskFullError` naming ``path`` and the
    ``need`` bytes (when known), in one line."""
    from sonossl.diskspace import room_for

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with room_for(path, need=need, tmp=tmp), open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(text)


def atomic_write_csv(path: Path | str, rows: list[dict], columns: list[str] | tuple[str, ...]) -> None:
    """``rows`` (dicts; keys outside ``columns`` ignored) as a CSV with a header, atomically."""
    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (checkpoints, ``backbone.pt``, ``model.pt``)."""
    import torch

    from sonossl.diskspace import nbytes

    with atomic_write(path, "wb", need=nbytes(obj)) as fh:
        torch.save(obj, fh)
