"""Every GPU path, checked in one command on a lent device (at most 8 minutes on one GPU).

    bash benchmarks/gpu_check.sh [--out benchmarks/results/gpu_check.json] [--dry-run]

Steps, each in its own process with its own time limit; a failure is recorded and the next step
runs; the exit status is non-zero when any step failed:

1. ``gpu-tests``: the suite's ``gpu``-marked tests (bf16 losses finite, device views drawn as
   on the CPU, a model.pt written on the device loads on the CPU);
2. ``methods``: every method, 20 pretraining steps of the paper preset at its resolution
   (256 px, ResNet-50, bf16, device views), batch 128;
3. ``evaluate``: linear probe and fine-tuning from one of those backbones, tiny;
4. ``throughput``: ``gpu_throughput.py``, ResNet-50 / 256 px bf16, views on the loader and on
   the device, compile off and on: SSL images/s against supervised images/s (target >= 0.85);
5. ``ddp``: 20 steps of DDP with NCCL over every visible GPU, when there are at least 2.

``--dry-run`` runs the same steps on the CPU at tiny sizes (32 px, ResNet-18, 2 steps); the
suite runs it (tests/test_gpu_check.py). The JSON holds the machine, each step's status, time
and figures (images/s of each method, the throughput rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import machine, write_json  # noqa: E402

LIMITS_S = {"gpu-tests": 60, "methods": 150, "evaluate": 45, "throughput": 150, "ddp": 60}  # 465 s in all
# the dry run's limits catch a hang, not a slow CPU: ~4x the idle 2-core times (methods 23.5 s, evaluate 9 s,
# throughput 8 s, gpu-tests 14 s); the methods step hit 60 s with 4 other processes on the 2 cores
DRY_LIMITS_S = {"gpu-tests": 60, "methods": 120, "evaluate": 45, "throughput": 45, "ddp": 30}


def sizes(dry: bool) -> dict:
    if dry:
        return {"image_size": 32, "synth_size": 48, "backbone": "resnet18", "preset": "cpu", "steps": 2, "batch": 8,
                "accelerator": "cpu"}
    return {"image_size": 256, "synth_size": 256, "backbone": "resnet50", "preset": "paper", "steps": 20, "batch": 128,
            "accelerator": "gpu"}


# ------------------------------------------------------------------------------ the steps
def step_methods(work: Path, dry: bool) -> dict:
    from sonossl import api
    from sonossl.methods import METHODS

    s = sizes(dry)
    src, store = work / "src", work / "frames.h5"
    if not store.exists():
        api.synth(src, videos=8, frames=8, size=s["synth_size"], labelled=[6, 4, 4])
        api.ingest([src / "videos"], store, size=s["image_size"], progress=False)
    figures, failed = {}, []
    for method in METHODS:
        t0 = time.time()
        try:
            opts = {"projector": [64, 64]} if dry and method in ("barlowtwins", "vicreg") else {}
            if dry and method == "dino":
                opts = {"out_dim": 1024, "local_crops": 2}
            run = api.pretrain(preset=s["preset"], method=method, frames=store, out=work / "runs" / method,
                               backbone=s["backbone"], batch_size=s["batch"], max_steps=s["steps"], epochs=1000,
                               accelerator=s["accelerator"], warmup_epochs=0, log_every_n_steps=1, progress=False,
                               overwrite=(work / "runs" / method).exists(),
                               **({"method_options": opts} if opts else {}))
            stats = [json.loads(x) for x in (Path(run) / "stats.jsonl").read_text().splitlines()]
            rates = [r["images_per_s"] for r in stats if r["kind"] == "step"][1:]  # the first interval holds the warm-up
            figures[method] = {"ok": True, "seconds": round(time.time() - t0, 1),
                               "images_per_s": round(sorted(rates)[len(rates) // 2], 1) if rates else None,
                               "precision": json.loads((Path(run) / "summary.json").read_text())["precision"]}
        except Exception as exc:  # noqa: BLE001 -- every method is tried; the failure is the figure
            figures[method] = {"ok": False, "seconds": round(time.time() - t0, 1), "error": str(exc)[-500:]}
            failed.append(method)
    return {"ok": not failed, "methods": figures, **({"failed": failed} if failed else {})}


def step_evaluate(work: Path, dry: bool) -> dict:
    from sonossl import api
    from sonossl.downstream.evaluate import read_results

    s = sizes(dry)
    results = api.evaluate(labels=work / "src" / "labelled", init=work / "runs" / "barlowtwins",
                           protocol=["linear", "finetune"], fractions=[100], seeds=[0], epochs=2, linear_epochs=5,
                           batch_size=8, image_size=s["image_size"], out=work / "eval", accelerator=s["accelerator"],
                           overwrite=(work / "eval").exists(), progress=None)
    rows = read_results(Path(results))
    return {"ok": len(rows) == 2, "rows": [{k: r[k] for k in ("protocol", "macro_f1")} for r in rows]}


STEPS = {"methods": step_methods, "evaluate": step_evaluate}


def command(name: str, work: Path, dry: bool) -> list[str] | None:
    """The process a step runs in (None: skipped)."""
    py = sys.executable
    if name == "gpu-tests":
        return [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")]
    if name in STEPS:
        return [py, str(Path(__file__).resolve()), "--step", name, "--work", str(work)] + (["--dry-run"] if dry else [])
    if name == "throughput":
        out = work / "throughput.json"
        return [py, str(HERE / "gpu_throughput.py"), "--json", str(out)] + (["--device", "cpu", "--tiny", "--methods", "barlowtwins"] if dry else [])
    if name == "ddp":
        import torch

        n = 0 if dry else torch.cuda.device_count()
        if n < 2:
            return None
        return [py, "-m", "sonossl", "pretrain", "--preset", "paper", "--frames", str(work / "frames.h5"),
                "--out", str(work / "ddp"), "--devices", str(n), "--batch-size", str(128 * n), "--max-steps", "20",
                "--warmup-epochs", "0", "--overwrite"]
    raise ValueError(name)


def run_step(name: str, work: Path, dry: bool) -> dict:
    cmd = command(name, work, dry)
    if cmd is None:
        return {"ok": True, "skipped": "fewer than 2 GPUs" if name == "ddp" else "not applicable"}
    limit = (DRY_LIMITS_S if dry else LIMITS_S)[name]
    env = {**os.environ, "SONOSSL_TEST_DEVICE": "cpu" if dry else "cuda", "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit, env=env)
        rec = {"ok": p.returncode == 0, "returncode": p.returncode}
        tail = (p.stdout + p.stderr).strip().splitlines()[-12:]
    except subprocess.TimeoutExpired as exc:
        rec = {"ok": False, "timeout_s": limit}
        tail = ((exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")).splitlines()[-12:]
    rec["seconds"] = round(time.time() - t0, 1)
    if name in STEPS and (work / f"{name}.json").is_file():
        rec.update({k: v for k, v in json.loads((work / f"{name}.json").read_text()).items() if k != "ok"})
        rec["ok"] = rec["ok"] and json.loads((work / f"{name}.json").read_text())["ok"]
    if name == "throughput" and (work / "throughput.json").is_file():
        rec["rows"] = json.loads((work / "throughput.json").read_text()).get("rows", [])
    if not rec["ok"]:
        rec["tail"] = tail
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes (default: off)")
    ap.add_argument("--out", type=Path, default=None, help="JSON of figures (default: benchmarks/results/gpu_check.json, "
                    "or WORK/gpu_check.json with --dry-run)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for data and runs (default: a new temp folder)")
    ap.add_argument("--step", choices=sorted(STEPS), default=None, help=argparse.SUPPRESS)  # one step, in its process
    a = ap.parse_args()
    if a.work is None:
        import tempfile

        a.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    a.work.mkdir(parents=True, exist_ok=True)
    if a.step:
        rec = STEPS[a.step](a.work, a.dry_run)
        (a.work / f"{a.step}.json").write_text(json.dumps(rec, indent=1))
        return 0 if rec["ok"] else 1
    out = a.out or (a.work / "gpu_check.json" if a.dry_run else HERE / "results" / "gpu_check.json")
    t0, steps = time.time(), {}
    for name in ("gpu-tests", "methods", "evaluate", "throughput", "ddp"):
        steps[name] = run_step(name, a.work, a.dry_run)
        print(f"[gpu_check] {name}: {'ok' if steps[name]['ok'] else 'FAILED'} "
              f"({steps[name].get('seconds', 0)} s{', ' + steps[name]['skipped'] if 'skipped' in steps[name] else ''})",
              flush=True)
    ok = all(s["ok"] for s in steps.values())
    write_json(out, {"figure": "gpu_check", "dry_run": a.dry_run, "machine": machine(), "ok": ok,
                     "wall_s": round(time.time() - t0, 1), "steps": steps})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
