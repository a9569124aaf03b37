"""A full disk in the middle of ingest, pretrain, evaluate and a study: exit status 2 and one
line naming the file and the space it needs, no truncated file where a complete one is
expected, and, once space returns, ``--resume`` ends where an uninterrupted run ends.

The disk fills by a file-size limit (``RLIMIT_FSIZE``, as ``ulimit -f``) on the child process,
with SIGXFSZ ignored so that a write past it fails with EFBIG, as one on a full disk fails with
ENOSPC; it needs no mount and no root."""

from __future__ import annotations

import csv
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import make_labelled, write_study
from hostile_kit import TINY_PRETRAIN, dicom_sources, tiny_store, write_yaml

REPO = Path(__file__).resolve().parents[2]
KiB, MiB = 1024, 1024 * 1024


def sonossl_limited(*argv, limit: int | None, cwd: Path) -> tuple[int, list[str]]:
    """``sonossl ARGV`` in a child process whose files may not grow past ``limit`` bytes (None:
    no limit); returns the exit status and stderr's non-empty lines."""
    def apply_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "sonossl", *map(str, argv)], capture_output=True, text=True, env=env,
                       cwd=cwd, preexec_fn=apply_limit if limit else None, timeout=900)
    return p.returncode, [line for line in p.stderr.splitlines() if line.strip()]


def assert_out_of_space(rc: int, err: list[str], command: str, names: str) -> str:
    """Exit status 2 and one line: the file, that the limit was reached, the space it needs."""
    assert rc == 2, (rc, err)
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"sonossl {command}: error: ") and names in line, line
    assert "file size limit reached: it needs " in line and "run the command again" in line, line
    return line


def no_temporaries(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.name.endswith((".tmp", ".writing")) or ".tmp" in p.name]
    assert not left, f"temporary files left behind: {left}"


# ------------------------------------------------------------------------------------- ingest
def test_ingest_on_a_full_disk_stops_cleanly_and_resumes(scans, tmp_path: Path):
    src = dicom_sources(scans, tmp_path / "scans", clips=6, frames=12, per_patient=2)
    args = ["--frame-skip", "1", "--size", "48", "--quiet", "--salt-file", tmp_path / "ids.key"]  # one key: same ids
    ref, out = tmp_path / "ref.h5", tmp_path / "frames.h5"
    assert sonossl_limited("ingest", src, "--out", ref, *args, limit=None, cwd=tmp_path)[0] == 0

    rc, err = sonossl_limited("ingest", src, "--out", out, *args, limit=40 * KiB, cwd=tmp_path)  # segfaulted (139)
    assert_out_of_space(rc, err, "ingest", "frames.h5.partial")
    assert not out.exists()  # the store appears under its name only when complete

    rc, err = sonossl_limited("ingest", src, "--out", out, *args, "--resume", limit=None, cwd=tmp_path)
    assert rc == 0, err
    with h5py.File(ref, "r") as f, h5py.File(out, "r") as g:
        assert sorted(f) == sorted(g) and len(g) == 6
        for k in f:
            assert np.array_equal(f[k][()], g[k][()]), k
            assert dict(f[k].attrs).keys() == dict(g[k].attrs).keys() and f[k].attrs["split"] == g[k].attrs["split"]
    assert not out.with_name(out.name + ".partial").exists()
    no_temporaries(tmp_path)


