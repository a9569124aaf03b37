import pytest

from sonossl.errors import SonosslError
from sonossl.outlock import MARKER, release
from sonossl.outputs import claim_output_dir


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    claim_output_dir(out, command="pretrain")
    (out / "done.txt").write_text("finished work")
    with pytest.raises(SonosslError, match="exists and is not empty; pass --resume to continue it or --overwrite"):
        claim_output_dir(out, command="pretrain")
    claim_output_dir(out, command="pretrain", resume=True)
    assert (out / "done.txt").read_text() == "finished work"
    with pytest.raises(SonosslError, match="not empty; pass --overwrite to replace it$"):
        claim_output_dir(out, command="pretrain", resume=True, can_resume=False)
    claim_output_dir(out, command="pretrain", overwrite=True)
    assert [p.name for p in out.iterdir()] == [MARKER]  # emptied, and marked again
    (tmp_path / "file").write_text("x")
    with pytest.raises(SonosslError, match="not a folder"):
        claim_output_dir(tmp_path / "file", command="pretrain", overwrite=True)


def test_overwrite_removes_only_what_the_same_command_wrote(tmp_path):
    mine = tmp_path / "photos"  # the user's folder: no marker
    mine.mkdir()
    (mine / "holiday.png").write_bytes(b"png")
    with pytest.raises(SonosslError, match="--overwrite refused: it holds no .sonossl-output marker"):
        claim_output_dir(mine, command="evaluate", overwrite=True)
    assert (mine / "holiday.png").read_bytes() == b"png"
    run = claim_output_dir(tmp_path / "run", command="pretrain")
    (run / "backbone.pt").write_bytes(b"w")
    release(run)
    with pytest.raises(SonosslError, match="written by `sonossl pretrain`"):
        claim_output_dir(run, command="evaluate", overwrite=True)
    with pytest.raises(SonosslError, match="--resume refused: the folder was written by `sonossl pretrain`"):
        claim_output_dir(run, command="evaluate", resume=True)
    assert (run / "backbone.pt").exists()


@pytest.mark.parametrize("where", ["is", "sits inside", "contains"])
def test_an_output_never_touches_an_input(tmp_path, where):
    labels = tmp_path / "labels"
    (labels / "sub").mkdir(parents=True)
    (labels / "train.csv").write_text("image_path,class\n")
    out = {"is": labels, "sits inside": labels / "sub", "contains": tmp_path}[where]
    for overwrite in (False, True):
        with pytest.raises(SonosslError, match=f"the output {where} the input --labels"):
            claim_output_dir(out, command="evaluate", inputs=[("--labels", labels)], overwrite=overwrite)
    assert (labels / "train.csv").is_file()
