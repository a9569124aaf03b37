"""The fastest precision and memory layout for training on this machine, measured, not assumed.

On a GPU, bf16 autocast with channels_last is the known fast path. On a CPU it depends on the
chip: with AMX or AVX-512 BF16 units, bf16 autocast in channels_last runs a bare ResNet-18
forward+backward about 2.2x and a whole SSL step 1.7-1.9x faster than float32 (measured on an
Intel Xeon with AMX-BF16 and an AMD EPYC with AVX-512 BF16); without them bf16 is emulated and
6-30x *slower* than float32 (benchmarks/README.md, "Precision and memory layout").
So on a CPU :func:`choose` times a few forward+backward passes of the actual backbone at the
actual image size in each candidate setting and keeps the fastest. It takes a few seconds, and
its choice is recorded in the run's ``config.yaml`` (``precision``, ``channels_last``) and its
figures in ``summary.json``; it is also kept per machine (:func:`cache_file`), so later runs on
the same machine make the same choice without measuring again, and repeat exactly.

Losses stay in float32 whatever is chosen (each method computes its loss with autocast off).

One exception is not a matter of speed: on a CPU, oneDNN's bf16 weight gradient of a strided,
padded convolution (kernel 3 or 7, stride 2) whose input map is 1x1 is garbage, up to 1e36 or inf
against a true ~10 (torch 2.14.1, AVX-512 BF16 EPYC, autocast and bf16 weights alike, either
layout; 2x2 maps and larger are right to bf16's 3e-3). A ResNet's last stage sees a 1x1 map
when its input side is at most 16 px (each of its four strided stages halves it, rounding up),
as DINO's local crops of 32 px frames are. So below :data:`CPU_BF16_MIN_SIDE` a CPU computes in
float32: ``auto`` does not try bf16, and ``bf16-*``/``16-mixed`` are refused.
The same fault on an Intel Xeon with AMX-BF16 (oneDNN's bf16 weight gradient of a stride-2 3x3
conv on a 1x1 map: inf or ~1e32 in 14 of 20 seeded draws, every draw in channels_last, against a
true ~10; a 1x1 kernel, stride 1 or a 2x2 map are right) is what made DINO's bf16 gradients
non-finite "for one unseeded init out of three" when its 14 px local crops ran under an autocast
opened outside this module. :func:`guard_cpu_bf16_convs` closes that door at the layer: a model
whose views can be that small computes just those convolutions, on just those maps, in float32.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from sonossl.errors import SonosslError
from sonossl.models.backbones import build_encoder

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
CPU_BF16_MIN_SIDE = 17  # smallest input side whose last ResNet stage sees more than a 1x1 map (module docstring)
CANDIDATES = (("32-true", False), ("32-true", True), ("bf16-mixed", True))  # bf16 in NCHW never wins (measured)


class CpuBf16SafeConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters, same maths) that computes in float32, autocast off, when
    it would otherwise run oneDNN's faulty bf16 kernel: on a CPU, strided, kernel above 1x1, input
    map 1x1 (module docstring). The output keeps the dtype the bf16 path would have given, so the
    layers after it see no difference; elsewhere it is the plain convolution.
    Workaround for oneDNN (torch 2.14.1); remove once the reproduction in
    tests/models/test_fastpath.py (``_bf16_weight_grad_error(1)``) gives bf16 precision."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not (input.device.type == "cpu" and input.shape[-2:] == (1, 1) and self.stride != (1, 1)
                and self.kernel_size != (1, 1)):
            return super()._conv_forward(input, weight, bias)
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast else input.dtype
        if dtype not in (torch.bfloat16, torch.float16) and weight.dtype == torch.float32:
            return super()._conv_forward(input, weight, bias)
        with torch.autocast("cpu", enabled=False):
            out = super()._conv_forward(input.float(), weight.float(), None if bias is None else bias.float())
        return out.to(dtype)


def guard_cpu_bf16_convs(module: nn.Module) -> nn.Module:
    """Makes every strided ``nn.Conv2d`` with a kernel above 1x1 in ``module`` a
    :class:`CpuBf16SafeConv2d`, in place (parameter names and state_dict unchanged); returns it."""
    for m in module.modules():
        if type(m) is nn.Conv2d and m.stride != (1, 1) and m.kernel_size != (1, 1):
            m.__class__ = CpuBf16SafeConv2d
    return module


@dataclass
class FastPath:
    """What a run trains in: ``precision`` (a Lightning precision string), ``channels_last``,
    and why (``reason``; ``ms`` holds the probe's median ms per step of each setting)."""

    precision: str
    channels_last: bool
    reason: str
    ms: dict[str, float] = field(default_factory=dict)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.precision}, {'channels_last' if self.channels_last else 'NCHW'} ({self.reason})"


