"""The learner contract (incdet/engine/learner.py), checked on EVERY registered learner through the
driver on a tiny 2-task stream:

(a) ``state_dict`` -> a freshly constructed learner restores the structure (grown heads, teacher)
    and gives the same state and the same evaluation;
(b) a run interrupted in the middle of task 1 and resumed ends with bitwise the same weights and
    results as an uninterrupted run;
(c) ``begin_task`` shapes the model from the task, not from how often it was called: a fresh
    learner's ``begin_task(task 1)`` has the structure of one that went through task 0 then 1.

Learners are enumerated through the registration mechanism (every entry point imported). The codec
learners need ``../shared/data/domains`` (skipped with the reason when absent).
"""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from incdet.engine import LEARNERS
from incdet.engine.config import apply_overrides, config_from_dict
from incdet.engine.plugins import load_all
from incdet.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
load_all()
NAMES = [n for n in LEARNERS.names() if not n.startswith("test.")]

SCHEDULE = ["experiment.device=cpu", "train.iterations=4", "train.first_task={iterations: 2}", "train.lr_steps=[]",
            "train.warmup_iters=0", "train.checkpoint_every=2", "train.log_every=1", "train.num_workers=0"]
SHAPES = "{n_train: 12, n_test: 4, n_val: 0, size: 64}"
STOP_AT = (1, 2)  # interrupt after step 2 of task 1 (its checkpoint is written)


def _yaml(rel):
    return yaml.safe_load((REPO / "configs" / rel).read_text())


def _recipe(name: str, data: Path) -> dict:
    """A tiny 2-task run config (YAML layout) for learner ``name``."""
    if name == "toy":
        return apply_overrides(_yaml("toy.yaml"), ["tasks.n_tasks=2", "tasks.train_per_class=16",
                                                   "tasks.eval_per_class=8", "learner.distill=1.0",
                                                   "learner.dropout=0.1", *SCHEDULE])
    if name == "incdet.fastrcnn":
        return apply_overrides(_yaml("incdet/shapes_15+5.yaml"), [
            f"tasks.root={data / 'shapes24'}", f"tasks.shapes={SHAPES.replace('12', '24')}",
            "learner.proposals=sliding_window",
            "learner.proposal_cache=null", "learner.max_proposals=150", "learner.model.width=16",
            "learner.model.min_size=64", "learner.model.max_size=64", "learner.model.rois_per_image=16",
            "learner.distill_rois=16", *SCHEDULE])
    if name == "blitznet":
        return apply_overrides(_yaml("blitznet/shapes_15+5.yaml"), [
            f"tasks.root={data / 'shapes'}", f"tasks.shapes={SHAPES}", "train.batch_size=2",
            "learner.model.input_size=64", "learner.model.channels=16", "learner.model.seg_channels=4",
            "learner.eval_batch_size=4", *SCHEDULE])
    if name == "codec" or name.startswith("codec."):
        from conftest import shared_path

        domains = shared_path("data", "domains")
        return apply_overrides({
            "experiment": {"name": "c", "seed": 0},
            "tasks": {"builder": "domains", "sequence": ["photo", "sketch"], "eval_sets": {},
                      "data_root": str(domains.parent), "crop": 32, "max_train_images": 4, "max_eval_images": 1},
            "learner": {"name": name, "N": 8, "K": 2, "eval_msssim": False},
            "train": {"iterations": 2, "batch_size": 2, "optimizer": "adam", "lr": 0.001, "amp": "none"},
        }, SCHEDULE)
    raise AssertionError(f"learner {name!r} has no tiny recipe here: add one to {__file__}")


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _interrupt_at(task: int, step: int):
    """Make the driver stop (as if killed) right after the step-``step`` bookkeeping of ``task``."""
    orig = Trainer._after_step

    def after(self, plan, s, *a, **k):
        orig(self, plan, s, *a, **k)
        if (plan.task.index, s) == (task, step):
            raise _Stop

    Trainer._after_step = after
    try:
        yield
    finally:
        Trainer._after_step = orig


def _fit(cfg, run_dir, resume=False):
    t = Trainer(cfg, run_dir, device="cpu", resume=resume, quiet=True)
    t.fit()
    return t


#: state keys that are bookkeeping, not learner state: blitznet's evaluation-cache counter, which
#: load_state_dict bumps on purpose (a loaded learner must not reuse cached predictions)
NOT_STATE = {"version"}


