"""The demo is a small study: synth -> the study runner -> the report, and it resumes."""

from __future__ import annotations

import csv
from pathlib import Path

from sonossl.demo import DemoPlan, run_demo

TINY = DemoPlan(videos=6, frames=8, frame_skip=2, pretrain_seconds=60, pretrain_epochs=1, fractions=(100,), seeds=(0,),
                finetune_max_steps=3, finetune_min_steps=1, synth_size=48, image_size=32,
                labelled_per_class=(6, 3, 3), protocols=("linear",))


def test_tiny_demo_runs_the_study_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `make demo` passes a relative --out
    out = Path("demo")
    run_demo(out, plan=TINY)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["init"] for r in rows} >= {"random", "barlowtwins-augment-all"}
    assert all(0 <= float(r["macro_f1"]) <= 1 for r in rows)
    for name in ("summary.csv", "differences.csv", "report.html", "study.db", "pretrain/barlowtwins-augment-all/backbone.pt"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "barlowtwins-augment-all" in printed and "seeds [0]" in printed
    before = (out / "results.csv").read_bytes()
    run_demo(out, plan=TINY, resume=True)
    assert "0 to run" in capsys.readouterr().out
    assert (out / "results.csv").read_bytes() == before
