"""AutoEncoder: reconstruct the frame from the encoder's last feature map (the seed study's
reconstruction family).

- ``standard``: an auto-encoder (Hinton & Salakhutdinov, Science 2006, "Reducing the
  dimensionality of data with neural networks") trained with the mean squared error between the
  frame and its reconstruction;
- ``denoise``: a denoising auto-encoder (Vincent, Larochelle, Bengio, Manzagol, ICML 2008,
  "Extracting and composing robust features with denoising autoencoders"): the input is
  corrupted, the target is the clean frame;
- ``inpaint``: the input has one random rectangle erased (random erasing, Zhong et al., AAAI
  2020), the target is the clean frame, as in Context Encoders (Pathak et al., CVPR 2016),
  "trained to generate the contents of an arbitrary image region conditioned on its
  surroundings" (with the plain L2 loss over the whole frame, no adversarial term).

The encoder is the plain torchvision trunk every method pretrains (so ``backbone.pt`` loads into
``torchvision.models.resnet18()``); the decoder reads its last feature map, ``(B, C, S/32,
S/32)`` (ResNet ``layer4``; ConvNeXt ``features``), and upsamples it back to ``(B, 1, S, S)``.

Recipe (docs/methods.md, seed code): "Adam lr 1e-3, wd 1e-6, step decay". The config offers AdamW,
which with a weight decay of 1e-6 is Adam up to a negligible decoupling; the step decay is
:meth:`AutoEncoder.lr_schedule`. Corruptions are drawn on the device from a generator seeded
by ``(seed, step, rank)``, so a resumed run corrupts exactly as a straight one.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from sonossl.config import PretrainConfig
from sonossl.data.transforms import ViewTransform
from sonossl.errors import SonosslError
from sonossl.methods.base import MethodOptions, SSLMethod
from sonossl.models.backbones import get_spec


class AEOptions(MethodOptions):
    variant: Literal["standard", "denoise", "inpaint"] = "standard"
    # Channels after each x2 upsampling stage; 5 stages undo the ResNet's stride 32 (a different
    # number of stages is followed by a resize to the input size). Our choice: halve the width
    # per stage, as a U-Net/ResNet decoder does.
    decoder: list[PositiveInt] = Field(default_factory=lambda: [256, 128, 64, 32, 16], min_length=1)
    # denoise: additive Gaussian noise on [0, 1] intensities (our choice of sigma).
    noise_std: float = Field(0.1, gt=0)
    # inpaint: torchvision RandomErasing's defaults, "scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0",
    # applied to every frame (p = 1): each input has a hole to fill.
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_value: float = Field(0.0, ge=0, le=1)
    # "step decay" (docs/methods.md, seed code): lr x lr_gamma every lr_step_epochs epochs; the
    # values are torchvision's ImageNet reference StepLR(step_size=30, gamma=0.1).
    lr_step_epochs: float = Field(30.0, gt=0)
    lr_gamma: float = Field(0.1, gt=0, le=1)


class Decoder(nn.Module):
    """Feature map ``(B, in_ch, h, w)`` -> image ``(B, 1, H, W)`` in [0, 1].

    Each stage: nearest x2 upsampling, 3x3 conv, BatchNorm, ReLU (upsample + conv rather than a
    transposed conv, which leaves checkerboard artefacts: Odena, Dumoulin, Olah, Distill 2016);
    then a 3x3 conv to one channel, resized to ``(H, W)`` if the stages do not land on it, and a
    sigmoid (targets are intensities in [0, 1]).
    """

    def __init__(self, in_ch: int, channels: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip([in_ch, *channels[:-1]], channels):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(a, b, 3, padding=1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(inplace=True),
            ]
        self.stages = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.out(self.stages(h))
        if y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(y)


class AutoEncoder(SSLMethod):
    name = "ae"
    Options = AEOptions

    @classmethod
    def check_config(cls, cfg: PretrainConfig, o: AEOptions) -> None:
        super().check_config(cfg, o)
        if cfg.pairs != "augment":
            raise SonosslError(f"pairs: {cls.name} reconstructs single frames; 'temporal' pairs do not apply (use 'augment')")
        if not (0 < o.erase_scale[0] <= o.erase_scale[1] < 1 and 0 < o.erase_ratio[0] <= o.erase_ratio[1]):
            raise SonosslError(
                f"method_options (ae): erase_scale must satisfy 0 < lo <= hi < 1 and erase_ratio 0 < lo <= hi "
                f"(got {o.erase_scale}, {o.erase_ratio})"
            )
        if cfg.augment.view2.transform_kwargs():
            raise SonosslError(f"augment.view2: {cls.name} draws one view; set its augmentation under augment.view1")
        with torch.device("meta"):  # the architecture only, no weights allocated
            trunk = get_spec(cfg.backbone).constructor()
        if not (hasattr(trunk, "layer4") or hasattr(trunk, "features")):
            raise SonosslError(f"backbone: {cfg.backbone} has no feature map the ae decoder knows how to read")

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        o = self.options
        self.decoder = Decoder(self.encoder.feature_dim, list(o.decoder))  # layer4's / features' channels

    # ---- views and schedule -----------------------------------------------------------------
    def default_views(self) -> list[ViewTransform]:
        """One mildly augmented view (the reconstruction target is the view itself)."""
        return [
            ViewTransform(
                size=self.cfg.image_size, scale=(0.5, 1.0), jitter_p=0.5, brightness=0.2, contrast=0.2,
                gamma_p=0.3, speckle_p=0.0, blur_p=0.0, solarize_p=0.0,
            )
        ]

    def lr_schedule(self, step: int, steps_per_epoch: int) -> float:
        """Linear warm-up over ``warmup_epochs``, then x ``lr_gamma`` every ``lr_step_epochs``
        epochs (``final_lr_ratio`` is not used)."""
        warmup = round(self.cfg.warmup_epochs * steps_per_epoch)
        if warmup > 0 and step < warmup:
            return step / warmup
        epoch = step / steps_per_epoch
        return self.options.lr_gamma ** math.floor(epoch / self.options.lr_step_epochs + 1e-9)

    # ---- the model --------------------------------------------------------------------------
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1|3, S, S) in [0, 1] -> the trunk's last feature map (B, C, S/32, S/32).

        The trunk's layers are run one by one, with the normalisation :class:`Encoder` applies,
        stopping before the global pooling."""
        e, t = self.encoder, self.encoder.trunk
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - e.mean) / e.std
        if hasattr(t, "layer4"):
            x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
            return t.layer4(t.layer3(t.layer2(t.layer1(x))))
        return t.features(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, S, S) in [0, 1] -> reconstruction (B, 1, S, S) in [0, 1]."""
        return self.decoder(self.feature_map(x), tuple(x.shape[-2:]))

    def corrupt(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The variant's input corruption of x: (B, 1, S, S) in [0, 1] (``x`` itself for ``standard``)."""
        o = self.options
        if o.variant == "standard":
            return x
        if o.variant == "denoise":
            noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            return (x + o.noise_std * noise).clamp(0, 1)
        return x.masked_fill(erase_mask(x.shape, o.erase_scale, o.erase_ratio, g, x.device), o.erase_value)

    def _generator(self, device: torch.device) -> torch.Generator:
        rank = self.trainer.global_rank if self._trainer is not None else 0
        seed = np.random.SeedSequence([self.cfg.seed, self.global_step, rank]).generate_state(1, np.uint64)[0] >> 1
        return torch.Generator(device=device).manual_seed(int(seed))

    def forward_loss(self, batch):
        """batch: (view,), (batch_size, 1, S, S); loss: MSE(reconstruct(corrupt(view)), view)."""
        (x,) = batch
        if x.dtype == torch.uint8:
            x = x.float() / 255
        recon = self.reconstruct(self.corrupt(x, self._generator(x.device)))
        loss = F.mse_loss(recon.float(), x.float())
        return loss, {}


def erase_mask(
    shape: torch.Size, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator, device
) -> torch.Tensor:
    """One random rectangle per image, torchvision ``RandomErasing``'s sampling (area fraction
    uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``), clipped to the image
    instead of re-drawn: bool mask (B, 1, H, W), True inside the rectangle."""
    b, _, h, w = shape

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=g, device=device)

    area = h * w * u(*scale)
    aspect = torch.exp(u(math.log(ratio[0]), math.log(ratio[1])))
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = torch.floor(u(0, 1) * (h - eh + 1))
    left = torch.floor(u(0, 1) * (w - ew + 1))
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
