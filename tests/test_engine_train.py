"""Whole toy runs through the CLI: results format, forgetting, non-finite loss, resume, init_from."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from incdet.cli import main
from incdet.engine import LEARNERS
from incdet.engine.checkpoint import load_checkpoint
from incdet.engine.toy import ToyConfig, ToyLearner
from incdet.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "configs" / "toy.yaml")
QUICK = ["--set", "train.iterations=30", "--set", "train.first_task.iterations=40",
         "--set", "train.first_task.lr_steps=[30]", "--set", "train.lr_steps=[20]",
         "--set", "train.checkpoint_every=10", "--device", "cpu", "--quiet"]


def _weights(path):
    return load_checkpoint(path)["learner"]["model"]


def test_toy_run_writes_results_and_forgets(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", TOY, "--out", str(run), *QUICK]) == 0
    res = json.loads((run / "results.json").read_text())
    assert {"metric", "higher_is_better", "tasks", "matrix", "summary"} <= set(res)
    assert res["metric"] == "accuracy" and res["higher_is_better"] is True
    assert res["tasks"] == ["c0-1", "c2-3", "c4-5"]
    R = res["matrix"]
    assert R[0][1] is None and R[0][2] is None and R[1][2] is None  # not measured
    assert all(R[i][i] > 90 for i in range(3))                       # each task learned
    assert R[2][0] < R[0][0] - 50                                    # naive fine-tuning forgets
    assert res["summary"]["average_forgetting"] > 50
    assert res["summary"]["backward_transfer"] < -50
    for f in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "checkpoints/task2.pt", "results.png", "results.csv", "results.md"):
        assert (run / f).is_file(), f
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "step" in x]
    assert steps[0]["task"] == 0 and {"loss", "ce", "kd", "lr", "images_per_s"} <= set(steps[0])
    assert sum(1 for x in lines if x.get("event") == "eval") == 6
    # checkpoint: weights_only loadable, holds what the issue lists
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert {"learner", "optimizer", "scheduler", "scaler", "rng", "task_index", "step", "results", "config"} <= set(ck)
    assert ck["phase"] == "done" and ck["task_index"] == 2
    # the resolved config was saved and reloads
    assert "iterations: 30" in (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| c4-5 |" in out and "average_forgetting" in out
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert [round(t["accuracy"], 6) for t in ev["tasks"]] == [round(v, 6) for v in R[2]]
    # resuming a finished run trains nothing and keeps the results
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert json.loads((run / "results.json").read_text())["matrix"] == R
    # a second run into the same directory is refused
    assert main(["train", TOY, "--out", str(run), *QUICK]) == 2
    assert "--resume" in capsys.readouterr().err


@dataclass
class NanConfig(ToyConfig):
    nan_at_step: int = 25


@LEARNERS.register("test.nan_toy")
class NanToy(ToyLearner):
    Config = NanConfig

    def begin_task(self, task):
        super().begin_task(task)
        self.count = 0

    def resume_task(self, task):
        super().resume_task(task)
        self.count = 0

    def training_step(self, batch):
        out = super().training_step(batch)
        self.count += 1
        if self.task.index == 1 and self.count > self.config.nan_at_step:
            out["ce"] = out["ce"] * float("nan")
            out["loss"] = out["ce"]
        return out


def test_non_finite_loss_stops_with_clear_message(tmp_path, capsys):
    run = tmp_path / "nan"
    rc = main(["train", TOY, "--out", str(run), *QUICK, "--set", "learner.name=test.nan_toy"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "non-finite loss at task 1 (c2-3) step 25" in err
    assert "ce=nan" in err and "kd=0" in err and "loss=nan" in err
    ck = load_checkpoint(run / "checkpoint.pt")  # the last good one
    assert (ck["task_index"], ck["step"], ck["phase"]) == (1, 20, "train")
    assert all(torch.isfinite(v).all() for v in ck["learner"]["model"].values())
    assert str(run / "checkpoint.pt") in err
    # recover: resume with a changed setting (rewrites config.yaml) and finish
    assert main(["train", "--resume", str(run), "--quiet", "--set", "learner.nan_at_step=1000"]) == 0
    assert "nan_at_step: 1000" in (run / "config.yaml").read_text()
    assert json.loads((run / "results.json").read_text())["summary"]["tasks_done"] == 3


def test_init_from_reuses_first_task(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", TOY, "--out", str(a), *QUICK]) == 0
    # a variant starting from a's first task: same later schedule -> same weights and matrix
    assert main(["train", TOY, "--out", str(b), *QUICK, "--set", f"tasks.init_from={a}/checkpoints/task0.pt"]) == 0
    wa, wb = _weights(a / "checkpoints/task2.pt"), _weights(b / "checkpoints/task2.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((d / "results.json").read_text())["matrix"] for d in (a, b))
    assert ra == rb
    logged = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert not any(x.get("task") == 0 and "step" in x for x in logged)  # task 0 was not trained again


def test_bad_checkpoints(tmp_path, capsys):
    p = tmp_path / "x.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="x.pt: cannot read checkpoint"):
        load_checkpoint(p)
    torch.save({"a": 1}, p)
    with pytest.raises(CheckpointError, match="not an incdet run checkpoint"):
        load_checkpoint(p)
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def _launch(args, env):
    return subprocess.Popen([sys.executable, "-m", "incdet", "train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_then_resume_gives_same_weights(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CI="1")
    # distill > 0: the teacher must be restored too; dropout: the RNG state must be restored
    common = [TOY, *QUICK, "--set", "learner.distill=1.0", "--set", "learner.dropout=0.1"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    p = _launch([*common, "--out", str(run), "--set", "learner.step_delay=0.02"], env)
    ck = run / "checkpoint.pt"
    deadline = time.time() + 60
    # kill once task 0 is done and a later checkpoint exists (normally inside task 1)
    while time.time() < deadline and p.poll() is None:
        if (run / "checkpoints" / "task0.pt").exists() and ck.exists():
            try:
                c = torch.load(ck, weights_only=True)
            except Exception:  # being replaced right now
                c = None
            if c is not None and c["task_index"] >= 1:
                time.sleep(0.05)
                break
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be killed: " + p.stderr.read().decode()[-2000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "checkpoints" / "task2.pt").exists()
    killed_at = load_checkpoint(ck)
    assert killed_at["task_index"] >= 1
    # the uninterrupted reference (in-process; step_delay changes timing only)
    assert main(["train", *common, "--out", str(ref)]) == 0
    # resume in-process (the kill above was real; this saves a second interpreter start)
    assert main(["train", "--resume", str(run), "--quiet", "--device", "cpu"]) == 0
    wa, wb = _weights(ref / "checkpoints/task2.pt"), _weights(run / "checkpoints/task2.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    assert json.loads((run / "results.json").read_text())["matrix"] == json.loads((ref / "results.json").read_text())["matrix"]
