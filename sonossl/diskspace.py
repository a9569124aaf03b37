"""A full disk, a full quota or a file-size limit, met by any writer: one line, nothing truncated.

Every writer of a file that a later step (or ``--resume``) takes for complete writes under
:func:`room_for`: when the write fails because space ran out (``ENOSPC``, ``EDQUOT``) or a
file-size limit was reached (``EFBIG``, e.g. ``ulimit -f``; also h5py's and SQLite's own
wording of those), the temporary file is removed and a :class:`DiskFullError` names the path and
the space it needs. The CLI turns that into one line and exit status 2, like any bad input;
once space is freed, ``--resume`` continues.

:func:`write_atomic` is the plain case: bytes or text to a temporary name in the same folder,
fsync, rename.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sonossl.errors import SonosslError

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# h5py raises RuntimeError (or OSError without errno) quoting HDF5's "errno = 27, error message = ...";
# SQLite says "database or disk is full" (SQLITE_FULL) for ENOSPC and EDQUOT, and only "disk I/O
# error" for EFBIG, which is taken for EFBIG when a file-size limit is set.
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")
RESUME_HINT = "free space (or raise the limit) and run the command again, with --resume where it has one"


class DiskFullError(SonosslError):
    """A write failed for want of space; what was written before is intact."""


def full_errno(exc: BaseException) -> int | None:
    """``ENOSPC``, ``EDQUOT`` or ``EFBIG`` when ``exc`` (or the error it wraps) is a write that
    ran out of room; None for any other error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return exc.errno
        if isinstance(exc, (OSError, RuntimeError)) or type(exc).__module__.startswith("sqlite3"):
            text = str(exc)
            for m in _ERRNO_IN_TEXT.finditer(text):
                if int(m.group(1)) in FULL_ERRNOS:
                    return int(m.group(1))
            if "database or disk is full" in text:
                return errno.ENOSPC
            if "disk I/O error" in text and _file_size_limited():  # SQLite's word for EFBIG
                return errno.EFBIG
        exc = exc.__cause__ or exc.__context__
    return None


def _file_size_limited() -> bool:
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


def nbytes(obj: Any) -> int:
    """Bytes of the arrays and tensors inside ``obj`` (nested dicts, lists, tuples): what saving
    it needs, to within its small metadata."""
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    n = getattr(obj, "nbytes", None)
    return int(n) if isinstance(n, int) else 0


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def full_message(path: Path, code: int, need: int | None, written: int | None, hint: str = RESUME_HINT) -> str:
    """``PATH: not written, <why>: it needs about N, <room>; <hint>`` (one line)."""
    path = Path(path)
    if need:
        needs = f"it needs about {size_text(need)}"
    elif written:
        needs = f"it needs more than the {size_text(written)} written before the failure"
    else:
        needs = "it needs more room"
    if code == errno.EFBIG:
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else size_text(soft)
        why, room = "file size limit reached", f"the limit on one file is {limit} (ulimit -f)"
    else:
        why = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
        room = f"{size_text(_free(path))} free on its file system"
    return f"{path}: not written, {why}: {needs}, {room}; {hint}"


def _free(path: Path) -> int:
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return 0


@contextmanager
def room_for(path: Path, *, need: int | None = None, tmp: Path | None = None,
             hint: str = RESUME_HINT) -> Iterator[None]:
    """Run a write of ``path`` (through ``tmp``, when given); a failure for want of space
    removes ``tmp`` and raises :class:`DiskFullError` naming ``path`` and ``need`` bytes (the
    size of ``tmp`` so far when ``need`` is unknown). Other errors pass through unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        code = full_errno(exc)
        if code is None:
            raise
        written = None
        if tmp is not None:
            tmp = Path(tmp)
            written = tmp.stat().st_size if tmp.is_file() else None
            tmp.unlink(missing_ok=True)
        raise DiskFullError(full_message(path, code, need, written, hint)) from None


def write_atomic(path: Path, data: str | bytes, *, hint: str = RESUME_HINT) -> None:
    """``data`` to ``path`` whole or not at all: a temporary name beside it, fsync, rename."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    with room_for(path, need=len(raw), tmp=tmp, hint=hint):
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


# ---------------------------------------------------------------- errors of spawned processes
_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.*)$")  # "sonossl.diskspace.DiskFullError: message"
_ERRNO = re.compile(r"\[Errno (\d+)\]")
_FILENAME = re.compile(r": '([^']+)'$")


def spawned_error(exc: BaseException, out: Path) -> SonosslError | None:
    """The one-line error for an exception a spawned DDP process raised, which reaches the
    launcher as text (torch's ``ProcessRaisedException``: the child's traceback): a SonosslError
    (a DiskFullError included) keeps its class and message; an ``OSError`` out of space becomes a
    DiskFullError naming its file (else ``out``). None for anything else, which stays a bug."""
    lines = str(exc).strip().splitlines()
    m = _LAST_LINE.match(lines[-1].strip()) if lines else None
    if m is None:
        return None
    name, msg = m.groups()
    ours = {c.__name__: c for c in _subclasses(SonosslError)}
    if name in ours:
        return ours[name](msg)
    code = _ERRNO.search(msg)
    if name in ("OSError", "IOError") and code and int(code.group(1)) in FULL_ERRNOS:
        where = _FILENAME.search(msg)
        return DiskFullError(full_message(Path(where.group(1)) if where else out, int(code.group(1)), None, None))
    return None


def _subclasses(cls: type) -> list[type]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]
