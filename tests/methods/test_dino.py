"""DINO: loss and centre against the authors' DINOLoss, centring property, teacher-temperature
warm-up, multi-crop views in both pair modes, gradient clipping/freezing, DDP centre, resume."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightly.models.utils import update_momentum
from torch import nn

from helpers import assert_torchvision_backbone, run_gloo

from sonossl.config import PretrainConfig
from sonossl.data.framestore import FrameStore
from sonossl.data.pairs import FramePairDataset
from sonossl.errors import SonosslError
from sonossl.methods import get_method
from sonossl.methods.dino import DINO
from sonossl.methods.train import run_pretrain
from sonossl.models.fastpath import cpu_has_bf16

OPTS = {"hidden_dim": 32, "bottleneck_dim": 16, "out_dim": 64, "local_crops": 2}


def _method(image_size: int = 32, **options) -> DINO:
    return DINO(PretrainConfig(method="dino", image_size=image_size, method_options={**OPTS, **options}))


def authors_loss(student_output, teacher_output, center, ncrops, teacher_temp, student_temp=0.1, center_momentum=0.9):
    """facebookresearch/dino main_dino.py DINOLoss.forward + update_center, written out.
    student_output: (ncrops * B, K), teacher_output: (2 * B, K), center: (1, K)."""
    student_out = (student_output.double() / student_temp).chunk(ncrops)
    teacher_out = F.softmax((teacher_output.double() - center.double()) / teacher_temp, dim=-1).chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    total_loss /= n_loss_terms
    batch_center = torch.sum(teacher_output.double(), dim=0, keepdim=True) / len(teacher_output)
    return total_loss, center.double() * center_momentum + batch_center * (1 - center_momentum)


def _outputs(seed: int, n_views: int = 4, b: int = 6, k: int = 64):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(b, k, generator=g) for _ in range(n_views)]
    teacher = [s + 0.5 * torch.randn(b, k, generator=g) for s in student[:2]]
    return teacher, student


def test_loss_and_centre_update_equal_the_authors_code():
    m = _method()
    teacher, student = _outputs(0)
    m.criterion.center.copy_(torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(1)) * 0.3)
    before = m.criterion.center.reshape(1, 64).clone()
    loss = m.loss(teacher, student, teacher_temp=0.05)
    ref, ref_center = authors_loss(torch.cat(student), torch.cat(teacher), before, ncrops=4, teacher_temp=0.05)
    assert torch.allclose(loss.double(), ref, rtol=1e-5)
    assert torch.allclose(m.criterion.center.reshape(1, 64).double(), ref_center, rtol=1e-5, atol=1e-7)
    assert "criterion.center" in m.state_dict()  # a buffer: saved in checkpoints


def test_centring_shift_of_teacher_and_centre_leaves_the_loss_unchanged():
    """The teacher enters only as softmax((t - c) / tau): moving t and c by the same vector is a no-op."""
    m = _method()
    teacher, student = _outputs(2)
    shift = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 5
    base = m.loss(teacher, student, 0.04)
    m.criterion.center.zero_().add_(shift)
    shifted = m.loss([t + shift for t in teacher], student, 0.04)
    assert torch.allclose(base, shifted, rtol=1e-5)


def test_weight_norm_layer_equals_torchs():
    from sonossl.methods.dino import WeightNormLinear

    torch.manual_seed(0)
    ours = WeightNormLinear(16, 8, fixed_norm=False)
    with torch.no_grad():
        ours.weight_g.uniform_(0.5, 2)
    ref = nn.utils.parametrizations.weight_norm(nn.Linear(16, 8, bias=False))
    ref.parametrizations.weight.original0.data.copy_(ours.weight_g)
    ref.parametrizations.weight.original1.data.copy_(ours.weight_v)
    x = torch.randn(5, 16)
    assert torch.allclose(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    assert not _method().head.last_layer.weight_g.requires_grad  # norm_last_layer: g fixed at 1


def test_teacher_temperature_warms_up_linearly_by_epoch():
    m = _method(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    ref = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(10, 0.07)])  # main_dino.py's schedule
    assert np.allclose([m.teacher_temp(e) for e in range(40)], ref)
    assert _method(warmup_teacher_temp_epochs=0).teacher_temp(0) == 0.07


@pytest.mark.parametrize("pairs", ["augment", "temporal"])
def test_multicrop_views_in_both_pair_modes(frames, pairs):
    m = _method(image_size=64, local_crops=3)
    ds = FramePairDataset(FrameStore(frames), "train", m.view_transforms(), pairs=pairs, max_gap=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    batch = next(iter(loader))
    assert [tuple(v.shape) for v in batch] == [(4, 1, 64, 64)] * 2 + [(4, 1, 27, 27)] * 3  # 27 = 64 * 96 / 224
    loss, logs = m.forward_loss(batch)
    assert torch.isfinite(loss) and float(logs["teacher_temp"]) == pytest.approx(0.04)


def test_clipping_and_frozen_last_layer_in_the_first_epoch():
    m = _method(clip_grad=0.01)
    loss, _ = m.forward_loss([torch.rand(4, 1, 32, 32)] * 2 + [torch.rand(4, 1, 14, 14)] * 2)
    loss.backward()
    m.configure_gradient_clipping(None)
    norms = [p.grad.norm() for p in m.parameters() if p.grad is not None]
    assert norms and max(norms) <= 0.01 * (1 + 1e-4)
    assert all(p.grad is None for p in m.head.last_layer.parameters())  # epoch 0 < freeze_last_layer
    assert all(p.grad is None for p in [*m.teacher_encoder.parameters(), *m.teacher_head.parameters()])


def test_loss_decreases_on_a_fixed_batch():
    """With the default centre momentum 0.9 the centre soon equals this one batch's teacher mean,
    which flattens the teacher towards uniform and lifts the loss towards log K (centring at work,
    measured: 4.4 -> 1.4 -> 3.6); a slow centre (0.99) shows the student's fit alone."""
    torch.manual_seed(0)
    m = _method(freeze_last_layer=0, teacher_temp=0.04, center_momentum=0.99)
    m.train()
    opt = torch.optim.SGD([p for mod in m.optim_modules() for p in mod.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    views = [torch.rand(8, 1, 16, 16, generator=g) for _ in range(2)] + [torch.rand(8, 1, 8, 8, generator=g) for _ in range(2)]
    losses = []
    for _ in range(30):
        loss, _ = m.forward_loss(views)
        opt.zero_grad()
        loss.backward()
        m.configure_gradient_clipping(opt)
        opt.step()
        for online, target in m.momentum_pairs():
            update_momentum(online, target, 0.99)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_bad_settings_fail_at_start_with_one_line(frames, tmp_path):
    def cfg(**opts):
        return PretrainConfig(method="dino", frames=frames, out=tmp_path / "x", image_size=32, batch_size=4,
                              num_workers=0, method_options={**OPTS, **opts})

    with pytest.raises(SonosslError, match="local_crops.*16"):
        run_pretrain(cfg(local_crops=17), progress=False)
    with pytest.raises(SonosslError, match="local_crops_scale"):
        run_pretrain(cfg(local_crops_scale=[0.4, 0.05]), progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(SonosslError, match="local_crop_ratio"):
        _method(image_size=32, local_crop_ratio=0.1)  # 3 px local crops
    assert get_method("dino") is DINO


# ---- through run_pretrain -----------------------------------------------------------------

def _cfg(frames, out, **kw) -> PretrainConfig:
    # constant teacher momentum: a cosine over max_steps=3 would differ from one over 6;
    # the temperature warms up over 2 epochs and the last layer is frozen in epoch 0 (both by epoch)
    opts = {**OPTS, "momentum": 0.9, "momentum_end": 0.9, "warmup_teacher_temp_epochs": 2, "teacher_temp": 0.06}
    base = dict(method="dino", frames=frames, out=out, image_size=32, batch_size=4, epochs=3, warmup_epochs=10,
                optimizer="sgd", lr_weights=0.03, lr_biases=0.03, weight_decay=1e-4, pairs="temporal", max_gap=2,
                num_workers=0, log_every_n_steps=1, method_options=opts)
    return PretrainConfig(**{**base, **kw})


def test_resume_equals_a_straight_run_including_teacher_and_centre(frames, tmp_path):
    """Temporal multi-crop. 6 steps straight == 3, stop, resume, 3 (crossing the epoch end where
    the last layer unfreezes and the temperature moves): identical student, teacher and centre.
    backbone.pt is the teacher's trunk and loads into torchvision's resnet18."""
    run_pretrain(_cfg(frames, tmp_path / "straight", max_steps=6), progress=False)
    run_pretrain(_cfg(frames, tmp_path / "split", max_steps=3), progress=False)
    run_pretrain(_cfg(frames, tmp_path / "split", max_steps=6), resume=True, progress=False)
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and "criterion.center" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["criterion.center"].abs().sum() > 0

    backbone = assert_torchvision_backbone(tmp_path / "split/backbone.pt")
    teacher = {k[len("teacher_encoder.trunk."):]: v for k, v in a.items() if k.startswith("teacher_encoder.trunk.")}
    assert all(torch.equal(backbone[k], teacher[k]) for k in backbone)
    assert not torch.equal(backbone["conv1.weight"], a["encoder.trunk.conv1.weight"])
    # 32 px frames make 14 px local crops: the fast path keeps them in float32 (sonossl.models.fastpath)
    assert yaml.safe_load((tmp_path / "straight/config.yaml").read_text())["precision"] == "32-true"


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units (bf16 would be emulated, slowly)")
def test_resume_is_bit_exact_in_bf16_once_local_crops_are_17_px(frames, tmp_path):
    """40 px frames, 17 px local crops (a 2x2 map in the last stage): in bf16 autocast + channels_last
    a resumed run equals a straight one, as in float32."""
    cfg = lambda out, n: _cfg(frames, out, max_steps=n, image_size=40, precision="bf16-mixed")  # noqa: E731
    run_pretrain(cfg(tmp_path / "straight", 6), progress=False)
    run_pretrain(cfg(tmp_path / "split", 3), progress=False)
    run_pretrain(cfg(tmp_path / "split", 6), resume=True, progress=False)
    a = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert yaml.safe_load((tmp_path / "split/config.yaml").read_text())["channels_last"] is True
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bf16_is_refused_for_local_crops_below_17_px(frames, tmp_path):
    with pytest.raises(SonosslError, match=r"precision bf16-mixed: inputs of 14 px .* 32-true"):
        run_pretrain(_cfg(frames, tmp_path / "run", max_steps=1, precision="bf16-mixed"), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _encoder_grads(m: DINO, views, bf16: bool) -> dict[str, torch.Tensor]:
    m.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = m.forward_loss(views)
    loss.backward()
    return {n: p.grad.clone() for n, p in m.encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("seed", range(4))
def test_bf16_step_on_14_px_local_crops_gives_finite_encoder_gradients_near_float32s(seed):
    """The shape that failed (tests/test_gpu.py's CPU dry run): 32 px globals, 14 px local crops (a
    1x1 map before layer4's strided convs), under a bf16 autocast opened outside the fast path.
    Unguarded, on an AMX-BF16 Xeon, layer4.0.conv1's weight gradient was inf or nan for seeds 0 and 1
    here (4 of seeds 0-7; oneDNN, sonossl.models.fastpath). Now every gradient is finite, each
    parameter's norm within 2x of float32's (measured 0.86-1.17) and the whole encoder gradient
    points float32's way (cosine measured 0.89-0.93; 0.92-0.94 at 17 px crops, bf16's own spread)."""
    torch.manual_seed(seed)
    m = _method(image_size=32).train()
    g = torch.Generator().manual_seed(seed)
    views = [torch.rand(8, 1, 32, 32, generator=g) for _ in range(2)] + [torch.rand(8, 1, 14, 14, generator=g) for _ in range(2)]
    state = {k: v.clone() for k, v in m.state_dict().items()}  # the step moves the centre
    ref = _encoder_grads(m, views, bf16=False)
    m.load_state_dict(state)
    got = _encoder_grads(m, views, bf16=True)
    assert got.keys() == ref.keys() and "trunk.layer4.0.conv1.weight" in got
    for name, grad in got.items():
        assert torch.isfinite(grad).all(), name
        assert 0.5 < float(grad.norm() / ref[name].norm()) < 2, name
    flat = [torch.cat([d[n].flatten() for n in ref]) for d in (got, ref)]
    assert F.cosine_similarity(*flat, dim=0) > 0.8


# ---- DDP: the centre is the global batch's, gradients those of the global-batch loss ----

def _global_outputs():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 10, 6, generator=g)  # 4 views of 10 samples, 6 features
    teacher = [torch.randn(10, 64, generator=g) for _ in range(2)]
    return x, teacher


def _ddp_worker(rank: int, world: int, out: str) -> None:
    m = _method()
    torch.manual_seed(0)
    lin = nn.Linear(6, 64)
    ddp = nn.parallel.DistributedDataParallel(lin)
    x, teacher = _global_outputs()
    part = slice(rank * 5, (rank + 1) * 5)
    loss = m.loss([t[part] for t in teacher], list(ddp(x[:, part])), 0.04)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": lin.weight.grad.clone(), "center": m.criterion.center.clone()},
               f"{out}/rank{rank}.pt")


@pytest.mark.slow  # ~25 s: two spawned processes import the stack
def test_ddp_centre_and_gradients_equal_single_process_on_global_batch(tmp_path):
    """Two gloo processes with 5 samples each vs one with all 10: the mean of the two local
    losses is the global loss, DDP's averaged gradients equal the single-process ones, and the
    centre on every process is updated with the global batch mean (all-reduced)."""
    run_gloo(_ddp_worker, tmp_path)

    m = _method()
    torch.manual_seed(0)
    lin = nn.Linear(6, 64)
    x, teacher = _global_outputs()
    loss = m.loss(teacher, list(lin(x)), 0.04)
    loss.backward()
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.allclose((got[0]["loss"] + got[1]["loss"]) / 2, loss.detach(), rtol=1e-5)
    for r in range(2):
        assert torch.allclose(got[r]["grad"], lin.weight.grad, rtol=1e-4, atol=1e-7)
        assert torch.allclose(got[r]["center"], m.criterion.center, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_ddp_two_cpu_processes_through_run_pretrain(frames, tmp_path):
    """The student, teacher (deep copies with weight-normed last layers) and centre reach spawned
    processes, and the run finishes with a backbone."""
    out = run_pretrain(_cfg(frames, tmp_path / "ddp", max_steps=2, devices=2, accelerator="cpu"), progress=False)
    state = torch.load(out / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert state["criterion.center"].abs().sum() > 0 and (out / "backbone.pt").is_file()
