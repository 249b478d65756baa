"""The incremental Fast R-CNN learner (``incdet.fastrcnn``) for the shared driver.

Per task (docs/design.md, learner protocol):
    * ``begin_task(task)``: task 0 creates the output layers for its classes. A later task
      with new classes snapshots the current network as the frozen teacher
      ``A = deepcopy(model).eval().requires_grad_(False)`` (a plain attribute, never a
      submodule of ``model``), then extends the student ``B`` by ``|C_B|`` outputs and applies
      the variant's freezing (``freeze``). The previous result thus becomes the next teacher,
      which gives sequential addition B(16)(17)...
    * ``train_dataset(task)`` / ``collate``: images with proposals and random flips; images
      without proposals or without positives are skipped (count logged).
    * ``training_step(batch)``: Fast R-CNN loss on the new classes + ``distill_weight`` x
      distillation on 64 of the 128 proposals the teacher finds least background-like
      (+ EWC penalty when enabled). Returns named losses including ``loss``.
    * ``evaluate(task)``: AP (in %) on ``task.eval_set`` for the classes seen up to that task,
      with the metric of ``eval_metric`` (``auto``: ``coco`` for a COCO task, else ``voc``).
      ``mAP`` (primary, the results matrix) is the mean over the task's own class group;
      ``mAP_old`` / ``mAP_new`` / ``mAP_all`` are over the classes seen before it / its group /
      both, ``AP/<class>`` per class. With ``voc`` these are VOC AP at IoU 0.5
      (:func:`incdet.eval.voc.voc_evaluate`; ``use_07_metric``: 11-point; difficult and crowd
      boxes are "don't care"). With ``coco`` they are pycocotools' AP@[.5:.95] (COCO-style,
      thesis table 3.4's right column; crowd regions ignored as COCOeval does) and ``AP50`` /
      ``AP50_old`` / ``AP50_new`` / ``AP50_all`` / ``AP50/<class>`` are its AP at IoU 0.5
      (PASCAL-style, table 3.4's left column); ``eval.metric: AP50`` puts those in the matrix.
      Detections are those of the evaluation protocol (``protocol``: ``eval_score_thresh``,
      ``eval_nms_iou``, ``eval_detections_per_img``, see :data:`EVAL_PROTOCOLS`). They are cached
      per image for the current weights, so evaluating every task after a step costs one pass
      over the test images.

Variants (thesis tables 3.1-3.3) are config switches: ``distill`` (``l2`` | ``ce`` | ``none``
= naive fine-tuning), ``distill_box``, ``distill_norm`` (``thesis`` = eq. 3.2's 1/(N|C_A|), default |
``released_code`` = the released code's plain means), ``distill_sampling`` (``biased`` | ``unbiased``),
``freeze`` (``none`` | ``trunk`` | ``all_but_new``), ``ewc_weight``; joint training is a
single task holding all classes.

Cost of the incremental step (docs/results/benchmarks.md): the live teacher scores the
proposals of all images of a batch in one trunk pass and chunked head passes, under
``torch.inference_mode`` (optionally in bf16/fp16 on CUDA: ``teacher_precision``); the student's
distillation RoIs share one RoI-pooling + res5 + output-layer pass with its training RoIs, and a
distillation RoI equal to a training RoI is computed once (``model.reuse_rois``).

Teacher caching (``teacher_cache: true``; the thesis precomputed A's responses): the first time
an image is seen in a given flip state the teacher scores all its proposals and the candidate
pool (the 128 least-background RoIs, or all proposals for unbiased sampling) is stored with the
teacher's logits and deltas, keyed by ``(image_id, flipped)``; later steps only sample 64 RoIs
from it. Resizing is deterministic, so the cached responses are exactly those a live teacher
would give. The cache lives in memory for the current teacher (it is dropped at each
``begin_task`` and not checkpointed); its size is about ``2 x images x 128 x (1 + 5 n_old) x 4``
bytes. Set ``flip_prob: 0`` to halve it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from incdet.engine import LEARNERS, Task
from incdet.engine.config import check_choice, check_range
from incdet.engine.learner import Learner
from incdet.errors import CheckpointError, ConfigError
from incdet.models.dataset import ProposalDetectionDataset, collate, ensure_computed
from incdet.models.ewc import EWC
from incdet.models.fastrcnn import DetectorConfig, FastRCNN
from incdet.models.losses.distill import DistillTargets, candidate_pool, distillation_loss, sample_pool
from incdet.models.proposals import ProposalSource

log = logging.getLogger(__name__)


@dataclass
class FastRCNNLearnerConfig:
    """Settings of the incremental Fast R-CNN learner (``learner.*`` in a run config)."""

    model: DetectorConfig = field(default_factory=DetectorConfig)
    # proposals: a method (selective_search | sliding_window) or .npz/.pkl file(s)/directory
    proposals: str = "selective_search"
    eval_proposals: Optional[str] = None  # default: same as proposals
    proposal_cache: Optional[str] = None  # .npz where computed proposals are kept between runs
    max_proposals: int = 2000
    proposal_nms: Optional[float] = 0.7  # thesis 3.4.2: proposals filtered to IoU < 0.7
    proposal_max_side: int = 500  # selective search runs on images downscaled to this
    proposal_workers: int = 0  # 0: all CPUs
    flip_prob: float = 0.5
    use_difficult: bool = False
    min_positives: int = 1
    # incremental step
    distill: str = "l2"  # l2 | ce | none
    distill_weight: float = 1.0
    distill_box: bool = True
    distill_box_loss: str = "l2"  # l2 | smooth_l1
    distill_center: str = "old"  # old (bg + old classes) | all (released code: all student logits)
    # normaliser of the distillation sums: thesis (eq. 3.2, 1/(N|C_A|)) | released_code (plain means:
    # logits 1/(N(1+|C_A|)), boxes 1/(4N|C_A|)); the results documented before this switch used released_code
    distill_norm: str = "thesis"
    distill_sampling: str = "biased"  # biased | unbiased
    distill_rois: int = 64
    distill_pool: int = 128
    teacher_cache: bool = False
    teacher_max_proposals: Optional[int] = None  # teacher scores only the first N proposals
    # precision of the live teacher's scoring: fp32 | bf16 | fp16 (autocast, CUDA only; on another
    # device fp32 is used and a warning logged). Reduced precision changes the teacher's responses
    # slightly (and so which RoIs enter the candidate pool): an opt-in speed-up, fp32 by default
    teacher_precision: str = "fp32"
    # none | trunk (every convolutional layer, res5 included, and its BatchNorm statistics fixed: only
    # the output layers train; thesis "frozen trunk") | all_but_new (also the old outputs: only the new
    # classes' outputs train; thesis "all layers frozen"); applies to tasks after the first
    freeze: str = "none"
    ewc_weight: float = 0.0
    # BatchNorm running statistics in steps after the first: "update" (plain train mode) or
    # "frozen" (kept at the end-of-A values: new-class-only batches do not shift them)
    bn_stats: str = "update"
    # classification loss of the background RoIs in steps after the first: "standard" (thesis eq. 3.1:
    # -log p_bg, so an unlabelled old object under a background RoI is pushed to background) or
    # "unbiased" (not in the thesis: Cermelli et al. 2022's unbiased cross-entropy for missing
    # annotations, -log(p_bg + sum of the old classes' p): the new step does not teach that old
    # objects are background; docs/results/incdet_6k.md measures it on 15+1x5)
    bg_loss: str = "standard"
    ewc_batches: int = 50
    eval_batch_size: int = 2
    # evaluation protocol (see EVAL_PROTOCOLS and docs/results/incdet.md): the preset fills the keys
    # below that are left null; a value set in the config wins over the preset
    protocol: str = "standard"  # standard | thesis
    eval_metric: str = "auto"  # auto (coco for a COCO task, else voc) | voc | coco (pycocotools)
    eval_score_thresh: Optional[float] = None  # detections kept when score > this
    eval_nms_iou: Optional[float] = None  # per-class NMS IoU of the detections
    eval_detections_per_img: Optional[int] = None
    use_07_metric: Optional[bool] = None  # VOC2007 11-point AP instead of the all-point AP (voc metric only)

    def __post_init__(self) -> None:
        """Value checks (ranges, choices): a bad value raises :class:`ConfigError` naming the
        key (``learner.KEY``) and the valid range, when the config is built."""
        if isinstance(self.model, dict):
            self.model = DetectorConfig(**self.model)
        S = "learner"
        check_range(S, "max_proposals", self.max_proposals, 1)
        check_range(S, "proposal_nms", self.proposal_nms, 0, 1, lo_open=True, allow_none=True)
        check_range(S, "proposal_max_side", self.proposal_max_side, 1)
        check_range(S, "proposal_workers", self.proposal_workers, 0)
        check_range(S, "flip_prob", self.flip_prob, 0, 1)
        check_range(S, "min_positives", self.min_positives, 0)
        check_choice(S, "distill", self.distill, ("l2", "ce", "none"))
        check_range(S, "distill_weight", self.distill_weight, 0)
        check_choice(S, "distill_box_loss", self.distill_box_loss, ("l2", "smooth_l1"))
        check_choice(S, "distill_center", self.distill_center, ("old", "all"))
        check_choice(S, "distill_norm", self.distill_norm, ("thesis", "released_code"))
        check_choice(S, "distill_sampling", self.distill_sampling, ("biased", "unbiased"))
        check_range(S, "distill_pool", self.distill_pool, 1)
        # biased sampling draws distill_rois of the distill_pool candidates
        check_range(S, "distill_rois", self.distill_rois, 1,
                    self.distill_pool if self.distill_sampling == "biased" else None)
        check_range(S, "teacher_max_proposals", self.teacher_max_proposals, 1, allow_none=True)
        check_choice(S, "teacher_precision", self.teacher_precision, ("fp32", "bf16", "fp16"))
        check_choice(S, "freeze", self.freeze, ("none", "trunk", "all_but_new"))
        check_range(S, "ewc_weight", self.ewc_weight, 0)
        check_choice(S, "bn_stats", self.bn_stats, ("update", "frozen"))
        check_choice(S, "bg_loss", self.bg_loss, ("standard", "unbiased"))
        check_range(S, "ewc_batches", self.ewc_batches, 1)
        check_range(S, "eval_batch_size", self.eval_batch_size, 1)
        check_choice(S, "protocol", self.protocol, tuple(EVAL_PROTOCOLS))
        check_choice(S, "eval_metric", self.eval_metric, ("auto", "voc", "coco"))
        self._resolve_protocol()
        check_range(S, "eval_score_thresh", self.eval_score_thresh, 0, 1, hi_open=True)
        check_range(S, "eval_nms_iou", self.eval_nms_iou, 0, 1, lo_open=True)
        check_range(S, "eval_detections_per_img", self.eval_detections_per_img, 1)

    def _resolve_protocol(self) -> None:
        """Fill the evaluation keys left null from the ``protocol`` preset (``standard``: the
        model's own inference settings ``model.score_thresh`` / ``nms_iou`` /
        ``detections_per_img`` and all-point AP; ``thesis``: :data:`EVAL_PROTOCOLS`)."""
        preset = EVAL_PROTOCOLS[self.protocol]
        m = self.model
        for key, model_key in (("eval_score_thresh", "score_thresh"), ("eval_nms_iou", "nms_iou"),
                               ("eval_detections_per_img", "detections_per_img")):
            if getattr(self, key) is None:
                v = preset.get(key)
                setattr(self, key, getattr(m, model_key) if v is None else v)
        if self.use_07_metric is None:
            self.use_07_metric = bool(preset["use_07_metric"])

    def validate(self) -> None:
        """The value checks of construction (and of the model config, with its weights file)."""
        self.__post_init__()
        self.model.validate()


#: Evaluation presets (``learner.protocol``): values for the evaluation keys a config leaves
#: null (``None`` here: the model's own ``model.score_thresh`` / ``nms_iou`` /
#: ``detections_per_img``). ``standard`` keeps the configs' settings of the documented runs (score
#: 0.05, NMS 0.3, 100 per image, all-point AP unless ``use_07_metric`` is set). ``thesis`` is
#: section 3.4.2 ("RoIs are considered as detections if they have a score more than 0.5 for any
#: of the classes. We apply per-class NMS with an IoU threshold of 0.3") with the VOC2007 11-point
#: AP of the released code's VOC07 evaluation; the thesis names no cap per image (the released
#: code has none; 100 is rarely reached above score 0.5). COCO tasks use pycocotools under both.
EVAL_PROTOCOLS: Dict[str, Dict[str, object]] = {
    "standard": {"eval_score_thresh": None, "eval_nms_iou": None, "eval_detections_per_img": None,
                 "use_07_metric": False},
    "thesis": {"eval_score_thresh": 0.5, "eval_nms_iou": 0.3, "eval_detections_per_img": 100,
               "use_07_metric": True},
}


def is_coco_task(task: Task) -> bool:
    """Whether ``task`` evaluates on COCO data: the ``classes`` builder's ``meta["data"]``, else a
    :class:`incdet.data.coco.COCODetection` found under the eval set's ``base`` / ``dataset`` chain."""
    meta = getattr(task, "meta", None) or {}
    if meta.get("data") is not None:
        return meta.get("data") == "coco"
    from incdet.data.coco import COCODetection

    ds = task.eval_set
    for _ in range(16):
        if isinstance(ds, COCODetection):
            return True
        attrs = getattr(ds, "__dict__", {})
        ds = attrs.get("base", attrs.get("dataset"))
        if ds is None:
            return False
    return False


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, FastRCNN) else model


