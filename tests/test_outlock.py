"""One writer per output: an OS lock held for the whole command, the holder named to a second writer."""

import subprocess
import sys
import textwrap

import pytest

from sonossl.errors import SonosslError
from sonossl.outlock import check_apart, lock_file, lock_output, release, releasing


HOLD = textwrap.dedent("""
    import sys, time
    from sonossl.outlock import lock_output
    lock_output(sys.argv[1], "ingest")
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "frames.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SonosslError, match=rf"being written by pid {holder.pid} on .*`sonossl ingest` since"):
            lock_output(out, "ingest")
    finally:
        holder.kill()
        holder.wait()
    lock_output(out, "ingest")  # the kernel dropped the killed holder's lock: no stale lock
    release(out)


def test_locks_are_reentrant_in_a_process_and_released_by_releasing(tmp_path):
    out = tmp_path / "run"
    with releasing():
        lock_output(out, "pretrain")
        lock_output(out, "pretrain")  # the same process again: fine
        assert lock_file(out).is_file()
    assert not lock_file(out).exists()  # nothing left beside the output
    probe = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", ""), str(out)], capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr  # released at the end of the block


def test_check_apart_skips_named_inits(tmp_path):
    check_apart(tmp_path / "out", [("--init", "random"), ("--init", "imagenet"), ("--labels", None)])
    with pytest.raises(SonosslError, match="contains the input --frames"):
        check_apart(tmp_path, [("--frames", tmp_path / "d" / "frames.h5")])



def test_an_inner_block_releases_only_its_own_locks(tmp_path):
    """A study holds its folder's lock while each unit's block releases the unit's lock as it ends
    (the runner's run_unit), so a study of thousands of units does not run out of descriptors."""
    from sonossl.outlock import _HELD, _key

    study, unit = _key(tmp_path / "study"), _key(tmp_path / "study" / "evals" / "a")
    with releasing():
        lock_output(study, "study")
        with releasing():
            lock_output(unit, "evaluate")
            assert study in _HELD and unit in _HELD
        assert study in _HELD and unit not in _HELD
    assert study not in _HELD and unit not in _HELD


def test_one_output_reached_through_a_symlinked_folder_has_one_lock(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert lock_file(tmp_path / "alias" / "frames.h5") == lock_file(tmp_path / "real" / "frames.h5")
