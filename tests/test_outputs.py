import pytest

from sonossl.errors import SonosslError
from sonossl.outputs import claim_output_dir


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    claim_output_dir(out)
    (out / "done.txt").write_text("finished work")
    with pytest.raises(SonosslError, match="exists and is not empty; pass --resume to continue it or --overwrite"):
        claim_output_dir(out)
    claim_output_dir(out, resume=True)
    assert (out / "done.txt").read_text() == "finished work"
    with pytest.raises(SonosslError, match="not empty; pass --overwrite to replace it$"):
        claim_output_dir(out, resume=True, can_resume=False)
    claim_output_dir(out, overwrite=True)
    assert list(out.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(SonosslError, match="not a folder"):
        claim_output_dir(tmp_path / "file", overwrite=True)
