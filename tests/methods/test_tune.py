import json

import pytest

from sonossl.config import PretrainConfig, read_preset
from sonossl.errors import SonosslError
from sonossl.methods import METHODS
from sonossl.methods.train import run_pretrain
from sonossl.methods.tune import base_rates, candidates, choose, criterion
from helpers import make_labelled


def _cfg(tmp_path, frames, labels=None, **kw):
    return PretrainConfig(frames=frames, out=tmp_path / "run", image_size=32, batch_size=4, epochs=2, num_workers=0,
                          monitor_labels=labels, logger="none", method_options={"projector": [16, 16]}, tune=["lr"],
                          tune_factors=[1, 5], tune_share=0.4, **kw)


@pytest.fixture
def labels(tmp_path):
    root = make_labelled(tmp_path / "labels", {"train": 4, "valid": 3}, size=32)
    # a test split that cannot be read: the sweep must choose without opening it
    (root / "test.csv").write_text("this is not,a labelled split\n\x00\x01")
    return root


def test_the_sweep_picks_the_criterions_argmax_without_reading_test(tmp_path, frames, labels):
    out = run_pretrain(_cfg(tmp_path, frames, labels), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    tune = summary["tune"]
    assert tune["criterion"] == "knn10_accuracy"
    scored = tune["candidates"]
    assert [c["name"] for c in scored] == ["lr-x1", "lr-x5"]
    healthy = [c for c in scored if not c["flags"]] or scored
    best = max(healthy, key=lambda c: c["knn10_accuracy"])
    assert tune["chosen"] == best["name"]
    assert tune["rankme_choice"] in ("lr-x1", "lr-x5") and tune["choices_agree"] == (tune["rankme_choice"] == best["name"])
    w, b = base_rates("barlowtwins")
    assert tune["lr_weights"] == pytest.approx(w * best["factor"]) and tune["lr_biases"] == pytest.approx(b * best["factor"])
    # each candidate ran 40 % of the 10-step schedule; the winner went on to the end in the run folder itself
    assert all(c["steps"] == 4 for c in scored) and summary["steps"] == 10
    assert all((out / "tune" / c["name"] / "backbone.pt").is_file() for c in scored)
    run_cfg = (out / "config.yaml").read_text()
    assert f"lr_weights: {w * best['factor']}" in run_cfg
    # a resume trains nothing again: the candidates' scores and the run stay as they were
    stamps = {c["name"]: (out / "tune" / c["name"] / "score.json").stat().st_mtime_ns for c in scored}
    run_pretrain(_cfg(tmp_path, frames, labels), resume=True, progress=False)
    assert stamps == {c["name"]: (out / "tune" / c["name"] / "score.json").stat().st_mtime_ns for c in scored}
    assert json.loads((out / "summary.json").read_text())["steps"] == 10


def test_without_labels_rankme_chooses(tmp_path, frames):
    cfg = _cfg(tmp_path, frames)
    assert criterion(cfg) == "rankme"
    out = run_pretrain(cfg, progress=False)
    tune = json.loads((out / "summary.json").read_text())["tune"]
    assert tune["criterion"] == "rankme" and "rankme_choice" not in tune
    assert tune["chosen"] == max(tune["candidates"], key=lambda c: c["rankme"])["name"]


def test_choose_prefers_healthy_candidates_and_the_first_of_equals():
    a = {"name": "a", "knn": 0.5, "flags": []}
    b = {"name": "b", "knn": 0.9, "flags": ["collapsed"]}
    c = {"name": "c", "knn": 0.5, "flags": []}
    d = {"name": "d", "knn": None, "flags": ["diverged"]}
    assert choose([a, b, c, d], "knn")["name"] == "a"  # b is collapsed; a and c tie: the first declared
    assert choose([b, d], "knn")["name"] == "b"  # no healthy one: the best of those with a score
    with pytest.raises(SonosslError, match="every candidate diverged"):
        choose([d], "knn")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_has_a_base_rate_to_sweep(method):
    paper = read_preset("paper", method)
    cfg = PretrainConfig(method=method, tune=["lr"], tune_factors=[1, 5, 20])
    cands = candidates(cfg)
    assert [c["lr_weights"] for c in cands] == pytest.approx([paper["lr_weights"] * f for f in (1, 5, 20)])
    assert [c["lr_biases"] for c in cands] == pytest.approx([paper["lr_biases"] * f for f in (1, 5, 20)])


def test_bad_factors_are_refused():
    with pytest.raises(ValueError, match="distinct positive"):
        PretrainConfig(tune=["lr"], tune_factors=[1, 1])
    with pytest.raises(ValueError):
        PretrainConfig(tune=["lr"], tune_factors=[1, -5])
