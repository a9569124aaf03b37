"""AutoEncoder: loss against a reconstruction written out with torchvision's own trunk, the
variants' corruptions, the step decay, training through ``run_pretrain`` (smoke, resume) and
refusal of bad settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import assert_torchvision_backbone, fixed_batch_losses, one_thread_run

from sonossl.config import PretrainConfig
from sonossl.errors import SonosslError
from sonossl.methods import get_method
from sonossl.methods.ae import AutoEncoder, erase_mask
from sonossl.methods.train import run_pretrain

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _method(**options) -> AutoEncoder:
    cfg = PretrainConfig(method="ae", image_size=32, warmup_epochs=0,
                         method_options={"decoder": [32, 16, 8, 8, 4], **options})
    return AutoEncoder(cfg)


def reference_loss(m: AutoEncoder, inp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reconstruction error written out: a fresh torchvision resnet18 holding the encoder's
    weights, cut before its pooling (children[:-2]), fed the ImageNet-normalised grey frame
    replicated to RGB; the decoder; the mean of squared pixel errors."""
    tv = torchvision.models.resnet18()
    tv.load_state_dict(m.encoder.trunk.state_dict(), strict=False)
    tv.eval()
    fmap = nn.Sequential(*list(tv.children())[:-2])((inp.repeat(1, 3, 1, 1) - MEAN) / STD)
    recon = m.decoder(fmap, tuple(inp.shape[-2:]))
    return ((recon.double() - target.double()) ** 2).sum() / target.numel()


@pytest.mark.parametrize("variant", ["standard", "denoise", "inpaint"])
def test_loss_equals_reconstruction_error_of_the_corrupted_input_against_the_clean_frame(variant):
    torch.manual_seed(0)
    m = _method(variant=variant).eval()  # eval: BatchNorm uses its running statistics in both
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss, _ = m.forward_loss((x,))
        corrupted = m.corrupt(x, m._generator(x.device))  # the generator forward_loss used (step 0)
        assert torch.allclose(loss.double(), reference_loss(m, corrupted, x), rtol=1e-4)
        if variant == "standard":
            assert torch.equal(corrupted, x)
        else:  # the target is the clean frame, not the corrupted input
            assert not torch.equal(corrupted, x)
            assert not torch.allclose(loss.double(), reference_loss(m, corrupted, corrupted), rtol=1e-4)
    assert get_method("ae") is AutoEncoder


def test_inpaint_erases_one_rectangle_per_frame_and_nothing_else():
    x = torch.rand(64, 1, 40, 48, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.05  # no pixel is 0
    out = _method(variant="inpaint").corrupt(x, torch.Generator().manual_seed(5))
    mask = erase_mask(x.shape, (0.02, 0.33), (0.3, 3.3), torch.Generator().manual_seed(5), x.device)
    assert torch.equal(out[~mask], x[~mask]) and (out[mask] == 0).all()
    for k in range(64):
        rows, cols = mask[k, 0].any(1).nonzero().flatten(), mask[k, 0].any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert mask[k, 0].sum() == h * w  # a filled rectangle ...
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w  # ... in one piece
        assert 0.02 * 0.5 <= h * w / (40 * 48) <= 0.33 * 1.3  # the drawn area, up to rounding/clipping


def test_reconstruction_has_the_input_size_at_any_resolution():
    m = _method().eval()
    for s in (32, 40, 64):
        with torch.no_grad():
            y = m.reconstruct(torch.rand(2, 1, s, s))
        assert y.shape == (2, 1, s, s) and 0 <= y.min() and y.max() <= 1


def test_step_decay_schedule():
    m = _method(lr_step_epochs=3, lr_gamma=0.1)
    steps = 10  # per epoch
    assert [m.lr_schedule(e * steps, steps) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001])
    assert m.lr_schedule(29, steps) == 1.0 and m.lr_schedule(30, steps) == pytest.approx(0.1)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    m = _method()
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    # smooth frames (4x4 noise upsampled): structure a 1x1 bottleneck can learn in 30 steps
    x = F.interpolate(torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(3)), size=(32, 32),
                      mode="bilinear", align_corners=False)
    losses = fixed_batch_losses(m, (x,), opt)
    assert losses[-1] < 0.5 * losses[0], losses


# ---- through run_pretrain ---------------------------------------------------------------------

def _cfg(frames, out, **kw) -> PretrainConfig:
    base = dict(method="ae", frames=frames, out=out, image_size=32, batch_size=4, epochs=3, num_workers=0,
                log_every_n_steps=1, optimizer="adamw", lr_weights=1e-3, lr_biases=1e-3, warmup_epochs=0,
                method_options={"variant": "denoise", "decoder": [16, 8, 8, 4, 4], "lr_step_epochs": 0.2})
    return PretrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def straight(frames, tmp_path_factory):
    """A 2-step denoising run (the lr decays after step 1): the smoke run, and the straight half
    of the resume test."""
    return one_thread_run(_cfg(frames, tmp_path_factory.mktemp("ae") / "straight", max_steps=2))


def test_two_step_run_writes_a_torchvision_backbone(straight):
    assert_torchvision_backbone(straight / "backbone.pt")
    assert '"method": "ae"' in (straight / "summary.json").read_text()


def test_resume_equals_a_straight_run(frames, straight, tmp_path):
    """Same weights, decoder included: the noise of step 2 is drawn from (seed, step, rank), not
    from a global generator that the restart reseeds."""
    run_pretrain(_cfg(frames, tmp_path / "split", max_steps=1), progress=False)
    run_pretrain(_cfg(frames, tmp_path / "split", max_steps=2), resume=True, progress=False)
    a = torch.load(straight / "checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split/checkpoints/last.ckpt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys() and any(k.startswith("decoder.") for k in a["state_dict"])
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    lr = [s["param_groups"][0]["lr"] for s in (a["optimizer_states"][0], b["optimizer_states"][0])]
    assert lr[0] == lr[1] == pytest.approx(1e-3 * 4 / 256 * 0.1)  # step 2 is past the decay


def test_bad_settings_fail_at_start_with_one_line(frames, tmp_path):
    with pytest.raises(SonosslError, match="variant"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"variant": "denoize"}), progress=False)
    with pytest.raises(SonosslError, match="noise_std"):
        run_pretrain(_cfg(frames, tmp_path / "x", method_options={"noise_std": 0}), progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(SonosslError, match="pairs"):
        AutoEncoder(PretrainConfig(method="ae", pairs="temporal"))
    with pytest.raises(SonosslError, match="erase_scale"):
        _method(erase_scale=(0.5, 0.2))