def _equal(a, b, where="state") -> None:
    """Deep equality of nested state dicts (tensors bitwise, same keys, same structure; the values
    of NOT_STATE keys are not compared)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where}: values differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))[:5]} differ"
        for k in a:
            if k not in NOT_STATE:
                _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _shapes(learner) -> dict:
    out = {f"model.{k}": tuple(v.shape) for k, v in learner.unwrapped.state_dict().items()}
    if learner.teacher is not None:
        out.update({f"teacher.{k}": tuple(v.shape) for k, v in learner.teacher.state_dict().items()})
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("conformance_data")


def _make_runs(name, cfg, out: Path):
    """An uninterrupted run (the Trainer) and a run stopped after step STOP_AT then resumed."""
    ref = _fit(cfg, out / "ref")
    with _interrupt_at(*STOP_AT), pytest.raises(_Stop):
        _fit(cfg, out / "killed")
    ck = torch.load(out / "killed" / "checkpoint.pt", weights_only=True)
    assert (ck["task_index"], ck["step"], ck["phase"]) == (*STOP_AT, "train")
    _fit(config_from_dict(yaml.safe_load((out / "killed" / "config.yaml").read_text())), out / "killed", resume=True)
    return name, cfg, ref, out / "killed"


@pytest.fixture(scope="module", params=NAMES)
def runs(request, data, tmp_path_factory):
    """(name, config, uninterrupted trainer, interrupted-then-resumed run dir) of one learner."""
    name = request.param
    torch.set_num_threads(1)
    cfg = config_from_dict(_recipe(name, data), source=f"{name} recipe")
    return _make_runs(name, cfg, tmp_path_factory.mktemp(name.replace(".", "_")))


def test_a_state_dict_round_trip_into_a_fresh_learner(runs):
    _check_round_trip(*runs[:3])


def _check_round_trip(name, cfg, ref):
    saved = torch.load(ref.run_dir / "checkpoints" / "task1.pt", weights_only=True)["learner"]
    fresh = LEARNERS.get(name)(cfg.learner.options, torch.device("cpu"))
    fresh.load_state_dict(saved)
    fresh.resume_task(ref.tasks[1])
    assert _shapes(fresh) == _shapes(ref.learner), "structure (grown heads / teacher) not restored"
    assert (fresh.teacher is None) == (ref.learner.teacher is None)
    _equal(saved, fresh.state_dict(), "state_dict after load_state_dict")
    _equal(ref.learner.state_dict(), fresh.state_dict(), "state_dict of the live learner")
    for j in range(2):
        with torch.no_grad():
            m = {k: float(v) for k, v in fresh.evaluate(ref.tasks[j]).items()}
        _equal(ref.results.all_metrics[1][j], m, f"evaluate(task {j})")


def test_b_resume_mid_task_equals_uninterrupted(runs):
    _check_resume(runs[2], runs[3])


def _check_resume(ref, killed):
    a = torch.load(ref.run_dir / "checkpoints" / "task1.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "task1.pt", weights_only=True)
    _equal(a["learner"], b["learner"], "learner state after task 1")
    _equal(a["results"]["matrix"], b["results"]["matrix"], "results matrix")


def _model_shapes(learner) -> dict:
    return {k: v for k, v in _shapes(learner).items() if k.startswith("model.")}


def test_c_begin_task_shapes_from_the_task_not_a_call_count(runs):
    """The model's structure after ``begin_task(task 1)`` does not depend on the calls before. (The
    teacher is a snapshot of the previous task's model, which a fresh learner does not have: not
    compared.)"""
    name, cfg, ref, _ = runs
    _check_begin_task(name, cfg, ref)


def _check_begin_task(name, cfg, ref):
    cpu = torch.device("cpu")
    direct = LEARNERS.get(name)(cfg.learner.options, cpu)
    direct.begin_task(ref.tasks[1])
    stepwise = LEARNERS.get(name)(cfg.learner.options, cpu)
    stepwise.begin_task(ref.tasks[0])
    stepwise.begin_task(ref.tasks[1])
    assert _model_shapes(direct) == _model_shapes(stepwise)


@pytest.mark.parametrize("bug", ["drop_teacher", "count_calls", "resume_moves_weights"])
def test_the_checks_catch_a_broken_learner(bug, tmp_path):
    """Known-bad toy learners (forgets its teacher on load; grows per call; resume_task changes
    the weights): the checkers above fail on them."""
    from incdet.engine.toy import ToyLearner

    class Broken(ToyLearner):
        calls = 0

        def load_state_dict(self, state):
            super().load_state_dict(state)
            if bug == "drop_teacher":
                self.teacher = None

        def begin_task(self, task):
            self.calls += 1
            if bug == "count_calls":  # the k-th call grows the head to k groups of classes
                task = dataclasses.replace(task, seen_classes=task.seen_classes[: self.calls * len(task.new_classes)])
            super().begin_task(task)

        def resume_task(self, task):
            super().resume_task(task)
            if bug == "resume_moves_weights":
                with torch.no_grad():
                    next(self.unwrapped.parameters()).add_(1e-3)

    LEARNERS.register("test.broken")(Broken)
    try:
        data = _recipe("toy", tmp_path)
        data["learner"]["name"] = "test.broken"
        cfg = config_from_dict(data, source="broken toy recipe")
        name, cfg, ref, killed = _make_runs("test.broken", cfg, tmp_path)
        check = {"drop_teacher": lambda: _check_round_trip(name, cfg, ref),
                 "count_calls": lambda: _check_begin_task(name, cfg, ref),
                 "resume_moves_weights": lambda: _check_resume(ref, killed)}[bug]
        with pytest.raises(AssertionError):
            check()
    finally:
        LEARNERS.unregister("test.broken")


@pytest.mark.parametrize("name", NAMES)
def test_eval_keys_name_config_fields(name):
    """``eval_keys`` (the options ``evaluate`` depends on) are fields of the learner's config:
    a misspelt key would silently let results measured differently be copied."""
    import dataclasses

    cls = LEARNERS.get(name)
    keys = getattr(cls, "eval_keys", None)
    if keys is None:
        pytest.skip(f"{name} declares no eval_keys (every option counts)")
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    assert set(keys) <= fields, sorted(set(keys) - fields)


def test_incdet_eval_keys_leave_out_training_options():
    keys = set(LEARNERS.get("incdet.fastrcnn").eval_keys)
    assert {"model", "proposals", "protocol", "use_07_metric"} <= keys
    assert not keys & {"distill", "distill_weight", "freeze", "ewc_weight", "distill_sampling", "bn_stats", "bg_loss"}


def test_blitznet_eval_keys_leave_out_training_options():
    keys = set(LEARNERS.get("blitznet").eval_keys)
    assert {"model", "score_thresh", "nms_iou", "max_det", "use_07_metric"} <= keys
    assert not keys & {"augment", "distill", "distill_weight", "distill_seg_weight", "det_weight", "seg_weight",
                       "neg_pos_ratio", "difficult_as_positive"}
