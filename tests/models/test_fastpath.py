"""The fast path: channels_last and bf16 only where measured faster; --precision obeyed."""

import pytest
import torch

from sonossl.models import fastpath


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SONOSSL_CACHE", str(tmp_path / "cache"))


def fake_probe(ms: dict[str, float]):
    def probe(backbone, size, precision, channels_last, batch, steps):
        return ms[fastpath._name(precision, channels_last)]
    return probe


@pytest.mark.parametrize("ms, want", [
    ({"32-true": 100, "32-true-channels_last": 99, "bf16-mixed-channels_last": 98}, ("32-true", False)),  # within 3 %: the reference
    ({"32-true": 100, "32-true-channels_last": 85, "bf16-mixed-channels_last": 140}, ("32-true", True)),
    ({"32-true": 100, "32-true-channels_last": 85, "bf16-mixed-channels_last": 30}, ("bf16-mixed", True)),
    ({"32-true": 100, "32-true-channels_last": 120, "bf16-mixed-channels_last": 400}, ("32-true", False)),
])
def test_the_measured_fastest_setting_is_chosen(monkeypatch, ms, want):
    monkeypatch.setattr(fastpath, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(fastpath, "_probe_ms", fake_probe(ms))
    fast = fastpath.choose("resnet18", 32)
    assert (fast.precision, fast.channels_last) == want
    assert fast.ms == ms and "measured fastest" in fast.reason


def test_bf16_is_not_tried_without_bf16_units(monkeypatch):
    monkeypatch.setattr(fastpath, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(fastpath, "_probe_ms", fake_probe({"32-true": 100, "32-true-channels_last": 80}))
    fast = fastpath.choose("resnet18", 32)
    assert (fast.precision, fast.channels_last) == ("32-true", True) and set(fast.ms) == {"32-true", "32-true-channels_last"}
    assert "no bf16 units" in fast.reason


def test_precision_given_is_obeyed_and_32_true_forces_float32_nchw(monkeypatch):
    monkeypatch.setattr(fastpath, "_probe_ms", lambda *a: pytest.fail("a given precision is not measured"))
    fast = fastpath.choose("resnet18", 32, precision="32-true")
    assert (fast.precision, fast.channels_last, fast.amp_dtype) == ("32-true", False, None)
    assert fastpath.choose("resnet18", 32, precision="32").precision == "32-true"
    fast = fastpath.choose("resnet18", 32, precision="bf16-mixed")
    assert fast.channels_last and fast.amp_dtype == torch.bfloat16
    assert fastpath.choose("resnet18", 32, device="cuda").precision == "bf16-mixed"


def test_a_real_probe_is_measured_once_per_machine(monkeypatch):
    first = fastpath.choose("resnet18", 32, batch=4, steps=1)
    assert first.precision in ("32-true", "bf16-mixed") and first.ms
    if not fastpath.cpu_has_bf16():
        assert first.precision == "32-true"
    monkeypatch.setattr(fastpath, "_probe_ms", lambda *a: pytest.fail("measured twice"))
    again = fastpath.choose("resnet18", 32, batch=4, steps=1)
    assert again == first  # from the machine's cache: the same choice, so runs repeat


def test_inputs_below_17_px_stay_in_float32_on_a_cpu(monkeypatch):
    monkeypatch.setattr(fastpath, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(fastpath, "_probe_ms", fake_probe({"32-true": 100, "32-true-channels_last": 85,
                                                          "bf16-mixed-channels_last": 30}))
    fast = fastpath.choose("resnet18", 32, min_side=16)
    assert (fast.precision, fast.channels_last) == ("32-true", False) and "16 px" in fast.reason
    assert fastpath.choose("resnet18", 32, min_side=17).precision == "bf16-mixed"
    with pytest.raises(fastpath.SonosslError, match="precision bf16-mixed: inputs of 14 px"):
        fastpath.choose("resnet18", 32, precision="bf16-mixed", min_side=14)
    assert fastpath.choose("resnet18", 16, precision="32-true").precision == "32-true"
    assert fastpath.choose("resnet18", 14, device="cuda").precision == "bf16-mixed"  # a GPU is not oneDNN


def _bf16_weight_grad_error(side: int) -> float:
    """Relative error of the bf16 weight gradient of a ResNet's strided 3x3 conv (stride 2, pad 1)
    whose input map is ``side`` x ``side``, against float32."""
    torch.manual_seed(0)
    w, x = torch.randn(32, 16, 3, 3), torch.randn(4, 16, side, side)
    ref = w.clone().requires_grad_()
    torch.nn.functional.conv2d(x, ref, stride=2, padding=1).sum().backward()
    got = w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.conv2d(x, got, stride=2, padding=1)
    y.float().sum().backward()
    return ((got.grad - ref.grad).abs().max() / ref.grad.abs().max()).item()


@pytest.mark.skipif(not fastpath.cpu_has_bf16(), reason="no bf16 units: bf16 is emulated here")
def test_bf16_weight_gradients_are_right_from_2x2_maps(monkeypatch):
    """What the 17 px floor relies on: from a 2x2 map (a 17-32 px input's last ResNet stage) the CPU's
    bf16 weight gradient is float32's to bf16 precision. (On a 1x1 map it was garbage, up to inf,
    with torch 2.14.1 on an AVX-512 BF16 EPYC; that is why the floor exists, not asserted here.)"""
    assert max(_bf16_weight_grad_error(s) for s in (2, 3, 4)) < 2e-2


@pytest.mark.skipif(not fastpath.cpu_has_bf16(), reason="no bf16 units: bf16 is emulated here")
@pytest.mark.parametrize("channels_last", [False, True])
def test_guarded_strided_convs_give_float32s_weight_gradient_on_1x1_maps_in_bf16(channels_last):
    """The workaround at its layer: a ResNet's stride-2 3x3 and 7x7 convs, made
    :class:`CpuBf16SafeConv2d` by :func:`guard_cpu_bf16_convs`, give on a 1x1 map under bf16 autocast
    a finite weight gradient equal to float32's to bf16 precision, and a bf16 output as before;
    the 1x1 stride-2 shortcut and stride-1 convs stay plain ``nn.Conv2d``. (Unguarded, torch 2.14.1 on
    an AMX-BF16 Xeon: inf or ~1e32 in 14 of 20 seeded draws in NCHW, 20 of 20 in channels_last.)"""
    from torchvision.models import resnet18

    net = fastpath.guard_cpu_bf16_convs(resnet18())
    kinds = {n: type(m) for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert kinds["layer4.0.conv1"] is kinds["conv1"] is fastpath.CpuBf16SafeConv2d
    assert kinds["layer4.0.downsample.0"] is kinds["layer4.0.conv2"] is torch.nn.Conv2d
    assert net.state_dict().keys() == resnet18().state_dict().keys()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for seed in range(5):
        torch.manual_seed(seed)
        conv = torch.nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False).to(memory_format=fmt)
        x = torch.randn(8, 64, 1, 1).contiguous(memory_format=fmt)
        conv(x).sum().backward()
        ref, conv.weight.grad = conv.weight.grad, None
        fastpath.guard_cpu_bf16_convs(conv)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
        assert torch.isfinite(conv.weight.grad).all()
        assert (conv.weight.grad - ref).abs().max() <= 2e-2 * ref.abs().max()
