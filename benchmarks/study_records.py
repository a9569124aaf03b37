"""What recording a study's units costs: result files written by jobs, folded by the launcher.

For ``--units`` units (540: the paper's grid) in a fresh study folder under ``--dir``, each
repeat measures, interleaved:

- **record**: ``UnitRecords.write_done`` per unit (temporary file, fsync, hard link, fsync of
  the folder), against its physical reference in the same run, **fsync-write**: the same bytes
  written to a fresh file and fsync'd (one durable small write; the record adds a link, an
  unlink and a folder fsync);
- **fold as outcomes arrive**: ``ResultsStore.fold`` after every unit, as the launcher does
  (each fold lists the folder and reads only the new file), against **fold once** at the end;
- **sqlite commit**: one ``INSERT`` + ``COMMIT`` with ``synchronous=FULL`` per unit, what the
  database alone costs per recorded unit.

Printed: medians over repeats of the per-unit milliseconds and the ratios record / fsync-write
and fold-as-you-go / sqlite commit (a fold per outcome is one durable commit plus a folder
listing; the commit is its floor). A unit itself runs for minutes, so any of these is noise next to
it; the figures say how much.

    python benchmarks/study_records.py [--units 540] [--repeats 5] [--dir /tmp] [--json F]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from common import machine, median, now, write_json

from sonossl.study.store import ResultsStore, UnitRecords

ROW = {"init": "barlowtwins-augment-all", "protocol": "finetune", "fraction": 12.5, "seed": 3, "n_train": 1234,
       "macro_f1": 0.812345, "balanced_accuracy": 0.81, "accuracy": 0.83, "dataset": "planes",
       "run_dir": "evals/planes/barlowtwins-augment-all/finetune-12.5-s3/barlowtwins_finetune_f12.5_s3",
       "unit_hash": "0123456789abcdef"}


def one_repeat(root: Path, units: int) -> dict[str, float]:
    """Per-unit seconds of each way, in one fresh folder."""
    keys = [f"eval/planes/init{i % 9}/finetune/{i % 6}/{i}" for i in range(units)]
    ref = root / "ref"
    ref.mkdir()
    data = (str(ROW) * 2).encode()[:600]
    t = now()
    for i in range(units):
        with open(ref / f"{i}.json", "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    fsync_write = now() - t

    records, store = UnitRecords(root / "a"), ResultsStore(root / "a.db")
    t, fold_each = now(), 0.0
    for k in keys:
        records.write_done(k, "EvalUnit", ROW, 60.0)
        t_fold = now()
        store.fold(records)
        fold_each += now() - t_fold
    record = now() - t - fold_each
    store.close()

    once = ResultsStore(root / "b.db")
    t = now()
    once.fold(records)
    fold_once = now() - t
    once.close()

    con = sqlite3.connect(root / "c.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE done (key TEXT PRIMARY KEY, row TEXT)")
    t = now()
    for k in keys:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT OR IGNORE INTO done VALUES (?, ?)", (k, str(ROW)))
        con.execute("COMMIT")
    commit = now() - t
    con.close()
    return {"record_ms": 1e3 * record / units, "fsync_write_ms": 1e3 * fsync_write / units,
            "fold_each_ms": 1e3 * fold_each / units, "fold_once_ms": 1e3 * fold_once / units,
            "sqlite_commit_ms": 1e3 * commit / units}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=540, help="units recorded per repeat (default 540)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats; medians are reported (default 5)")
    ap.add_argument("--dir", type=Path, default=None, help="file system to measure on (default: the temp dir)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args()
    runs = []
    for _ in range(a.repeats):
        root = Path(tempfile.mkdtemp(dir=a.dir))
        try:
            runs.append(one_repeat(root, a.units))
        finally:
            shutil.rmtree(root)
    med = {k: median([r[k] for r in runs]) for k in runs[0]}
    ratios = {"record / fsync_write": median([r["record_ms"] / r["fsync_write_ms"] for r in runs]),
              "fold_each / sqlite_commit": median([r["fold_each_ms"] / r["sqlite_commit_ms"] for r in runs])}
    for k, v in med.items():
        print(f"{k:>18}: {v:8.3f} ms per unit")
    for k, v in ratios.items():
        print(f"{k:>24}: {v:6.2f}")
    write_json(a.json, {"machine": machine(), "units": a.units, "repeats": a.repeats, "median_ms_per_unit": med,
                        "median_ratios": ratios, "runs": runs, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})


if __name__ == "__main__":
    main()
