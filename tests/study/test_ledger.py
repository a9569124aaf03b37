"""The study ledger: a study's record that outlives its folder. Resume from it with the folder
gone, rerun exactly what a change touches, name a record edited by hand, rebuild the report from it."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from helpers import write_study

from sonossl import api
from sonossl.cli import main
from sonossl.errors import SonosslError


def _run(study, out, ledger, resume=False):
    lines: list[str] = []
    summary = api.run_study(study, out, ledger=ledger, resume=resume, log=lines.append)
    ran = {m.group(1) for m in map(re.compile(r"\] (\S+) ok in").search, lines) if m}
    return summary, ran, lines


def _records(ledger):
    return {p.relative_to(ledger).with_suffix("").as_posix(): json.loads(p.read_text())
            for p in ledger.rglob("*.json") if p.name != "study.json"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, study_data):
    """A tiny study (ingest, BarlowTwins, linear probe of random and pretrained at 100 %, seed 0)
    run once with a ledger."""
    root = tmp_path_factory.mktemp("ledger")
    study = write_study(root / "s.yaml", study_data, protocols=("linear",), fractions=(100,), seeds=(0,))
    summary, ran, _ = _run(study, root / "dir", root / "ledger")
    assert summary.ran == 4 and not summary.failed
    return root, study


def _copy_ledger(finished, tmp_path):
    root, study = finished
    shutil.copytree(root / "ledger", tmp_path / "ledger")
    return study, tmp_path / "ledger", (root / "dir" / "results.csv").read_bytes()


def test_the_ledger_holds_small_portable_records(finished):
    root, _ = finished
    records = _records(root / "ledger")
    assert sorted(records) == ["eval/planes/barlowtwins-augment-all/linear/100/0", "eval/planes/random/linear/100/0",
                               "ingest/all", "pretrain/barlowtwins-augment-all"]
    for path in (root / "ledger").rglob("*"):  # no weights, frames or paths of this machine
        assert path.suffix in (".json", ".csv", ".html", "") and path.stat().st_size < 2_000_000
        if path.suffix == ".json":
            assert str(root) not in path.read_text() and str(root.resolve()) not in path.read_text()
    pre = records["pretrain/barlowtwins-augment-all"]
    assert pre["summary"]["steps"] >= 2 and pre["stats"]["epochs"] and len(pre["backbone_sha256"]) == 64
    assert set(pre["fingerprints"]["data"]) == {"unlabelled", "key"} and pre["fingerprints"]["sonossl"]
    ev = records["eval/planes/random/linear/100/0"]
    assert set(ev["fingerprints"]["data"]) == {"labelled:planes"}  # random initialisation reads no unlabelled data
    assert ev["run"]["protocol"] == "linear" and ev["run"]["init"] == "random"
    pretrained = records["eval/planes/barlowtwins-augment-all/linear/100/0"]["run"]
    assert pretrained["n_train"] > 0 and "init_source" not in pretrained  # a path of this machine: left out
    assert records["ingest/all"]["store"]["clips"] == 6
    text = (root / "ledger" / "pretrain" / "barlowtwins-augment-all.json").read_text()
    assert text == json.dumps(pre, sort_keys=True, indent=1) + "\n"  # sorted keys: small diffs


def test_resume_with_the_study_folder_gone_runs_nothing(finished, tmp_path, capsys):
    study, ledger, results = _copy_ledger(finished, tmp_path)
    summary, ran, lines = _run(study, tmp_path / "gone", ledger, resume=True)
    assert (summary.ran, summary.already_done, summary.from_ledger, ran) == (0, 4, 4, set())
    assert any("4 units, 4 already complete (4 recorded in the ledger only), 0 to run" in ln for ln in lines)
    assert (tmp_path / "gone" / "results.csv").read_bytes() == results
    # the report from the ledger alone
    assert main(["report", str(ledger)]) == 0
    assert (ledger / "results.csv").read_bytes() == results
    assert all((ledger / f).is_file() for f in ("summary.csv", "differences.csv", "report.html"))
    # the pretraining's health block, kept in its record as written, is named by the ledger's report too
    from sonossl.models.init import flagged
    from sonossl.study.ledger import pretraining_summary

    pre = _records(ledger)["pretrain/barlowtwins-augment-all"]
    assert "health" in pre
    assert ("was flagged" in (ledger / "report.html").read_text()) == bool(flagged(pretraining_summary(pre)))


def test_a_record_edited_by_hand_is_named_and_run_again(finished, tmp_path, capsys):
    study, ledger, results = _copy_ledger(finished, tmp_path)
    path = ledger / "eval" / "planes" / "random" / "linear" / "100" / "0.json"
    record = json.loads(path.read_text())
    record["row"]["macro_f1"] = 0.99
    path.write_text(json.dumps(record))
    assert main(["report", str(ledger)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: its content does not match its checksum (edited by hand?); not used, left out of the report" in out
    assert "0.99" not in (ledger / "results.csv").read_text()
    summary, ran, lines = _run(study, tmp_path / "gone", ledger, resume=True)
    assert ran == {"eval/planes/random/linear/100/0"}
    assert f"[ledger] {path}: its content does not match its checksum (edited by hand?); not used, " \
           "eval/planes/random/linear/100/0 runs again" in lines
    assert (tmp_path / "gone" / "results.csv").read_bytes() == results  # the same run again, and recorded again
    assert json.loads(path.read_text())["row"]["macro_f1"] != 0.99


def test_a_changed_option_reruns_exactly_the_units_it_touches(finished, tmp_path):
    study, ledger, _ = _copy_ledger(finished, tmp_path)
    before = _records(ledger)
    spec = yaml.safe_load(study.read_text())
    spec["pretrain"]["options"]["max_steps"] = 1
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec))
    summary, ran, lines = _run(changed, tmp_path / "gone", ledger, resume=True)
    # the pretraining and its evaluation; the ingestion it reads, whose store went with the folder
    assert ran == {"pretrain/barlowtwins-augment-all", "eval/planes/barlowtwins-augment-all/linear/100/0", "ingest/all"}
    assert sum("made with other settings" in ln for ln in lines) == 2
    assert any("ingest/all: recorded, but" in ln and "is gone" in ln for ln in lines)
    after = _records(ledger)
    assert after["eval/planes/random/linear/100/0"] == before["eval/planes/random/linear/100/0"]
    assert after["ingest/all"]["store"] == before["ingest/all"]["store"]  # the same store again
    assert after["pretrain/barlowtwins-augment-all"]["summary"]["steps"] == 1


def test_the_ledger_stays_out_of_the_study_folder(finished, tmp_path):
    _, study = finished
    with pytest.raises(SonosslError, match="inside the study folder"):
        api.run_study(study, tmp_path / "d", ledger=tmp_path / "d" / "ledger")
    assert not (tmp_path / "d").exists()


def test_a_pretraining_whose_backbone_is_gone_runs_again_to_the_same_weights(finished, tmp_path):
    study, ledger, _ = _copy_ledger(finished, tmp_path)
    before = _records(ledger)
    spec = yaml.safe_load(study.read_text())
    spec["evaluate"]["seeds"] = [0, 1]  # new evaluations of the pretraining, whose backbone went with the folder
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump(spec))
    summary, ran, _ = _run(more, tmp_path / "gone", ledger, resume=True)
    assert ran == {"ingest/all", "pretrain/barlowtwins-augment-all", "eval/planes/random/linear/100/1",
                   "eval/planes/barlowtwins-augment-all/linear/100/1"}
    after = _records(ledger)
    key = "pretrain/barlowtwins-augment-all"
    assert after[key]["backbone_sha256"] == before[key]["backbone_sha256"]  # the same data, seed, weights
    assert after["ingest/all"]["store"] == before["ingest/all"]["store"]
    assert len((tmp_path / "gone" / "results.csv").read_text().splitlines()) == 1 + 4


def test_a_key_lost_with_the_study_folder_is_not_replaced_silently(finished, tmp_path):
    study, ledger, _ = _copy_ledger(finished, tmp_path)
    spec = yaml.safe_load(study.read_text())
    del spec["ingest"]["salt_file"]  # the study's default key, DIR/data/sonossl.key: gone with DIR
    lost = tmp_path / "lost.yaml"
    lost.write_text(yaml.safe_dump(spec))
    with pytest.raises(SonosslError, match=r"sonossl\.key: the pseudonym key of the ledger's records \(fingerprint "
                                           r"[0-9a-f]{16}\) is gone, and ingest/all must run again"):
        api.run_study(lost, tmp_path / "gone", ledger=ledger, resume=True, log=lambda _: None)


def test_the_same_data_in_another_folder_gives_the_same_study_and_ledger(finished, study_data, tmp_path):
    """Item 2 of the study's reproducibility: the data copied elsewhere (another depth, other folder
    names), the study run there from scratch: the same results and, but for wall times, the same ledger."""
    root, _ = finished
    moved = tmp_path / "mnt" / "elsewhere" / "synth"
    shutil.copytree(study_data, moved)
    study = write_study(tmp_path / "s.yaml", moved, protocols=("linear",), fractions=(100,), seeds=(0,))
    summary, ran, _ = _run(study, tmp_path / "dir", tmp_path / "ledger")
    assert summary.ran == 4
    assert (tmp_path / "dir" / "results.csv").read_bytes() == (root / "dir" / "results.csv").read_bytes()

    def timeless(value):  # what a clock measured, and the checksum over it
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items()
                    if k not in ("wall_s", "wall_time_s", "time_s", "images_per_s", "checksum")}
        return [timeless(v) for v in value] if isinstance(value, list) else value

    assert timeless(_records(tmp_path / "ledger")) == timeless(_records(root / "ledger"))


def test_a_study_folder_resumes_with_its_data_at_another_mount_point(finished, study_data, tmp_path):
    root, _ = finished
    shutil.copytree(root / "dir", tmp_path / "dir")
    moved = tmp_path / "mnt" / "synth"
    shutil.copytree(study_data, moved)  # the data (and its key file) mounted elsewhere
    study = write_study(tmp_path / "s.yaml", moved, protocols=("linear",), fractions=(100,), seeds=(0,))
    summary = api.run_study(study, tmp_path / "dir", resume=True, log=lambda _: None)
    assert (summary.ran, summary.already_done) == (0, 4)
