"""Sub-commands ``predict``, ``export`` and ``embed``, registered on the CLI's sub-parsers.

``sonossl/cli.py`` calls ``add_predict_parser(sub)``, ``add_export_parser(sub)`` and
``add_embed_parser(sub)``; each handler returns the exit status, and bad input raises
:class:`SonosslError` (one line on stderr, exit status 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sonossl.data.sector import CROPS

MODEL_HELP = "evaluate run folder holding model.pt, or a model.pt file"


def cmd_predict(a: argparse.Namespace) -> int:
    from sonossl.infer.predict import predict

    s = predict(a.model, [Path(p) for p in a.inputs], a.out, smooth=a.smooth, batch_size=a.batch_size, device=a.device,
                frame_skip=a.frame_skip, crop=a.crop, overwrite=a.overwrite, progress=not a.quiet)
    print(f"{s.sources} inputs predicted ({s.frames} frames) -> {s.csv}"
          + (f"; timelines and best frames of {s.clips} clips in {s.clips_dir}" if s.clips else "")
          + (f"; {len(s.errors)} unreadable, listed in {s.errors_csv}" if s.errors else ""))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from sonossl.infer.export import companion_paths, export

    out = export(a.model, a.format, a.out, overwrite=a.overwrite)
    print(f"exported {a.format}: {out} (model card {companion_paths(out)[0].name})")
    return 0


def cmd_embed(a: argparse.Namespace) -> int:
    from sonossl.infer.embed import embed

    r = embed(a.model, a.labels, a.out, method=a.method, split=a.split, k=a.k, seed=a.seed, device=a.device,
              overwrite=a.overwrite)
    print(f"{r['method']} map of {r['n_plotted']} images: {r['png']}")
    return 0


def add_predict_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("predict", help="plane of every frame of new scans; timeline and best frame per plane")
    s.add_argument("inputs", nargs="+", help="images (PNG/JPEG/DICOM), clips (DICOM cine, MP4, AVI) or folders")
    s.add_argument("--model", required=True, type=Path, help=MODEL_HELP)
    s.add_argument("--out", type=Path, default=Path("predictions.csv"),
                   help="CSV of per-frame predictions; OUT_STEM_clips/ and OUT_STEM_errors.csv go beside it")
    s.add_argument("--smooth", type=int, default=0, help="moving average over K frames for timelines and best frames")
    s.add_argument("--frame-skip", type=int, default=1, help="predict every K-th frame")
    s.add_argument("--crop", choices=CROPS, default="auto", help="scan region crop, as in ingest")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_predict)
    return s


def add_export_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("export", help="the classifier as torchvision weights, TorchScript or ONNX, with a model card")
    s.add_argument("--model", required=True, type=Path, help=MODEL_HELP)
    s.add_argument("--format", required=True, help="torchvision, torchscript or onnx")
    s.add_argument("--out", type=Path, help="file to write (default RUN/exports/<backbone>.<ext>)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_export)
    return s


def add_embed_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("embed", help="2-D map of backbone features coloured by class, and kNN accuracy")
    s.add_argument("--model", required=True, type=Path, help=MODEL_HELP)
    s.add_argument("--labels", required=True, type=Path, help="folder with train.csv, valid.csv, test.csv")
    s.add_argument("--out", required=True, type=Path, help="PNG to write")
    s.add_argument("--method", default="tsne", help="tsne, umap (needs umap-learn) or auto")
    s.add_argument("--split", default="all", help="images to map: all or test")
    s.add_argument("--k", type=int, default=5, help="neighbours of the kNN accuracy")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_embed)
    return s
