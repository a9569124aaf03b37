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
