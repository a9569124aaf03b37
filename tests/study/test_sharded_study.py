"""A study whose ingestion is split in parts (``--ingest-shards N``): locally the parts run in turn,
on a cluster as one job array; either way the pretraining reads ``data/<variant>/`` as one store
equal to one ingest of everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import slurm_on_path, write_study

from sonossl.cli import main
from sonossl.data.framestore import FrameStore, part_name
from sonossl.config import IngestConfig
from sonossl.data.ingest import ingest


def _study(tmp_path: Path, study_data: Path, *flags: str) -> Path:
    study = write_study(tmp_path / "s.yaml", study_data, inits=("pretrained",), protocols=("linear",), fractions=(100,),
                        seeds=(0,))
    out = tmp_path / "o"
    assert main(["study", str(study), "--out", str(out), "--ingest-shards", "3", *flags]) == 0
    return out


def _assert_one_store(parts: Path, study_data: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in parts.glob("*.h5")) == [part_name(i, 3) for i in range(3)]
    key = study_data / "ids.key"  # the study's pseudonym key (tests/helpers.py write_study): the same ids
    one = FrameStore(ingest(IngestConfig(sources=[study_data / "videos"], out=tmp_path / "one.h5", frame_skip=2,
                                         size=32, val_fraction=0.2, salt_file=key), progress=False).store)
    got = FrameStore(parts)
    assert [(v.key, v.group_id, v.split, v.n_frames) for v in got.videos] == \
        [(v.key, v.group_id, v.split, v.n_frames) for v in one.videos]


def test_local_study_ingests_in_parts_and_pretrains_on_them(tmp_path, study_data, capsys):
    out = _study(tmp_path, study_data)
    _assert_one_store(out / "data" / "all", study_data, tmp_path)
    assert "3 runs done now" in capsys.readouterr().out
    assert (out / "pretrain").is_dir() and list((out / "pretrain").rglob("backbone.pt"))


@pytest.mark.slow  # a job per part, then the pretraining and evaluation jobs: minutes on 2 busy cores
@pytest.mark.timeout(900)
def test_cluster_study_ingests_as_a_job_array(tmp_path, study_data, capsys):
    out = _study(tmp_path, study_data, "--launcher", "submitit-local", "--workers", "2")
    _assert_one_store(out / "data" / "all", study_data, tmp_path)
    jobs = list((out / "submitit").glob("*_submitted.pkl"))
    assert len(jobs) == 3 + 2  # the three parts' jobs, then the pretraining and the evaluation


def test_the_array_a_cluster_gets(tmp_path, monkeypatch):
    """The sbatch script submitit writes for the study's array of three parts, 2 at a time."""
    import submitit

    from sonossl.launch import executor
    from sonossl.study.runner import study_job_shape

    slurm_on_path(tmp_path, monkeypatch)
    shape = study_job_shape({"timeout_min": 60, "gpus": 0, "cpus": 4, "mem": "16G", "partition": "cpu"}, workers=2)
    ex = executor(tmp_path / "submitit", "slurm", shape)
    params = {k: v for k, v in ex._executor.parameters.items()}
    script = submitit.slurm.slurm._make_sbatch_string(command="python -m job", folder=tmp_path / "submitit",
                                                      map_count=3, **params)
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=16G", "#SBATCH --partition=cpu", "#SBATCH --time=60"):
        assert line in script, line
    assert "--gpus-per-node" not in script
