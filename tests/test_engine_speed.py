"""The driver's per-step shortcuts (issue 18) keep its behaviour: the learning rate written only
when the schedule changes it is still the schedule's at every step; the one-sum finiteness check
still stops on any non-finite term and never on finite terms whose sum overflows."""
from __future__ import annotations

import pytest
import torch

from incdet.engine.config import config_from_dict
from incdet.engine.toy import ToyLearner
from incdet.engine.trainer import NonFiniteLossError, Trainer, lr_at


def _cfg(tmp_path, **train):
    t = {"iterations": 12, "batch_size": 8, "lr": 0.1, "momentum": 0.9, "checkpoint_every": 0, "log_every": 5,
         "amp": "none"}
    t.update(train)
    return config_from_dict({
        "experiment": {"name": "speed", "seed": 0, "out": str(tmp_path), "device": "cpu"},
        "tasks": {"builder": "toy", "n_tasks": 1, "classes_per_task": 2, "dim": 8, "train_per_class": 40,
                  "eval_per_class": 4},
        "learner": {"name": "toy", "dim": 8, "hidden": 8},
        "train": t,
    }, source="test")


@pytest.mark.parametrize("train, unit", [
    ({"warmup_iters": 4, "lr_steps": [7, 10], "lr_gamma": 0.5}, 1),
    ({"iterations": None, "epochs": 3, "warmup_iters": 3, "lr_steps": [1, 2], "lr_gamma": 0.1}, 10),  # in epochs
])
def test_lr_follows_the_schedule_at_every_step(tmp_path, monkeypatch, train, unit):
    cfg = _cfg(tmp_path, **train)
    seen = []
    step = torch.optim.SGD.step

    def record(self, *a, **k):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    Trainer(cfg, tmp_path / "run", quiet=True).fit()
    tc = cfg.train.for_task(0)
    n = 12 if unit == 1 else 30  # 80 items, batch 8: 10 batches per epoch
    assert seen == [[lr_at(s, tc, unit)] for s in range(n)]
    assert len({x[0] for x in seen}) > 3  # the schedule did change


def test_logged_means_are_the_means_of_the_steps(tmp_path, monkeypatch):
    """The meter appends per step and sums at log time (or every FOLD steps): same numbers."""
    import json

    from incdet.engine import trainer as T

    monkeypatch.setattr(T._Meter, "FOLD", 2)
    got = []
    orig = T.Trainer._train_step

    def rec(self, *a, **k):
        out = orig(self, *a, **k)
        got.append(out)
        return out

    monkeypatch.setattr(T.Trainer, "_train_step", rec)
    Trainer(_cfg(tmp_path, log_every=5), tmp_path / "run", quiet=True).fit()
    logs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "step" in r and r.get("event") != "eval"]
    assert [r["step"] for r in logs] == [5, 10, 12]
    for r, (a, b) in zip(logs, [(0, 5), (5, 10), (10, 12)]):
        for key in ("loss", "ce"):
            s = 0.0
            for x in got[a:b]:
                s += x[key]
            assert r[key] == s / (b - a)


@pytest.mark.parametrize("extra, stops", [
    ({"a": 1e308, "b": 1e308}, False),  # finite terms whose sum overflows: not a non-finite loss
    ({"aux": float("nan")}, True),
    ({"a": float("inf"), "b": float("-inf")}, True),
])
def test_finite_check_on_every_term(tmp_path, monkeypatch, extra, stops):
    orig = ToyLearner.training_step

    def step(self, batch):
        out = orig(self, batch)
        out.update({k: torch.tensor(v, dtype=torch.float64) for k, v in extra.items()})
        return out

    monkeypatch.setattr(ToyLearner, "training_step", step)
    tr = Trainer(_cfg(tmp_path), tmp_path / "run", quiet=True)
    if stops:
        with pytest.raises(NonFiniteLossError, match=r"step 0 .*" + next(iter(extra))):
            tr.fit()
    else:
        tr.fit()
        assert tr.timings[0]["steps"] == 12
