import json

import pytest
import torch

from sonossl.config import PretrainConfig
from sonossl.methods.monitors import collapse_std, knn_accuracy
from sonossl.methods.train import run_pretrain
from helpers import make_labelled


def test_knn_accuracy_against_a_brute_force_vote():
    g = torch.Generator().manual_seed(0)
    tr = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    ytr = torch.randint(0, 3, (40,), generator=g)
    q = torch.nn.functional.normalize(torch.randn(15, 8, generator=g), dim=1)
    yq = torch.randint(0, 3, (15,), generator=g)
    expected = []
    for i in range(15):
        near = sorted(range(40), key=lambda j: -float(q[i] @ tr[j]))[:5]
        counts = torch.bincount(ytr[near], minlength=3)
        expected.append(int(counts.argmax()) == int(yq[i]))
    assert knn_accuracy(tr, ytr, q, yq, k=5) == pytest.approx(sum(expected) / 15)
    assert knn_accuracy(tr, ytr, tr, ytr, k=1) == 1.0


def test_collapse_std_is_zero_for_a_collapsed_encoder_and_near_reference_when_spread():
    one = torch.nn.functional.normalize(torch.ones(100, 64), dim=1)
    assert collapse_std(one) == 0.0
    spread = torch.nn.functional.normalize(torch.randn(4000, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    assert abs(collapse_std(spread) - 64 ** -0.5) < 0.01


def test_monitors_reach_stats_jsonl(tmp_path, frames):
    labels = make_labelled(tmp_path / "labels", {"train": 4, "valid": 2, "test": 2}, size=32)
    cfg = PretrainConfig(frames=frames, out=tmp_path / "run", image_size=32, batch_size=4, epochs=1, max_steps=2,
                         num_workers=0, monitor_labels=labels, method_options={"projector": [16, 16]})
    run_pretrain(cfg, progress=False)
    epochs = [json.loads(line) for line in open(tmp_path / "run" / "stats.jsonl") if '"epoch"' in line]
    last = [r for r in epochs if r["kind"] == "epoch"][-1]
    assert 0 <= last["knn10_accuracy"] <= 1 and 0 < last["collapse_std"] < 1
    # random initialisation's kNN, computed without touching the run's RNG: a reference, not the run's step-0 encoder
    assert 0 <= last["knn10_random"] <= 1
    assert last["collapse_ref"] == pytest.approx(512 ** -0.5)  # resnet18 features


def test_random_reference_is_fixed_and_leaves_the_global_rng_alone(tmp_path, frames):
    from sonossl.data.framestore import FrameStore
    from sonossl.methods.monitors import Monitors

    labels = make_labelled(tmp_path / "labels", {"train": 4, "valid": 2, "test": 2}, size=32)
    m = Monitors(FrameStore(frames), 32, labels)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = m._random_reference("resnet18", torch.device("cpu"), seeds=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert m._random_reference("resnet18", torch.device("cpu"), seeds=2) == a
