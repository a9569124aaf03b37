"""The study's records: one result file per finished unit, folded by the launcher into ``study.db``.

Who writes what, and why:

- **A job** (a local worker process, or a SLURM job on another node) that finishes a unit writes
  one file, ``DIR/records/done/<key>.json`` (:class:`UnitRecords`): to a temporary name in the
  same folder, fsync, then a hard link to the final name (a rename where the file system has no
  hard links) and an fsync of the folder. Creating a name is atomic on local disks and on
  network file systems (NFS, Lustre, GPFS) alike, and the link fails if the name exists, so
  **the first record of a key wins** even when a unit somehow ran twice. A failed attempt writes
  ``DIR/records/failed/<key>.json`` the same way (a later one replaces it). A job never opens
  the database.
- **A unit is complete once its result file exists**, even if the launcher died before it
  could fold it: ``--resume`` folds every file first and then skips the unit.
- **The launcher** (the one ``sonossl study`` process) folds those files into ``DIR/study.db``
  (:class:`ResultsStore`) as outcomes arrive and at every start. Folding is idempotent
  (``INSERT OR IGNORE``: the first record of a key wins; a success clears a recorded failure),
  so folding a file twice, or folding after a crash mid-fold, changes nothing.

Journal mode: SQLite's rollback journal (``journal_mode=DELETE``, ``synchronous=FULL``), not
WAL. WAL is only safe when every process using the database is on one host: its index is
shared memory mapped from the ``-shm`` file, which a network file system does not share between
nodes, and the study folder is on such a file system on a cluster. With one writer (the
launcher) WAL would buy no concurrency anyway; the rollback journal needs only the file system's
locks, which matter only for readers such as a user's ``sqlite3 study.db`` while it runs. A
database left in WAL mode by an older sonossl is switched back on open.

A disk that fills while recording raises :class:`~sonossl.diskspace.DiskFullError`: the
result file's temporary is removed (the unit then simply runs again on ``--resume``), and a
fold that cannot commit rolls back, leaving ``study.db`` as it was and every file in place.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sonossl.diskspace import room_for

SCHEMA = """
CREATE TABLE IF NOT EXISTS done (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    row TEXT NOT NULL,
    wall_s REAL NOT NULL,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failed (
    key TEXT PRIMARY KEY,
    message TEXT NOT NULL,
    finished REAL NOT NULL
);
"""
RECORDS = "records"


def _name(key: str) -> str:
    """A unit key (``eval/planes/random/linear/100/0``) as one file name, reversibly."""
    return quote(key, safe="") + ".json"


def _key(name: str) -> str:
    return unquote(name[: -len(".json")])


class UnitRecords:
    """``DIR/records/{done,failed}/<key>.json``: what jobs write; safe on a network file system."""

    def __init__(self, study_dir: Path):
        self.root = Path(study_dir) / RECORDS
        self.done_dir, self.failed_dir = self.root / "done", self.root / "failed"

    def is_done(self, key: str) -> bool:
        return (self.done_dir / _name(key)).is_file()

    def done_keys(self) -> set[str]:
        return self._keys(self.done_dir)

    def write_done(self, key: str, kind: str, row: dict[str, Any], wall_s: float) -> bool:
        """Record ``key`` as complete; False (and nothing written) when it already was."""
        record = {"key": key, "kind": kind, "row": row, "wall_s": float(wall_s), "finished": time.time()}
        kept = self._publish(self.done_dir, key, record, replace=False)
        if kept:
            (self.failed_dir / _name(key)).unlink(missing_ok=True)
        return kept

    def write_failed(self, key: str, message: str) -> None:
        self._publish(self.failed_dir, key, {"key": key, "message": message, "finished": time.time()}, replace=True)

    def read(self, folder: Path, skip: set[str] = frozenset()) -> list[dict[str, Any]]:
        """The records in ``folder`` whose keys are not in ``skip``, in file-name order."""
        out = []
        for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
            if name.endswith(".json") and not name.startswith(".") and _key(name) not in skip:
                try:
                    out.append(json.loads((folder / name).read_text()))
                except FileNotFoundError:  # a failure record removed by a success meanwhile
                    continue
        return out

    @staticmethod
    def _keys(folder: Path) -> set[str]:
        if not folder.is_dir():
            return set()
        return {_key(n) for n in os.listdir(folder) if n.endswith(".json") and not n.startswith(".")}

    def _publish(self, folder: Path, key: str, record: dict[str, Any], *, replace: bool) -> bool:
        """Write ``record`` as ``folder/<key>.json``: temporary name, fsync, link (or rename)."""
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / _name(key)
        tmp = folder / f".{_name(key)}.{socket.gethostname()}.{os.getpid()}.tmp"
        data = json.dumps(record, sort_keys=True).encode()
        with room_for(final, need=len(data), tmp=tmp):
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            kept = _link_or_rename(tmp, final, replace=replace)
            _fsync_dir(folder)
        return kept


def _link_or_rename(tmp: Path, final: Path, *, replace: bool) -> bool:
    if replace:
        os.replace(tmp, final)
        return True
    try:
        os.link(tmp, final)  # fails if final exists: the first record stays
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if final.exists():  # no hard links here: check, then rename (a race only between two runs of one unit)
            return False
        os.replace(tmp, final)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some network file systems refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


class ResultsStore:
    """``DIR/study.db``, opened by the launcher only; every method is its own short transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with room_for(self.path):
            self._con = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=DELETE")  # a rollback journal: see the module docstring
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.executescript(SCHEMA)

    def close(self) -> None:
        self._con.close()

    def fold(self, records: UnitRecords) -> int:
        """Fold the result files not yet in the database; returns how many were new."""
        known = self.completed()
        done = records.read(records.done_dir, skip=known)
        failed = records.read(records.failed_dir, skip=known | {r["key"] for r in done})
        if not done and not failed:
            return 0
        with room_for(self.path), self._tx():
            for r in done:
                self._con.execute("INSERT OR IGNORE INTO done VALUES (?, ?, ?, ?, ?)",
                                  (r["key"], r["kind"], json.dumps(r["row"], sort_keys=True), float(r["wall_s"]),
                                   float(r["finished"])))
                self._con.execute("DELETE FROM failed WHERE key = ?", (r["key"],))
            for r in failed:
                self._con.execute("INSERT OR REPLACE INTO failed VALUES (?, ?, ?)",
                                  (r["key"], r["message"], float(r["finished"])))
        return len(done)

    def completed(self) -> set[str]:
        return {k for (k,) in self._con.execute("SELECT key FROM done")}

    def rows(self, kind: str | None = None) -> dict[str, dict[str, Any]]:
        q = "SELECT key, row FROM done" + (" WHERE kind = ?" if kind else "")
        return {k: json.loads(r) for k, r in self._con.execute(q, (kind,) if kind else ())}

    def row(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The result row and wall seconds of the completed unit ``key``; None when it is not."""
        got = self._con.execute("SELECT row, wall_s FROM done WHERE key = ?", (key,)).fetchone()
        return None if got is None else (json.loads(got[0]), float(got[1]))

    def walls(self) -> dict[str, float]:
        """Wall seconds of each completed unit, by key."""
        return dict(self._con.execute("SELECT key, wall_s FROM done"))

    def failures(self) -> dict[str, str]:
        return dict(self._con.execute("SELECT key, message FROM failed"))

    def journal_mode(self) -> str:
        return self._con.execute("PRAGMA journal_mode").fetchone()[0]

    def _tx(self):
        con = self._con

        class _Tx:
            def __enter__(self):
                con.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                try:
                    con.execute("COMMIT" if exc_type is None else "ROLLBACK")
                except sqlite3.Error:  # a COMMIT that failed (a full disk): undo whatever is left of it
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
                return False

        return _Tx()
