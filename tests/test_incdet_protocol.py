"""The incdet evaluation protocol: presets (``learner.protocol``), the metric choice
(``learner.eval_metric``) and crowd (``ignore``) boxes as "don't care" in the VOC evaluator."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from incdet.engine.config import load_config
from incdet.errors import ConfigError
from incdet.eval.voc import voc_evaluate
from incdet.models.learner import EVAL_PROTOCOLS, FastRCNNLearner, FastRCNNLearnerConfig, is_coco_task

from conftest import REPO
from test_incdet_helpers import make_tasks, tiny_model_config

CONFIGS = REPO / "configs" / "incdet"


# ------------------------------------------------------------------------------ presets
def test_standard_is_the_models_inference_settings():
    c = FastRCNNLearnerConfig(model=tiny_model_config(score_thresh=0.07, nms_iou=0.4, detections_per_img=9))
    assert c.protocol == "standard"
    assert (c.eval_score_thresh, c.eval_nms_iou, c.eval_detections_per_img, c.use_07_metric) == (0.07, 0.4, 9, False)


def test_thesis_preset_and_explicit_values_win():
    c = FastRCNNLearnerConfig(model=tiny_model_config(), protocol="thesis")
    assert (c.eval_score_thresh, c.eval_nms_iou, c.eval_detections_per_img, c.use_07_metric) == (0.5, 0.3, 100, True)
    c = FastRCNNLearnerConfig(model=tiny_model_config(), protocol="thesis", eval_score_thresh=0.2, use_07_metric=False)
    assert (c.eval_score_thresh, c.use_07_metric) == (0.2, False)
    assert set(EVAL_PROTOCOLS) == {"standard", "thesis"}


@pytest.mark.parametrize("cfg", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_keep_their_evaluation(cfg):
    """Every shipped config evaluates as before the presets: the model's settings, its AP kind."""
    o = load_config(cfg).learner.options
    assert o.protocol == "standard"
    assert (o.eval_score_thresh, o.eval_nms_iou, o.eval_detections_per_img) == (
        o.model.score_thresh, o.model.nms_iou, o.model.detections_per_img)
    assert o.use_07_metric is ("voc07" in cfg.name)
    t = load_config(cfg, ["learner.protocol=thesis"]).learner.options
    assert (t.eval_score_thresh, t.eval_nms_iou) == (0.5, 0.3)


@pytest.mark.parametrize("override,message", [
    ("learner.protocol=paper", "learner.protocol must be one of"),
    ("learner.eval_metric=map", "learner.eval_metric must be one of"),
    ("learner.eval_score_thresh=1", "learner.eval_score_thresh must be >= 0 and < 1, got 1"),
    ("learner.eval_detections_per_img=0", "learner.eval_detections_per_img must be >= 1, got 0"),
])
def test_bad_protocol_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "shapes_15+5.yaml", [override])


# ------------------------------------------------------------------- learner evaluation
def _learner(**kw):
    cfg = FastRCNNLearnerConfig(model=tiny_model_config(score_thresh=0.0), proposals="sliding_window",
                                max_proposals=60, proposal_nms=None, **kw)
    return FastRCNNLearner(cfg, "cpu")


def test_protocol_thresholds_apply_to_evaluation_only():
    torch.manual_seed(0)
    t0, _ = make_tasks(n_train=2, n_eval=3)
    outs = {}
    for protocol in ("standard", "thesis"):
        torch.manual_seed(0)
        L = _learner(protocol=protocol, eval_score_thresh=0.34 if protocol == "thesis" else None)
        L.begin_task(t0)
        outs[protocol] = L.detections(t0.eval_set)
        assert L.net.cfg.score_thresh == 0.0  # the model's own setting is restored
    std = torch.cat([d["scores"] for d in outs["standard"].values()])
    th = torch.cat([d["scores"] for d in outs["thesis"].values()])
    assert std.numel() > 0 and (th > 0.34).all()
    assert th.numel() == int((std > 0.34).sum())  # same network, same NMS: only the threshold differs