# ----------------------------------------------------------------------------------- pretrain
@pytest.mark.slow
def test_pretrain_on_a_full_disk_stops_cleanly_and_resumes(tmp_path: Path):
    frames = tiny_store(tmp_path / "frames.h5", clips=3, frames=6)
    cfg = write_yaml(tmp_path / "cfg.yaml", {**TINY_PRETRAIN, "max_steps": 4, "epochs": 1, "seed": 3})
    args = ["pretrain", "--config", cfg, "--frames", frames, "--quiet"]
    assert sonossl_limited(*args, "--out", tmp_path / "straight", limit=None, cwd=tmp_path)[0] == 0

    run = tmp_path / "run"
    rc, err = sonossl_limited(*args, "--out", run, limit=20 * MiB, cwd=tmp_path)  # a checkpoint is ~85 MiB
    line = assert_out_of_space(rc, err, "pretrain", str(run))
    assert "last.ckpt" in line or "backbone.pt" in line, line
    no_temporaries(run)
    assert not (run / "backbone.pt").exists() and not (run / "checkpoints" / "last.ckpt").exists()

    rc, err = sonossl_limited(*args, "--out", run, "--resume", limit=None, cwd=tmp_path)
    assert rc == 0, err
    a = torch.load(tmp_path / "straight" / "backbone.pt", weights_only=True)
    b = torch.load(run / "backbone.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    no_temporaries(run)


# ----------------------------------------------------------------------------------- evaluate
def test_evaluate_on_a_full_disk_stops_cleanly_and_resumes(tmp_path: Path):
    labels = make_labelled(tmp_path / "lab", {"train": 4, "valid": 2, "test": 2})
    argv = ["evaluate", "--labels", labels, "--init", "random", "--backbone", "resnet18", "--protocol", "linear",
            "--fractions", "50,100", "--seeds", "0", "--image-size", "32", "--epochs", "1", "--linear-epochs", "2",
            "--batch-size", "8", "--accelerator", "cpu", "--quiet"]
    assert sonossl_limited(*argv, "--out", tmp_path / "straight", limit=None, cwd=tmp_path)[0] == 0

    out = tmp_path / "eval"
    rc, err = sonossl_limited(*argv, "--out", out, limit=2 * MiB, cwd=tmp_path)  # model.pt is ~43 MiB
    assert_out_of_space(rc, err, "evaluate", "model.pt")
    no_temporaries(out)
    assert not list(out.rglob("model.pt"))
    assert not (out / "results.csv").exists()  # the run that could not save its model is not counted

    rc, err = sonossl_limited(*argv, "--out", out, "--resume", limit=None, cwd=tmp_path)
    assert rc == 0, err
    assert (out / "results.csv").read_bytes() == (tmp_path / "straight" / "results.csv").read_bytes()
    for run in out.iterdir():
        if run.is_dir():
            assert torch.load(run / "model.pt", weights_only=True)["run"]["n_train"] > 0
    no_temporaries(out)


# -------------------------------------------------------------------------------------- study
@pytest.fixture(scope="module")
def study_data(tmp_path_factory) -> Path:
    from sonossl.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("full_disk_study")
    synthesize(root, videos=6, frames=8, size=48, seed=0, labelled_per_class=(10, 3, 4))
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_study_on_a_full_disk_stops_cleanly_and_resumes(tmp_path: Path, study_data: Path):
    # ingest, BarlowTwins, 2 inits x linear x 1 seed; the pretraining's checkpoint meets the limit
    study = write_study(tmp_path / "s.yaml", study_data, protocols=("linear",), fractions=(100,), seeds=(0,))
    assert sonossl_limited("study", study, "--out", tmp_path / "clean", limit=None, cwd=tmp_path)[0] == 0

    out = tmp_path / "study"
    rc, err = sonossl_limited("study", study, "--out", out, limit=20 * MiB, cwd=tmp_path)
    assert_out_of_space(rc, err, "study", str(out / "pretrain" / "barlowtwins-augment-all"))
    no_temporaries(out)
    assert not (out / "pretrain" / "barlowtwins-augment-all" / "backbone.pt").exists()
    assert not (out / "report.html").exists()
    done = {p.name for p in (out / "records" / "done").iterdir()}
    assert "ingest%2Fall.json" in done and not any(n.startswith("pretrain") for n in done)
    if (out / "results.csv").exists():  # what finished before the disk filled, complete
        assert [r["init"] for r in _rows(out / "results.csv")] == ["random"]

    rc, err = sonossl_limited("study", study, "--out", out, "--resume", limit=None, cwd=tmp_path)
    assert rc == 0, err
    assert (out / "results.csv").read_bytes() == (tmp_path / "clean" / "results.csv").read_bytes()
    assert (out / "report.html").is_file()
    no_temporaries(out)


# ------------------------------------------------------------------------------------- report
def test_report_on_a_full_disk_leaves_the_last_complete_report(tmp_path: Path):
    rng = np.random.default_rng(0)
    lines = ["init,protocol,fraction,seed,n_train,macro_f1,balanced_accuracy,accuracy"]
    for init in ("random", "imagenet"):
        for fraction in (10, 100):
            for seed in range(3):
                f1 = rng.uniform(0.2, 0.9)
                lines.append(f"{init},linear,{fraction},{seed},{fraction},{f1:.6f},{f1:.6f},{f1:.6f}")
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    assert sonossl_limited("report", tmp_path, limit=None, cwd=tmp_path)[0] == 0
    complete = (tmp_path / "report.html").read_bytes()
    assert len(complete) > 60 * KiB  # its figures are inside

    (tmp_path / "results.csv").write_text("\n".join(lines[:-1]) + "\n")  # one run fewer: a different report
    rc, err = sonossl_limited("report", tmp_path, limit=60 * KiB, cwd=tmp_path)
    assert_out_of_space(rc, err, "report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").read_bytes() == complete  # the last complete one, not a truncated new one
    no_temporaries(tmp_path)


def test_a_full_disk_during_resume_leaves_the_finished_store_as_it_was(scans, tmp_path: Path):
    src = dicom_sources(scans, tmp_path / "scans", clips=3, frames=12, per_patient=1)
    args = ["--frame-skip", "1", "--size", "48", "--quiet", "--salt-file", tmp_path / "ids.key"]
    out = tmp_path / "frames.h5"
    assert sonossl_limited("ingest", src, "--out", out, *args, limit=None, cwd=tmp_path)[0] == 0
    with h5py.File(out, "r") as f:
        before = {k: f[k][()] for k in f}
    dicom_sources(scans, tmp_path / "more", clips=6, frames=12, per_patient=1)  # 3 new clips beside the old
    for i in range(3, 6):
        (tmp_path / "more" / f"c{i:02d}.dcm").rename(src / f"c{i:02d}.dcm")
    rc, err = sonossl_limited("ingest", src, "--out", out, *args, "--resume", limit=out.stat().st_size + 8 * KiB,
                              cwd=tmp_path)
    assert_out_of_space(rc, err, "ingest", "frames.h5.partial")
    with h5py.File(out, "r") as f:  # the finished store, under its name, as it was
        assert sorted(f) == sorted(before) and all(np.array_equal(f[k][()], v) for k, v in before.items())
    rc, err = sonossl_limited("ingest", src, "--out", out, *args, "--resume", limit=None, cwd=tmp_path)
    assert rc == 0, err
    with h5py.File(out, "r") as f:
        assert len(f) == 6 and all(np.array_equal(f[k][()], v) for k, v in before.items())
