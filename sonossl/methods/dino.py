"""DINO: self-distillation with no labels (Caron, Touvron, Misra, Jégou, Mairal, Bojanowski,
Joulin, ICCV 2021, arXiv:2104.14294; code: facebookresearch/dino ``main_dino.py``).

A *student* (encoder + DINO head) is trained to match, with a cross-entropy, the output
distribution of a *teacher* of the same architecture whose weights are an exponential moving
average of the student's. Collapse is avoided by *centring* the teacher's outputs (subtracting
``c``, an EMA of their batch mean) and *sharpening* them (a low teacher temperature).

Multi-crop (sec. 3.1): every frame gives 2 global views and ``local_crops`` smaller local views;
"All crops are passed through the student while only the global views are passed to the
teacher". The loss averages ``H(P_t(x), P_s(x'))`` over every (global x, any view x' != x) pair.

Views come from :meth:`view_transforms` through the shared pair dataset, so ``pairs="temporal"``
works unchanged: the first global view is the anchor frame, every other view (global or local) a
frame of the same clip at most ``max_gap`` stored frames away.

The loss is lightly's ``DINOLoss`` (the centre is its registered buffer ``criterion.center``,
saved in checkpoints); its centre update all-reduces the batch mean across processes, as in
the authors' ``DINOLoss.update_center``. The backbone exported to ``backbone.pt`` is the
*teacher*'s: "We observe that this teacher has better performance than the student throughout
the training" (sec. 3.1), and the authors' evaluation scripts default to ``--checkpoint_key
teacher``.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule
from pydantic import Field, field_validator
from torch import nn

from sonossl.config import PretrainConfig
from sonossl.data.transforms import ViewTransform, asymmetric_pair
from sonossl.errors import SonosslError
from sonossl.methods.base import MethodOptions, SSLMethod
from sonossl.models.backbones import Encoder
from sonossl.models.fastpath import guard_cpu_bf16_convs

MAX_LOCAL_CROPS = 16  # each local crop adds a student forward pass per step


class DINOOptions(MethodOptions):
    # "The projection head consists of a 3-layer multi-layer perceptron (MLP) with hidden
    # dimension 2048 followed by l2 normalization and a weight normalized fully connected layer
    # with K dimensions" (sec. 3.1); bottleneck 256, K = 65536, no BatchNorm in the head and a
    # normalised last layer are main_dino.py's defaults (DINOHead's bottleneck_dim=256,
    # --out_dim 65536, --use_bn_in_head False, --norm_last_layer True).
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    out_dim: int = Field(65536, ge=2)
    batch_norm: bool = False
    norm_last_layer: bool = True
    # "2 global views at resolution 224^2 covering a large (for example greater than 50%) area
    # of the original image, and several local views of resolution 96^2 covering only small
    # areas (for example less than 50%) of the original image" (sec. 3.1). Scales and count:
    # main_dino.py's --global_crops_scale (0.4, 1.), --local_crops_scale (0.05, 0.4),
    # --local_crops_number 8.
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crops: int = Field(8, ge=0, le=MAX_LOCAL_CROPS)
    local_crop_ratio: float = Field(96 / 224, gt=0, le=1)  # local side / global side (96 / 224)
    # "The temperature tau_s is set to 0.1 while we use a linear warm-up for tau_t from 0.04 to
    # 0.07 during the first 30 epochs." (sec. 3.2, implementation details)
    student_temp: float = Field(0.1, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    teacher_temp: float = Field(0.07, gt=0)
    warmup_teacher_temp_epochs: int = Field(30, ge=0)
    # "c <- m c + (1 - m) 1/B sum_i g_theta_t(x_i)" (eq. 4); m = 0.9 (main_dino.py DINOLoss)
    center_momentum: float = Field(0.9, ge=0, lt=1)
    # "theta_t <- lambda theta_t + (1 - lambda) theta_s, with lambda following a cosine schedule
    # from 0.996 to 1 during training" (sec. 3.1)
    momentum: float = Field(0.996, ge=0, le=1)
    momentum_end: float = Field(1.0, ge=0, le=1)
    # main_dino.py: --freeze_last_layer 1 (epochs the head's last layer stays fixed) and
    # --clip_grad 3.0 (each parameter's gradient norm clipped to it; 0 disables)
    freeze_last_layer: int = Field(1, ge=0)
    clip_grad: float = Field(3.0, ge=0)

    def local_size(self, image_size: int) -> int:
        """The side in pixels of a local crop of ``image_size`` px frames."""
        return round(image_size * self.local_crop_ratio)

    @field_validator("global_crops_scale", "local_crops_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("expected 0 < min <= max <= 1 (area fractions of the frame)")
        return v


class WeightNormLinear(nn.Module):
    """``x @ W.T`` with ``W = g * V / ||V||`` row by row (weight normalisation, Salimans & Kingma
    2016), as ``nn.utils.weight_norm(nn.Linear(in_dim, out_dim, bias=False))`` with the same
    parameter names. Written out because torch's two weight-norm forms cannot be pickled into
    spawned DDP processes (the deprecated one holds a derived non-leaf tensor, the
    parametrised one refuses pickling). x: (batch, in_dim) -> (batch, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        # main_dino.py DINOHead: weight_g filled with 1, frozen when norm_last_layer
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True))