def test_eval_metric_auto_voc_and_coco():
    t0, _ = make_tasks(n_train=2, n_eval=3)
    L = _learner()
    L.begin_task(t0)
    assert not is_coco_task(t0) and L.eval_metric(t0) == "voc"
    voc = L.evaluate(t0)
    assert "AP50" not in voc and {"mAP", "mAP_new", "mAP_all", "AP/c1"} <= set(voc)
    L.config.eval_metric = "coco"
    coco = L.evaluate(t0)
    assert {"mAP", "mAP_new", "mAP_all", "AP50", "AP50_new", "AP50_all", "AP/c1", "AP50/c1"} <= set(coco)
    assert coco["mAP"] == coco["mAP_new"] and coco["AP50"] == coco["AP50_new"]
    t0.meta = {"data": "coco"}
    L.config.eval_metric = "auto"
    assert is_coco_task(t0) and L.eval_metric(t0) == "coco"


# ------------------------------------------------------- crowd boxes in the VOC evaluator
def test_crowd_box_is_dont_care():
    g = np.array([[0, 0, 10, 10]], float)
    crowd = np.array([[50, 50, 90, 90]], float)
    base = {"i": {"boxes": g, "labels": np.array([1])}}
    dets = {"i": {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), "scores": np.array([0.9, 0.5]),
                  "labels": np.array([1, 1])}}
    with_crowd = {"i": {"boxes": np.concatenate([g, crowd]), "labels": np.array([1, 1]),
                        "ignore": np.array([False, True])}}
    dets_c = {"i": {"boxes": np.concatenate([crowd, dets["i"]["boxes"]]), "scores": np.array([0.95, 0.9, 0.5]),
                    "labels": np.array([1, 1, 1])}}
    a = voc_evaluate(dets, base, ["a"])
    b = voc_evaluate(dets_c, with_crowd, ["a"])
    b2 = voc_evaluate(dets_c, with_crowd, ["a"], use_difficult=True)  # crowd stays don't-care
    assert a.per_class["a"].npos == b.per_class["a"].npos == 1
    assert a.ap["a"] == b.ap["a"] == b2.ap["a"] == pytest.approx(1.0)
    # without the flag the crowd box would be a missed object
    plain = {"i": {"boxes": with_crowd["i"]["boxes"], "labels": np.array([1, 1])}}
    assert voc_evaluate(dets, plain, ["a"]).ap["a"] < 1.0


def _box(lo: float, hi: float):
    c = st.floats(lo, hi - 12, allow_nan=False)
    s = st.floats(2, 10, allow_nan=False)
    return st.tuples(c, c, s, s).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@st.composite
def _crowd_case(draw):
    """Images with ordinary gt and detections in [0, 100]^2 and crowd boxes (each hit exactly by
    an extra detection of any score) in [200, 300]^2, so a crowd box is always those detections'
    best match and never an ordinary detection's."""
    n_img = draw(st.integers(1, 3))
    gt, dets, crowd = {}, {}, {}
    for i in range(n_img):
        gb = draw(st.lists(_box(0, 100), max_size=4))
        db = draw(st.lists(_box(0, 100), max_size=6))
        cb = draw(st.lists(_box(200, 300), max_size=2))
        gl = draw(st.lists(st.integers(1, 2), min_size=len(gb), max_size=len(gb)))
        dl = draw(st.lists(st.integers(1, 2), min_size=len(db), max_size=len(db)))
        cl = draw(st.lists(st.integers(1, 2), min_size=len(cb), max_size=len(cb)))
        ds = draw(st.lists(st.floats(0.01, 1.0), min_size=len(db), max_size=len(db)))
        cs = draw(st.lists(st.floats(0.01, 1.0), min_size=len(cb), max_size=len(cb)))
        gt[i] = (np.asarray(gb, float).reshape(-1, 4), np.asarray(gl, np.int64))
        dets[i] = (np.asarray(db, float).reshape(-1, 4), np.asarray(dl, np.int64), np.asarray(ds, float))
        crowd[i] = (np.asarray(cb, float).reshape(-1, 4), np.asarray(cl, np.int64), np.asarray(cs, float))
    return gt, dets, crowd


