"""Fast R-CNN with a ResNet-C4 trunk on precomputed class-agnostic proposals (thesis 3.1).

The network: ResNet stem + res2..res4 (stride 16) over the whole image; RoI pooling of each
proposal to ``roi_size x roi_size`` (``torchvision.ops.roi_pool``, or ``roi_align``); the res5
blocks applied per RoI; global average pooling; two sibling linear layers: classification
(background + C classes) and class-specific box regression (4 C outputs).

The output layers are kept as a list of *chunks* (thesis 3.2: "we create sibling layers for
new classes only and concatenate their outputs with the original ones"): chunk 0 holds the
background and the first group of classes, every :meth:`FastRCNN.add_classes` appends a chunk
for the new classes. Old outputs are therefore bit-identical after an extension, and "train
only the new outputs" is freezing every chunk but the last.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import batched_nms, roi_align, roi_pool
from torchvision.ops.misc import FrozenBatchNorm2d

from incdet.engine.config import check_choice, check_range
from incdet.errors import CheckpointError, ConfigError
from incdet.models.sampling import BoxCoder, SamplerConfig, sample_rois

log = logging.getLogger(__name__)

_DEPTHS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
           50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3])}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DetectorConfig:
    """Network, input and inference settings.

    ``norm`` selects the normalisation layers: ``frozen_bn`` (FrozenBatchNorm2d, the paper's
    choice, meant for ImageNet weights: with random init it is the identity and a deep ResNet
    does not train from scratch), ``bn`` (trainable BatchNorm2d; the frozen teacher then runs
    with running statistics while the student uses batch statistics), ``gn`` (GroupNorm, behaves
    the same in train and eval mode and trains from scratch on small batches), ``auto``
    (default): ``frozen_bn`` when ``weights`` is given, ``gn`` otherwise.
    ``freeze_at``: 0 trains everything, 1 freezes the stem, 2 the stem and res2; -1 (default)
    means 0, with or without ``weights``: the thesis fine-tunes all layers of A and B ("All the
    layers of A(C_A) and B(C_B) networks are finetuned unless stated otherwise", 3.4.2; with
    ``frozen_bn`` only the normalisation layers stay fixed). Detectron's C4 recipe (2) must be
    asked for explicitly.
    """

    depth: int = 50
    width: int = 64  # channels of the stem; 64 is the standard ResNet (torchvision weights)
    weights: Optional[str] = None  # local torchvision ResNet state_dict (.pth) or zoo:NAME (sha256-checked); never downloaded
    norm: str = "auto"
    freeze_at: int = -1
    roi_op: str = "pool"  # pool | align
    roi_size: int = 7
    res5_stride: int = 1  # 1 as the thesis code (7x7 RoI -> res5 at 7x7); 2 halves it (cheaper)
    box_std: Tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    min_size: int = 600
    max_size: int = 1000
    # training batches
    rois_per_image: int = 64
    fg_fraction: float = 0.25
    fg_iou: float = 0.5
    bg_iou_lo: float = 0.0
    add_gt_as_proposals: bool = False
    gt_jitter: int = 0  # training only: jittered copies of each gt box added as candidate RoIs
    gt_jitter_scale: float = 0.15
    smooth_l1_beta: float = 1.0
    # inference
    score_thresh: float = 0.05
    nms_iou: float = 0.3
    detections_per_img: int = 100
    roi_chunk: int = 512  # RoIs per head pass when scoring all proposals
    # training with distillation RoIs: a distillation RoI equal to a training RoI (or to another
    # distillation RoI) of the same image runs the head once and its outputs are shared. Same
    # losses and gradients (up to float summation order); applied only when the head's output for
    # a RoI does not depend on the other RoIs of the pass (no BatchNorm in train mode in res5).
    reuse_rois: bool = True

    def __post_init__(self) -> None:
        """Value checks (ranges, choices): a bad value raises :class:`ConfigError` naming the
        key (``learner.model.KEY``) and the valid range, when the config is built."""
        S = "learner.model"
        check_choice(S, "depth", self.depth, sorted(_DEPTHS))
        check_range(S, "width", self.width, 8)
        if self.width % 8:
            raise ConfigError(f"{S}.width must be a multiple of 8, got {self.width}")
        check_choice(S, "norm", self.norm, ("auto", "frozen_bn", "bn", "gn"))
        check_range(S, "freeze_at", self.freeze_at, -1, 2)
        check_choice(S, "roi_op", self.roi_op, ("pool", "align"))
        check_range(S, "roi_size", self.roi_size, 1)
        check_choice(S, "res5_stride", self.res5_stride, (1, 2))
        if len(self.box_std) != 4:
            raise ConfigError(f"{S}.box_std must have 4 values, got {list(self.box_std)}")
        for v in self.box_std:
            check_range(S, "box_std", v, 0, lo_open=True)
        check_range(S, "min_size", self.min_size, 1)
        check_range(S, "max_size", self.max_size, self.min_size)
        check_range(S, "rois_per_image", self.rois_per_image, 1)
        check_range(S, "fg_fraction", self.fg_fraction, 0, 1, lo_open=True)
        check_range(S, "fg_iou", self.fg_iou, 0, 1, lo_open=True)
        check_range(S, "bg_iou_lo", self.bg_iou_lo, 0, self.fg_iou, hi_open=True)
        check_range(S, "gt_jitter", self.gt_jitter, 0)
        check_range(S, "gt_jitter_scale", self.gt_jitter_scale, 0)
        check_range(S, "smooth_l1_beta", self.smooth_l1_beta, 0)
        check_range(S, "score_thresh", self.score_thresh, 0, 1, hi_open=True)
        check_range(S, "nms_iou", self.nms_iou, 0, 1, lo_open=True)
        check_range(S, "detections_per_img", self.detections_per_img, 1)
        check_range(S, "roi_chunk", self.roi_chunk, 1)

    def validate(self) -> None:
        """The value checks of construction, and that a ``weights`` file exists."""
        self.__post_init__()
        if self.weights is not None:
            from incdet import zoo

            if zoo.is_zoo_ref(self.weights):
                zoo.resolve(self.weights)  # known entry, file present, sha256 as in the manifest
            elif not os.path.isfile(self.weights):
                raise ConfigError(f"learner.model.weights: file {self.weights} does not exist")

    def sampler(self) -> SamplerConfig:
        return SamplerConfig(self.rois_per_image, self.fg_fraction, self.fg_iou, self.fg_iou,
                             self.bg_iou_lo, self.add_gt_as_proposals, self.gt_jitter, self.gt_jitter_scale)

    @property
    def resolved_norm(self) -> str:
        if self.norm == "auto":
            return "frozen_bn" if self.weights else "gn"
        return self.norm

    @property
    def resolved_freeze_at(self) -> int:
        return max(self.freeze_at, 0)


def _norm_layer(kind: str):
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    return lambda c: nn.GroupNorm(_gn_groups(c), c)


def _gn_groups(c: int) -> int:
    """32 groups, but at least 4 channels per group for narrow layers (a divisor of ``c``)."""
    g = min(32, max(1, c // 4))
    while c % g:
        g -= 1
    return g


def _make_layer(block, inplanes: int, planes: int, blocks: int, stride: int, norm) -> Tuple[nn.Sequential, int]:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            norm(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, norm_layer=norm)]
    inplanes = planes * block.expansion
    for _ in range(1, blocks):
        layers.append(block(inplanes, planes, norm_layer=norm))
    return nn.Sequential(*layers), inplanes


class ResNetC4(nn.Module):
    """ResNet split at conv4: ``trunk`` (stem, layer1..layer3; stride 16) and ``layer4``.

    Module names match torchvision's ResNet (``conv1``, ``bn1``, ``layer1`` ...), so a
    torchvision state_dict loads with ``width=64``.
    """

    def __init__(self, depth: int, width: int, norm: str, res5_stride: int):
        super().__init__()
        block, counts = _DEPTHS[depth]
        nl = _norm_layer(norm)
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nl(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = width
        self.layer1, c = _make_layer(block, c, width, counts[0], 1, nl)
        self.layer2, c = _make_layer(block, c, width * 2, counts[1], 2, nl)
        self.layer3, c = _make_layer(block, c, width * 4, counts[2], 2, nl)
        self.trunk_channels = c
        self.layer4, c = _make_layer(block, c, width * 8, counts[3], res5_stride, nl)
        self.out_channels = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init the last norm of each residual branch: blocks start as identities, which
        # is what makes training a random-init ResNet with small batches stable
        if norm != "frozen_bn":
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else (
                    getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None)
                if last is not None:
                    nn.init.zeros_(last.weight)

    def trunk(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def stem_modules(self) -> List[nn.Module]:
        return [self.conv1, self.bn1]


def load_resnet_weights(net: ResNetC4, path: str) -> None:
    """Load a torchvision ResNet state_dict from ``path`` (``fc.*`` ignored)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's problem
        raise CheckpointError(f"{path}: cannot read ResNet weights ({e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state_dict (dict of tensors), got {type(state).__name__}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{path}: does not match ResNet-{len(own)} layout (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {bad[:5]}); GroupNorm models cannot load BN weights, "
            "use norm=frozen_bn and width=64"
        )
    net.load_state_dict(state, strict=False)