def dino_head(in_dim: int, o: DINOOptions) -> DINOProjectionHead:
    """lightly's DINO head, x: (batch, in_dim) -> (batch, out_dim): MLP, L2 normalisation, then
    the weight-normalised last layer, here a :class:`WeightNormLinear` (same maths and names)."""
    with warnings.catch_warnings():  # lightly's deprecated weight-norm layer is replaced below
        warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.*deprecated", category=FutureWarning)
        head = DINOProjectionHead(
            in_dim, o.hidden_dim, o.bottleneck_dim, o.out_dim,
            batch_norm=o.batch_norm, freeze_last_layer=o.freeze_last_layer, norm_last_layer=o.norm_last_layer,
        )
    head.last_layer = WeightNormLinear(o.bottleneck_dim, o.out_dim, fixed_norm=o.norm_last_layer)
    return head


class DINO(SSLMethod):
    name = "dino"
    Options = DINOOptions
    loss_is_objective = False  # measured against a moving teacher with a moving centre: it can rise in healthy runs

    @classmethod
    def check_config(cls, cfg: PretrainConfig, o: DINOOptions) -> None:
        super().check_config(cfg, o)
        for name, view in (("view1", cfg.augment.view1), ("view2", cfg.augment.view2)):
            if view.crop_scale is not None and tuple(view.crop_scale) != tuple(o.global_crops_scale):
                raise SonosslError(f"augment.{name}.crop_scale: dino's global crops take method_options.global_crops_scale "
                                   f"({tuple(o.global_crops_scale)}); set it there")
        if cfg.image_size is None:  # the frame store's size: checked when the run starts
            return
        local = o.local_size(cfg.image_size)
        if o.local_crops and local < 8:
            raise SonosslError(
                f"image_size: {cfg.image_size} px is too small for dino's local crops (method_options.local_crop_ratio "
                f"{o.local_crop_ratio} gives {local} px; need >= 8 px)"
            )

    @classmethod
    def smallest_view(cls, cfg: PretrainConfig, o: DINOOptions) -> int:
        return o.local_size(cfg.image_size) if o.local_crops else cfg.image_size

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        o = self.options
        self.local_crop_size = o.local_size(cfg.image_size)
        self.head = dino_head(self.encoder.feature_dim, o)
        # local crops of <= 16 px reach a 1x1 map in the last stage, where a CPU's bf16 weight gradient
        # of a strided conv is garbage (oneDNN, sonossl.models.fastpath): those convs compute in float32
        guard_cpu_bf16_convs(self.encoder)
        # "the exact same architecture in both student and teacher networks" (sec. 3.1); the
        # teacher starts as a copy of the student (main_dino.py) and gets no gradient.
        self.teacher_encoder = copy.deepcopy(self.encoder)
        self.teacher_head = copy.deepcopy(self.head)
        deactivate_requires_grad(self.teacher_encoder)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=o.out_dim, warmup_teacher_temp=o.warmup_teacher_temp, teacher_temp=o.teacher_temp,
            warmup_teacher_temp_epochs=o.warmup_teacher_temp_epochs, student_temp=o.student_temp,
            center_momentum=o.center_momentum,
        )

    # ---- views ------------------------------------------------------------------------------
    def default_views(self) -> list[ViewTransform]:
        """[global 1, global 2, local x ``local_crops``]. As main_dino.py's DataAugmentationDINO:
        global 1 always blurred, global 2 blurred with p 0.1 and solarised with p 0.2 (the
        asymmetric pair), each local view blurred with p 0.5. ``augment.view1``/``view2`` apply to
        the global crops; the local crops flip as ``augment.view1.hflip`` says."""
        o, hflip = self.options, bool(self.cfg.augment.view1.hflip)
        globals_ = asymmetric_pair(self.cfg.image_size, scale=o.global_crops_scale)
        local = ViewTransform(size=self.local_crop_size, scale=o.local_crops_scale, blur_p=0.5, hflip=hflip)
        return [*globals_, *[local] * o.local_crops]

    # ---- teacher ----------------------------------------------------------------------------
    def momentum_pairs(self):
        return [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head)]

    def momentum(self) -> float:
        """lambda at the current step: cosine from ``momentum`` to ``momentum_end`` over the
        run's optimiser steps (main_dino.py ``momentum_schedule``)."""
        o = self.options
        return cosine_schedule(self.global_step, max(1, self._total_steps), o.momentum, o.momentum_end)

    def export_encoder(self) -> Encoder:
        """The teacher's encoder becomes ``backbone.pt`` (the authors evaluate the teacher)."""
        return self.teacher_encoder

    def teacher_temp(self, epoch: int) -> float:
        """tau_t: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the first
        ``warmup_teacher_temp_epochs`` epochs, then constant (main_dino.py
        ``np.linspace(warmup, final, warmup_epochs)``, indexed by epoch)."""
        o = self.options
        if epoch >= o.warmup_teacher_temp_epochs:
            return o.teacher_temp
        t = epoch / max(1, o.warmup_teacher_temp_epochs - 1)
        return o.warmup_teacher_temp + t * (o.teacher_temp - o.warmup_teacher_temp)

    # ---- loss -------------------------------------------------------------------------------
    def loss(self, teacher_out: list[torch.Tensor], student_out: list[torch.Tensor], teacher_temp: float) -> torch.Tensor:
        """teacher_out: 2 global views' outputs, each (batch_size, out_dim); student_out: every
        view's, global ones first, each (batch_size, out_dim) -> scalar: the mean over pairs
        (teacher view t, student view s != t) of the batch-mean cross-entropy
        ``-sum softmax((t - c) / tau_t) * log_softmax(s / tau_s)``.

        Updates the centre ``c`` with the teacher outputs (all processes' batch mean).
        In float32 with autocast off: softmax over 65536 logits at tau 0.04 needs it."""
        shapes = {tuple(t.shape) for t in (*teacher_out, *student_out)}
        if len(teacher_out) != 2 or len(student_out) < 2 or len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(
                f"expected 2 teacher and >= 2 student outputs, all (batch, out_dim) of one shape, got "
                f"{len(teacher_out)} and {len(student_out)} of shapes {sorted(shapes)}"
            )
        with torch.autocast(device_type=student_out[0].device.type, enabled=False):
            return self.criterion(
                [t.detach().float() for t in teacher_out], [s.float() for s in student_out], teacher_temp=teacher_temp
            )

    def _embed(self, encoder: Encoder, head: nn.Module, views) -> list[torch.Tensor]:
        """views: each (batch_size, 1, S_v, S_v) -> each (batch_size, out_dim). Consecutive views
        of one size go through the encoder as one batch (main_dino.py ``MultiCropWrapper``)."""
        feats, i = [], 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
                j += 1
            feats.append(encoder(torch.cat(views[i:j])))
            i = j
        return list(head(torch.cat(feats)).chunk(len(views)))

    def forward_loss(self, batch):
        """batch: (global 1, global 2, local 1, ..., local N); globals (batch_size, 1, S, S),
        locals (batch_size, 1, s, s) with s = round(S * local_crop_ratio)."""
        if len(batch) != 2 + self.options.local_crops:
            raise ValueError(f"expected {2 + self.options.local_crops} views (2 global + local_crops), got {len(batch)}")
        views = list(batch)
        with torch.no_grad():
            teacher_out = self._embed(self.teacher_encoder, self.teacher_head, views[:2])
        student_out = self._embed(self.encoder, self.head, views)
        temp = self.teacher_temp(self.current_epoch)
        return self.loss(teacher_out, student_out, temp), {"teacher_temp": torch.tensor(temp)}

    # ---- the update -------------------------------------------------------------------------
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """After backward, before the step (main_dino.py ``train_one_epoch``): clip each
        parameter's gradient norm to ``clip_grad``, then drop the head's last-layer gradients
        during the first ``freeze_last_layer`` epochs. (Replaces Lightning's trainer-level clipping,
        which sonossl does not configure.)"""
        if self.options.clip_grad > 0:
            for p in self.parameters():
                if p.grad is not None:  # utils.clip_gradients: scale by clip / (norm + 1e-6) if < 1
                    p.grad.mul_(torch.clamp(self.options.clip_grad / (p.grad.norm(2) + 1e-6), max=1.0))
        self.head.cancel_last_layer_gradients(self.current_epoch)
