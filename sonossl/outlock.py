"""One writer per output, outputs apart from inputs, and ``--overwrite`` limited to sonossl's own work.

Three rules every command that writes keeps, checked before anything is touched:

1. **Apart.** An output may not be, contain, or sit inside one of the command's inputs
   (:func:`check_apart`). ``sonossl evaluate --labels L --out L`` is refused, with or without
   ``--overwrite``.
2. **One writer.** An output is locked for the whole command by an OS lock (``fcntl.flock``) on
   a lock file beside it, ``.NAME.lock`` (:func:`lock_output`). A second process that wants the
   same output stops at once with exit status 2, naming the holder (host, pid, command, start
   time, as the holder wrote them into the lock file). The kernel drops the lock when the holder
   exits, however it exits, so a killed run leaves no stale lock (only its small lock file,
   reused by the next writer); a command that ends removes its lock file. ``flock`` is reliable on local disks and on NFSv4 and Lustre
   with their default mount options; on a shared file system mounted with ``local_lock`` or
   ``nolock`` it only excludes writers on the same machine. Readers (``info``, ``report``)
   take no lock.
3. **Overwrite only what sonossl wrote.** A folder a command creates gets a marker file,
   ``.sonossl-output``, naming the command. ``--overwrite`` deletes a non-empty folder only when
   it carries the marker of the same command; any other folder is refused (it may be the
   user's data). A frame store file is replaced only when it is a sonossl frame store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterable, Iterator

from sonossl.errors import SonosslError

MARKER = ".sonossl-output"
_HELD: dict[Path, int] = {}  # resolved output -> fd of its lock file, for this process


def _key(path: Path) -> Path:
    """One name per output however it is spelt (relative, through a symlinked folder): the lock's identity."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    try:
        return p.parent.resolve() / p.name
    except (OSError, RuntimeError):  # a symlink loop on the way: the path as spelt
        return p


def _resolved(path: Path) -> Path:
    try:
        return _key(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the path as spelt
        return _key(path)


def check_apart(out: Path, inputs: Iterable[tuple[str, Path | str | None]]) -> None:
    """Refuse ``out`` when it is, contains or sits inside any of ``inputs`` ((what, path) pairs;
    None or empty paths, e.g. an init given by name, are skipped)."""
    o = _resolved(out)
    for what, p in inputs:
        if p is None or str(p) == "":
            continue
        q = _resolved(Path(p))
        relation = ("is" if o == q else "sits inside" if o.is_relative_to(q) else "contains" if q.is_relative_to(o)
                    else None)
        if relation:
            raise SonosslError(f"{out}: the output {relation} the input {what} {p}; an output never touches an "
                               "input, choose another output")


def lock_file(out: Path) -> Path:
    out = _key(out)
    return out.parent / f".{out.name}.lock"


def lock_output(out: Path, command: str) -> None:
    """Take the writer's lock of ``out`` for this process (held until :func:`release` or exit);
    a second process gets a :class:`SonosslError` naming the holder. Re-entrant in one process."""
    key = _key(out)
    if key in _HELD:
        return
    path = lock_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SonosslError(f"{out}: could not lock {path} ({exc.strerror})") from None
            raise SonosslError(f"{out}: being written by {_holder(holder)}; wait for it to finish or choose another "
                               "output") from None
        try:  # the holder before us may have removed the file as we opened it: lock the file on disk
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise SonosslError(f"{out}: could not lock {path}: it keeps being replaced")
    note = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                       "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, note.encode(), 0)
    _HELD[key] = fd


def _holder(note: str) -> str:
    try:
        h = json.loads(note)
        return f"pid {h['pid']} on {h['host']}, `sonossl {h['command']}` since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def release(out: Path) -> None:
    """Drop this process's lock of ``out`` (if held), removing the lock file while still holding it
    (a process that opened the old file meanwhile sees it is gone and locks the new one)."""
    key = _key(out)
    fd = _HELD.pop(key, None)
    if fd is not None:
        lock_file(key).unlink(missing_ok=True)
        os.close(fd)  # closing the last descriptor drops the flock


@contextlib.contextmanager
def releasing() -> Iterator[None]:
    """Release, on exit, every output lock taken inside the block (the API's commands run in one;
    a long-lived notebook then does not keep finished outputs locked)."""
    before = set(_HELD)
    try:
        yield
    finally:
        for key in [k for k in _HELD if k not in before]:
            release(key)


def read_marker(folder: Path) -> str | None:
    """The command that created ``folder`` (from its marker), or None."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(folder: Path, command: str) -> None:
    path = Path(folder) / MARKER
    if not path.exists():
        path.write_text(json.dumps({"command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")


def check_overwrite(folder: Path, command: str) -> None:
    """Refuse to delete ``folder`` unless sonossl ``command`` created it (its marker says so)."""
    made_by = read_marker(folder)
    if made_by != command:
        why = f"it was written by `sonossl {made_by}`" if made_by else f"it holds no {MARKER} marker, so it was not written by sonossl"
        raise SonosslError(f"{folder}: --overwrite refused: {why}; --overwrite replaces only the output of an earlier "
                           f"`sonossl {command}` (remove the folder yourself, or choose another output)")
