"""The study's results store: SQLite in WAL mode, one row per completed unit.

A unit (an ingestion, a pretraining, one downstream training) counts as complete only once
its row is committed here. SQLite's transactions make that atomic across ``kill -9`` and power
loss (``synchronous=FULL``), and its locking lets several worker processes (or SLURM jobs on a
shared file system that honours POSIX locks) record at once. ``INSERT OR IGNORE`` keeps the
first record of a key, so a unit that somehow ran twice is never counted twice.

Failures are recorded too (table ``failed``), so a study can say what went wrong and retry
them on ``--resume``; a later success clears the failure.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

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


class ResultsStore:
    """``DIR/study.db``. Open one per process; every method is its own short transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.executescript(SCHEMA)

    def close(self) -> None:
        self._con.close()

    def record(self, key: str, kind: str, row: dict[str, Any], wall_s: float) -> None:
        with self._tx():
            self._con.execute("INSERT OR IGNORE INTO done VALUES (?, ?, ?, ?, ?)",
                              (key, kind, json.dumps(row, sort_keys=True), float(wall_s), time.time()))
            self._con.execute("DELETE FROM failed WHERE key = ?", (key,))

    def fail(self, key: str, message: str) -> None:
        with self._tx():
            self._con.execute("INSERT OR REPLACE INTO failed VALUES (?, ?, ?)", (key, message, time.time()))

    def completed(self) -> set[str]:
        return {k for (k,) in self._con.execute("SELECT key FROM done")}

    def rows(self, kind: str | None = None) -> dict[str, dict[str, Any]]:
        q = "SELECT key, row FROM done" + (" WHERE kind = ?" if kind else "")
        return {k: json.loads(r) for k, r in self._con.execute(q, (kind,) if kind else ())}

    def walls(self) -> dict[str, float]:
        """Wall seconds of each completed unit, by key."""
        return dict(self._con.execute("SELECT key, wall_s FROM done"))

    def failures(self) -> dict[str, str]:
        return dict(self._con.execute("SELECT key, message FROM failed"))

    def _tx(self):
        con = self._con

        class _Tx:
            def __enter__(self):
                con.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                con.execute("COMMIT" if exc_type is None else "ROLLBACK")
                return False

        return _Tx()
