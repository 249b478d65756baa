"""The ``blitznet`` learner: joint detection + segmentation through the shared driver, and
class-incremental BlitzNet with a frozen teacher.

Per task: ``begin_task`` builds the network (first task) or, when the task adds classes,
snapshots the teacher (``deepcopy(model).eval().requires_grad_(False)``, a plain attribute) and
appends outputs to both heads. ``training_step`` returns ``loss_cls``, ``loss_box`` (SSD
multibox), ``loss_seg`` (pixel CE) and, with a teacher, ``loss_distill_cls`` /
``loss_distill_box`` / ``loss_distill_seg`` (:func:`blitznet.losses.distillation_loss`), their
weighted sum as ``loss``. ``evaluate(task)`` returns VOC mAP (all-point, IoU 0.5, difficult
ignored) and mIoU; inference is cached per weights version so that evaluating every seen task
costs one pass over the images.

Metrics: ``mAP`` = mean AP over ``task.new_classes`` (the task's own group; all classes for a
one-task run); ``mAP_seen`` over ``task.seen_classes``; ``mIoU`` = mean IoU over background and
``task.new_classes`` (the standard VOC mIoU for a one-task run); ``mIoU_seen`` over background
and ``task.seen_classes``. Classes absent from both ground truth and predictions are left out.
All of them, and the per-class ``AP/<class>``, are percentages (0-100), as in ``incdet.fastrcnn``
(:func:`incdet.eval.groups.group_map`).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List

import torch
from torch.utils.data import Dataset

from incdet.engine import LEARNERS, Learner, Task
from incdet.engine.config import check_choice, check_range
from incdet.errors import CheckpointError, ConfigError

from blitznet.augment import ResizeOnly, SSDAugment
from blitznet.losses import detection_loss, distillation_loss, segmentation_loss
from blitznet.model import BlitzNet, BlitzNetConfig

log = logging.getLogger(__name__)


@dataclass
class BlitzNetLearnerConfig:
    """Options of the ``blitznet`` learner (``learner:`` section of a run config).

    ``model.num_classes`` is ignored: the heads follow the task sequence.
    """

    model: BlitzNetConfig = field(default_factory=BlitzNetConfig)
    augment: bool = True           #: SSD augmentation (False: resize only)
    max_expand: float = 4.0        #: zoom-out ratio upper bound
    neg_pos_ratio: float = 3.0     #: hard negative mining ratio
    min_negatives: int = 0         #: negatives per detection image without positives
    difficult_as_positive: bool = False
    det_weight: float = 1.0
    seg_weight: float = 1.0
    distill: str = "l2"            #: frozen-teacher distillation when a task adds classes: l2 | none
    distill_weight: float = 1.0    #: weight of the detection distillation terms
    distill_seg_weight: float = 1.0
    distill_pool: int = 128        #: lowest-background anchors considered per image
    distill_rois: int = 64         #: of which this many are distilled (the name incdet.fastrcnn uses)
    eval_batch_size: int = 8
    score_thresh: float = 0.01
    pre_nms_top: int = 400
    nms_iou: float = 0.45
    per_class: int = 50
    max_det: int = 200
    nms_method: str = "auto"           #: auto (cluster on CUDA, batched on CPU) | cluster | batched
    use_07_metric: bool = False    #: VOC2007 11-point AP instead of the all-point AP

    def __post_init__(self) -> None:
        """Value checks (ranges, choices): a bad value raises :class:`ConfigError` naming the
        key (``learner.KEY``) and the valid range, when the config is built."""
        if isinstance(self.model, dict):
            self.model = BlitzNetConfig.from_dict(self.model)
        S = "learner"
        check_range(S, "max_expand", self.max_expand, 1)
        check_range(S, "neg_pos_ratio", self.neg_pos_ratio, 0, lo_open=True)
        check_range(S, "min_negatives", self.min_negatives, 0)
        for k in ("det_weight", "seg_weight", "distill_weight", "distill_seg_weight"):
            check_range(S, k, getattr(self, k), 0)
        check_choice(S, "distill", self.distill, ("l2", "none"))
        check_range(S, "distill_pool", self.distill_pool, 1)
        check_range(S, "distill_rois", self.distill_rois, 1, self.distill_pool)
        check_range(S, "eval_batch_size", self.eval_batch_size, 1)
        check_range(S, "score_thresh", self.score_thresh, 0, 1, hi_open=True)
        check_range(S, "pre_nms_top", self.pre_nms_top, 1)
        check_range(S, "nms_iou", self.nms_iou, 0, 1, lo_open=True)
        check_range(S, "per_class", self.per_class, 1)
        check_range(S, "max_det", self.max_det, 1)
        check_choice(S, "nms_method", self.nms_method, ("auto", "cluster", "batched"))


class _TrainItems(Dataset):
    """``task.train_set`` transformed for training: items ``(image uint8 [3,S,S], target)``."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if isinstance(self.transform, SSDAugment):
            self.transform.reseed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        return self.transform(self.base[i])


