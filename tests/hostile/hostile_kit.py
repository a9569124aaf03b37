"""Builders shared by the hostile-input, crash, safety, PHI and determinism tests (fixtures in conftest.py).

``sonossl``: the real command line in this process (``sonossl.cli.main``), returning the exit
status and stderr's lines; ``refused(...)``: the contract for bad input (status 2, exactly one
line on stderr naming the file or key and what was expected, no traceback).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sonossl.cli import main

torch.set_num_threads(1)  # same reduction order in every test (bit-exact comparisons), and fair on 2 cores

TINY_PRETRAIN = {"backbone": "resnet18", "image_size": 32, "batch_size": 4, "num_workers": 0,
                 "log_every_n_steps": 1, "method_options": {"projector": [32, 32]}}


class Cli:
    """``main(argv)`` with stderr captured: ``(status, stderr lines)``."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *argv) -> tuple[int, list[str]]:
        self.capsys.readouterr()
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
        err = self.capsys.readouterr().err
        return rc, [line for line in err.splitlines() if line.strip()]

    def refused(self, *argv, names: tuple[str, ...] = (), untouched: tuple[Path, ...] = ()) -> str:
        """Run ``argv`` and check the bad-input contract; returns the one error line.

        names: fragments the line must hold (the file or key, what was expected);
        untouched: output paths that must not exist afterwards (nothing half-written).
        """
        rc, err = self(*argv)
        assert rc == 2, (rc, err)
        assert len(err) == 1, err
        line = err[0]
        assert "Traceback" not in line and line.startswith("sonossl "), line
        for n in names:
            assert str(n) in line, (n, line)
        for p in untouched:
            assert not Path(p).exists(), f"{p} left behind after a refusal"
        return line


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def tiny_store(path: Path, clips: int = 3, frames: int = 6, seed: int = 0, split: str = "train") -> Path:
    """A frame store of random grey clips (uint8 [frames, 40, 48])."""
    from sonossl.data.framestore import FrameStoreWriter

    rng = np.random.default_rng(seed)
    with FrameStoreWriter(path) as w:
        for v in range(clips):
            w.add_video(f"v{v}", rng.integers(0, 256, (frames, 40, 48), dtype=np.uint8), video_id=f"v{v}",
                        group_id=f"g{v}", split=split)
    return path


def dicom_sources(scans, folder: Path, clips: int, frames: int, per_patient: int) -> Path:
    """``clips`` DICOM files ``folder/cNN.dcm`` of ``frames`` frames, ``per_patient`` per fake patient."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        scans.dicom(folder / f"c{i:02d}.dcm", scans.clip(frames, seed=i), patient_id=f"P{i // per_patient}")
    return folder
