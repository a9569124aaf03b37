"""The study runner: dependency order, resume after kill -9 with nothing repeated or lost,
identical results however it was interrupted, and the SLURM path through submitit's local executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import yaml
from helpers import write_study

from sonossl.cli import main
from sonossl.study.store import UnitRecords


def _study(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sonossl", "study", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def _done(db: Path) -> set[str]:
    """The completed units of the study folder holding ``db``: their result files (the launcher
    may not have folded the last ones into the database when it was killed)."""
    return UnitRecords(db.parent).done_keys()


def test_sigkill_midway_then_resume_repeats_nothing_and_matches_an_uninterrupted_run(tmp_path, study_data):
    # ingest, BT, 2 inits x 2 protocols x 2 seeds
    study = write_study(tmp_path / "s.yaml", study_data, fractions=(100,))
    clean, killed = tmp_path / "clean", tmp_path / "killed"

    p = _study([str(study), "--out", str(clean), "--workers", "2"])
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out

    p = _study([str(study), "--out", str(killed), "--workers", "2"])
    deadline = time.time() + 400
    while len({k for k in _done(killed / "study.db") if k.startswith("eval/")}) < 3:
        assert p.poll() is None, p.communicate()[0]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # the runner and its workers, as a node failure would
    p.wait()
    before = _done(killed / "study.db")
    assert 0 < len(before) < 10
    run_files = {f: f.stat().st_mtime_ns for f in (killed / "evals").rglob("run.json")}

    p = _study([str(study), "--out", str(killed), "--workers", "2", "--resume"])
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    assert f"{len(before)} already complete" in out
    after = _done(killed / "study.db")
    assert len(after) == 1 + 1 + 8 and before <= after  # ingest, pretrain, 8 evaluations: none lost
    # runs that had finished before the kill were not run again
    finished_before = {f for f in run_files if _unit_of(killed, f) in before}
    assert all(f.stat().st_mtime_ns == run_files[f] for f in finished_before)
    assert (killed / "results.csv").read_bytes() == (clean / "results.csv").read_bytes()
    assert (killed / "report.html").is_file()


def _unit_of(study: Path, run_json: Path) -> str:
    folder = run_json.parent.parent.relative_to(study / "evals")  # <dataset>/<init>/<protocol>-<fraction>-s<seed>
    dataset, init, leaf = folder.parts
    protocol, fraction, seed = leaf.rsplit("-", 2)
    return f"eval/{dataset}/{init}/{protocol}/{fraction}/{seed[1:]}"


def test_results_columns_and_grid_order(tmp_path, study_data, capsys):
    study = write_study(tmp_path / "s.yaml", study_data, protocols=("linear",), fractions=(100,), seeds=(0,))
    assert main(["study", str(study), "--out", str(tmp_path / "o")]) == 0
    lines = (tmp_path / "o" / "results.csv").read_text().splitlines()
    assert lines[0] == ("init,protocol,fraction,seed,n_train,macro_f1,balanced_accuracy,accuracy,"
                        "dataset,pretrain,method,pairs,data_variant,selection,classes_missed,chosen")
    assert [ln.split(",")[0] for ln in lines[1:]] == ["random", "barlowtwins-augment-all"]
    assert lines[2].endswith(",planes,barlowtwins-augment-all,barlowtwins,augment,all,random,0,")  # no select_on_valid: nothing chosen
    assert "ETA" in capsys.readouterr().out
    # ingest.size (32) is the size the pretraining and every evaluation ran at, above the cpu preset
    sizes = [yaml.safe_load(p.read_text())["image_size"] for p in sorted((tmp_path / "o").glob("*/**/config.yaml"))]
    assert len(sizes) == 3 and set(sizes) == {32}
    assert h5py.File(tmp_path / "o" / "data" / "all.h5", "r").attrs["frame_size"] == 32
    # a finished study is not overwritten silently; resuming it runs nothing
    assert main(["study", str(study), "--out", str(tmp_path / "o")]) == 2
    assert main(["study", str(study), "--out", str(tmp_path / "o"), "--resume"]) == 0
    assert "0 runs done now, 4 were already complete" in capsys.readouterr().out


def test_changed_settings_of_completed_runs_are_refused_on_resume(tmp_path, study_data, capsys):
    study = write_study(tmp_path / "s.yaml", study_data, inits=("random",), protocols=("linear",), fractions=(100,),
                        seeds=(0,))
    assert main(["study", str(study), "--out", str(tmp_path / "o")]) == 0
    spec = yaml.safe_load(study.read_text())
    spec["evaluate"]["options"]["linear_epochs"] = 7
    study.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert main(["study", str(study), "--out", str(tmp_path / "o"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "settings of completed run eval/planes/random/linear/100/0 changed" in err and "\n" not in err


def test_a_failing_run_is_recorded_and_the_rest_go_on(tmp_path, study_data, capsys):
    study = write_study(tmp_path / "s.yaml", study_data, inits=("random",), protocols=("linear",), fractions=(100,),
                        seeds=(0,))
    spec = yaml.safe_load(study.read_text())
    bad = tmp_path / "bad_labels"
    bad.mkdir()
    for split in ("train", "valid", "test"):
        (bad / f"{split}.csv").write_text("path,label\nx.png,4CH\n")
    spec["data"]["labelled"]["broken"] = str(bad)
    study.write_text(yaml.safe_dump(spec))
    assert main(["study", str(study), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "failed: eval/broken/random/linear/100/0" in captured.err and "image_path" in captured.err
    rows = (tmp_path / "o" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("random,linear,100,0")


@pytest.mark.timeout(600)
def test_slurm_path_through_submitit_local_executor(tmp_path, study_data, capsys):
    study = write_study(tmp_path / "s.yaml", study_data, protocols=("linear",), fractions=(100,), seeds=(0,))
    assert main(["study", str(study), "--out", str(tmp_path / "o"), "--launcher", "submitit-local",
                 "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 runs done now" in out
    assert len((tmp_path / "o" / "results.csv").read_text().splitlines()) == 3
    logs = list((tmp_path / "o" / "submitit").glob("*_result.pkl")) + list((tmp_path / "o" / "submitit").glob("*.out"))
    assert logs, "submitit wrote no job files"


def test_workers_take_dependencies_first_then_long_runs_then_short_ones():
    from sonossl.study.grid import EvalUnit, IngestUnit, PretrainUnit
    from sonossl.study.runner import _longest_first

    ingest = IngestUnit("all", {})
    pre = PretrainUnit("bt", "barlowtwins", "augment", "all", {})
    lin = [EvalUnit("d", init, "linear", 10.0, s) for init in ("random", "bt") for s in (0, 1)]
    ft = [EvalUnit("d", init, "finetune", 10.0, s) for init in ("random", "bt") for s in (0, 1)]
    plan_order = [lin[0], ft[0], lin[1], ft[1], ingest, pre, lin[2], lin[3], ft[2], ft[3]]
    assert sorted(plan_order, key=_longest_first) == [ingest, pre, ft[0], ft[1], ft[2], ft[3], *lin]


def test_best_of_two_draws_is_chosen_on_valid_and_evaluated_alone(tmp_path, study_data, capsys):
    import json

    study = write_study(tmp_path / "s.yaml", study_data, protocols=("linear",), fractions=(100,), seeds=(0,))
    spec = yaml.safe_load(study.read_text())
    spec["pretrain"].update(seeds=[0, 1], keep="best")
    study.write_text(yaml.safe_dump(spec))
    out = tmp_path / "o"
    assert main(["study", str(study), "--out", str(out), "--workers", "2"]) == 0
    record = json.loads((out / "pretrain" / "barlowtwins-augment-all-best" / "selection.json").read_text())
    scores = {name: d["valid_balanced_accuracy"] for name, d in record["draws"].items()}
    assert set(scores) == {"barlowtwins-augment-all-s0", "barlowtwins-augment-all-s1"}
    assert record["chosen"] == max(scores, key=scores.get)
    best, chosen = out / "pretrain" / "barlowtwins-augment-all-best", out / "pretrain" / record["chosen"]
    for name in ("backbone.pt", "config.yaml", "summary.json"):
        assert (best / name).read_bytes() == (chosen / name).read_bytes()
    assert [ln.split(",")[0] for ln in (out / "results.csv").read_text().splitlines()[1:]] == [
        "random", "barlowtwins-augment-all-best"]
    # the choice's score is the protocol's own: the chosen draw's probe at 100 % scores the same on valid
    run = json.loads(next((out / "evals" / "planes" / "barlowtwins-augment-all-best").rglob("run.json")).read_text())
    assert run["best_val_balanced_accuracy"] == pytest.approx(record["draws"][record["chosen"]]["per_seed"][0], abs=1e-6)
    assert main(["study", str(study), "--out", str(out), "--resume"]) == 0
    assert "0 runs done now, 6 were already complete" in capsys.readouterr().out