def collate(items):
    """Stack images ``[B, 3, S, S]`` uint8; targets stay a list of dicts."""
    return torch.stack([im for im, _ in items]), [t for _, t in items]


def _rebuild(saved_config: Dict[str, Any], weights: Dict[str, Any], device) -> BlitzNet:
    """A network from a saved config and its weights. The weights hold every parameter, so the
    backbone weights file the config names is not read again (it may be absent here); the
    config keeps naming it, as a record of where the trunk came from."""
    net = BlitzNet(BlitzNetConfig.from_saved(dict(saved_config, backbone_weights=None))).to(device)
    net.load_state_dict(weights)
    net.config.backbone_weights = saved_config.get("backbone_weights")
    return net


@LEARNERS.register("blitznet")
class BlitzNetLearner(Learner):
    Config = BlitzNetLearnerConfig
    metrics = {"mAP": True, "mAP_seen": True, "mIoU": True, "mIoU_seen": True}
    primary_metric = "mAP"
    #: the options ``evaluate`` depends on (a run started from another run's checkpoint copies its
    #: results rows when these agree): the network and the post-processing; not the training options
    #: (augmentation, losses, distillation), which change the next task's weights, not how a
    #: checkpoint is measured
    eval_keys = ("model", "eval_batch_size", "score_thresh", "pre_nms_top", "nms_iou", "per_class", "max_det",
                 "nms_method", "use_07_metric")

    def __init__(self, config: BlitzNetLearnerConfig, device):
        if isinstance(config, dict):
            from incdet.engine.config import build_dataclass

            config = build_dataclass(BlitzNetLearnerConfig, config, "learner")
        super().__init__(config, device)
        config.__post_init__()  # the checks again, for fields changed after construction
        config.model.validate()
        self.classes: List[str] = []
        self.version = 0
        self._cache_version = -1
        self._cache: Dict[Any, dict] = {}
        #: inference only (``blitznet eval-weights``): the callable ``predict_samples`` runs instead
        #: of the network (:func:`blitznet.predict.prepare_inference`); not part of the state
        self.inference_forward = None

    # -- structure -----------------------------------------------------------------------
    def _build(self, num_classes: int) -> BlitzNet:
        cfg = BlitzNetConfig.from_dict({**asdict(self.config.model), "num_classes": num_classes})
        return BlitzNet(cfg).to(self.device)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        n = task.n_seen
        if self.model is None:
            self.model = self._build(n)
        else:
            old = self.unwrapped.config.num_classes
            if n < old:
                raise ConfigError(f"task {task.name}: {n} seen classes but the model already has {old}")
            if n > old:
                self.teacher = self.make_teacher() if self.config.distill != "none" else None
                self.unwrapped.add_classes(n - old)
        self.classes = list(task.seen_classes)
        self.version += 1

    def resume_task(self, task: Task) -> None:
        super().resume_task(task)
        self.classes = list(task.seen_classes)

    # -- data ------------------------------------------------------------------------------
    def train_dataset(self, task: Task):
        size = self.config.model.input_size
        tf = SSDAugment(size, max_expand=self.config.max_expand) if self.config.augment else ResizeOnly(size)
        return _TrainItems(task.train_set, tf)

    def collate(self, items):
        return collate(items)

    # -- training --------------------------------------------------------------------------
    def compute_losses(self, images: torch.Tensor, targets: List[dict]) -> Dict[str, torch.Tensor]:
        m = self.unwrapped
        c = self.config
        x = m.normalize(images.to(self.device, non_blocking=True))
        out = self.model(x)
        losses: Dict[str, torch.Tensor] = {}
        total = 0.0
        if m.config.detection:
            anchors = m.anchors(out["feature_sizes"], tuple(x.shape[-2:]), x.device)
            d = detection_loss(out["cls_logits"], out["box_deltas"], anchors, targets, c.neg_pos_ratio,
                               c.min_negatives, difficult_as_positive=c.difficult_as_positive)
            losses.update(d)
            total = total + c.det_weight * (d["loss_cls"] + d["loss_box"])
        if m.config.segmentation:
            losses["loss_seg"] = segmentation_loss(out["seg_logits"], targets)
            total = total + c.seg_weight * losses["loss_seg"]
        if self.teacher is not None:
            with torch.no_grad():
                t_out = self.teacher(x)
            dl = distillation_loss(out, t_out, self.teacher.config.num_classes, c.distill_pool, c.distill_rois)
            losses.update(dl)
            for k, v in dl.items():
                total = total + (c.distill_seg_weight if k.endswith("seg") else c.distill_weight) * v
        losses["loss"] = total
        return losses

    def training_step(self, batch) -> Dict[str, torch.Tensor]:
        images, targets = batch
        self.model.train()
        self.version += 1
        return self.compute_losses(images, targets)

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def predict_samples(self, samples) -> List[dict]:
        """Inference on Samples (any size): list of dicts with ``boxes`` (original pixels,
        xyxy), ``labels`` (1-based), ``scores``, ``mask`` ``[H, W]`` (when segmenting)."""
        m = self.unwrapped
        m.eval()
        size = m.config.input_size
        tf = ResizeOnly(size)
        imgs = torch.stack([tf(s)[0] for s in samples]).to(self.device)
        out = (self.inference_forward or m)(m.normalize(imgs))
        c = self.config
        return m.postprocess(out, (size, size), [tuple(s.orig_size or s.image.shape[-2:]) for s in samples],
                             score_thresh=c.score_thresh, pre_nms_top=c.pre_nms_top, iou_thresh=c.nms_iou,
                             per_class=c.per_class, max_det=c.max_det, method=c.nms_method)

    def _predictions(self, dataset) -> tuple:
        """Predictions and ground truth over ``dataset``, re-using cached inference."""
        if self._cache_version != self.version:
            self._cache, self._cache_version = {}, self.version
        gts, preds, pending = [], {}, []

        def flush():
            if pending:
                for s, p in zip(pending, self.predict_samples(pending)):
                    self._cache[s.image_id] = {k: v.cpu() for k, v in p.items()}
                pending.clear()

        for i in range(len(dataset)):
            s = dataset[i]
            gts.append(s)
            if s.image_id not in self._cache:
                pending.append(s)
                if len(pending) >= self.config.eval_batch_size:
                    flush()
        flush()
        for s in gts:
            preds[s.image_id] = self._cache[s.image_id]
        return gts, preds

    def _confusion(self, gts, preds) -> tuple:
        """Pixel confusion matrix over the samples with a mask (classes the network does not
        know count as background) and the number of those samples."""
        from incdet.eval.segmentation import ConfusionMatrix

        nc = self.unwrapped.config.num_classes
        cm, n_masks = ConfusionMatrix(nc + 1), 0
        for s in gts:
            if s.mask is not None:
                tgt = s.mask.clone()
                tgt[(tgt > nc) & (tgt != 255)] = 0
                cm.update(preds[s.image_id]["mask"], tgt)
                n_masks += 1
        return cm, n_masks

    def segmentation_confusion(self, task: Task):
        """The :class:`incdet.eval.segmentation.ConfusionMatrix` behind ``evaluate(task)``'s mIoU."""
        return self._confusion(*self._predictions(task.eval_set))[0]

    def evaluate(self, task: Task) -> Dict[str, float]:
        from incdet.eval.groups import group_map, to_percent
        from incdet.eval.voc import voc_evaluate

        if self.model is None:
            raise CheckpointError("evaluate() before any task: the learner has no model")
        m = self.unwrapped
        gts, preds = self._predictions(task.eval_set)
        names = self.classes or [f"class{k}" for k in range(1, m.config.num_classes + 1)]
        new_idx = [names.index(c) + 1 for c in task.new_classes if c in names]
        seen_idx = [names.index(c) + 1 for c in task.seen_classes if c in names]
        nan = float("nan")
        res: Dict[str, float] = {"mAP": nan, "mAP_seen": nan, "mIoU": nan, "mIoU_seen": nan}
        if m.config.detection:
            dets = {k: {"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"]} for k, p in preds.items()}
            gt_map = {}
            for s in gts:
                keep = s.labels <= len(names)
                gt_map[s.image_id] = {"boxes": s.boxes[keep], "labels": s.labels[keep], "difficult": s.difficult[keep]}
            r = voc_evaluate(dets, gt_map, names, use_07_metric=self.config.use_07_metric)
            res["mAP"] = group_map(r.ap, [names[k - 1] for k in new_idx])
            res["mAP_seen"] = group_map(r.ap, [names[k - 1] for k in seen_idx])
            for k in seen_idx:
                res[f"AP/{names[k - 1]}"] = to_percent(r.ap[names[k - 1]])
        if m.config.segmentation:
            cm, n_masks = self._confusion(gts, preds)
            if n_masks:
                iou = dict(enumerate(cm.compute().iou))
                res["mIoU"] = group_map(iou, [0] + new_idx)
                res["mIoU_seen"] = group_map(iou, [0] + seen_idx)
        return res

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        m = self.unwrapped
        return {
            "model": m.state_dict(),
            "model_config": m.config.to_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "teacher_config": None if self.teacher is None else self.teacher.config.to_dict(),
            "classes": list(self.classes),
            "version": self.version,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        try:
            # the state dict holds every weight: do not re-read a backbone weights file
            self.model = _rebuild(state["model_config"], state["model"], self.device)
            self.teacher = None
            if state.get("teacher") is not None:
                self.teacher = _rebuild(state["teacher_config"], state["teacher"], self.device).eval().requires_grad_(False)
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"not a blitznet learner state: {e}") from e
        self.classes = list(state.get("classes", []))
        self.version = int(state.get("version", 0)) + 1

    def weights(self) -> Dict[str, Any]:
        """A standalone weights dict for :class:`blitznet.predict.BlitzNetPredictor`."""
        from blitznet.predict import weights_dict

        return weights_dict(self.unwrapped, self.classes)
