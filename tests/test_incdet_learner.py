"""The incdet.fastrcnn learner: teacher, variants, caching, EWC, evaluation, checkpoints."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from incdet.engine import LEARNERS
from incdet.models.learner import FastRCNNLearner, FastRCNNLearnerConfig
from incdet.models.proposals import save_npz

from conftest import INCDET_CONFIG, INCDET_TINY, tiny_overrides
from test_incdet_helpers import make_tasks, tiny_model_config


@pytest.fixture
def tasks():
    return make_tasks()


def _props_file(tmp_path, tasks):
    """Proposals: gt boxes jittered + a few random boxes, for every image of every set."""
    g = torch.Generator().manual_seed(0)
    props = {}
    for t in tasks:
        for ds in (t.train_set, t.eval_set):
            for s in ds.items:
                jit = s.boxes.repeat(6, 1) + torch.randn((6 * len(s.boxes), 4), generator=g) * 2
                rnd = torch.rand((10, 2), generator=g) * 40
                rnd = torch.cat([rnd, rnd + 8 + torch.rand((10, 2), generator=g) * 20], 1)
                b = torch.cat([s.boxes, jit, rnd]).clamp(0, 63)
                b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 1)
                props[s.image_id] = b.numpy()
    path = tmp_path / "props.npz"
    save_npz(path, props)
    return str(path)


def _learner(tmp_path, tasks, **kw):
    kw.setdefault("proposal_nms", None)
    cfg = FastRCNNLearnerConfig(model=tiny_model_config(), proposals=_props_file(tmp_path, tasks), **kw)
    return FastRCNNLearner(cfg, "cpu")


def _batch(learner, task, n=2):
    ds = learner.train_dataset(task)
    return learner.collate([ds[i] for i in range(n)])


def _train(learner, task, steps, lr=0.02):
    opt = torch.optim.SGD(learner.parameter_groups(), lr=lr, momentum=0.9)
    ds = learner.train_dataset(task)
    losses = []
    for k in range(steps):
        b = learner.collate([ds[(2 * k) % len(ds)], ds[(2 * k + 1) % len(ds)]])
        out = learner.training_step(b)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append({k2: float(v.detach()) for k2, v in out.items()})
    return losses


def test_registered():
    assert LEARNERS.get("incdet.fastrcnn") is FastRCNNLearner


def test_teacher_is_frozen_and_outside_the_model(tmp_path, tasks):
    t0, t1 = tasks
    L = _learner(tmp_path, tasks)
    L.begin_task(t0)
    assert L.teacher is None and L.net.num_classes == 2
    L.begin_task(t1)
    assert L.net.num_classes == 3 and L.teacher.num_classes == 2
    assert not L.teacher.training
    assert all(not p.requires_grad for p in L.teacher.parameters())
    model_params = {id(p) for p in L.model.parameters()}
    assert not any(id(p) in model_params for p in L.teacher.parameters())
    assert all(m is not L.teacher for m in L.model.modules())
    # a distillation step: no gradient reaches the teacher; B == A at first so L_dist ~ 0
    out = L.training_step(_batch(L, t1))
    assert {"loss", "loss_cls", "loss_box", "loss_distill_cls", "loss_distill_box"} <= set(out)
    assert out["loss_distill_cls"].item() < 1e-10 and out["loss_distill_box"].item() < 1e-10
    out["loss"].backward()
    assert all(p.grad is None for p in L.teacher.parameters())


def test_naive_finetuning_has_no_teacher(tmp_path, tasks):
    t0, t1 = tasks
    L = _learner(tmp_path, tasks, distill="none")
    L.begin_task(t0)
    L.begin_task(t1)
    assert L.teacher is None
    out = L.training_step(_batch(L, t1))
    assert "loss_distill_cls" not in out


@pytest.mark.parametrize("freeze", ["trunk", "all_but_new"])
def test_freezing_variants(tmp_path, tasks, freeze):
    t0, t1 = tasks
    L = _learner(tmp_path, tasks, freeze=freeze)
    L.begin_task(t0)
    assert all(p.requires_grad for p in L.net.parameters())  # first task: everything trains
    L.begin_task(t1)
    net = L.net
    trunk = [p for m in net.trunk_modules() for p in m.parameters()]
    assert not any(p.requires_grad for p in trunk)
    res5 = list(net.backbone.layer4.parameters())
    new = list(net.cls_score.chunks[1].parameters()) + list(net.bbox_pred.chunks[1].parameters())
    old_heads = list(net.cls_score.chunks[0].parameters()) + list(net.bbox_pred.chunks[0].parameters())
    assert all(p.requires_grad for p in new)
    assert not any(p.requires_grad for p in res5)  # thesis: every convolutional layer fixed
    if freeze == "trunk":
        assert all(p.requires_grad for p in old_heads)
    else:
        assert not any(p.requires_grad for p in res5 + old_heads)
        before = [p.detach().clone() for p in net.parameters()]
        _train(L, t1, 2)
        changed = [not torch.equal(a, p) for a, p in zip(before, net.parameters())]
        assert sum(changed) == len(new) and all(c for c, p in zip(changed, net.parameters()) if p.requires_grad)
    ids = {id(p) for g in L.parameter_groups() for p in g["params"]}
    assert ids == {id(p) for p in net.parameters() if p.requires_grad}


def test_teacher_cache_matches_live_teacher(tmp_path, tasks):
    t0, t1 = tasks
    L = _learner(tmp_path, tasks, teacher_cache=True)
    L.begin_task(t0)
    _train(L, t0, 2)
    L.begin_task(t1)
    b = _batch(L, t1)
    keys = [(str(i), f) for i, f in zip(b["image_id"], b["flipped"])]
    images = list(b["image"])
    L.config.distill_rois = 10 ** 6  # take the whole pool, to compare deterministically
    live = L.teacher_targets(images, b["proposals"], keys)
    assert set(L._teacher_cache) == set(keys)
    cached = L.teacher_targets(images, b["proposals"], keys)

    def canon(d):
        order = torch.argsort(d.rois[:, 0] * 1e6 + d.rois[:, 1] * 1e3 + d.rois[:, 2])
        return d.index(order)

    for a, c in zip(live, cached):
        a, c = canon(a), canon(c)
        assert torch.equal(a.rois, c.rois) and torch.equal(a.logits, c.logits) and torch.equal(a.deltas, c.deltas)
        assert a.rois.shape[0] == min(128, len(a.rois))
    L.begin_task(t1)  # no new classes: nothing changes, cache kept
    assert L._teacher_cache


def test_training_reduces_loss_and_evaluate(tmp_path, tasks):
    torch.manual_seed(0)
    t0, t1 = tasks
    L = _learner(tmp_path, tasks, flip_prob=0.5)
    L.begin_task(t0)
    losses = _train(L, t0, 25, lr=0.02)
    first = np.mean([l["loss"] for l in losses[:4]])
    last = np.mean([l["loss"] for l in losses[-4:]])
    assert last < 0.7 * first
    L.end_task(t0)
    m0 = L.evaluate(t0)
    assert set(m0) == {"mAP", "mAP_new", "mAP_all", "AP/c1", "AP/c2"}
    assert 0 <= m0["mAP"] <= 100 and "mAP_old" not in m0 and m0["mAP_all"] == pytest.approx(m0["mAP"])
    assert m0["mAP"] > 5.0  # learned something on its own training-like data
    n_cached = len(L._det_cache)
    assert L.evaluate(t0) == m0 and len(L._det_cache) == n_cached  # cached pass
    L.begin_task(t1)
    out = _train(L, t1, 3)
    assert all(np.isfinite(o["loss"]) for o in out) and out[-1]["loss_distill_cls"] > 0
    m1 = L.evaluate(t1)
    assert "mAP_old" in m1 and "AP/c3" in m1
    m01 = L.evaluate(t0)  # old task evaluated with the current (3-class) model
    assert set(k for k in m01 if k.startswith("AP/")) == {"AP/c1", "AP/c2"}


def test_state_dict_roundtrip_with_weights_only(tmp_path, tasks):
    t0, t1 = tasks
    L = _learner(tmp_path, tasks, ewc_weight=10.0, ewc_batches=2)
    L.begin_task(t0)
    _train(L, t0, 1)
    L.end_task(t0)
    assert L.ewc.active
    L.begin_task(t1)
    buf = io.BytesIO()
    torch.save(L.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    L2 = _learner(tmp_path, tasks, ewc_weight=10.0)
    L2.load_state_dict(state)
    L2.resume_task(t1)
    assert L2.net.class_chunks == [2, 1] and L2.teacher.class_chunks == [2]
    for a, b in zip(L.net.state_dict().values(), L2.net.state_dict().values()):
        assert torch.equal(a, b)
    assert set(L2.ewc.fisher) == set(L.ewc.fisher)
    out = L2.training_step(_batch(L2, t1))
    assert "loss_ewc" in out and out["loss_ewc"].item() == pytest.approx(0.0, abs=1e-12)


def test_ewc_penalty_grows_when_weights_move(tmp_path, tasks):
    t0, t1 = tasks
    L = _learner(tmp_path, tasks, ewc_weight=100.0, ewc_batches=2, distill="none")
    L.begin_task(t0)
    _train(L, t0, 2)
    buffers = {k: b.clone() for k, b in L.net.named_buffers()}
    L.end_task(t0)
    assert all(torch.equal(b, buffers[k]) for k, b in L.net.named_buffers())  # Fisher batches keep BN statistics
    L.begin_task(t1)
    p0 = L.ewc.penalty(L.net).item()
    with torch.no_grad():
        for p in L.net.backbone.layer3.parameters():
            p.add_(0.01)
    assert p0 == pytest.approx(0.0, abs=1e-12) and L.ewc.penalty(L.net).item() > 0


def test_bad_config_values(tmp_path, tasks):
    from incdet.errors import ConfigError

    with pytest.raises(ConfigError, match="distill_sampling"):
        FastRCNNLearner(FastRCNNLearnerConfig(model=tiny_model_config(), distill_sampling="random"))
    with pytest.raises(ConfigError, match="depth"):
        FastRCNNLearner(FastRCNNLearnerConfig(model=tiny_model_config(depth=42)))


def test_driver_pipeline_on_tiny_shapes(tmp_path):
    """configs/incdet/shapes_15+5.yaml through the driver, shrunk: 2 tasks, a few iterations."""
    from incdet.engine.trainer import run_training

    overrides = tiny_overrides(INCDET_TINY, tmp_path / "shapes")
    res = run_training(INCDET_CONFIG, overrides, run_dir=tmp_path / "run", device="cpu", quiet=True)
    assert res.tasks == ["1-15", "16-20"]
    import json

    out = json.loads((tmp_path / "run" / "results.json").read_text())
    assert out["matrix"][1][0] is not None and out["matrix"][1][1] is not None
    state = torch.load(tmp_path / "run" / "checkpoints" / "task1.pt", weights_only=True)
    assert state["learner"]["teacher"] is not None


@pytest.mark.parametrize("mode", ["update", "frozen"])
def test_bn_stats_frozen_only_in_incremental_steps(tmp_path, tasks, mode):
    t0, t1 = tasks
    learner = FastRCNNLearner(FastRCNNLearnerConfig(model=tiny_model_config(norm="bn"), proposals=_props_file(tmp_path, tasks),
                                                    proposal_nms=None, bn_stats=mode), "cpu")
    bn = next(m for m in learner.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    learner.begin_task(t0)
    before = bn.running_mean.clone()
    learner.training_step(_batch(learner, t0))
    assert not torch.equal(bn.running_mean, before)  # first task: statistics always update
    learner.end_task(t0)
    learner.begin_task(t1)
    before = bn.running_mean.clone()
    learner.training_step(_batch(learner, t1))
    assert torch.equal(bn.running_mean, before) == (mode == "frozen")


def test_ewc_variant_can_start_from_a_run_trained_without_ewc(tmp_path):
    """tasks.init_from a run without EWC: the Fisher of task 0 is computed when the EWC run starts
    (init_from_task_end), the saved strength 0 does not override the config, and the penalty is
    active in the incremental step (it used to be silently naive fine-tuning)."""
    from incdet.engine.trainer import run_training

    cfg = INCDET_CONFIG
    common = tiny_overrides(INCDET_TINY, tmp_path / "shapes", "tasks.shapes={n_train: 24, n_val: 0, n_test: 4, size: 64}",
                            "learner.max_proposals=100", "train.first_task.iterations=2", "train.log_every=1")
    run_training(cfg, common, run_dir=tmp_path / "a", device="cpu", quiet=True)
    a0 = torch.load(tmp_path / "a" / "checkpoints" / "task0.pt", weights_only=True)
    assert not a0["learner"]["ewc"]["fisher"]
    run_training(cfg, common + ["learner.distill=none", "learner.ewc_weight=1000", "learner.ewc_batches=2",
                                f"tasks.init_from={tmp_path / 'a' / 'checkpoints' / 'task0.pt'}"],
                 run_dir=tmp_path / "e", device="cpu", quiet=True)
    e1 = torch.load(tmp_path / "e" / "checkpoints" / "task1.pt", weights_only=True)
    assert e1["learner"]["ewc"]["fisher"] and e1["learner"]["ewc"]["strength"] == 1000.0
    import json

    steps = [json.loads(line) for line in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss_ewc" in s for s in steps if s.get("task") == 1)
    # the weights moved away from A's in the first step, so the penalty is positive afterwards
    assert [s["loss_ewc"] for s in steps if s.get("task") == 1 and "loss_ewc" in s][-1] > 0


def test_unbiased_background_loss_by_hand():
    """bg_classes=K: a background RoI's loss is -log(p_0 + ... + p_K), a foreground RoI's is -log p_y
    (worked out here with explicit softmax sums); K=0 is plain cross-entropy."""
    from incdet.models.fastrcnn import FastRCNN

    net = FastRCNN(tiny_model_config())
    net.add_classes(3)  # background + classes 1, 2 (old) and 3 (new)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0],   # background RoI
                           [0.0, 0.0, 0.0, 3.0]])   # RoI of class 3
    labels = torch.tensor([0, 3])
    deltas = torch.zeros(2, 12)
    targets = torch.zeros(2, 4)
    p = logits.softmax(1)
    want = -(torch.log(p[0, :3].sum()) + torch.log(p[1, 3])) / 2
    got = net.fastrcnn_loss(logits, deltas, labels, targets, bg_classes=2)["loss_cls"]
    assert torch.allclose(got, want, atol=1e-6)
    plain = net.fastrcnn_loss(logits, deltas, labels, targets)["loss_cls"]
    assert torch.allclose(plain, -(torch.log(p[0, 0]) + torch.log(p[1, 3])) / 2, atol=1e-6)
    assert got < plain  # the old classes' share no longer counts against a background RoI


def test_unbiased_background_loss_only_in_incremental_steps(tmp_path, tasks):
    """learner.bg_loss=unbiased: the first task's loss is plain cross-entropy; in the incremental step
    the old classes' probability counts as background (loss lower than the standard one on the same
    batch and weights)."""
    t0, t1 = tasks
    torch.manual_seed(0)
    std = _learner(tmp_path, tasks, distill="none")
    unb = _learner(tmp_path, tasks, distill="none", bg_loss="unbiased")

    def both_losses(task, seed):
        for L in (std, unb):
            L.begin_task(task)
        unb.net.load_state_dict(std.net.state_dict())
        batch = _batch(std, task)
        out = []
        for L in (std, unb):
            torch.manual_seed(seed)  # the same RoIs sampled for both
            out.append(L.training_step(batch)["loss_cls"])
        return out

    a, b = both_losses(t0, 1)
    assert torch.allclose(a, b)
    a, b = both_losses(t1, 2)
    assert b < a - 1e-4
