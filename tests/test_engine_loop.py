"""Pieces of the loop: data order, LR schedule, optimizers, epochs, learner base class."""
import json

import pytest
import torch

from incdet.engine import Learner, Task
from incdet.engine.config import TrainConfig, load_config
from incdet.engine.toy import ToyConfig, ToyLearner, ToyTasksConfig, build_toy_tasks
from incdet.engine.trainer import ResumableSampler, Trainer, build_optimizer, lr_at
from incdet.errors import ConfigError

from test_engine_config import TOY


def test_sampler_is_a_pure_function_and_splits_over_ranks():
    a = ResumableSampler(37, seed=1, task=2, epoch=3).indices()
    assert a == ResumableSampler(37, seed=1, task=2, epoch=3).indices()
    assert sorted(a) == list(range(37))
    assert a != ResumableSampler(37, seed=1, task=2, epoch=4).indices()
    assert a != ResumableSampler(37, seed=1, task=3, epoch=3).indices()
    # resume: skipping the first k indices gives the tail of the same order
    assert ResumableSampler(37, 1, 2, 3, start=10).indices() == a[10:]
    # two ranks with per-rank batch 4 together see the single-process batch of 8 at each step
    n = 32
    one = ResumableSampler(n, 0, 0, 0).indices()
    r0, r1 = (ResumableSampler(n, 0, 0, 0, rank=r, world=2).indices() for r in (0, 1))
    for s in range(n // 8):
        assert sorted(r0[4 * s: 4 * s + 4] + r1[4 * s: 4 * s + 4]) == sorted(one[8 * s: 8 * s + 8])
    assert len(ResumableSampler(5, 0, 0, 0, world=2)) == 3  # padded like DistributedSampler


def test_lr_schedule():
    tc = TrainConfig(iterations=100, lr=1.0, lr_steps=[10, 20], lr_gamma=0.1, warmup_iters=4)
    assert [lr_at(s, tc, 1) for s in (0, 3)] == [0.25, 1.0]
    assert lr_at(9, tc, 1) == 1.0 and lr_at(10, tc, 1) == pytest.approx(0.1) and lr_at(25, tc, 1) == pytest.approx(0.01)
    assert lr_at(19, TrainConfig(epochs=3, lr=1.0, lr_steps=[2]), 10) == 1.0   # lr_steps in epochs
    assert lr_at(20, TrainConfig(epochs=3, lr=1.0, lr_steps=[2]), 10) == pytest.approx(0.1)


def test_optimizers_and_groups():
    w, b, frozen = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    frozen.requires_grad_(False)
    groups = [{"params": [w, frozen], "lr_mult": 2.0}, {"params": [b], "weight_decay": 0.0}]
    opt = build_optimizer(groups, TrainConfig(iterations=1, lr=0.1, nesterov=True, weight_decay=1e-4))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2) and opt.param_groups[0]["params"] == [w]
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and opt.param_groups[1]["weight_decay"] == 0.0
    assert isinstance(build_optimizer(groups, TrainConfig(iterations=1, optimizer="adam")), torch.optim.Adam)
    with pytest.raises(ConfigError, match="momentum"):
        build_optimizer(groups, TrainConfig(iterations=1, nesterov=True, momentum=0.0))
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer([{"params": [frozen]}], TrainConfig(iterations=1))


def test_epochs_adam_and_distillation_run(tmp_path):
    cfg = load_config(TOY, ["train.epochs=2", "train.iterations=null", "train.first_task={}", "train.optimizer=adam",
                            "train.lr=0.01", "train.lr_steps=[1]", "learner.distill=1.0", "tasks.n_tasks=2",
                            "train.checkpoint_every=0", "train.log_every=1"])
    tr = Trainer(cfg, tmp_path / "run", device="cpu", quiet=True)
    res = tr.fit()
    assert tr.timings[0]["steps"] == 2 * 128 // 16 and tr.timings[1]["steps"] == 16
    assert tr.learner.teacher is not None and not any(p.requires_grad for p in tr.learner.teacher.parameters())
    assert not any(p is q for p in tr.learner.teacher.parameters() for q in tr.learner.model.parameters())
    assert res.R.shape == (2, 2)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kd = [x["kd"] for x in lines if x.get("task") == 1 and "kd" in x]
    assert kd and all(v > 0 for v in kd)     # distillation term active in task 1
    lrs = [x["lr"] for x in lines if x.get("task") == 0 and "lr" in x]
    assert lrs[:8] == [pytest.approx(0.01)] * 8 and lrs[8:] == [pytest.approx(0.001)] * 8  # decayed after epoch 1


def test_toy_learner_state_round_trip_restores_structure():
    tasks = build_toy_tasks(ToyTasksConfig(n_tasks=2))
    a = ToyLearner(ToyConfig(distill=1.0), "cpu")
    a.begin_task(tasks[0])
    a.begin_task(tasks[1])
    state = a.state_dict()
    b = ToyLearner(ToyConfig(distill=1.0), "cpu")
    b.load_state_dict(state)
    assert b.model.head.out_features == 4 and b.teacher.head.out_features == 2
    x = tasks[1].eval_set.x[:5]
    assert torch.equal(a.model(x), b.model(x)) and torch.equal(a.teacher(x), b.teacher(x))


def test_learner_base_defaults():
    class Tiny(Learner):
        metrics = {"acc": True}
        primary_metric = "acc"

    lr = Tiny(None, "cpu")
    lr.model = torch.nn.Linear(2, 2)
    lr.model.bias.requires_grad_(False)
    assert lr.parameter_groups()[0]["params"] == [lr.model.weight]
    lr.teacher = lr.make_teacher()
    assert not lr.teacher.training and not lr.teacher.weight.requires_grad
    s = lr.state_dict()
    lr.model.weight.data.zero_()
    lr.load_state_dict(s)
    assert torch.equal(lr.model.weight, s["model"]["weight"])
    t = Task(index=0, name="a", train_set=[1, 2])
    lr.begin_task(t)
    assert lr.task is t and lr.train_dataset(t) == [1, 2]
    assert lr.collate([torch.ones(2), torch.zeros(2)]).shape == (2, 2)
