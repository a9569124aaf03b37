"""How does ingestion scale with the number of clips, and what does it cost over bare decoding?

N synthetic DICOM clips (``sonossl.data.synthetic.synthesize``) are ingested for N = 8, 16, 32, 64
(``ingest(..., frame_skip=1, workers=1)``: decode, locate the fan, crop, resize, write HDF5), and
the same files are decoded bare (``pydicom.dcmread(f).pixel_array``). Each (method, N, repeat) runs
in a fresh subprocess, so its peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, imports
included) is its own. Printed: medians of ``--repeats`` runs of frames/s and peak RSS in MiB.
Peak RSS should stay flat in N for ingest (frames are written clip by clip); bare decoding here
drops each array before the next file, so it is flat too.

    python benchmarks/ingest_scaling.py [--ns 8 16 32 64] [--repeats 3] [--frames 16] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(method: str, root: Path, n: int) -> None:
    """Runs in the subprocess: time one method on the first n clips, print a JSON line."""
    import resource

    files = sorted((root / "videos").glob("*.dcm"))[:n]
    if len(files) < n:
        raise SystemExit(f"{root}: only {len(files)} clips, {n} needed")
    if method == "ingest":
        from sonossl.config import IngestConfig
        from sonossl.data.ingest import ingest

        out = Path(tempfile.mkdtemp(dir=root)) / "frames.h5"
        t0 = time.perf_counter()
        s = ingest(IngestConfig(sources=files, out=out, frame_skip=1, size=64, val_fraction=0.0, workers=1),
                                progress=False)
        dt = time.perf_counter() - t0
        frames = s.frames_kept
        out.unlink()
        out.with_suffix(".manifest.csv").unlink()
    else:
        import pydicom

        t0 = time.perf_counter()
        frames = 0
        for f in files:
            frames += len(pydicom.dcmread(f).pixel_array)
        dt = time.perf_counter() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"frames": frames, "seconds": dt, "rss_mib": rss_mib}))


def _run(method: str, root: Path, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--root", str(root), "--n", str(n)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=16, help="frames per synthetic clip")
    ap.add_argument("--size", type=int, default=64, help="side of the synthetic fan box in pixels")
    ap.add_argument("--child", choices=["ingest", "pydicom"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.root, args.n)
        return

    from sonossl.data.synthetic import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        summary = synthesize(root, videos=max(args.ns), frames=args.frames, size=args.size,
                             labelled_per_class=(1, 1, 1))  # fmt: skip
        h, w = summary["screen"]
        print(f"synthesised {max(args.ns)} DICOM clips of {args.frames} frames, screen {w}x{h}, "
              f"in {time.perf_counter() - t0:.1f} s; "
              f"medians of {args.repeats} runs, one subprocess each\n")  # fmt: skip
        print(f"{'N':>4} {'frames':>7} | {'ingest fr/s':>11} {'RSS MiB':>8} | {'pydicom fr/s':>12} {'RSS MiB':>8} | "
              f"{'ingest/bare':>11}")  # fmt: skip
        for n in args.ns:
            med = {}
            for method in ("ingest", "pydicom"):
                runs = [_run(method, root, n) for _ in range(args.repeats)]
                med[method] = (
                    runs[0]["frames"],
                    statistics.median(r["frames"] / r["seconds"] for r in runs),
                    statistics.median(r["rss_mib"] for r in runs),
                )
            (frames, fi, ri), (_, fp, rp) = med["ingest"], med["pydicom"]
            print(f"{n:>4} {frames:>7} | {fi:>11.0f} {ri:>8.0f} | {fp:>12.0f} {rp:>8.0f} | {fi / fp:>10.2f}x",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
