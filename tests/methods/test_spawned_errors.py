"""Errors raised in a spawned DDP process reach the launcher as text; they still end as one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from sonossl.diskspace import DiskFullError
from sonossl.errors import SonosslError
from sonossl.diskspace import spawned_error


def _raise_disk_full(rank: int, path: str) -> None:
    raise DiskFullError(f"{path}: not written, no space left on device: it needs more room")


def _raise_enospc(rank: int, path: str) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _raise_bug(rank: int, path: str) -> None:
    raise ValueError("a bug, not the user's input")


def _from_child(fn, path: Path) -> BaseException:
    """What torch.multiprocessing hands the parent when a spawned child raises (as Lightning's DDP
    launcher does)."""
    with pytest.raises(Exception) as info:
        mp.start_processes(fn, args=(str(path),), nprocs=1, start_method="spawn")
    return info.value


@pytest.mark.parametrize("fn, kind, says", [
    (_raise_disk_full, DiskFullError, "no space left on device: it needs more room"),
    (_raise_enospc, DiskFullError, "not written, no space left on device"),
])
def test_a_full_disk_in_a_spawned_process_is_one_line_naming_the_file(tmp_path, fn, kind, says):
    target = tmp_path / "checkpoints" / "last.ckpt"
    exc = _from_child(fn, target)
    assert type(exc).__name__ == "ProcessRaisedException"  # the real wrapper, traceback as text
    own = spawned_error(exc, tmp_path)
    assert isinstance(own, kind) and isinstance(own, SonosslError)
    assert str(own).startswith(str(target)) and says in str(own) and "\n" not in str(own)


def test_any_other_error_in_a_spawned_process_stays_a_bug(tmp_path):
    assert spawned_error(_from_child(_raise_bug, tmp_path), tmp_path) is None