def unique_rows(rows: Tensor) -> Tuple[Tensor, Tensor]:
    """The distinct rows of ``rows [N, D]`` in order of first occurrence: ``(keep, where)`` with
    ``keep [U]`` the index of each distinct row's first occurrence (ascending) and ``where [N]``
    the position in ``keep`` of each row's copy, so that ``rows[keep][where] == rows``."""
    n = rows.shape[0]
    if n == 0:
        e = torch.zeros((0,), dtype=torch.long, device=rows.device)
        return e, e
    _, inv = torch.unique(rows, dim=0, return_inverse=True)
    ar = torch.arange(n, device=rows.device)
    first = torch.full((int(inv.max()) + 1,), n, dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inv, ar, reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=rows.device)
    return first[order], rank[inv]


class ChunkedLinear(nn.Module):
    """A linear layer stored as row chunks whose outputs are concatenated."""

    def __init__(self, in_features: int, std: float):
        super().__init__()
        self.in_features = in_features
        self.std = std
        self.chunks = nn.ModuleList()

    @property
    def out_features(self) -> int:
        return sum(c.out_features for c in self.chunks)

    def add(self, n: int) -> nn.Linear:
        lin = nn.Linear(self.in_features, n)
        nn.init.normal_(lin.weight, std=self.std)
        nn.init.zeros_(lin.bias)
        if self.chunks:
            p = self.chunks[0].weight
            lin = lin.to(device=p.device, dtype=p.dtype)
        self.chunks.append(lin)
        return lin

    def forward(self, x: Tensor) -> Tensor:
        if len(self.chunks) == 1:
            return self.chunks[0](x)
        return torch.cat([c(x) for c in self.chunks], dim=1)