@LEARNERS.register("incdet.fastrcnn")
class FastRCNNLearner(Learner):
    """Incremental Fast R-CNN with distillation from a frozen copy (thesis chapter 3)."""

    Config = FastRCNNLearnerConfig
    primary_metric = "mAP"
    metrics = {"mAP": True, "mAP_old": True, "mAP_new": True, "mAP_all": True,
               "AP50": True, "AP50_old": True, "AP50_new": True, "AP50_all": True}  # AP50*: coco only
    #: the options ``evaluate`` depends on (a run started from another run's checkpoint copies its
    #: results rows when these agree): the detector (architecture, test-time thresholds), the
    #: proposals, the annotations counted and the evaluation protocol; not the training options
    #: (distillation, freezing, EWC, sampling), which change the next task's weights, not how a
    #: checkpoint is measured
    eval_keys = ("model", "proposals", "eval_proposals", "proposal_cache", "max_proposals", "proposal_nms",
                 "proposal_max_side", "use_difficult", "eval_batch_size", "protocol", "eval_metric",
                 "eval_score_thresh", "eval_nms_iou", "eval_detections_per_img", "use_07_metric")

    def __init__(self, config: Optional[FastRCNNLearnerConfig] = None, device="cpu"):
        super().__init__(config or FastRCNNLearnerConfig(), device)
        if isinstance(self.config.model, dict):
            self.config.model = DetectorConfig(**self.config.model)
        self.config.validate()
        self.model: nn.Module = FastRCNN(self.config.model).to(self.device)
        self.teacher: Optional[FastRCNN] = None
        self.ewc = EWC(self.config.ewc_weight)
        self.task_index = -1
        self._version = 0  # bumped whenever the weights change (detection cache key)
        self._det_cache: Dict[str, Dict[str, Tensor]] = {}
        self._det_cache_version = -1
        self._teacher_cache: Dict[Tuple[str, bool], DistillTargets] = {}
        self._sources: Dict[str, ProposalSource] = {}
        if self.config.teacher_precision != "fp32" and self.device.type != "cuda":
            log.warning("learner.teacher_precision=%s applies on CUDA only: the teacher runs in fp32 on %s",
                        self.config.teacher_precision, self.device)

    def _teacher_autocast(self):
        """The autocast context of the teacher's scoring (``teacher_precision``; CUDA only)."""
        prec = self.config.teacher_precision
        if prec == "fp32" or self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if prec == "bf16" else torch.float16)

    # ------------------------------------------------------------------ helpers
    @property
    def net(self) -> FastRCNN:
        """The detector without a DDP wrapper (same as ``unwrapped``)."""
        return _unwrap(self.model)

    def _source(self, spec: str) -> ProposalSource:
        if spec not in self._sources:
            c = self.config
            self._sources[spec] = ProposalSource(
                spec, max_proposals=c.max_proposals, nms_iou=c.proposal_nms, max_side=c.proposal_max_side,
                cache=c.proposal_cache if spec == c.proposals else None,
            )
        return self._sources[spec]

    @property
    def train_source(self) -> ProposalSource:
        return self._source(self.config.proposals)

    @property
    def eval_source(self) -> ProposalSource:
        return self._source(self.config.eval_proposals or self.config.proposals)

    def _apply_freezing(self, incremental: bool) -> None:
        net = self.net
        net.requires_grad_(True)
        net.freeze_stem(net.cfg.resolved_freeze_at)
        if not incremental or self.config.freeze == "none":
            return
        if self.config.freeze == "trunk":
            for m in net.conv_modules():
                m.requires_grad_(False)
        elif self.config.freeze == "all_but_new":
            net.requires_grad_(False)
            net.cls_score.chunks[-1].requires_grad_(True)
            net.bbox_pred.chunks[-1].requires_grad_(True)

    # ------------------------------------------------------------------ protocol
    def begin_task(self, task: Task) -> None:
        net = self.net
        n_new = task.n_seen - net.num_classes
        if n_new < 0:
            raise ConfigError(
                f"task {task.name!r} has {task.n_seen} classes but the model already has {net.num_classes}"
            )
        if n_new > 0 and net.num_classes == 0 and task.n_old > 0:
            # a fresh learner asked for a later task (no state loaded): the old classes' outputs
            # come first, in one chunk, so the head is shaped by the task and not by past calls
            net.add_classes(task.n_old)
            n_new = task.n_seen - net.num_classes
        if n_new > 0:
            if net.num_classes > 0:
                if self.config.distill != "none":
                    self.teacher = copy.deepcopy(net).eval().requires_grad_(False)
                else:
                    self.teacher = None
                self._teacher_cache.clear()
            net.add_classes(n_new)
            net.to(self.device)
            self._version += 1
        self._apply_freezing(self._incremental(task))
        self.task_index = task.index
        self.task = task
        if self.teacher is not None and self.config.distill != "none" and self.teacher.num_classes != task.n_old:
            log.warning("teacher has %d classes, task %s has %d old classes", self.teacher.num_classes, task.name, task.n_old)

    def _incremental(self, task: Task) -> bool:
        return task.index > 0 and task.n_old > 0

    def resume_task(self, task: Task) -> None:
        """After ``load_state_dict`` in the middle of ``task``: re-apply the freezing, keep weights."""
        if self.net.num_classes != task.n_seen:
            raise CheckpointError(f"checkpoint model has {self.net.num_classes} classes, task {task.name!r} needs {task.n_seen}")
        self._apply_freezing(self._incremental(task))
        self.task_index = task.index
        self.task = task

    def train_dataset(self, task: Task) -> ProposalDetectionDataset:
        c = self.config
        ensure_computed(self.train_source, task.train_set, c.proposal_workers)
        return ProposalDetectionDataset(task.train_set, self.train_source, flip_prob=c.flip_prob,
                                        use_difficult=c.use_difficult, min_positives=c.min_positives,
                                        fg_iou=c.model.fg_iou)

    # the design doc also names a train_dataloader; the driver builds loaders itself
    def train_dataloader(self, task: Task, batch_size: int = 2, shuffle: bool = True, num_workers: int = 0):
        return torch.utils.data.DataLoader(self.train_dataset(task), batch_size=batch_size, shuffle=shuffle,
                                           num_workers=num_workers, collate_fn=self.collate)

    @staticmethod
    def collate(items):
        return collate(items)

    def teacher_targets(self, images: List[Tensor], proposals: List[Tensor], keys: List[Tuple[str, bool]]) -> List[DistillTargets]:
        """The frozen teacher's distillation targets for a batch: per image ``distill_rois`` RoIs sampled
        from its candidate pool, with the teacher's logits and deltas on them; ``keys`` are
        ``(image_id, flipped)`` (the teacher cache's keys when ``teacher_cache`` is on).

        The images not found in the cache are scored together (one :meth:`FastRCNN.score_proposals`
        call) under ``torch.inference_mode``; the returned (and cached) tensors are ordinary
        tensors (indexed outside inference mode), usable in the student's autograd graph."""
        c = self.config
        biased = c.distill_sampling == "biased"
        pools: List[Optional[DistillTargets]] = [None] * len(images)
        if c.teacher_cache:
            for j, k in enumerate(keys):
                pools[j] = self._teacher_cache.get(k)
        todo = [j for j, p in enumerate(pools) if p is None]
        if todo:
            props = []
            for j in todo:
                p = proposals[j]
                if c.teacher_max_proposals:
                    p = p[: c.teacher_max_proposals]
                props.append(p.to(self.device))
            with torch.inference_mode(), self._teacher_autocast():
                outs = self.teacher.score_proposals([images[j] for j in todo], props)
            # outside inference mode: indexing gives ordinary tensors (an inference tensor cannot be
            # saved for backward, and the student's RoI pooling saves its boxes)
            for j, p, (lg, dl) in zip(todo, props, outs):
                idx = candidate_pool(lg, c.distill_pool, biased)
                pool = DistillTargets(p[idx].float(), lg[idx].float(), dl[idx].float())
                pools[j] = pool
                if c.teacher_cache:
                    self._teacher_cache[keys[j]] = pool
        out = []
        for pool in pools:
            sel = sample_pool(pool.rois.shape[0], c.distill_rois, pool.rois.device)
            out.append(pool.index(sel))
        return out

    def _rcnn_losses(self, batch) -> Tuple[Dict[str, Tensor], Optional[Tuple[Tensor, Tensor]], List[DistillTargets]]:
        dev = self.device
        images = [im.to(dev, non_blocking=True) for im in batch["image"]]
        proposals = [p.to(dev) for p in batch["proposals"]]
        targets = [{"boxes": b.to(dev), "labels": l.to(dev)} for b, l in zip(batch["boxes"], batch["labels"])]
        dts: List[DistillTargets] = []
        task = getattr(self, "task", None)
        bg_classes = 0
        if self.config.bg_loss == "unbiased" and task is not None and self._incremental(task):
            bg_classes = task.n_old
        if self.teacher is not None and self.config.distill != "none":
            keys = [(str(i), bool(f)) for i, f in zip(batch["image_id"], batch["flipped"])]
            dts = self.teacher_targets(images, proposals, keys)
            losses, outs = self.model(images, proposals, targets, distill_rois=[d.rois for d in dts],
                                      bg_classes=bg_classes)
            return losses, outs, dts
        return self.model(images, proposals, targets, bg_classes=bg_classes), None, dts

    def training_step(self, batch) -> Dict[str, Tensor]:
        if self.net.training is False:
            self.model.train()
        fixed_bn = self.config.bn_stats == "frozen" or self.config.freeze != "none"  # frozen layers: statistics too
        if fixed_bn and getattr(self, "task", None) is not None and self._incremental(self.task):
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                    m.eval()
        c = self.config
        losses, outs, dts = self._rcnn_losses(batch)
        total = losses["loss_cls"] + losses["loss_box"]
        out = {"loss_cls": losses["loss_cls"], "loss_box": losses["loss_box"]}
        if outs is not None:
            t_logits = torch.cat([d.logits for d in dts])
            t_deltas = torch.cat([d.deltas for d in dts])
            dl = distillation_loss(outs[0], outs[1], t_logits, t_deltas, kind=c.distill, center=c.distill_center,
                                   box=c.distill_box, box_loss=c.distill_box_loss, norm=c.distill_norm)
            out.update(dl)
            total = total + c.distill_weight * (dl["loss_distill_cls"] + dl["loss_distill_box"])
        if self.ewc.active:
            pen = self.ewc.penalty(self.net)
            out["loss_ewc"] = pen
            total = total + pen
        out["loss"] = total
        self._version += 1
        return out

    def end_task(self, task: Task) -> None:
        if self.config.ewc_weight > 0:
            loader = self.train_dataloader(task, batch_size=2, shuffle=True)
            was = self.net.training
            buffers = {k: b.clone() for k, b in self.net.named_buffers()}
            self.net.train()
            n = self.ewc.consolidate(self.net, loader, lambda b: self._fisher_loss(b), self.config.ewc_batches)
            self.net.train(was)
            with torch.no_grad():  # the Fisher batches ran in train mode: keep BatchNorm statistics as trained
                for k, b in self.net.named_buffers():
                    b.copy_(buffers[k])
            log.info("EWC: Fisher information from %d batches of task %s", n, task.name)

    def init_from_task_end(self, task: Task) -> None:
        """Starting from a task-end checkpoint of a run without EWC: compute the Fisher information
        of ``task`` now (what ``end_task`` would have done), so that the EWC variant can share A."""
        if self.config.ewc_weight > 0 and not self.ewc.active:
            self.task = task
            self.end_task(task)

    def _fisher_loss(self, batch) -> Tensor:
        dev = self.device
        images = [im.to(dev) for im in batch["image"]]
        proposals = [p.to(dev) for p in batch["proposals"]]
        targets = [{"boxes": b.to(dev), "labels": l.to(dev)} for b, l in zip(batch["boxes"], batch["labels"])]
        losses = self.net(images, proposals, targets)
        return losses["loss_cls"] + losses["loss_box"]

    def parameter_groups(self) -> List[dict]:
        decay, no_decay = [], []
        for n, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay}]
        if no_decay:  # norms and biases: no weight decay
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    # ------------------------------------------------------------------ evaluation
    def detections(self, dataset, progress: bool = False) -> Dict[str, Dict[str, Tensor]]:
        """Detections (CPU tensors, original image coordinates) of the current weights for every
        image of ``dataset``, by image id; images already seen at this weights version are reused."""
        if self._det_cache_version != self._version:
            self._det_cache = {}
            self._det_cache_version = self._version
        src = self.eval_source
        net = self.net
        was = net.training
        net.eval()
        todo = []
        for i in range(len(dataset)):
            ann = dataset.annotation(i) if hasattr(dataset, "annotation") else None
            if ann is None or str(ann.image_id) not in self._det_cache:
                todo.append(i)
        try:
            bs = max(1, self.config.eval_batch_size)
            for s0 in range(0, len(todo), bs):
                samples = [dataset[i] for i in todo[s0: s0 + bs]]
                samples = [s for s in samples if str(s.image_id) not in self._det_cache]
                if not samples:
                    continue
                props = [src.get(s.image_id, None, s.image).to(self.device) for s in samples]
                nonempty = [k for k, p in enumerate(props) if p.shape[0] > 0]
                res = {}
                if nonempty:
                    with torch.no_grad(), self._eval_settings(net):
                        dets = net.detect([samples[k].image.to(self.device) for k in nonempty], [props[k] for k in nonempty])
                    res = dict(zip(nonempty, dets))
                for k, s in enumerate(samples):
                    d = res.get(k)
                    if d is None:
                        d = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long),
                             "scores": torch.zeros((0,))}
                    self._det_cache[str(s.image_id)] = {k2: v.detach().cpu() for k2, v in d.items()}
        finally:
            net.train(was)
        return self._det_cache

    @contextlib.contextmanager
    def _eval_settings(self, net: FastRCNN):
        """The protocol's score threshold, NMS IoU and cap per image on ``net`` while detecting."""
        c, cfg = self.config, net.cfg
        saved = (cfg.score_thresh, cfg.nms_iou, cfg.detections_per_img)
        cfg.score_thresh, cfg.nms_iou, cfg.detections_per_img = (
            c.eval_score_thresh, c.eval_nms_iou, c.eval_detections_per_img)
        try:
            yield
        finally:
            cfg.score_thresh, cfg.nms_iou, cfg.detections_per_img = saved

    def eval_metric(self, task: Task) -> str:
        """``voc`` or ``coco``: ``learner.eval_metric``, with ``auto`` resolved by :func:`is_coco_task`."""
        m = self.config.eval_metric
        return m if m != "auto" else ("coco" if is_coco_task(task) else "voc")

    def evaluate(self, task: Task) -> Dict[str, float]:
        from incdet.eval.groups import group_map, to_percent
        from incdet.eval.voc import voc_evaluate

        ds = task.eval_set
        if self.eval_source.method is not None:
            ensure_computed(self.eval_source, ds, self.config.proposal_workers)
        dets = self.detections(ds)
        n_seen = task.n_seen
        gts, preds = [], {}
        for i in range(len(ds)):
            s = ds.annotation(i) if hasattr(ds, "annotation") else ds[i]
            d = dets[str(s.image_id)]
            keep = d["labels"] <= n_seen
            preds[s.image_id] = {k: v[keep] for k, v in d.items()}
            gts.append(s)
        names = list(task.seen_classes)
        if self.eval_metric(task) == "coco":
            return self._coco_metrics(task, preds, gts, names)
        res = voc_evaluate(preds, gts, names, use_07_metric=self.config.use_07_metric)
        out: Dict[str, float] = {f"AP/{n}": to_percent(res.ap[n]) for n in names}
        out["mAP_new"] = group_map(res.ap, names[task.n_old: n_seen])
        if task.n_old:  # left out for the first task (no old classes)
            out["mAP_old"] = group_map(res.ap, names[: task.n_old])
        out["mAP_all"] = group_map(res.ap, names)
        out["mAP"] = out["mAP_new"]
        return out

    @staticmethod
    def _coco_metrics(task: Task, preds, gts, names: List[str]) -> Dict[str, float]:
        """pycocotools metrics of :meth:`evaluate` (``AP*``: AP@[.5:.95], ``AP50*``: AP at IoU 0.5).
        ``ignore`` (crowd) and ``difficult`` boxes become ``iscrowd`` regions
        (:func:`incdet.eval.coco.build_coco_gt`); a class without ground truth is NaN and left
        out of the means, as in the VOC path."""
        from incdet.eval.coco import coco_evaluate
        from incdet.eval.groups import group_map, to_percent

        res = coco_evaluate(gts, preds, classes=names)
        ap, ap50 = res.per_class, res.per_class_ap50
        out: Dict[str, float] = {f"AP/{n}": to_percent(ap[n]) for n in names}
        out.update({f"AP50/{n}": to_percent(ap50[n]) for n in names})
        groups = {"new": names[task.n_old: task.n_seen], "all": names}
        if task.n_old:  # left out for the first task (no old classes)
            groups["old"] = names[: task.n_old]
        for g, keys in groups.items():
            out[f"mAP_{g}"] = group_map(ap, keys)
            out[f"AP50_{g}"] = group_map(ap50, keys)
        out["mAP"], out["AP50"] = out["mAP_new"], out["AP50_new"]
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.net.state_dict(),
            "teacher": self.teacher.state_dict() if self.teacher is not None else None,
            "ewc": self.ewc.state_dict(),
            "task_index": self.task_index,
            "version": self._version,
            # class names of the outputs 1..C (what `incdet predict` labels detections with)
            "classes": list(self.task.seen_classes) if getattr(self, "task", None) is not None else [],
        }

    def _fresh_net(self) -> FastRCNN:
        m = self.config.model
        cfg = dataclasses.replace(m, weights=None, norm=m.resolved_norm, freeze_at=m.resolved_freeze_at)
        return FastRCNN(cfg).to(self.device)

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "model" not in state:
            raise CheckpointError("incdet.fastrcnn checkpoint has no 'model' entry")
        try:
            self.net.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"incdet.fastrcnn checkpoint does not fit the configured model: {e}") from None
        self.net.to(self.device)
        if state.get("teacher") is not None:
            t = self._fresh_net()
            t.load_state_dict(state["teacher"])
            self.teacher = t.eval().requires_grad_(False)
        else:
            self.teacher = None
        if state.get("ewc"):
            self.ewc.load_state_dict(state["ewc"], self.device)
            self.ewc.strength = float(self.config.ewc_weight)  # this config's strength, not the saved one
        self.task_index = int(state.get("task_index", -1))
        self._version = int(state.get("version", 0)) + 1
        self._teacher_cache.clear()
        self._det_cache = {}


__all__ = ["FastRCNNLearner", "FastRCNNLearnerConfig"]
