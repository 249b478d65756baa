"""Inference with a trained incremental Fast R-CNN, and ``incdet predict``.

>>> p = FastRCNNPredictor("runs/demo/distill/checkpoints/task1.pt")   # doctest: +SKIP
>>> out = p.predict(["img.jpg", img_uint8_chw])                        # doctest: +SKIP
>>> out[0]["boxes"], out[0]["labels"], out[0]["scores"]                # doctest: +SKIP

    incdet predict --checkpoint RUN/checkpoints/task1.pt IMG [IMG ...] --out DIR

Any driver checkpoint of an ``incdet.fastrcnn`` run works (``RUN/checkpoint.pt`` or a task-end
``RUN/checkpoints/taskK.pt``): the model config comes from the checkpoint, the class names from
the learner state (or, for checkpoints written before it held them, from the results matrix).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch

from incdet.errors import CheckpointError, DataError
from incdet.vis import to_chw_uint8


def _classes_from_results(ckpt: dict) -> List[str]:
    res = ckpt.get("results") or {}
    k = int(ckpt.get("task_index", 0))
    am = res.get("all_metrics") or []
    try:
        m = am[k][k] or {}
    except IndexError:
        m = {}
    return [key[3:] for key in m if key.startswith("AP/")]


#: learner keys renamed since checkpoints were first written (old -> new)
RENAMED_LEARNER_KEYS = {"ap_07_metric": "use_07_metric"}


def renamed_learner_keys(config: Any) -> Any:
    """A checkpoint's config with the learner keys of :data:`RENAMED_LEARNER_KEYS` renamed."""
    learner = config.get("learner") if isinstance(config, dict) else None
    if not isinstance(learner, dict) or not any(k in learner for k in RENAMED_LEARNER_KEYS):
        return config
    learner = {RENAMED_LEARNER_KEYS.get(k, k): v for k, v in learner.items()}
    return {**config, "learner": learner}


class FastRCNNPredictor:
    """Batch inference: ``predict(images, proposals=None) -> [dict(boxes, labels, scores)]``.

    Images: paths, PIL images, uint8 ``[H, W, 3]`` arrays or uint8 ``[3, H, W]`` tensors, any
    size. Proposals: one ``[K, 4]`` xyxy array/tensor per image, or ``None`` to compute them with
    ``proposals`` (a method name: ``selective_search`` (default) or ``sliding_window``), filtered
    as in training (``max_proposals``, proposal NMS). Returns per image ``boxes`` (float ``[N, 4]``
    xyxy, image pixels), ``labels`` (int64, 1-based into :attr:`classes`) and ``scores``, at most
    the model's ``detections_per_img``, after per-class NMS and the score threshold
    (``score_thresh`` overrides the trained model's). These are the model's inference settings
    (``learner.model.*``); the run's evaluation protocol (``learner.protocol`` and the
    ``learner.eval_*`` keys, e.g. the thesis' score > 0.5) applies to evaluation only: pass
    ``score_thresh=0.5`` for the thesis' threshold.
    """

    def __init__(self, checkpoint: Union[str, Path], device: str = "auto", proposals: str = "selective_search",
                 max_proposals: Optional[int] = None, score_thresh: Optional[float] = None):
        from incdet.engine import LEARNERS
        from incdet.engine.checkpoint import load_checkpoint
        from incdet.engine.config import config_from_dict
        from incdet.engine.distributed import resolve_device
        from incdet.models.proposals import METHODS, ProposalSource

        ckpt = load_checkpoint(checkpoint)
        cfg = config_from_dict(renamed_learner_keys(ckpt["config"]), source=str(checkpoint))
        if cfg.learner.name != "incdet.fastrcnn":
            raise CheckpointError(f"{checkpoint}: a {cfg.learner.name!r} run, not an incdet.fastrcnn one")
        self.device = resolve_device(device)
        self.learner = LEARNERS.get(cfg.learner.name)(cfg.learner.options, self.device)
        self.learner.load_state_dict(ckpt["learner"])
        self.net = self.learner.net.eval()
        if score_thresh is not None:
            self.net.cfg.score_thresh = float(score_thresh)
        self.classes: List[str] = list(ckpt["learner"].get("classes") or _classes_from_results(ckpt))
        if len(self.classes) != self.net.num_classes:
            raise CheckpointError(f"{checkpoint}: model has {self.net.num_classes} classes but "
                                  f"{len(self.classes)} class names could be found")
        if proposals not in METHODS:
            raise DataError(f"unknown proposal method {proposals!r}; known: {', '.join(METHODS)}")
        c = self.learner.config
        self._source = ProposalSource(proposals, max_proposals=max_proposals or c.max_proposals,
                                      nms_iou=c.proposal_nms, max_side=c.proposal_max_side)

    @torch.no_grad()
    def predict(self, images: Sequence[Any], proposals: Optional[Sequence[Any]] = None) -> List[dict]:
        from incdet.models.proposals import filter_proposals, validate_boxes

        imgs = [to_chw_uint8(i) for i in images]
        if proposals is not None and len(proposals) != len(imgs):
            raise DataError(f"{len(proposals)} proposal arrays for {len(imgs)} images")
        out = []
        for k, im in enumerate(imgs):
            size = (int(im.shape[-2]), int(im.shape[-1]))
            if proposals is None:
                p = self._source.get(f"_predict_{k}", size, im)
                self._source._memo.clear()  # computed proposals are per call, never reused
            else:
                raw = proposals[k]
                raw = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
                c = self.learner.config
                p = filter_proposals(validate_boxes(raw, k, "proposals argument", size), c.max_proposals,
                                     c.proposal_nms)
            if p.shape[0] == 0:
                out.append({"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long),
                            "scores": torch.zeros(0)})
                continue
            d = self.net.detect([im.to(self.device)], [p.to(self.device)])[0]
            out.append({key: v.detach().cpu() for key, v in d.items()})
        return out