class FastRCNN(nn.Module):
    """Fast R-CNN (ResNet-C4) on precomputed proposals.

    Inputs (both modes):
        images: list of ``[3, H, W]`` tensors, ``uint8`` (0-255) or float (0-1), RGB, any size;
            each is resized so that its short side is ``min_size`` and its long side at most
            ``max_size``, then normalised with the ImageNet mean/std.
        proposals: list of ``[K_i, 4]`` float boxes, xyxy in the coordinates of the given
            image (0-based pixels).
        targets (training only): list of dicts with ``boxes [N_i, 4]`` (xyxy, same
            coordinates) and ``labels [N_i]`` (int64, 1..num_classes). Boxes that must not be
            positives (difficult / crowd) should be removed by the caller.

    Train mode, ``model(images, proposals, targets)`` returns a dict of losses:
        ``loss_cls`` (softmax cross-entropy over the sampled RoIs, background included) and
        ``loss_box`` (smooth-L1 between the class-specific deltas of the ground-truth class
        and the encoded targets, summed over the 4 coordinates of foreground RoIs and divided
        by the number of sampled RoIs). ``model.last_stats`` then holds ``num_fg``/``num_rois``.
        With ``distill_rois`` (list of ``[M_i, 4]`` boxes, same coordinates), the call returns
        ``(losses, (logits [sum M_i, 1 + C], deltas [sum M_i, 4 C]))`` for those boxes, from
        the same forward pass (used for distillation): the training and distillation RoIs are
        pooled together and run through res5 and the output layers in one call; with
        ``cfg.reuse_rois`` a RoI that occurs twice (same image, same coordinates) is computed
        once and its outputs are used for both rows (``last_stats["num_reused"]`` counts them);
        not when res5 has BatchNorm in train mode, whose batch statistics would change.

    Eval mode, ``model(images, proposals)`` returns one dict per image with ``boxes [D, 4]``
    (xyxy, in the coordinates of the given image), ``labels [D]`` (1..C) and ``scores [D]``:
    softmax scores above ``score_thresh``, boxes refined with the class's deltas and clipped,
    per-class NMS at ``nms_iou`` (``torchvision.ops.batched_nms``), at most
    ``detections_per_img`` per image, highest scores first.
    """

    def __init__(self, cfg: DetectorConfig, num_classes: int = 0):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backbone = ResNetC4(cfg.depth, cfg.width, cfg.resolved_norm, cfg.res5_stride)
        if cfg.weights:
            from incdet import zoo

            load_resnet_weights(self.backbone, zoo.resolve(cfg.weights))
        d = self.backbone.out_channels
        self.cls_score = ChunkedLinear(d, 0.01)
        self.bbox_pred = ChunkedLinear(d, 0.001)
        self.coder = BoxCoder(cfg.box_std)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        self.freeze_stem(cfg.resolved_freeze_at)
        if num_classes:
            self.add_classes(num_classes)

    # ---------------------------------------------------------------- structure
    @property
    def num_classes(self) -> int:
        """Number of foreground classes."""
        return self.bbox_pred.out_features // 4

    @property
    def class_chunks(self) -> List[int]:
        """Foreground classes per output chunk (the class groups added so far)."""
        return [c.out_features // 4 for c in self.bbox_pred.chunks]

    def add_classes(self, n: int) -> None:
        """Append ``n`` foreground outputs to the classification and box layers.

        Old weights are kept as they are (a new chunk is added); the new weights are drawn like
        the originals (normal, std 0.01 for classification, 0.001 for boxes; zero bias). The
        first call also creates the background output.
        """
        if n <= 0:
            raise ValueError(f"add_classes needs n > 0, got {n}")
        self.cls_score.add(n + (0 if self.cls_score.chunks else 1))
        self.bbox_pred.add(4 * n)

    def freeze_stem(self, freeze_at: int) -> None:
        """Stop gradients of the stem (``freeze_at >= 1``) and of res2 too (``>= 2``)."""
        b = self.backbone
        mods = [] if freeze_at <= 0 else b.stem_modules() + ([b.layer1] if freeze_at >= 2 else [])
        for m in mods:
            m.requires_grad_(False)

    def trunk_modules(self) -> List[nn.Module]:
        """Everything before RoI pooling (stem, res2..res4)."""
        b = self.backbone
        return [b.conv1, b.bn1, b.layer1, b.layer2, b.layer3]

    def conv_modules(self) -> List[nn.Module]:
        """Every convolutional layer with its normalisation: the trunk and the per-RoI res5 blocks
        (what the thesis' "frozen trunk" fixes; only the output layers remain)."""
        return self.trunk_modules() + [self.backbone.layer4]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Like ``nn.Module.load_state_dict``; first grows the output chunks to match ``state_dict``."""
        chunks = []
        i = 0
        while f"bbox_pred.chunks.{i}.weight" in state_dict:
            chunks.append(int(state_dict[f"bbox_pred.chunks.{i}.weight"].shape[0]) // 4)
            i += 1
        mine = self.class_chunks
        if chunks[: len(mine)] != mine:
            raise CheckpointError(f"checkpoint output chunks {chunks} do not extend this model's {mine}")
        for n in chunks[len(mine):]:
            self.add_classes(n)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---------------------------------------------------------------- input
    def resize_scale(self, h: int, w: int) -> float:
        return min(self.cfg.min_size / min(h, w), self.cfg.max_size / max(h, w))

    def transform(self, images: Sequence[Tensor]) -> Tuple[Tensor, List[float], List[Tuple[int, int]]]:
        """Resize and normalise ``images``; returns a zero-padded batch ``[B, 3, H, W]``, the scale
        factors and the resized sizes."""
        out, scales, sizes = [], [], []
        for im in images:
            im = im.to(self.pixel_mean.device)
            x = im.float() / 255.0 if im.dtype == torch.uint8 else im.float()
            h, w = x.shape[-2:]
            s = self.resize_scale(h, w)
            nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
            if (nh, nw) != (h, w):
                x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            out.append((x - self.pixel_mean) / self.pixel_std)
            scales.append(s)
            sizes.append((nh, nw))
        H = max(s[0] for s in sizes)
        W = max(s[1] for s in sizes)
        batch = out[0].new_zeros((len(out), 3, H, W))
        for i, x in enumerate(out):
            batch[i, :, : x.shape[1], : x.shape[2]] = x
        return batch, scales, sizes

    # ---------------------------------------------------------------- network
    def features(self, batch: Tensor) -> Tensor:
        return self.backbone.trunk(batch)

    def head(self, feats: Tensor, rois: Tensor) -> Tuple[Tensor, Tensor]:
        """``rois [R, 5]`` (batch index, xyxy in resized pixels) -> (logits [R, 1+C], deltas [R, 4C])."""
        op = roi_pool if self.cfg.roi_op == "pool" else roi_align
        kw = {} if self.cfg.roi_op == "pool" else {"sampling_ratio": 2, "aligned": True}
        x = op(feats, rois.to(feats.dtype), output_size=self.cfg.roi_size, spatial_scale=1 / 16, **kw)
        x = self.backbone.layer4(x)
        x = x.mean(dim=(2, 3))
        return self.cls_score(x), self.bbox_pred(x)

    def head_is_per_roi(self) -> bool:
        """Whether :meth:`head` computes each RoI's outputs independently of the other RoIs of
        the call: false when res5 holds a BatchNorm layer in train mode (batch statistics)."""
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                       for m in self.backbone.layer4.modules())

    @staticmethod
    def batch_rois(boxes: Sequence[Tensor], scales: Sequence[float], device) -> Tensor:
        """RoIs ``[sum K_i, 5]`` (batch index, x1, y1, x2, y2) for ``roi_pool``/``roi_align``: image
        ``i``'s ``[K_i, 4]`` boxes scaled by ``scales[i]`` (the resize factor of :meth:`transform`)."""
        parts = []
        for i, (b, s) in enumerate(zip(boxes, scales)):
            b = b.to(device=device, dtype=torch.float32) * s
            parts.append(torch.cat([torch.full((b.shape[0], 1), float(i), device=device), b], 1))
        return torch.cat(parts, 0) if parts else torch.zeros((0, 5), device=device)

    def forward(self, images, proposals, targets=None, distill_rois=None, bg_classes: int = 0):
        if not self.cls_score.chunks:
            raise RuntimeError("FastRCNN has no output classes yet: call add_classes(n) first")
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets")
            return self._forward_train(images, proposals, targets, distill_rois, bg_classes)
        return self.detect(images, proposals)

    def _forward_train(self, images, proposals, targets, distill_rois, bg_classes: int = 0):
        batch, scales, _ = self.transform(images)
        dev = batch.device
        sampler = self.cfg.sampler()
        sampled = []
        for p, t in zip(proposals, targets):
            sampled.append(sample_rois(p.to(dev).float(), t["boxes"].to(dev).float(), t["labels"].to(dev),
                                       self.coder, sampler))
        train_rois = self.batch_rois([s.rois for s in sampled], scales, dev)
        n_train = train_rois.shape[0]
        rois = train_rois
        if distill_rois is not None:
            rois = torch.cat([train_rois, self.batch_rois(distill_rois, scales, dev)], 0)
        feats = self.features(batch)
        n_reused = 0
        if distill_rois is not None and self.cfg.reuse_rois and self.head_is_per_roi():
            keep, where = unique_rows(rois)
            n_reused = rois.shape[0] - keep.shape[0]
        if n_reused:
            logits, deltas = self.head(feats, rois[keep])
            logits, deltas = logits[where], deltas[where]
        else:
            logits, deltas = self.head(feats, rois)
        losses = self.fastrcnn_loss(logits[:n_train], deltas[:n_train],
                                    torch.cat([s.labels for s in sampled]), torch.cat([s.targets for s in sampled]),
                                    bg_classes=bg_classes)
        self.last_stats = {"num_fg": sum(s.num_fg for s in sampled), "num_rois": n_train, "num_reused": n_reused}
        if distill_rois is not None:
            return losses, (logits[n_train:], deltas[n_train:])
        return losses

    def fastrcnn_loss(self, logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor,
                      bg_classes: int = 0) -> Dict[str, Tensor]:
        """Cross-entropy + smooth-L1 (eq. 3.1) averaged over the sampled RoIs.

        ``bg_classes`` > 0: the unbiased cross-entropy for missing annotations (Cermelli et al.
        2022): a background RoI's loss is ``-log(p_0 + p_1 + ... + p_bg_classes)`` (background or
        one of the first ``bg_classes`` classes, the old ones); foreground RoIs are unchanged."""
        if labels.numel() == 0:
            z = logits.sum() * 0.0
            return {"loss_cls": z, "loss_box": z}
        if bg_classes > 0:
            lf = logits.float()
            own = lf.gather(1, labels[:, None]).squeeze(1)
            bg_or_old = torch.logsumexp(lf[:, : 1 + bg_classes], dim=1)
            loss_cls = (torch.logsumexp(lf, dim=1) - torch.where(labels == 0, bg_or_old, own)).mean()
        else:
            loss_cls = F.cross_entropy(logits.float(), labels)
        fg = torch.nonzero(labels > 0).flatten()
        if fg.numel():
            d = deltas[fg].float().reshape(fg.numel(), -1, 4)[torch.arange(fg.numel(), device=fg.device), labels[fg] - 1]
            loss_box = F.smooth_l1_loss(d, targets[fg], beta=self.cfg.smooth_l1_beta, reduction="sum") / labels.numel()
        else:
            loss_box = deltas.sum() * 0.0
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    # ---------------------------------------------------------------- inference
    def score_proposals(self, images: Sequence[Tensor], proposals: Sequence[Tensor]) -> List[Tuple[Tensor, Tensor]]:
        """Raw head outputs for every proposal: per image ``(logits [K, 1+C], deltas [K, 4C])``.
        Runs the head in chunks of ``roi_chunk`` RoIs. Call under ``torch.no_grad()`` for a teacher."""
        batch, scales, _ = self.transform(images)
        feats = self.features(batch)
        rois = self.batch_rois(proposals, scales, batch.device)
        outs_l, outs_d = [], []
        for i in range(0, rois.shape[0], self.cfg.roi_chunk):
            l, d = self.head(feats, rois[i: i + self.cfg.roi_chunk])
            outs_l.append(l)
            outs_d.append(d)
        if outs_l:
            logits, deltas = torch.cat(outs_l), torch.cat(outs_d)
        else:
            logits = feats.new_zeros((0, self.cls_score.out_features))
            deltas = feats.new_zeros((0, self.bbox_pred.out_features))
        sizes = [int(p.shape[0]) for p in proposals]
        return list(zip(logits.split(sizes), deltas.split(sizes)))

    def postprocess(self, logits: Tensor, deltas: Tensor, proposals: Tensor, image_size: Tuple[int, int]) -> Dict[str, Tensor]:
        """Detections of one image from its head outputs (coordinates of ``proposals``)."""
        c = self.num_classes
        dev = logits.device
        k = proposals.shape[0]
        scores = F.softmax(logits.float(), dim=1)[:, 1:]
        boxes = self.coder.decode(deltas, proposals.to(dev).float())  # [K, C, 4]
        h, w = image_size
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w - 1)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h - 1)
        labels = torch.arange(1, c + 1, device=dev).expand(k, c)
        keep = scores > self.cfg.score_thresh
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        keep = batched_nms(boxes, scores, labels, self.cfg.nms_iou)[: self.cfg.detections_per_img]
        return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}

    @torch.no_grad()
    def detect(self, images: Sequence[Tensor], proposals: Sequence[Tensor]) -> List[Dict[str, Tensor]]:
        outs = self.score_proposals(images, proposals)
        res = []
        for im, p, (l, d) in zip(images, proposals, outs):
            res.append(self.postprocess(l, d, p, (int(im.shape[-2]), int(im.shape[-1]))))
        return res


__all__ = ["DetectorConfig", "FastRCNN", "ResNetC4", "ChunkedLinear", "load_resnet_weights", "unique_rows"]
