"""The cheaper incremental step computes what the old one did (issue 18).

* ``model.reuse_rois``: a distillation RoI equal to a training RoI (same image, same box) runs the
  head once; every named loss term and every gradient equal those of the old path (one head pass
  over all rows, ``reuse_rois: false``) and those of separate head passes per RoI set (the formula
  before the two sets were concatenated), under a fixed seed.
* BatchNorm in train mode in res5: nothing is shared (batch statistics would change).
* The live teacher runs under ``torch.inference_mode``: same responses as under ``no_grad``, and
  the tensors it returns (or caches) are ordinary tensors the student's backward can use.
* ``teacher_precision`` is CUDA-only: on the CPU the teacher stays fp32 (warning), bad value refused.
"""
from __future__ import annotations

import logging

import pytest
import torch

from incdet.errors import ConfigError
from incdet.models.fastrcnn import FastRCNN, unique_rows
from incdet.models.learner import FastRCNNLearner, FastRCNNLearnerConfig

from test_incdet_helpers import make_tasks, tiny_model_config
from test_incdet_learner import _props_file

RTOL, ATOL = 1e-5, 1e-6


def test_unique_rows_first_occurrence_order():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 4, (40, 3), generator=g).float()  # many duplicates
    keep, where = unique_rows(base)
    assert torch.equal(base[keep][where], base)
    assert torch.all(keep[1:] > keep[:-1])  # first occurrences, ascending
    assert len({tuple(r) for r in base.tolist()}) == keep.numel()
    for i in range(base.shape[0]):  # keep[where[i]] is the first row equal to row i
        first = next(j for j in range(base.shape[0]) if torch.equal(base[j], base[i]))
        assert int(keep[where[i]]) == first
    k0, w0 = unique_rows(torch.zeros((0, 5)))
    assert k0.numel() == 0 and w0.numel() == 0


# one gt box per image; 3 proposals overlap it (IoU >= 0.5), 5 do not overlap it at all: with 16
# RoIs per image (at most 4 foreground) every proposal is a training RoI, whatever the seed
GT = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
PROPS = torch.tensor([[10, 10, 30, 30], [11, 11, 31, 31], [9, 10, 29, 30], [40, 40, 60, 60], [35, 5, 60, 25],
                      [5, 40, 25, 60], [0, 0, 8, 8], [50, 0, 63, 10]], dtype=torch.float32)
OTHER = torch.tensor([[20, 20, 50, 50], [2, 30, 40, 62], [30, 0, 62, 30]], dtype=torch.float32)


def _images():
    g = torch.Generator().manual_seed(3)
    return [(torch.rand((3, 64, 64), generator=g) * 255).to(torch.uint8) for _ in range(2)]


def _distill_rois():
    # image 0: 4 training RoIs + 2 others + a duplicate of a training RoI; image 1: 3 others + 3 training RoIs
    return [torch.cat([PROPS[[0, 3, 5, 7]], OTHER[:2], PROPS[[3]]]), torch.cat([OTHER, PROPS[[1, 2, 6]]])]


def _run(net: FastRCNN, reuse: bool, separate: bool = False):
    """Losses (named), distillation outputs and parameter gradients of one training forward of
    ``net`` with the RNG seeded; ``separate``: the head run once per RoI set (the old formula)."""
    net.cfg.reuse_rois = reuse
    net.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    images = _images()
    targets = [{"boxes": GT.clone(), "labels": torch.tensor([2])} for _ in images]
    drois = _distill_rois()
    if separate:
        orig_head = net.head
        calls = []

        def split_head(feats, rois):  # training rows first: one pass for them, one for the rest
            n_train = rois.shape[0] - sum(d.shape[0] for d in drois)
            calls.append(n_train)
            a = orig_head(feats, rois[:n_train])
            b = orig_head(feats, rois[n_train:])
            return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])

        net.head = split_head
        try:
            losses, (lg, dl) = net(images, [PROPS.clone() for _ in images], targets, distill_rois=drois)
        finally:
            del net.head
        assert calls
    else:
        losses, (lg, dl) = net(images, [PROPS.clone() for _ in images], targets, distill_rois=drois)
    # a distillation-like objective on the extra outputs, so that they carry gradients too
    total = losses["loss_cls"] + losses["loss_box"] + (lg ** 2).mean() + (dl ** 2).mean()
    total.backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, lg.detach(), dl.detach(), grads, dict(net.last_stats)