# ------------------------------------------------------------------------------------- CLI
def _predict(args: argparse.Namespace) -> int:
    from incdet.data.images import image_size
    from incdet.engine.config import check_range
    from incdet.vis import StagedOutputs, check_writable_size, encode_outputs, output_stems

    check_range("", "--max-proposals", args.max_proposals, 1, allow_none=True)
    check_range("", "--score-thresh", args.score_thresh, 0, 1, hi_open=True, allow_none=True)
    check_range("", "--vis-thresh", args.vis_thresh, 0, 1)
    # everything that can be checked before the model runs: output names, files, sizes
    stems = output_stems(args.images, with_mask=False, reserved=["predictions.json"])
    for path in args.images:
        check_writable_size(path, image_size(str(path)))
    p = FastRCNNPredictor(args.checkpoint, device=args.device, proposals=args.proposals,
                          max_proposals=args.max_proposals, score_thresh=args.score_thresh)
    summary, lines = [], []
    with StagedOutputs(args.out) as st:  # all files or none
        for path, stem in zip(args.images, stems):
            img = to_chw_uint8(path)
            pred = p.predict([img])[0]
            enc = encode_outputs(pred, img, stem, p.classes, vis_thresh=args.vis_thresh)
            files = {kind: st.add(name, data) for kind, (name, data) in enc.items()}
            n = int((pred["scores"] >= args.vis_thresh).sum())
            summary.append({"image": str(path), "detections": int(pred["scores"].numel()), **files})
            lines.append(f"{path}: {pred['scores'].numel()} detections ({n} >= {args.vis_thresh}) -> {files['overlay']}")
        st.add("predictions.json", json.dumps(summary, indent=1).encode())
    print("\n".join(lines))
    return 0


def register(sub) -> None:
    p = sub.add_parser("predict", help="detections JSON (COCO results format) and an overlay picture per image",
                       description="Run a trained incdet Fast R-CNN on images: STEM.json (COCO results, "
                                   "labels 1-based into the checkpoint's classes) and STEM_overlay.jpg per image, "
                                   "and predictions.json listing them. STEM is the image's file stem; two inputs "
                                   "with the same stem (a/x.jpg, b/x.png) are refused, never overwritten. "
                                   "Outputs are written all together or, on any error, not at all.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoint.pt or RUN/checkpoints/taskK.pt")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="auto")
    p.add_argument("--proposals", default="selective_search", help="selective_search | sliding_window")
    p.add_argument("--max-proposals", type=int, default=None)
    p.add_argument("--score-thresh", type=float, default=None, help="default: the trained model's")
    p.add_argument("--vis-thresh", type=float, default=0.3, help="boxes drawn in the overlay from this score")
    p.set_defaults(func=_predict)


__all__ = ["FastRCNNPredictor", "register"]
