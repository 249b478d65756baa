"""Bad input to ``incdet train / eval / report`` and the engine's value checks (issue 16):
one line naming the file/option, exit 2, nothing written."""
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from incdet.cli import main
from incdet.engine.checkpoint import load_checkpoint
from incdet.engine.config import MAX_DEPTH, check_range, config_from_dict, load_config
from incdet.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy.yaml")
QUICK = ["--set", "train.iterations=12", "--set", "train.first_task.iterations=16",
         "--set", "train.first_task.lr_steps=[]", "--set", "train.lr_steps=[]",
         "--set", "train.checkpoint_every=5", "--device", "cpu", "--quiet"]


def _fails(capsys, argv, *words):
    """``main(argv)`` exits 2 with one stderr line holding every word; returns that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


# --------------------------------------------------------------------------- value checks
@pytest.mark.parametrize("override, words", [
    ("train.num_workers=-1", ["train.num_workers must be >= 0, got -1"]),
    ("train.grad_clip=-1", ["train.grad_clip must be > 0 or null, got -1"]),
    ("train.grad_clip=0", ["train.grad_clip must be > 0 or null"]),
    ("train.lr_gamma=-0.5", ["train.lr_gamma must be > 0, got -0.5"]),
    ("train.warmup_iters=-3", ["train.warmup_iters must be >= 0, got -3"]),
    ("train.lr=.nan", ["train.lr must be >= 0, got nan"]),
    ("train.momentum=1.5", ["train.momentum must be >= 0 and <= 1"]),
    ("train.betas=[0.9,1.0]", ["train.betas[1] must be >= 0 and < 1"]),
    ("train.lr_steps=[-1]", ["train.lr_steps[0] must be >= 0"]),
    ("train.log_every=0", ["train.log_every must be >= 1"]),
    ("train.first_task.grad_clip=-2", ["train.first_task.grad_clip must be > 0 or null, got -2"]),
    ("train.first_task.warmup_iters=-1", ["train.first_task.warmup_iters must be >= 0"]),
    (f"experiment.seed={10**23}", ["experiment.seed must be >= 0 and <= 9223372036854775806", str(10**23)]),
    ("experiment.seed=-1", ["experiment.seed must be >= 0"]),
    ("experiment.device=banana", ["experiment.device", "unknown device 'banana'"]),
])
def test_out_of_range_values_are_refused_before_anything_is_written(tmp_path, capsys, override, words):
    out = tmp_path / "run"
    _fails(capsys, ["train", TOY, "--out", str(out), *QUICK, "--set", override], "toy.yaml", *words)
    assert not out.exists()


def test_check_range_helper():
    check_range("learner", "w", 0.5, 0, 1)
    check_range("learner", "w", None, 0, allow_none=True)
    for bad, msg in [(-1, "learner.w must be >= 0 and <= 1, got -1"), (float("inf"), "got inf"),
                     (True, "got True"), ("1", "got '1'"), (None, "got None")]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            check_range("learner", "w", bad, 0, 1)
    with pytest.raises(ConfigError, match=re.escape("x must be > 0 and < 1, got 1")):
        check_range("", "x", 1, 0, 1, lo_open=True, hi_open=True)


# --------------------------------------------------------------------------- files and options
def test_out_is_an_existing_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    _fails(capsys, ["train", TOY, "--out", str(f), *QUICK], str(f), "not a directory")
    assert f.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [f]
    _fails(capsys, ["train", TOY, "--out", str(f / "run"), *QUICK], str(f), "not a directory")


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", ["not a YAML text file", "not UTF-8"]),
    (("[" * 20_000 + "]" * 20_000).encode(), ["nested deeper than"]),
    (("a:\n" + "".join("  " * i + "b:\n" for i in range(1, MAX_DEPTH + 3))).encode(), ["nested deeper than"]),
    (b"- train\n- eval\n", ["top level must be a mapping"]),
    (b"just a string", ["top level must be a mapping"]),
], ids=["binary", "deep-list", "deep-mapping", "list", "string"])
def test_bad_config_files(tmp_path, capsys, content, words):
    p = tmp_path / "cfg.yaml"
    p.write_bytes(content)
    out = tmp_path / "run"
    _fails(capsys, ["train", str(p), "--out", str(out), "--device", "cpu"], str(p), *words)
    assert not out.exists()
    _fails(capsys, ["train", str(tmp_path), "--out", str(out)], "is a directory")


def test_deep_set_value(tmp_path, capsys):
    deep = "[" * 1000 + "]" * 1000
    _fails(capsys, ["train", TOY, "--out", str(tmp_path / "r"), "--set", f"train.lr_steps={deep}"],
           "--set", "nested deeper than")


@pytest.mark.parametrize("device, words", [
    ("banana", ["--device", "unknown device 'banana'"]),
    ("cuda:x", ["unknown device 'cuda:x'"]),
    *([] if torch.cuda.is_available() else [("cuda", ["--device", "CUDA is not available"])]),
    ("cuda:999", ["--device"]),
])
def test_bad_device_everywhere(tmp_path, capsys, device, words):
    out = tmp_path / "run"
    _fails(capsys, ["train", TOY, "--out", str(out), *QUICK, "--device", device], *words)
    assert not out.exists()
    data = tmp_path / "shapes"
    _fails(capsys, ["demo", "--quick", "--data", str(data), "--out", str(tmp_path / "demo"), "--device", device], *words)
    assert not data.exists() and not (tmp_path / "data-quick").exists() and not (tmp_path / "demo").exists()


# --------------------------------------------------------------------------- resume / eval / report
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("engine_bad") / "run"
    assert main(["train", TOY, "--out", str(run), *QUICK]) == 0
    return run


def _copy(run, dst):
    import shutil

    shutil.copytree(run, dst)
    return dst


def test_resume_without_checkpoint_pt(finished, tmp_path, capsys):
    # a finished run whose checkpoint.pt is gone: the last task-end checkpoint holds the same state
    run = _copy(finished, tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    before = (run / "results.json").read_text()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (run / "results.json").read_text() == before
    # a run with no checkpoint at all is refused, naming what is missing; nothing is overwritten
    for p in (run / "checkpoints").glob("*.pt"):
        p.unlink()
    _fails(capsys, ["train", "--resume", str(run), "--quiet"], str(run / "checkpoint.pt"), "missing",
           "no task-end checkpoint")
    assert (run / "results.json").read_text() == before


def test_resume_from_task_end_checkpoint_matches_uninterrupted(finished, tmp_path):
    # checkpoint.pt gone in the middle of task 2: continue after task 1 -> the same final weights
    run = _copy(finished, tmp_path / "run")
    for p in [run / "checkpoint.pt", run / "checkpoints" / "task2.pt", run / "results.json"]:
        p.unlink()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    a, b = (load_checkpoint(d / "checkpoints/task2.pt")["learner"]["model"] for d in (finished, run))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_refuses_a_checkpoint_of_another_learner(finished, tmp_path, capsys):
    ck = torch.load(finished / "checkpoint.pt", weights_only=True)
    assert ck["learner_name"] == "toy"
    other = dict(ck, learner_name="incdet.fastrcnn")
    torch.save(other, tmp_path / "other.pt")
    _fails(capsys, ["eval", str(finished), "--checkpoint", str(tmp_path / "other.pt"), "--device", "cpu"],
           "other.pt", "written by learner 'incdet.fastrcnn'", "learner 'toy'")
    # an older checkpoint without the field: its saved config names the learner
    old = {k: v for k, v in ck.items() if k != "learner_name"}
    old["config"] = dict(old["config"], learner=dict(old["config"]["learner"], name="blitznet"))
    torch.save(old, tmp_path / "old.pt")
    _fails(capsys, ["eval", str(finished), "--checkpoint", str(tmp_path / "old.pt")], "written by learner 'blitznet'")
    # an older checkpoint of the right learner still loads
    old["config"]["learner"]["name"] = "toy"
    torch.save(old, tmp_path / "old_ok.pt")
    assert main(["eval", str(finished), "--checkpoint", str(tmp_path / "old_ok.pt"), "--device", "cpu"]) == 0
    # the same learner name with a state that does not fit: CheckpointError, not KeyError
    bad = dict(ck, learner={"model": {"head.weight": torch.zeros(1)}, "teacher": None})
    torch.save(bad, tmp_path / "bad.pt")
    _fails(capsys, ["eval", str(finished), "--checkpoint", str(tmp_path / "bad.pt"), "--device", "cpu"],
           "bad.pt", "cannot load the learner state")
    # a damaged checkpoint (a key missing)
    torch.save({k: v for k, v in ck.items() if k != "task_index"}, tmp_path / "dmg.pt")
    with pytest.raises(CheckpointError, match="'task_index' is missing"):
        load_checkpoint(tmp_path / "dmg.pt")


def test_resume_and_init_from_refuse_another_learner(finished, tmp_path, capsys):
    ck = torch.load(finished / "checkpoints" / "task0.pt", weights_only=True)
    torch.save(dict(ck, learner_name="blitznet"), tmp_path / "t0.pt")
    _fails(capsys, ["train", TOY, "--out", str(tmp_path / "b"), *QUICK, "--set", f"tasks.init_from={tmp_path / 't0.pt'}"],
           "written by learner 'blitznet'")
    assert not (tmp_path / "b").exists()
    run = _copy(finished, tmp_path / "run")
    torch.save(dict(torch.load(run / "checkpoint.pt", weights_only=True), learner_name="codec.adapters"),
               run / "checkpoint.pt")
    _fails(capsys, ["train", "--resume", str(run)], "written by learner 'codec.adapters'")


def test_report_of_deeply_nested_results_json(tmp_path, capsys):
    (tmp_path / "results.json").write_text("[" * 100_000 + "]" * 100_000)
    _fails(capsys, ["report", str(tmp_path)], "results.json", "not a results file", "nested too deep")
    (tmp_path / "results.json").write_text('{"tasks": 3}')
    _fails(capsys, ["report", str(tmp_path)], "results.json", "not a results file")


def test_engine_loads_torch_files_with_weights_only():
    for py in (REPO / "incdet" / "engine").rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", py.read_text()):
            assert "weights_only=True" in call, (py, call)


# --------------------------------------------------------------------------- fuzz: train section values
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**25, 10**25),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                    st.lists(st.integers(-5, 5), max_size=3))
_FIELDS = ["iterations", "batch_size", "num_workers", "lr", "momentum", "weight_decay", "lr_gamma",
           "warmup_iters", "grad_clip", "checkpoint_every", "log_every", "betas", "lr_steps"]


def _base():
    import yaml

    return yaml.safe_load(Path(TOY).read_text())


def _invariants(cfg):
    """What the driver relies on in a validated train section (each a silent wrong result otherwise)."""
    import math

    for t in (cfg.train, cfg.train.for_task(0)):
        assert t.batch_size >= 1 and t.num_workers >= 0 and t.warmup_iters >= 0 and t.log_every >= 1
        assert math.isfinite(t.lr) and t.lr >= 0 and t.lr_gamma > 0 and 0 <= t.momentum <= 1
        assert t.grad_clip is None or t.grad_clip > 0
        assert all(m >= 0 for m in t.lr_steps) and all(0 <= b < 1 for b in t.betas)
    assert 0 <= cfg.experiment.seed < 2**63


def _check_one(values):
    data = _base()
    for (section, key), v in values:
        data[section][key] = v
    try:
        cfg = config_from_dict(data, source="fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml: ") and "\n" not in str(e)
        return
    _invariants(cfg)


_KEYS = st.sampled_from([("train", k) for k in _FIELDS] + [("experiment", "seed")])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_KEYS, _VALUES), min_size=1, max_size=3))
def test_fuzz_train_values_give_a_valid_config_or_one_config_error(values):
    _check_one(values)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_KEYS, _VALUES), min_size=1, max_size=5))
def test_fuzz_train_values_long(values):
    _check_one(values)


@pytest.mark.parametrize("key, value", [("grad_clip", -1.0), ("lr_gamma", -0.1), ("warmup_iters", -5)])
def test_fuzz_checker_catches_a_removed_check(monkeypatch, key, value):
    """The property's checker fails when the range checks are switched off (the old behaviour)."""
    import incdet.engine.config as C

    monkeypatch.setattr(C, "check_range", lambda *a, **k: None)
    with pytest.raises(AssertionError):
        _check_one([(("train", key), value)])