def _honest(dets, gts, classes):
    return voc_evaluate(dets, gts, classes)


def _ignore_dropped(dets, gts, classes):  # the bug this property guards against
    return voc_evaluate(dets, {k: {kk: v for kk, v in g.items() if kk != "ignore"} for k, g in gts.items()}, classes)


def crowd_changes_nothing(evaluate, case) -> None:
    gt, dets, crowd = case
    plain_gt = {i: {"boxes": b, "labels": l} for i, (b, l) in gt.items()}
    plain_det = {i: {"boxes": b, "labels": l, "scores": s} for i, (b, l, s) in dets.items()}
    crowd_gt = {i: {"boxes": np.concatenate([b, crowd[i][0]]), "labels": np.concatenate([l, crowd[i][1]]),
                    "ignore": np.r_[np.zeros(len(b), bool), np.ones(len(crowd[i][0]), bool)]}
                for i, (b, l) in gt.items()}
    crowd_det = {i: {"boxes": np.concatenate([b, crowd[i][0]]), "labels": np.concatenate([l, crowd[i][1]]),
                     "scores": np.concatenate([s, crowd[i][2]])} for i, (b, l, s) in dets.items()}
    a = evaluate(plain_det, plain_gt, ["a", "b"])
    b = evaluate(crowd_det, crowd_gt, ["a", "b"])
    for c in ("a", "b"):
        x, y = a.ap[c], b.ap[c]
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-12), (c, x, y)
        assert a.per_class[c].npos == b.per_class[c].npos


def _run(evaluate, n, shrink=True):
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    @settings(max_examples=n, deadline=None, derandomize=True, database=None, phases=phases,
              suppress_health_check=list(HealthCheck))
    @given(_crowd_case())
    def prop(case):
        crowd_changes_nothing(evaluate, case)

    prop()


@pytest.mark.parametrize("evaluate,ok", [(_honest, True), (_ignore_dropped, False)], ids=["voc_evaluate", "ignore-dropped"])
def test_fuzz_crowd_boxes_change_no_ap(evaluate, ok):
    """Adding crowd boxes (and detections on them) leaves every AP unchanged; the known-bad case
    (crowd flags dropped, the bug of issue 15) must be caught by the same checker."""
    if ok:
        _run(evaluate, 150)
    else:
        with pytest.raises(AssertionError):
            _run(evaluate, 150, shrink=False)


@pytest.mark.slow
def test_fuzz_crowd_boxes_change_no_ap_long():
    _run(_honest, int(os.environ.get("INCDET_FUZZ_SLOW", 3000)))


def test_coco_path_ignores_crowd_regions():
    """The learner's pycocotools metrics: a crowd box (and a detection on it) changes no AP; the
    same box as an ordinary object is a miss."""
    from types import SimpleNamespace

    from incdet.data.sample import Sample

    def sample(boxes, ignore):
        n = len(boxes)
        return Sample(image=None, boxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.ones(n, dtype=torch.long),
                      difficult=torch.zeros(n, dtype=torch.bool), ignore=torch.tensor(ignore, dtype=torch.bool),
                      image_id=7, orig_size=(100, 100))

    task = SimpleNamespace(n_old=0, n_seen=1)
    obj, crowd = [0.0, 0.0, 20.0, 20.0], [50.0, 50.0, 90.0, 90.0]
    det = lambda boxes, scores: {7: {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores),  # noqa: E731
                                     "labels": torch.ones(len(boxes), dtype=torch.long)}}
    base = FastRCNNLearner._coco_metrics(task, det([obj], [0.9]), [sample([obj], [False])], ["a"])
    with_crowd = FastRCNNLearner._coco_metrics(task, det([crowd, obj], [0.95, 0.9]),
                                               [sample([obj, crowd], [False, True])], ["a"])
    as_object = FastRCNNLearner._coco_metrics(task, det([obj], [0.9]), [sample([obj, crowd], [False, False])], ["a"])
    assert base["mAP"] == pytest.approx(100.0) and base["AP50"] == pytest.approx(100.0)
    assert with_crowd == pytest.approx(base)
    assert as_object["AP50"] < 60.0