@pytest.mark.parametrize("norm", ["gn", "frozen_bn"])
def test_shared_head_pass_same_losses_and_gradients(norm):
    torch.manual_seed(0)
    net = FastRCNN(tiny_model_config(norm=norm), num_classes=3).train()
    old = _run(net, reuse=False)
    sep = _run(net, reuse=False, separate=True)
    new = _run(net, reuse=True)
    # every training RoI is one of the 8 proposals: 4 + 1 (duplicate) + 3 distillation rows are shared
    assert old[4]["num_reused"] == 0 and new[4]["num_reused"] == 8
    assert old[4]["num_rois"] == new[4]["num_rois"] == 16
    for ref in (old, sep):
        assert set(ref[0]) == set(new[0]) == {"loss_cls", "loss_box"}
        for k in new[0]:
            torch.testing.assert_close(new[0][k], ref[0][k], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(new[1], ref[1], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(new[2], ref[2], rtol=RTOL, atol=ATOL)
        assert set(ref[3]) == set(new[3]) and len(new[3]) > 10
        for n in new[3]:
            torch.testing.assert_close(new[3][n], ref[3][n], rtol=1e-4, atol=1e-6, msg=n)


def test_batchnorm_in_train_mode_shares_nothing():
    torch.manual_seed(0)
    net = FastRCNN(tiny_model_config(norm="bn"), num_classes=3).train()
    assert not net.head_is_per_roi()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    old = _run(net, reuse=False)
    net.load_state_dict(state)  # the first pass moved the running statistics
    new = _run(net, reuse=True)
    assert new[4]["num_reused"] == 0
    for k in old[0]:
        assert torch.equal(old[0][k], new[0][k])
    assert torch.equal(old[1], new[1]) and torch.equal(old[2], new[2])
    for n in old[3]:
        assert torch.equal(old[3][n], new[3][n]), n
    net.eval()
    assert net.head_is_per_roi()  # running statistics: per RoI again


def _learner(tmp_path, tasks, reuse: bool, **kw):
    torch.manual_seed(0)
    cfg = FastRCNNLearnerConfig(model=tiny_model_config(reuse_rois=reuse), proposals=_props_file(tmp_path, tasks),
                                proposal_nms=None, **kw)
    return FastRCNNLearner(cfg, "cpu")


def _incremental_step(tmp_path, reuse: bool, **kw):
    """Task 0 trained 2 steps, then 2 steps of task 1; the named losses and gradients of the last."""
    tasks = make_tasks()
    t0, t1 = tasks
    L = _learner(tmp_path, tasks, reuse, **kw)
    L.begin_task(t0)
    ds = L.train_dataset(t0)
    opt = torch.optim.SGD(L.parameter_groups(), lr=0.02, momentum=0.9)
    for k in range(2):
        out = L.training_step(L.collate([ds[2 * k], ds[2 * k + 1]]))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    L.begin_task(t1)
    ds = L.train_dataset(t1)
    opt = torch.optim.SGD(L.parameter_groups(), lr=0.02, momentum=0.9)
    teacher_before = {k: v.clone() for k, v in L.teacher.state_dict().items()}
    reused = []
    for k in range(2):
        torch.manual_seed(100 + k)
        out = L.training_step(L.collate([ds[0], ds[1]]))  # same images twice: the cache is hit
        reused.append(L.net.last_stats["num_reused"])
        opt.zero_grad()
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in L.net.named_parameters() if p.grad is not None}
        opt.step()
    assert L.net.training and not L.teacher.training
    assert not any(p.requires_grad for p in L.teacher.parameters())
    assert all(torch.equal(v, L.teacher.state_dict()[k]) for k, v in teacher_before.items())
    return {k: v.detach() for k, v in out.items()}, grads, reused


@pytest.mark.parametrize("mode", ["live", "cached"])
def test_incremental_step_same_losses_and_gradients(tmp_path, mode):
    kw = {"teacher_cache": mode == "cached"}
    old_l, old_g, old_r = _incremental_step(tmp_path, False, **kw)
    new_l, new_g, new_r = _incremental_step(tmp_path, True, **kw)
    assert old_r == [0, 0] and min(new_r) > 0
    assert set(old_l) == set(new_l) == {"loss", "loss_cls", "loss_box", "loss_distill_cls", "loss_distill_box"}
    for k in new_l:
        torch.testing.assert_close(new_l[k], old_l[k], rtol=RTOL, atol=ATOL, msg=k)
        assert float(new_l[k]) != 0.0 or k == "loss_box"
    assert set(old_g) == set(new_g)
    for n in new_g:
        torch.testing.assert_close(new_g[n], old_g[n], rtol=1e-4, atol=1e-6, msg=n)


def test_teacher_under_inference_mode_gives_the_no_grad_responses(tmp_path):
    tasks = make_tasks()
    t0, t1 = tasks
    L = _learner(tmp_path, tasks, True, teacher_cache=True)
    L.begin_task(t0)
    L.begin_task(t1)
    L.config.distill_rois = 10 ** 6  # the whole pool, in pool order
    b = L.collate([L.train_dataset(t1)[i] for i in range(2)])
    keys = [(str(i), bool(f)) for i, f in zip(b["image_id"], b["flipped"])]
    L.teacher_targets(list(b["image"]), list(b["proposals"]), keys)
    with torch.no_grad():
        ref = L.teacher.score_proposals(list(b["image"]), list(b["proposals"]))
    from incdet.models.losses.distill import candidate_pool

    for k, p, (lg, dl) in zip(keys, b["proposals"], ref):
        pool = L._teacher_cache[k]
        idx = candidate_pool(lg, L.config.distill_pool, True)
        assert torch.equal(pool.rois, p[idx]) and torch.equal(pool.logits, lg[idx]) and torch.equal(pool.deltas, dl[idx])
        assert not any(torch.is_inference(t) for t in (pool.rois, pool.logits, pool.deltas))


def test_teacher_precision_is_cuda_only(tmp_path, caplog):
    with pytest.raises(ConfigError, match="learner.teacher_precision"):
        FastRCNNLearnerConfig(teacher_precision="int8")
    tasks = make_tasks()
    with caplog.at_level(logging.WARNING, logger="incdet.models.learner"):
        L = _learner(tmp_path, tasks, True, teacher_precision="bf16")
    assert "CUDA only" in caplog.text
    assert L._teacher_autocast().__class__.__name__ == "nullcontext"


@pytest.mark.parametrize("prec, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_teacher_precision_autocast_on_cuda(tmp_path, prec, dtype):
    """The autocast context chosen for a CUDA learner (built on the CPU, device switched after)."""
    L = _learner(tmp_path, make_tasks(), True, teacher_precision=prec)
    L.device = torch.device("cuda")
    import warnings

    with warnings.catch_warnings():  # constructing a CUDA autocast without CUDA only warns
        warnings.simplefilter("ignore")
        ctx = L._teacher_autocast()
    if dtype is None:
        assert ctx.__class__.__name__ == "nullcontext"
    else:
        assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == dtype
