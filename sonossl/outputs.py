"""The one rule for output folders: never overwrite finished work silently.

An existing non-empty folder is refused unless the user says ``resume`` (continue it: the
caller skips what is done) or ``overwrite`` (remove it first).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sonossl.errors import SonosslError


def claim_output_dir(out: Path, *, resume: bool = False, overwrite: bool = False, can_resume: bool = True) -> Path:
    """Make ``out`` ready to write into; returns it. ``can_resume=False`` for commands that
    cannot continue a previous output (their refusal then only offers ``--overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SonosslError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not (resume and can_resume):
            hint = "pass --resume to continue it or --overwrite to replace it" if can_resume else "pass --overwrite to replace it"
            raise SonosslError(f"{out}: output folder exists and is not empty; {hint}")
    out.mkdir(parents=True, exist_ok=True)
    return out