def test_load_config_still_accepts_the_shipped_configs():
    for p in ("toy.yaml", "toy_lwf.yaml"):
        load_config(REPO / "configs" / p)


@pytest.mark.parametrize("key, value, words", [
    ("results", {"tasks": 3}, ["damaged checkpoint", "results"]),
    ("rng", {"python": 1}, ["cannot restore its rng state"]),
    ("optimizer", {"state": {}, "param_groups": [{"params": [0, 1, 2, 3, 4, 5, 6, 7, 8]}]}, ["optimizer state"]),
])
def test_resume_from_a_damaged_checkpoint(finished, tmp_path, capsys, key, value, words):
    run = _copy(finished, tmp_path / "run")
    mid = torch.load(run / "checkpoint.pt", weights_only=True)
    mid.update({"phase": "train", "task_index": 2, "step": 5, key: value})  # a mid-task checkpoint
    torch.save(mid, run / "checkpoint.pt")
    _fails(capsys, ["train", "--resume", str(run), "--quiet"], "checkpoint.pt", *words)


def test_declared_metric_the_learner_does_not_give_is_one_line(tmp_path, capsys):
    """``eval.metric`` names a metric the learner declares but does not return for a task (e.g.
    incdet's COCO-only ``AP50`` on a VOC task): one line naming the metric and the task, exit 2."""
    from incdet.engine import LEARNERS
    from incdet.engine.toy import ToyLearner

    class Partial(ToyLearner):
        metrics = {**ToyLearner.metrics, "extra": True}

    LEARNERS.register("test.partial")(Partial)
    try:
        _fails(capsys, ["train", TOY, "--out", str(tmp_path / "r"), *QUICK, "--set", "learner.name=test.partial",
                        "--set", "eval.metric=extra"], "eval.metric 'extra'", "gave no such value on task")
    finally:
        LEARNERS.unregister("test.partial")
