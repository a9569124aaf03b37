"""The study on a cluster's terms, through submitit's local executor: jobs record their units in
result files and never open ``study.db`` (here they cannot: an audit hook refuses it in every
job process), and a launcher killed while jobs are still finishing loses nothing on resume.

Both are marked slow: each starts a dozen submitit job processes (minutes on 2 busy cores)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_study

from sonossl.study.store import UnitRecords


REPO = Path(__file__).resolve().parents[2]
# Loaded by every Python process started with this folder on PYTHONPATH; acts only in submitit's
# job processes (they carry SUBMITIT_EXECUTOR), where the study's database is out of bounds.
SITECUSTOMIZE = '''
import os, sys
if os.environ.get("SUBMITIT_EXECUTOR"):
    open(os.path.join(os.environ["HOOK_MARKS"], f"job-{os.getpid()}"), "w").close()

    def _refuse(event, args):
        if event == "sqlite3.connect" or (event == "open" and "study.db" in str(args[0])):
            raise PermissionError(f"study.db belongs to the launcher; a job tried {event} {args[0]}")

    sys.addaudithook(_refuse)
'''


def _env(tmp: Path) -> dict[str, str]:
    hook, marks = tmp / "hook", tmp / "marks"
    hook.mkdir(exist_ok=True)
    marks.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # one torch thread everywhere: the launcher, its worker processes and submitit's jobs compute alike
    return {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "HOOK_MARKS": str(marks), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _study(tmp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sonossl", "study", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, env=_env(tmp), cwd=tmp)


def _finish(p: subprocess.Popen, timeout: float = 900) -> str:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, study_data) -> tuple[Path, Path]:
    """The study file (ingest, BarlowTwins, 2 inits x linear x 3 seeds) and a local run of it."""
    tmp = tmp_path_factory.mktemp("local_run")
    study = write_study(tmp / "s.yaml", study_data, protocols=("linear",), fractions=(100,), seeds=(0, 1, 2))
    _finish(_study(tmp, str(study), "--out", str(tmp / "local")))
    return study, tmp / "local"


def _db_keys(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {k for (k,) in con.execute("SELECT key FROM done")}
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_jobs_that_cannot_open_the_database_complete_the_study(tmp_path, local_run):
    study, local = local_run
    out = tmp_path / "cluster"
    log = _finish(_study(tmp_path, str(study), "--out", str(out), "--launcher", "submitit-local", "--workers", "2"))
    assert "8 runs done now, 0 were already complete, 0 failed" in log
    assert len(list((tmp_path / "marks").iterdir())) >= 8  # the hook was live in every job (and controller)
    assert (out / "results.csv").read_bytes() == (local / "results.csv").read_bytes()
    assert (out / "runs.csv").read_bytes() == (local / "runs.csv").read_bytes()
    assert UnitRecords(out).done_keys() == _db_keys(out / "study.db") and len(_db_keys(out / "study.db")) == 8
    assert not (out / "study.db-wal").exists() and not (out / "study.db-shm").exists()


def _jobs(out: Path) -> tuple[set[str], set[str]]:
    """Ids of the submitit jobs submitted so far, and of those that have finished."""
    folder = out / "submitit"
    ids = lambda pattern: {p.name.split("_")[0] for p in folder.glob(pattern)} if folder.is_dir() else set()  # noqa: E731
    return ids("*_submitted.pkl"), ids("*_result.pkl")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_launcher_killed_while_jobs_finish_then_resume_counts_each_recorded_unit_once(tmp_path, local_run):
    study, local = local_run
    out = tmp_path / "killed"
    args = [str(study), "--out", str(out), "--launcher", "submitit-local", "--workers", "2"]
    p = _study(tmp_path, *args)
    deadline = time.time() + 600
    while True:  # an evaluation recorded, and jobs still running
        assert p.poll() is None, p.communicate()[0]
        assert time.time() < deadline
        submitted, finished = _jobs(out)
        evals = {k for k in UnitRecords(out).done_keys() if k.startswith("eval/")}
        if evals and submitted - finished:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)  # the launcher only: its jobs run on, as on a cluster
    p.communicate()
    while True:  # the jobs finish and record their units with nobody left to fold them
        submitted, finished = _jobs(out)
        if submitted <= finished:
            break
        assert time.time() < deadline
        time.sleep(0.2)
    recorded, folded = UnitRecords(out).done_keys(), _db_keys(out / "study.db")
    assert folded < recorded, "no unit finished after the launcher died"
    n_jobs = len(submitted)
    run_json = _run_json_mtimes(out)

    log = _finish(_study(tmp_path, *args, "--resume"))
    assert f"{len(recorded)} already complete, {8 - len(recorded)} to run" in log
    assert f"{8 - len(recorded)} runs done now, {len(recorded)} were already complete, 0 failed" in log
    submitted, _ = _jobs(out)
    assert len(submitted) - n_jobs == 8 - len(recorded)  # no recorded unit ran again ...
    after = _run_json_mtimes(out)
    assert run_json and all(after[k] == m for k, m in run_json.items()), "a recorded evaluation ran again"
    assert _db_keys(out / "study.db") == UnitRecords(out).done_keys() and len(_db_keys(out / "study.db")) == 8
    assert (out / "results.csv").read_bytes() == (local / "results.csv").read_bytes()


def _run_json_mtimes(out: Path) -> dict[str, int]:
    """Each recorded evaluation's ``run.json`` modification time, by unit key."""
    records = UnitRecords(out)
    return {r["key"]: (out / r["row"]["run_dir"] / "run.json").stat().st_mtime_ns
            for r in records.read(records.done_dir) if "run_dir" in r["row"]}
