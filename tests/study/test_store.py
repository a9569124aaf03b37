"""The study's records: jobs write result files (first of a key wins), the launcher folds them
into a rollback-journal database, folding is idempotent, a success clears a failure, and a full
disk while recording leaves every record and the database as they were."""

from __future__ import annotations

import multiprocessing as mp
import resource
import signal
import subprocess
import sys
from pathlib import Path

from sonossl.study.store import ResultsStore, UnitRecords


def _writer(study: str, who: int, n: int) -> None:
    records = UnitRecords(Path(study))
    for i in range(n):
        records.write_done(f"eval/{who}/{i}", "EvalUnit", {"who": who, "i": i}, 0.1)
        records.write_done("eval/shared", "EvalUnit", {"who": who}, 0.1)  # every writer records the same key


def test_concurrent_jobs_lose_nothing_and_a_key_is_recorded_once(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 60)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    records = UnitRecords(tmp_path)
    assert len(records.done_keys()) == 3 * 60 + 1
    assert not [p for p in records.done_dir.iterdir() if p.name.endswith(".tmp")]
    first = records.read(records.done_dir)
    shared = [r for r in first if r["key"] == "eval/shared"]
    assert len(shared) == 1  # the first writer's record; the others' links failed and left nothing

    store = ResultsStore(tmp_path / "study.db")
    assert store.fold(records) == 3 * 60 + 1
    assert store.fold(records) == 0  # idempotent
    rows = store.rows()
    assert rows["eval/1/59"] == {"who": 1, "i": 59} and rows["eval/shared"] == shared[0]["row"]
    assert sorted(set(store.walls().values())) == [0.1] and len(store.walls()) == 3 * 60 + 1
    assert store.journal_mode() == "delete"  # a rollback journal: no WAL -shm on a network file system


def test_first_record_wins_and_success_clears_failure(tmp_path):
    records, store = UnitRecords(tmp_path), ResultsStore(tmp_path / "study.db")
    records.write_failed("eval/a", "boom")
    store.fold(records)
    assert store.failures() == {"eval/a": "boom"} and store.completed() == set()
    assert records.write_done("eval/a", "EvalUnit", {"v": 1}, 1.0)
    assert not records.write_done("eval/a", "EvalUnit", {"v": 2}, 1.0)
    assert not (records.failed_dir / "eval%2Fa.json").exists()  # the success removed the failure record
    store.fold(records)
    assert store.rows("EvalUnit") == {"eval/a": {"v": 1}} and store.failures() == {}
    assert store.completed() == {"eval/a"}


def test_the_database_keeps_its_first_record_even_when_the_file_is_replaced(tmp_path):
    records, store = UnitRecords(tmp_path), ResultsStore(tmp_path / "study.db")
    records.write_done("eval/a", "EvalUnit", {"v": 1}, 1.0)
    store.fold(records)
    (records.done_dir / "eval%2Fa.json").unlink()  # a file lost or rewritten later changes nothing folded
    records.write_done("eval/a", "EvalUnit", {"v": 2}, 1.0)
    store.fold(records)
    assert store.rows() == {"eval/a": {"v": 1}}


def test_a_database_left_in_wal_mode_is_switched_to_a_rollback_journal(tmp_path):
    import sqlite3

    con = sqlite3.connect(tmp_path / "study.db")  # as an older sonossl left it
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE done (key TEXT PRIMARY KEY, kind TEXT NOT NULL, row TEXT NOT NULL, "
                "wall_s REAL NOT NULL, finished REAL NOT NULL)")
    con.execute("INSERT INTO done VALUES ('eval/old', 'EvalUnit', '{}', 1.0, 0.0)")
    con.commit()
    con.close()
    store = ResultsStore(tmp_path / "study.db")
    assert store.journal_mode() == "delete" and store.completed() == {"eval/old"}


FOLD_UNDER_LIMIT = """
import sys
from pathlib import Path
from sonossl.diskspace import DiskFullError
from sonossl.study.store import ResultsStore, UnitRecords
store = ResultsStore(Path(sys.argv[1]) / "study.db")
try:
    store.fold(UnitRecords(Path(sys.argv[1])))
except DiskFullError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def test_a_fold_that_meets_a_full_disk_changes_nothing_and_a_later_fold_completes(tmp_path):
    records = UnitRecords(tmp_path)
    store = ResultsStore(tmp_path / "study.db")
    records.write_done("eval/first", "EvalUnit", {"i": -1}, 1.0)
    store.fold(records)
    store.close()
    for i in range(300):  # far more than the limit lets the database grow by
        records.write_done(f"eval/{i}", "EvalUnit", {"i": i, "pad": "x" * 200}, 1.0)
    before = (tmp_path / "study.db").read_bytes()
    p = subprocess.run([sys.executable, "-c", FOLD_UNDER_LIMIT, str(tmp_path)], capture_output=True, text=True,
                       preexec_fn=_file_size_limit(len(before) + 4096), timeout=120)
    assert p.returncode == 2, p.stderr
    [line] = p.stderr.strip().splitlines()
    assert line.startswith(f"{tmp_path / 'study.db'}: not written, file size limit reached") and "run the command again" in line
    assert (tmp_path / "study.db").read_bytes() == before  # rolled back: the database as it was
    assert not (tmp_path / "study.db-journal").exists()
    store = ResultsStore(tmp_path / "study.db")
    assert store.completed() == {"eval/first"}
    assert store.fold(records) == 300 and len(store.completed()) == 301  # space back: every record folds


def test_a_result_file_that_meets_a_full_disk_leaves_no_partial_record(tmp_path):
    code = ("import sys; from pathlib import Path; from sonossl.study.store import UnitRecords\n"
            "UnitRecords(Path(sys.argv[1])).write_done('eval/a', 'EvalUnit', {'pad': 'x' * 100000}, 1.0)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                       preexec_fn=_file_size_limit(20_000), timeout=120)
    assert p.returncode != 0 and "DiskFullError" in p.stderr and "eval%2Fa.json: not written" in p.stderr
    records = UnitRecords(tmp_path)
    assert records.done_keys() == set() and list(records.done_dir.iterdir()) == []
