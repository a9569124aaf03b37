"""How close is the pre-flight memory estimate to a real step's peak?

For each (backbone, batch) the child process measures the estimate (``methods/memcheck.py``),
then runs 2 real pretraining steps and reads its peak resident memory (``VmHWM``). The step's
own memory is the peak less the resident memory before the run's model was built (imports,
the frame store's handle). The estimate should be at or above it, not far above.

    python benchmarks/memory_estimate.py --frames FRAMES.h5 [--runs resnet18:256 resnet18:512] [--json F]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_json  # noqa: E402

CHILD = r"""
import json, sys
from pathlib import Path
def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
frames, out, backbone, batch, precision = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
from sonossl.api import pretrain_config
from sonossl.data.framestore import FrameStore
from sonossl.methods.memcheck import measure
from sonossl.methods.train import build_model, run_pretrain
cfg = pretrain_config(preset="cpu", method="barlowtwins", frames=frames, out=out, backbone=backbone, batch_size=batch,
                      max_steps=2, epochs=100, precision=precision, image_size=FrameStore(frames).frame_size,
                      num_workers=0, logger="none")
base = status("VmRSS")
est = measure(build_model(cfg, FrameStore(frames)))
run_pretrain(cfg, progress=False)
print(json.dumps({"estimate_bytes": est.at(batch), "model_bytes": est.model_bytes, "per_sample_bytes": est.per_sample_bytes,
                  "fixed_bytes": est.fixed_bytes, "peak_bytes": status("VmHWM"), "base_bytes": base}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", required=True, help="a frame store (its size is the image size)")
    ap.add_argument("--runs", nargs="+", default=["resnet18:256", "resnet18:512"], help="BACKBONE:BATCH pairs")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    for spec in a.runs:
        backbone, batch = spec.split(":")
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([sys.executable, "-c", CHILD, a.frames, str(Path(tmp) / "run"), backbone, batch, a.precision],
                               capture_output=True, text=True, check=True)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        step = r["peak_bytes"] - r["base_bytes"]
        row = {"backbone": backbone, "batch": int(batch), "estimate_gib": round(r["estimate_bytes"] / 2**30, 2),
               "measured_step_gib": round(step / 2**30, 2), "estimate_over_measured": round(r["estimate_bytes"] / step, 2)}
        print(row, flush=True)
        rows.append(row)
    write_json(a.json, {"figure": "memory_estimate", "machine": machine(), "precision": a.precision, "rows": rows})


if __name__ == "__main__":
    main()
