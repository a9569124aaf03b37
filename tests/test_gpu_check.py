"""``benchmarks/gpu_check.sh --dry-run``: the prepared GPU checks, run on the CPU at tiny sizes,
so the command a lent device will run is known to work before the device is lent."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes_every_step_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu_check.json"
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--work", str(tmp_path / "w"),
                        "--out", str(out)], capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["dry_run"] and report["machine"]["cores"]
    steps = report["steps"]
    assert list(steps) == ["gpu-tests", "methods", "evaluate", "throughput", "ddp"]
    assert all(s["ok"] for s in steps.values())
    from sonossl.methods import METHODS

    assert set(steps["methods"]["methods"]) == set(METHODS)
    assert all(m["ok"] and m["images_per_s"] > 0 for m in steps["methods"]["methods"].values())
    assert {r["protocol"] for r in steps["evaluate"]["rows"]} == {"linear", "finetune"}
    assert {r.get("augment") for r in steps["throughput"]["rows"]} == {None, "loader", "device"}
    assert steps["ddp"]["skipped"] == "fewer than 2 GPUs"


def test_a_failing_step_is_recorded_the_others_still_run_and_the_exit_is_non_zero(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "command", lambda name, work, dry: [sys.executable, "-c",
                                                                        "raise SystemExit(3)" if name == "evaluate" else "pass"])
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry-run", "--work", str(tmp_path), "--out", str(tmp_path / "r.json")])
    assert gpu_check.main() == 1
    steps = json.loads((tmp_path / "r.json").read_text())["steps"]
    assert not steps["evaluate"]["ok"] and steps["evaluate"]["returncode"] == 3
    assert all(s["ok"] for k, s in steps.items() if k != "evaluate")