def cpu_flags() -> list[str]:
    """The bf16-related flags of this CPU (``amx_bf16``, ``avx512_bf16``, ...), from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if "bf16" in f or f.startswith("amx") or f == "avx2")
    except OSError:
        pass
    return []


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX tiles or AVX-512 BF16), as oneDNN sees them."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # an older torch without the queries
        return any(f in ("amx_bf16", "avx512_bf16") for f in cpu_flags())


def _probe_ms(backbone: str, image_size: int, precision: str, channels_last: bool, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    enc = build_encoder(backbone)
    x = torch.rand(batch, 1, image_size, image_size)
    if channels_last:
        enc = enc.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext())
    times = []
    for i in range(steps + 1):  # the first pass warms up oneDNN's kernels and is not counted
        t = time.perf_counter()
        with ctx:
            out = enc(x)
        out.float().sum().backward()
        if i:
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def choose(backbone: str, image_size: int, device: str = "cpu", precision: str = "auto",
           batch: int = 32, steps: int = 3, min_side: int | None = None) -> FastPath:
    """The setting to train ``backbone`` at ``image_size`` on ``device`` (``cpu`` or ``cuda``);
    ``min_side``: the smallest input side the backbone will see (a method's smallest view;
    default ``image_size``).

    ``precision`` other than ``auto`` is obeyed (``32-true`` forces float32 in NCHW, the
    reference setting; ``bf16-mixed`` and ``16-mixed`` use channels_last), except half
    precision on a CPU below :data:`CPU_BF16_MIN_SIDE`, refused (:class:`SonosslError`).
    ``auto`` on a GPU is bf16 + channels_last; on a CPU, the fastest of :data:`CANDIDATES` over
    ``steps`` timed forward+backward passes of a ``batch`` (the first setting wins ties within 3 %).
    """
    precision = "32-true" if precision == "32" else precision
    small = not device.startswith("cuda") and (min_side or image_size) < CPU_BF16_MIN_SIDE
    if precision != "auto":
        if small and precision != "32-true":
            raise SonosslError(
                f"precision {precision}: inputs of {min_side or image_size} px reach a 1x1 map in the backbone's last "
                f"stage, where a CPU's bf16 weight gradients are wrong (sonossl.models.fastpath); use --precision "
                f"32-true or images of >= {CPU_BF16_MIN_SIDE} px")
        return FastPath(precision, precision != "32-true", "given")
    if device.startswith("cuda"):
        return FastPath("bf16-mixed", True, "GPU")
    if small:
        return FastPath("32-true", False, f"inputs of {min_side or image_size} px: below {CPU_BF16_MIN_SIDE} px a CPU's "
                        "bf16 weight gradients are wrong, so float32")
    key = f"{_machine_key()}|{backbone}|{image_size}|{batch}"
    with _cache_lock():  # one probe at a time on a machine: processes starting together agree on one choice
        cached = _read_cache().get(key)
        if cached is not None:  # measured on this machine before: the same choice, so runs repeat
            return FastPath(**cached)
        fast = _measure(backbone, image_size, batch, steps)
        _write_cache(key, fast)
    return fast


@contextlib.contextmanager
def _cache_lock():
    """An exclusive ``flock`` on the cache's lock file, waited for (no lock when it cannot be made)."""
    import fcntl
    import os

    path = cache_file().with_suffix(".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def cache_file() -> Path:
    """Where the probe's choices are kept, one per machine, backbone and image size
    (``$SONOSSL_CACHE``, else ``~/.cache/sonossl``)."""
    import os

    root = os.environ.get("SONOSSL_CACHE") or Path.home() / ".cache" / "sonossl"
    return Path(root) / "fastpath.json"


def _machine_key() -> str:
    import platform

    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor()}|{','.join(cpu_flags())}|torch {torch.__version__}"


def _read_cache() -> dict:
    import json

    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, fast: FastPath) -> None:
    import json
    import os

    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_cache(), key: fast.as_dict()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only home: measure again next time
        pass


def _measure(backbone: str, image_size: int, batch: int, steps: int) -> FastPath:
    bf16 = cpu_has_bf16()
    # without bf16 units bf16 is emulated: 11x slower than float32 on an AVX2 EPYC (measured), so
    # it is not even probed (one probe step would cost seconds)
    candidates = [c for c in CANDIDATES if bf16 or c[0] != "bf16-mixed"]
    with torch.random.fork_rng(devices=[]):
        ms = {_name(p, cl): _probe_ms(backbone, image_size, p, cl, batch, steps) for p, cl in candidates}
    base = _name(*candidates[0])
    best = min(ms, key=lambda k: ms[k])
    if ms[base] <= 1.03 * ms[best]:
        best = base
    p, cl = next(c for c in candidates if _name(*c) == best)
    units = ", ".join(f for f in cpu_flags() if "bf16" in f or f.startswith("amx")) if bf16 else "no bf16 units, bf16 not tried"
    reason = f"measured fastest on this CPU ({units}): x{ms[base] / ms[best]:.2f} over float32 NCHW"
    return FastPath(p, cl, reason, {k: round(v, 1) for k, v in ms.items()})


def _name(precision: str, channels_last: bool) -> str:
    return f"{precision}{'-channels_last' if channels_last else ''}"
