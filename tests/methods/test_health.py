import json
import math

import pytest
import torch

from sonossl.config import PretrainConfig
from sonossl.methods.health import COLLAPSE_RANK, LossWatch, rankme
from sonossl.models.init import flagged, health_line
from sonossl.methods.train import run_pretrain


def test_rankme_matches_its_formula_on_a_known_matrix():
    # singular values 3, 2, 1 (orthonormal bases around a diagonal): p = s / 6 + eps
    u, _ = torch.linalg.qr(torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    m = u @ torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ v.T
    p = [3 / 6 + 1e-7, 2 / 6 + 1e-7, 1 / 6 + 1e-7] + [1e-7] * 2  # 5 singular values, two of them zero
    expected = math.exp(-sum(q * math.log(q) for q in p))
    assert rankme(m) == pytest.approx(expected, rel=1e-6)


def test_rankme_counts_equal_directions_and_sees_collapse():
    eye = torch.eye(16)
    assert rankme(eye) == pytest.approx(16, rel=1e-4)  # equal singular values: the rank itself
    one = torch.ones(64, 16) + 1e-9 * torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    assert rankme(one) < 1.01  # every sample the same vector
    with pytest.raises(ValueError):
        rankme(torch.ones(1, 4))


def _fires(losses, **kw):
    w = LossWatch(**kw)
    return [i for i, x in enumerate(losses) if w.update(i, x) == "rising"]


def test_loss_watch_fires_on_a_sustained_rise_and_not_on_noise():
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(200, generator=g) - 0.5).tolist()
    healthy = [1000 - 150 * (1 - math.exp(-i / 10)) + 40 * n for i, n in enumerate(noise)]  # falls, +-2 % noise
    assert _fires(healthy) == []
    # the shape a too-high rate gave on a held-apart simulator: flat ~1010, then up to ~1200
    diverging = [1010 + 20 * n for n in noise[:30]] + [1010 + 6 * i + 20 * n for i, n in enumerate(noise[30:70])]
    fired = _fires(diverging)
    assert fired and fired[0] > 30  # only once the rise has lasted a window
    spike = [900 + 10 * n for n in noise[:60]]
    spike[40] = 5000  # one bad batch is not a divergence: the median ignores it
    assert _fires(spike) == []


def test_flagged_ignores_a_rise_that_was_recovered_from():
    rise = {"kind": "loss_rising", "step": 50, "message": "m"}
    fixed = {"kind": "recovered", "step": 50, "message": "r"}
    assert flagged({"health": {"flags": [rise, fixed]}}) == []
    assert flagged({"health": {"flags": [rise, fixed, {**rise, "step": 90}]}}) == [{**rise, "step": 90}]
    assert health_line("x", {}) is None
    line = health_line("barlowtwins", {"health": {"flags": [{"kind": "collapsed", "step": 3, "message": "RankMe 1.2"}]}})
    assert "collapsed" in line and "RankMe 1.2" in line and "\n" not in line


def _run(tmp_path, frames, name, lr, method="simclr", optimizer="sgd", **kw):
    options = {"projector": [16, 16]} if method == "simclr" else {}
    cfg = PretrainConfig(method=method, frames=frames, out=tmp_path / name, image_size=32, batch_size=4, epochs=8,
                         num_workers=0, optimizer=optimizer, lr_weights=lr, lr_biases=lr, warmup_epochs=0,
                         log_every_n_steps=1, logger="none", method_options=options, **kw)
    run_pretrain(cfg, progress=False)
    return json.loads((tmp_path / name / "summary.json").read_text())


def test_a_healthy_run_is_not_flagged(tmp_path, frames):
    # the autoencoder's loss falls on these frames (SimCLR's, on 4 noise frames a batch, is noise around log 7);
    # the module's store has 3 val frames, whose RankMe (at most 3, below the threshold) must not read as collapse
    healthy = _run(tmp_path, frames, "ok", 1e-3, method="ae", optimizer="adamw", on_divergence="warn")
    assert healthy["health"]["flags"] == [] and COLLAPSE_RANK > 3


def test_a_rate_far_too_high_is_flagged_and_recovered_from(tmp_path, frames, capsys):
    hot = _run(tmp_path, frames, "hot", 50.0, on_divergence="recover")
    kinds = [f["kind"] for f in hot["health"]["flags"]]
    assert kinds[:2] == ["loss_rising", "recovered"]
    out = capsys.readouterr().out
    assert "warning: pretraining loss rising at step" in out and "warning: pretraining recovered at step" in out
    assert "multiplied every base learning rate by 0.2" in hot["health"]["flags"][1]["message"]
    ckpt = torch.load(tmp_path / "hot" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    base = ckpt["optimizer_states"][0]["param_groups"][0]["base_lr"]
    assert base < 50.0 * 4 / 256  # the checkpoint carries the lowered rate (lr x batch / 256 before any recovery)
