"""study.yaml validation and expansion: every mistake is one line naming the key, before any run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import write_study

from sonossl.cli import main
from sonossl.errors import SonosslError
from sonossl.study.grid import load_study


def _edit(path: Path, fn) -> Path:
    spec = yaml.safe_load(path.read_text())
    fn(spec)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expansion_counts_and_order(tmp_path, study_data):
    plan = load_study(write_study(tmp_path / "s.yaml", study_data, methods=("barlowtwins", "simclr"), seeds=(0, 1, 2),
                                  fractions=(10, 50, 100)))
    assert [u.key for u in plan.ingests] == ["ingest/all"]
    assert [p.name for p in plan.pretrains] == ["barlowtwins-augment-all", "simclr-augment-all"]
    assert len(plan.evals) == 3 * 2 * 3 * 3  # inits x protocols x fractions x seeds
    assert {u.init for u in plan.evals} == {"random", "barlowtwins-augment-all", "simclr-augment-all"}
    assert plan.evals[-1].deps() == ("pretrain/simclr-augment-all",)
    assert plan.evals[0].deps() == ()
    # seed outside fraction outside init: whatever a study finished before a stop is paired across inits
    assert [(u.protocol, u.seed, u.fraction, u.init) for u in plan.evals[:4]] == [
        ("linear", 0, 10, "random"), ("linear", 0, 10, "barlowtwins-augment-all"), ("linear", 0, 10, "simclr-augment-all"),
        ("linear", 0, 50, "random")]


def test_relative_paths_resolve_against_the_study_file(tmp_path, study_data):
    path = write_study(tmp_path / "s.yaml", study_data)
    _edit(path, lambda s: s["data"].update(labelled={"planes": "lab"}))
    plan = load_study(path)
    assert plan.spec.data.labelled["planes"] == tmp_path / "lab"
    assert plan.missing_paths() == [f"data.labelled.planes: {tmp_path / 'lab'} not found"]


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.update(bogus=1), "unknown key 'bogus'"),
    (lambda s: s["evaluate"].update(fractions=[0, 10]), "fraction 0 outside (0, 100]"),
    (lambda s: s["evaluate"].update(fractions=[150]), "fraction 150 outside (0, 100]"),
    (lambda s: s["evaluate"].update(inits=["random", "moco-augment-all"]), "'moco-augment-all' is neither"),
    (lambda s: s["pretrain"].update(methods=["simclrr"]), "unknown method 'simclrr'"),
    (lambda s: s["pretrain"].update(variants=["half"]), "'half' is not declared under variants"),
    (lambda s: s["pretrain"]["options"].update(batch_sise=8), "unknown key 'batch_sise'"),
    (lambda s: s["pretrain"]["options"].update(batch_size=1), "batch_size"),
    (lambda s: s["pretrain"]["options"].update(augment={"view1": {"gamma_p": 2}}), "augment.view1.gamma_p"),
    (lambda s: s["evaluate"]["options"].update(lr=-1), "lr"),
    (lambda s: s["evaluate"]["options"].update(select_on_valid={"epoch": [1, 2]}), "'epoch' cannot be chosen on valid"),
    (lambda s: s["evaluate"].update(datasets=["other"]), "'other' is not declared under data.labelled"),
    (lambda s: s["variants"]["all"].update(frame_skip=0), "frame_skip"),
])
def test_bad_study_is_one_line_naming_the_key(tmp_path, study_data, edit, expected):
    path = _edit(write_study(tmp_path / "s.yaml", study_data), edit)
    with pytest.raises(SonosslError) as exc:
        load_study(path)
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_cli_refuses_a_missing_dataset_before_any_run(tmp_path, study_data, capsys):
    path = _edit(write_study(tmp_path / "s.yaml", study_data), lambda s: s["data"].update(labelled={"planes": "nope"}))
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.labelled.planes" in err[0] and "not found" in err[0]
    assert not (tmp_path / "out").exists()


def test_paper_preset_lists_at_least_500_evaluations(capsys):
    assert main(["study", "--preset", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "540 evaluations" in out and "9 inits x (linear: 6 fractions x 5 seeds + finetune: 6 fractions x 5 seeds)" in out
    plan = load_study(preset="paper")
    assert len(plan.evals) >= 500 and len(plan.pretrains) == 7


def test_ingest_size_is_the_size_of_every_pretraining_and_evaluation_above_the_preset(tmp_path, study_data):
    """The cpu preset used to set image_size 64 and win over ``ingest.size``: a 128-px study then
    pretrained at 64 px and evaluated at 128 px without a word."""
    from sonossl.config import EvaluateConfig, PretrainConfig, build_config

    path = _edit(write_study(tmp_path / "s.yaml", study_data, methods=("barlowtwins", "dino")),
                 lambda s: s["ingest"].update(size=96))
    plan = load_study(path)
    assert [build_config(PretrainConfig, p.config).image_size for p in plan.pretrains] == [96, 96]
    assert {build_config(EvaluateConfig, u.config).image_size for u in plan.evals} == {96}
    explicit = _edit(path, lambda s: s["pretrain"]["options"].update(image_size=64))
    assert {p.config["image_size"] for p in load_study(explicit).pretrains} == {64}  # an option still wins


@pytest.mark.parametrize("method, edit, names", [
    ("ae", lambda s: s["pretrain"].update(pairs=["temporal"]), ("pairs", "temporal", "ae")),
    ("dino", lambda s: s["ingest"].update(size=16), ("image_size", "16", "dino")),
])
def test_a_method_refusal_stops_the_study_before_any_run(tmp_path, study_data, capsys, method, edit, names):
    path = _edit(write_study(tmp_path / "s.yaml", study_data, methods=(method,)), edit)
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in names), err
    assert not (tmp_path / "out").exists()


def test_evaluations_point_at_their_pretraining_unit(tmp_path, study_data):
    plan = load_study(write_study(tmp_path / "s.yaml", study_data, methods=("barlowtwins", "simclr")))
    for u in plan.evals:
        assert (u.pretrain is None) == (u.init in ("random", "imagenet"))
        if u.pretrain is not None:
            assert u.pretrain in plan.pretrains and u.pretrain.name == u.init


def test_the_selection_axis_coexists_with_per_protocol_grids(tmp_path, study_data):
    path = _edit(write_study(tmp_path / "s.yaml", study_data, fractions=(10, 50, 100)), lambda s: s["evaluate"].update(
        selection=["random", "typiclust", "random"], per_protocol={"finetune": {"fractions": [100], "seeds": [0]}}))
    plan = load_study(path)
    assert plan.spec.evaluate.selection == ["random", "typiclust"]
    assert len(plan.evals) == 2 * 2 * (3 * 2 + 1 * 1)  # inits x selections x (linear 3 fractions x 2 seeds + finetune 1)
    random_draw = [u for u in plan.evals if u.selection == "random"]
    chosen = [u for u in plan.evals if u.selection == "typiclust"]
    # the random draw: keys, folders and options as without the axis
    assert all("@" not in u.key and "selection" not in u.config for u in random_draw)
    # a strategy: its own keys and folders, one ladder for both protocols, the same pretraining unit
    assert {u.key for u in chosen} == {u.key.replace(f"/{u.init}/", f"/{u.init}@typiclust/") for u in random_draw}
    assert all(u.config["selection_fractions"] == [10, 50, 100] for u in chosen)
    assert {(u.protocol, u.fraction) for u in chosen if u.protocol == "finetune"} == {("finetune", 100)}
    pre = [u for u in chosen if u.init != "random"]
    assert pre and all(u.deps() == (u.pretrain.key,) == ("pretrain/barlowtwins-augment-all",) for u in pre)
    for edit, expected in [(lambda s: s["evaluate"].update(selection=["typiclust", "coreset"]), "evaluate.selection"),
                           (lambda s: s["evaluate"]["options"].update(selection="kcenter"),
                            "evaluate.options.selection: set by the study grid"),
                           (lambda s: s["evaluate"].update(per_protocol={"linear": {"options": {"selection_fractions": [5]}}}),
                            "evaluate.per_protocol.linear.options.selection_fractions")]:
        with pytest.raises(SonosslError) as exc:
            load_study(_edit(write_study(tmp_path / "bad.yaml", study_data), edit))
        assert expected in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_pretraining_seeds_repeat_each_pretraining_under_its_own_name(tmp_path, study_data):
    path = _edit(write_study(tmp_path / "s.yaml", study_data, seeds=(0,)), lambda s: s["pretrain"].update(seeds=[3, 7]))
    plan = load_study(path)
    assert [(p.name, p.config["seed"]) for p in plan.pretrains] == [("barlowtwins-augment-all-s3", 3),
                                                                     ("barlowtwins-augment-all-s7", 7)]
    assert [u.key for u in plan.ingests] == ["ingest/all"]  # the data is ingested once for both
    assert {u.init for u in plan.evals} == {"random", "barlowtwins-augment-all-s3", "barlowtwins-augment-all-s7"}
    assert "x 2 seeds" in plan.describe()


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s["pretrain"].update(seeds=[1, 1]), "repeated seed"),
    (lambda s: (s["pretrain"].update(seeds=[1, 2]), s["pretrain"]["options"].update(seed=4)), "pretrain.options.seed"),
])
def test_pretraining_seeds_declared_once(tmp_path, study_data, edit, expected):
    path = _edit(write_study(tmp_path / "s.yaml", study_data), edit)
    with pytest.raises(SonosslError, match=expected):
        load_study(path)


def test_excluded_combinations_are_not_run_and_must_name_one_of_the_grid(tmp_path, study_data):
    both = lambda s: s["pretrain"].update(pairs=["augment", "temporal"], exclude=["ae/temporal"])  # noqa: E731
    plan = load_study(_edit(write_study(tmp_path / "s.yaml", study_data, methods=("ae", "simclr")), both))
    assert sorted(p.name for p in plan.pretrains) == ["ae-augment-all", "simclr-augment-all", "simclr-temporal-all"]
    assert "less ae/temporal" in plan.describe()
    typo = lambda s: s["pretrain"].update(pairs=["augment"], exclude=["ae/temporal"])  # noqa: E731
    with pytest.raises(SonosslError, match="pretrain.exclude: 'ae/temporal' is not a METHOD/PAIRS combination"):
        load_study(_edit(write_study(tmp_path / "t.yaml", study_data, methods=("ae",)), typo))


def test_keep_best_chooses_among_seeds_and_every_pretrained_evaluation_waits_for_the_choice(tmp_path, study_data):
    path = write_study(tmp_path / "s.yaml", study_data, fractions=(100,), seeds=(0,))
    _edit(path, lambda s: s["pretrain"].update(seeds=[0, 1], keep="best"))
    plan = load_study(path)
    assert [p.name for p in plan.pretrains] == ["barlowtwins-augment-all-s0", "barlowtwins-augment-all-s1"]
    [select] = plan.selects
    assert select.key == "select/barlowtwins-augment-all-best" and select.dataset == "planes"
    assert select.deps() == ("pretrain/barlowtwins-augment-all-s0", "pretrain/barlowtwins-augment-all-s1")
    assert select.config["linear_epochs"] == 5  # the linear protocol's own options
    assert {u.init for u in plan.evals} == {"random", "barlowtwins-augment-all-best"}
    assert {u.deps() for u in plan.evals if u.init != "random"} == {("select/barlowtwins-augment-all-best",)}
    assert plan.units.index(select) < min(plan.units.index(u) for u in plan.evals)
    # a draw can still be named on its own
    _edit(path, lambda s: s["evaluate"].update(inits=["random", "barlowtwins-augment-all-s1"]))
    assert {u.init for u in load_study(path).evals} == {"random", "barlowtwins-augment-all-s1"}


def test_keep_best_needs_two_seeds(tmp_path, study_data):
    path = _edit(write_study(tmp_path / "s.yaml", study_data), lambda s: s["pretrain"].update(seeds=[0], keep="best"))
    with pytest.raises(SonosslError, match="keep: best chooses among seeds: give pretrain.seeds two or more"):
        load_study(path)
