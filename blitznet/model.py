"""The BlitzNet network (thesis appendix C, Dvornik et al. ICCV 2017).

ResNet backbone -> downscale stream (extra strided residual blocks, the SSD pyramid) ->
upscale stream (deconvolution steps with ResSkip fusion blocks) -> one conv per level for
detection, one segmentation head over all upscale levels.

Input of :meth:`BlitzNet.forward`: a float tensor ``[B, 3, H, W]`` already normalised with
:meth:`BlitzNet.normalize` (uint8 RGB -> ImageNet mean/std). Output (train and eval mode
alike): a dict with

- ``cls_logits`` ``[B, N, C + 1]`` (index 0 = background) and ``box_deltas`` ``[B, N, 4]``
  (SSD encoding, see :mod:`blitznet.losses`) when detection is enabled, anchors ordered as in
  :mod:`blitznet.anchors`;
- ``seg_logits`` ``[B, C + 1, H / s, W / s]`` at the finest upscale level (stride ``s`` = 4 or
  8) when segmentation is enabled;
- ``feature_sizes``: list of ``(h, w)`` of the pyramid levels, finest first.

The detection head of each level is a 3x3 conv for the ``A * (C + 1)`` class scores and one for
the ``A * 4`` box offsets -- together one conv with concatenated outputs, kept as two modules so
that :meth:`BlitzNet.add_classes` can grow the class outputs. Losses are in
:mod:`blitznet.losses`, decoding + capped NMS in :meth:`BlitzNet.postprocess`.

Backbone BatchNorm layers train normally (random init here; no pretrained weights exist).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from incdet.engine.config import check_choice, check_range
from incdet.errors import CheckpointError, ConfigError

from blitznet.anchors import anchor_count, anchors_per_location, conv_out, generate_anchors, ssd_scales

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BACKBONES = {
    "resnet18": (torchvision.models.resnet18, (64, 128, 256, 512)),
    "resnet34": (torchvision.models.resnet34, (64, 128, 256, 512)),
    "resnet50": (torchvision.models.resnet50, (256, 512, 1024, 2048)),
    "resnet101": (torchvision.models.resnet101, (256, 512, 1024, 2048)),
}
FUSIONS = ("resskip", "plain", "hourglass")
RESSKIP_PROJECTIONS = ("auto", "always")


@dataclass
class BlitzNetConfig:
    """Network configuration (plain builtins, saved in every weights file).

    ``num_classes`` counts foreground classes (the heads have ``num_classes + 1`` outputs).
    ``final_stride`` 4 uses ResNet stages C2..C5 as the first pyramid levels, 8 uses C3..C5.
    ``n_extra`` extra strided blocks follow (``None``: as many as needed to reach 1x1 at
    ``input_size``). ``fusion`` picks the upscale block: ``resskip`` (the paper's),
    ``plain`` (ResSkip without the residual sum) or ``hourglass`` (Newell et al.: a residual
    block on the skip map added to the upsampled stream).

    ``resskip_projection`` picks the residual branch of ResSkip: ``auto`` (the text, C.3.3:
    the block's output is "summed with the upsampled input" itself; a 1x1 conv + BN
    projection only where the channel counts differ, which never happens in this network:
    the upscale stream has ``channels`` everywhere) or ``always`` (a 1x1 conv + BN projection
    of the upsampled input, the behaviour before this key existed). A saved config without
    the key means ``always``: use :meth:`from_saved` to rebuild a network from a weights file
    or checkpoint.
    """

    num_classes: int = 20
    backbone: str = "resnet50"
    backbone_weights: Optional[str] = None  # torchvision ResNet state_dict (.pth) or zoo:NAME (sha256-checked)
    backbone_width: int = 64  # channels of the stem; 64 = torchvision's ResNet, 16 = the zoo's shapes trunk
    input_size: int = 300
    final_stride: int = 4
    n_extra: Optional[int] = None
    channels: int = 512
    seg_channels: int = 64
    fusion: str = "resskip"
    detection: bool = True
    segmentation: bool = True
    aspect_ratios: List[float] = field(default_factory=lambda: [2.0, 3.0])
    min_scale: float = 0.2
    max_scale: float = 0.9
    first_scale: Optional[float] = 0.1
    clip_anchors: bool = True
    resskip_projection: str = "auto"

    def __post_init__(self) -> None:
        """Value checks (ranges, choices): a bad value raises :class:`ConfigError` naming the
        key (``learner.model.KEY``; a weights file holds the same keys) and the valid range."""
        S = "learner.model"
        check_choice(S, "backbone", self.backbone, tuple(_BACKBONES))
        check_choice(S, "final_stride", self.final_stride, (4, 8))
        check_choice(S, "fusion", self.fusion, tuple(FUSIONS))
        check_choice(S, "resskip_projection", self.resskip_projection, RESSKIP_PROJECTIONS)
        if not (self.detection or self.segmentation):
            raise ConfigError(f"{S}: at least one of detection / segmentation must be enabled")
        check_range(S, "num_classes", self.num_classes, 1)
        check_range(S, "backbone_width", self.backbone_width, 8)
        if self.backbone_width % 8:
            raise ConfigError(f"{S}.backbone_width must be a multiple of 8, got {self.backbone_width}")
        check_range(S, "input_size", self.input_size, 32)
        check_range(S, "n_extra", self.n_extra, 0, allow_none=True)
        check_range(S, "channels", self.channels, 1)
        check_range(S, "seg_channels", self.seg_channels, 1)
        for r in self.aspect_ratios:
            check_range(S, "aspect_ratios", r, 0, lo_open=True)
        check_range(S, "min_scale", self.min_scale, 0, lo_open=True)
        check_range(S, "max_scale", self.max_scale, self.min_scale)
        check_range(S, "first_scale", self.first_scale, 0, lo_open=True, allow_none=True)
        self.aspect_ratios = [float(r) for r in self.aspect_ratios]

    def validate(self) -> "BlitzNetConfig":
        """The value checks of construction again (after fields were changed); returns self."""
        self.__post_init__()
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "BlitzNetConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**d).validate()

    @classmethod
    def from_saved(cls, d: dict) -> "BlitzNetConfig":
        """A config stored in a weights file / checkpoint. Keys added after the file was written
        take the value that reproduces the network it was written from: a missing
        ``resskip_projection`` means ``always`` (older files had the projection)."""
        d = dict(d)
        d.setdefault("resskip_projection", "always")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        return asdict(self)


def blitznet300(num_classes: int = 20, **kw) -> BlitzNetConfig:
    """BlitzNet300 (s4): 300x300 input, final stride 4, 45,390 anchors."""
    return BlitzNetConfig(num_classes=num_classes, input_size=300, final_stride=4, **kw).validate()


def blitznet512(num_classes: int = 20, **kw) -> BlitzNetConfig:
    """BlitzNet512 (s8): 512x512 input, final stride 8, 32,766 anchors."""
    return BlitzNetConfig(num_classes=num_classes, input_size=512, final_stride=8, **kw).validate()


# ---------------------------------------------------------------------------------------------
# building blocks


def _norm(c: int) -> nn.Module:
    return nn.BatchNorm2d(c)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: List[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), _norm(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _ssd_pad(n: int) -> int:
    # a 3x3/2 conv with padding 1 except on a 3-wide map, where SSD300's last layers use
    # 'valid' convolutions (3 -> 1): this gives the paper's 10 -> 5 -> 3 -> 1 pyramid.
    return 0 if n == 3 else 1


class StridedConv3x3(nn.Conv2d):
    """3x3 stride-2 conv whose padding follows :func:`_ssd_pad` on each axis."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, stride=2, padding=0, bias=False)

    def forward(self, x):
        ph, pw = _ssd_pad(x.shape[-2]), _ssd_pad(x.shape[-1])
        return F.conv2d(x, self.weight, self.bias, 2, (ph, pw))  # bias: None unless BN was folded in


class DownBlock(nn.Module):
    """Extra downscale-stream block: a strided ResNet bottleneck (1x1 -> 3x3/2 -> 1x1) with a
    1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = max(cout // 4, 8)
        self.reduce = conv_bn(cin, mid, 1)
        self.conv = nn.Sequential(StridedConv3x3(mid, mid), _norm(mid), nn.ReLU(inplace=True))
        self.expand = conv_bn(mid, cout, 1, relu=False)
        self.shortcut = conv_bn(cin, cout, 1, relu=False)

    def forward(self, x):
        y = self.expand(self.conv(self.reduce(x)))
        s = self.shortcut(F.adaptive_avg_pool2d(x, y.shape[-2:]) if x.shape[-2:] != y.shape[-2:] else x)
        return F.relu(y + s)


def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ResSkip(nn.Module):
    """ResSkip fusion (figure C.3, text C.3.3).

    ``up = bilinear(x, size(skip))``; ``y = conv1x1 -> conv3x3 -> conv1x1 (cat[up, skip])``;
    output ``relu(y + up)`` (the text: "summed with the upsampled input through a residual
    connection"). ``projection="always"``, or ``"auto"`` with ``c_in != c_out``, sums a
    1x1 conv + BN projection instead: ``relu(y + proj1x1(up))`` (``self.proj`` is then a
    module, else None). With ``residual=False`` (the "no res" row of table C.8) the output is
    ``relu(y)``.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, residual: bool = True, projection: str = "auto"):
        super().__init__()
        if projection not in RESSKIP_PROJECTIONS:
            raise ConfigError(f"resskip_projection: {projection!r} is not one of {', '.join(RESSKIP_PROJECTIONS)}")
        mid = max(c_out // 2, 8)
        self.residual = residual
        self.block = nn.Sequential(
            conv_bn(c_in + c_skip, mid, 1), conv_bn(mid, mid, 3), conv_bn(mid, c_out, 1, relu=False)
        )
        use_proj = residual and (projection == "always" or c_in != c_out)
        self.proj = conv_bn(c_in, c_out, 1, relu=False) if use_proj else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = upsample_to(x, skip.shape[-2:])
        y = self.block(torch.cat([up, skip], 1))
        if self.residual:
            y = y + (self.proj(up) if self.proj is not None else up)
        return F.relu(y)


class HourglassFusion(nn.Module):
    """Hourglass-style fusion (Newell et al.): a residual bottleneck on the skip map, summed
    with the (projected) bilinearly upsampled incoming map."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        mid = max(c_out // 2, 8)
        self.skip_proj = conv_bn(c_skip, c_out, 1, relu=False)
        self.skip_res = nn.Sequential(conv_bn(c_out, mid, 1), conv_bn(mid, mid, 3), conv_bn(mid, c_out, 1, relu=False))
        self.up_proj = conv_bn(c_in, c_out, 1, relu=False)

    def forward(self, x, skip):
        s = self.skip_proj(skip)
        s = F.relu(s + self.skip_res(s))
        return F.relu(s + self.up_proj(upsample_to(x, skip.shape[-2:])))


def make_fusion(kind: str, c_in: int, c_skip: int, c_out: int, resskip_projection: str = "auto") -> nn.Module:
    if kind == "resskip":
        return ResSkip(c_in, c_skip, c_out, residual=True, projection=resskip_projection)
    if kind == "plain":
        return ResSkip(c_in, c_skip, c_out, residual=False)
    if kind == "hourglass":
        return HourglassFusion(c_in, c_skip, c_out)
    raise ConfigError(f"unknown fusion {kind!r}; known: {', '.join(FUSIONS)}")


def _grow_grouped_conv(conv: nn.Conv2d, groups: int, old_k: int, n_new: int, std: float = 0.01) -> nn.Conv2d:
    """A conv whose ``groups * old_k`` outputs are laid out as ``[group, k]``; append ``n_new``
    outputs to every group (new weights ~ N(0, std), bias 0), keeping old ones exactly."""
    w = conv.weight.data
    cin, kh, kw = w.shape[1:]
    new = nn.Conv2d(cin, groups * (old_k + n_new), (kh, kw), padding=conv.padding, bias=conv.bias is not None)
    new = new.to(device=w.device, dtype=w.dtype)
    w_old = w.view(groups, old_k, cin, kh, kw)
    w_add = torch.randn(groups, n_new, cin, kh, kw, device=w.device, dtype=w.dtype) * std
    new.weight.data.copy_(torch.cat([w_old, w_add], 1).view(-1, cin, kh, kw))
    if conv.bias is not None:
        b_old = conv.bias.data.view(groups, old_k)
        new.bias.data.copy_(torch.cat([b_old, b_old.new_zeros(groups, n_new)], 1).view(-1))
    return new


def _fold_pair(conv: nn.Module, bn: nn.Module) -> Optional[nn.Module]:
    if not (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and conv.out_channels == bn.num_features):
        return None
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv, bn)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a convolution into that convolution, in
    place, for inference; returns ``model``.

    ``conv(x) -> bn`` becomes one convolution with ``w * gamma / sqrt(var + eps)`` and a bias
    (the BN's running statistics): the same function up to float rounding, one memory pass fewer
    per layer. Pairs found: consecutive ``(Conv2d, BatchNorm2d)`` inside an ``nn.Sequential``
    (BlitzNet's ``conv_bn``, the stem, ResNet shortcuts) and the ``convK``/``bnK`` attributes of
    torchvision's ResNet blocks. Each folded BN becomes ``nn.Identity``. Only for a model in eval
    mode (a training-mode BN normalises with batch statistics): raises :class:`ConfigError`
    otherwise. Training or growing the heads of a folded model is not supported."""
    if model.training or any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        raise ConfigError("fold_batchnorm: the model (or one of its BatchNorms) is in training mode; "
                          "call model.eval() first")
    for mod in list(model.modules()):
        if isinstance(mod, nn.Sequential):
            names = list(mod._modules)
            for a, b in zip(names, names[1:]):
                fused = _fold_pair(mod._modules[a], mod._modules[b])
                if fused is not None:
                    mod._modules[a], mod._modules[b] = fused, nn.Identity()
        for k in range(1, 4):
            conv, bn = getattr(mod, f"conv{k}", None), getattr(mod, f"bn{k}", None)
            fused = _fold_pair(conv, bn) if isinstance(bn, nn.Module) else None
            if fused is not None:
                setattr(mod, f"conv{k}", fused)
                setattr(mod, f"bn{k}", nn.Identity())
    return model


# ---------------------------------------------------------------------------------------------
# the network


class BlitzNet(nn.Module):
    """BlitzNet: joint SSD-style detection and semantic segmentation (see module docstring)."""

    def __init__(self, config: BlitzNetConfig):
        super().__init__()
        self.config = config = config.validate()
        net, chans = _make_backbone(config.backbone, config.backbone_width)
        if config.backbone_weights:
            from incdet import zoo

            _load_backbone(net, zoo.resolve(config.backbone_weights))
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        stages = [net.layer1, net.layer2, net.layer3, net.layer4]
        first = 0 if config.final_stride == 4 else 1
        self.first_stage = first
        self.stages = nn.ModuleList(stages)
        down_ch = list(chans[first:])
        n_extra = config.n_extra if config.n_extra is not None else self._auto_extra(config.input_size)
        self.n_extra = n_extra
        extras, c = [], chans[-1]
        for _ in range(n_extra):
            extras.append(DownBlock(c, config.channels))
            c = config.channels
            down_ch.append(c)
        self.extras = nn.ModuleList(extras)
        self.down_channels = down_ch
        L = len(down_ch)
        self.n_levels = L
        C = config.channels
        # top of the upscale stream: 1x1 projection of the coarsest map to `channels`
        self.top = conv_bn(down_ch[-1], C, 1)
        # fusion block k fuses upscale level k+1 with skip = downscale level k (k = L-2 .. 0)
        self.fusions = nn.ModuleList([make_fusion(config.fusion, C, down_ch[k], C, config.resskip_projection) for k in range(L - 1)])
        nc = config.num_classes + 1
        self.num_anchors = anchors_per_location(config.aspect_ratios)
        A = self.num_anchors
        if config.detection:
            self.cls_heads = nn.ModuleList([nn.Conv2d(C, A * nc, 3, padding=1) for _ in range(L)])
            self.box_heads = nn.ModuleList([nn.Conv2d(C, A * 4, 3, padding=1) for _ in range(L)])
            for m in list(self.cls_heads) + list(self.box_heads):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        if config.segmentation:
            self.seg_reduce = nn.ModuleList([nn.Sequential(nn.Conv2d(C, config.seg_channels, 1), nn.ReLU(inplace=True))
                                             for _ in range(L)])
            self.seg_cls = nn.Conv2d(L * config.seg_channels, nc, 3, padding=1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self._anchor_cache: Dict[tuple, torch.Tensor] = {}

    # -- geometry ------------------------------------------------------------------------------
    def _auto_extra(self, size: int) -> int:
        n = self.feature_sizes((size, size))[-1][0]  # with 0 extras
        k = 0
        while n > 1:
            n = conv_out(n, 3, 2, _ssd_pad(n))
            k += 1
        return k

    def feature_sizes(self, image_size: Tuple[int, int]) -> List[Tuple[int, int]]:
        """Pyramid sizes for an input ``(H, W)``, computed by conv arithmetic (finest first)."""
        out = []
        for n in image_size:
            n = conv_out(conv_out(n, 7, 2, 3), 3, 2, 1)
            sizes = [n]
            for _ in range(3):
                n = conv_out(n, 3, 2, 1)
                sizes.append(n)
            sizes = sizes[self.first_stage:]
            for _ in range(getattr(self, "n_extra", 0)):
                n = conv_out(n, 3, 2, _ssd_pad(n))
                sizes.append(n)
            out.append(sizes)
        return list(zip(out[0], out[1]))

    def anchor_scales(self) -> List[float]:
        c = self.config
        return ssd_scales(self.n_levels, c.min_scale, c.max_scale, c.first_scale)

    def num_anchors_for(self, image_size: Optional[Tuple[int, int]] = None) -> int:
        """Total anchor count at ``image_size`` (default: the configured input size)."""
        s = image_size or (self.config.input_size, self.config.input_size)
        return anchor_count(self.feature_sizes(s), self.config.aspect_ratios)

    def anchors(self, feature_sizes: Sequence[Tuple[int, int]], image_size: Tuple[int, int], device=None) -> torch.Tensor:
        key = (tuple(map(tuple, feature_sizes)), tuple(image_size), str(device))
        a = self._anchor_cache.get(key)
        if a is None:
            a = generate_anchors(feature_sizes, image_size, self.config.aspect_ratios, self.anchor_scales(),
                                 clip=self.config.clip_anchors, device=device)
            self._anchor_cache[key] = a
        return a

    # -- forward -------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8/float RGB in [0, 255] ``[B, 3, H, W]`` -> normalised float input."""
        return (images.float() - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        down = []
        y = self.stem(x)
        for i, stage in enumerate(self.stages):
            y = stage(y)
            if i >= self.first_stage:
                down.append(y)
        for blk in self.extras:
            y = blk(y)
            down.append(y)
        ups = [None] * self.n_levels
        u = self.top(down[-1])
        ups[-1] = u
        for k in range(self.n_levels - 2, -1, -1):
            u = self.fusions[k](u, down[k])
            ups[k] = u
        out: Dict[str, torch.Tensor] = {"feature_sizes": [tuple(t.shape[-2:]) for t in ups]}
        B = x.shape[0]
        nc = self.config.num_classes + 1
        if self.config.detection:
            cls = [h(u).permute(0, 2, 3, 1).reshape(B, -1, nc) for h, u in zip(self.cls_heads, ups)]
            box = [h(u).permute(0, 2, 3, 1).reshape(B, -1, 4) for h, u in zip(self.box_heads, ups)]
            out["cls_logits"] = torch.cat(cls, 1)
            out["box_deltas"] = torch.cat(box, 1)
        if self.config.segmentation:
            size = ups[0].shape[-2:]
            feats = [upsample_to(r(u), size) for r, u in zip(self.seg_reduce, ups)]
            out["seg_logits"] = self.seg_cls(torch.cat(feats, 1))
        return out

    # -- class-incremental growth --------------------------------------------------------------
    @torch.no_grad()
    def add_classes(self, n_new: int) -> None:
        """Append ``n_new`` foreground outputs to both heads (old outputs unchanged)."""
        if n_new <= 0:
            return
        old = self.config.num_classes + 1
        if self.config.detection:
            for i, h in enumerate(self.cls_heads):
                self.cls_heads[i] = _grow_grouped_conv(h, self.num_anchors, old, n_new)
        if self.config.segmentation:
            self.seg_cls = _grow_grouped_conv(self.seg_cls, 1, old, n_new)
        self.config.num_classes += n_new

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, out: Dict[str, torch.Tensor], input_size: Tuple[int, int],
                    orig_sizes: Optional[Sequence[Tuple[int, int]]] = None, per_image: bool = False,
                    **nms_kw) -> List[dict]:
        """Decode detections (softmax, SSD decoding, capped fast NMS) and segmentation.

        Returns per image a dict with ``boxes`` ``[K, 4]`` xyxy in ``orig_sizes`` pixels (input
        pixels when not given), ``labels`` (1-based), ``scores``, and ``mask`` ``[H, W]`` uint8
        (argmax of the upsampled segmentation logits) when segmentation is enabled.

        The whole batch goes through one capped NMS call (:func:`blitznet.nms.capped_nms_flat`)
        and one rescale/clamp; the masks through one upsampling when all ``orig_sizes`` are
        equal. ``per_image=True`` runs the former per-image loop instead (same results; kept
        as the reference for tests and benchmarks).
        """
        from blitznet.losses import decode_boxes
        from blitznet.nms import capped_nms_flat, capped_nms_single, split_by_image

        B = (out.get("cls_logits") if "cls_logits" in out else out["seg_logits"]).shape[0]
        H, W = input_size
        sizes = [tuple(s) for s in orig_sizes] if orig_sizes is not None else [(H, W)] * B
        results = [dict() for _ in range(B)]
        if "cls_logits" in out:
            anchors = self.anchors(out["feature_sizes"], input_size, out["cls_logits"].device)
            probs = out["cls_logits"].float().softmax(-1)[..., 1:]
            boxes = decode_boxes(out["box_deltas"].float(), anchors)
            if per_image:
                for i in range(B):
                    b, s, l = capped_nms_single(boxes[i], probs[i], **nms_kw)
                    oh, ow = sizes[i]
                    sc = b.new_tensor([ow / W, oh / H, ow / W, oh / H])
                    b = b * sc
                    b[:, 0::2] = b[:, 0::2].clamp(0, ow - 1)
                    b[:, 1::2] = b[:, 1::2].clamp(0, oh - 1)
                    results[i].update(boxes=b, scores=s, labels=l + 1)
            else:
                b, s, l, im = capped_nms_flat(boxes, probs, **nms_kw)
                hw = torch.tensor(sizes, dtype=torch.float64)  # [B, 2] (h, w)
                sc = torch.stack([hw[:, 1] / W, hw[:, 0] / H], 1).repeat(1, 2).to(b)  # [B, 4]
                hi = torch.stack([hw[:, 1] - 1, hw[:, 0] - 1], 1).repeat(1, 2).to(b)
                b = torch.minimum((b * sc[im]).clamp(min=0), hi[im])
                for i, (bi, si, li) in enumerate(split_by_image(im, B, b, s, l + 1)):
                    results[i].update(boxes=bi, scores=si, labels=li)
        if "seg_logits" in out:
            seg = out["seg_logits"]
            if not per_image and len(set(sizes)) == 1:
                lg = F.interpolate(seg.float(), size=sizes[0], mode="bilinear", align_corners=False)
                for i, m in enumerate(lg.argmax(1).to(torch.uint8)):
                    results[i]["mask"] = m
            else:
                for i in range(B):
                    lg = F.interpolate(seg[i:i + 1].float(), size=sizes[i], mode="bilinear", align_corners=False)
                    results[i]["mask"] = lg[0].argmax(0).to(torch.uint8)
        return results


def _make_backbone(name: str, width: int) -> Tuple[nn.Module, Tuple[int, ...]]:
    """A randomly initialised ResNet with torchvision's module names and its stage channels.
    Width 64 is torchvision's own network; another width is incdet's :class:`ResNetC4` (the
    layout ``incdet pretrain`` writes, e.g. the zoo's width-16 shapes trunk)."""
    fn, chans = _BACKBONES[name]
    if width == 64:
        return fn(weights=None), chans
    from incdet.models.fastrcnn import ResNetC4

    return ResNetC4(int(name[len("resnet"):]), width, "bn", res5_stride=2), tuple(c * width // 64 for c in chans)


def _load_backbone(net: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: backbone weights file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read backbone weights ({e})") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = net.state_dict()
    bad = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: ResNet weights of another width or depth ({bad[0]}: "
                              f"{tuple(sd[bad[0]].shape)} in the file, the network has {tuple(own[bad[0]].shape)}); "
                              "set learner.model.backbone / backbone_width to the file's")
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: not a matching ResNet state_dict (missing {missing[:5]}, unexpected {unexpected[:5]})")
