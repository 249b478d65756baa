"""Every codec experiment goes through the shared driver: no second training loop in codec/,
no `codec run`, the converted configs keep their schedules and run, `codec init --arch`."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "codec"


def test_no_training_loop_in_codec():
    """Backward passes and optimizer steps live in incdet/engine/trainer.py only."""
    pat = re.compile(r"\.backward\(|optimizer\.step\(|\bopt\.step\(|torch\.optim\.(Adam|AdamW|SGD)\(|clip_grad_norm_\(")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "codec").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pat.search(line)]
    assert hits == [], hits


def test_codec_run_is_gone(capsys):
    from codec.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(CONFIGS / "tiny.yaml")])
    assert e.value.code == 2 and "invalid choice: 'run'" in capsys.readouterr().err
    for p in [*(REPO / "codec").rglob("*.py"), *CONFIGS.glob("*.yaml"), REPO / "tools" / "codec_experiments.py",
              REPO / "tools" / "codec_detector_experiments.py"]:
        text = p.read_text()
        assert not re.search(r"codec run\s+--|\"run\", \"--config\"|run_sequence|RunSpec", text), p


SCHEDULES = {  # config: (source steps, source lr, source lr steps, task steps, task lr, task lr steps)
    "tiny.yaml": (60, 0.001, [], 30, 0.001, []),
    "pacs.yaml": (200000, 0.0001, [], 20000, 0.0001, []),
    "pacs_cpu.yaml": (800, 0.001, [640], 100, 0.0003, [80]),
    "shapes_cpu.yaml": (800, 0.001, [640], 200, 0.0003, [160]),
}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_codec_configs_are_driver_configs(name):
    """Each configs/codec/*.yaml validates as a driver config; the converted ones keep the
    schedules of the former `codec run` configs (source_iterations / source_lr -> first_task,
    lr_drop 0.8 -> lr_steps, Adam and gradient clipping at 1 as that loop hard-coded)."""
    import codec.learner  # noqa: F401
    from incdet.engine.config import load_config

    cfg = load_config(CONFIGS / name)
    assert cfg.learner.name.startswith("codec") and cfg.tasks.builder == "domains"
    assert cfg.train.optimizer == "adam"
    if name in SCHEDULES:
        t0, t1 = cfg.train.for_task(0), cfg.train.for_task(1)
        assert (t0.iterations, t0.lr, t0.lr_steps, t1.iterations, t1.lr, t1.lr_steps) == SCHEDULES[name]
        assert t0.grad_clip == t1.grad_clip == 1.0 and t0.lr_gamma == 0.1
        assert cfg.eval.future_tasks  # the source model on the target domains (DANICE's t=1 row)


def test_tiny_config_runs_end_to_end(tmp_path, domains_root):
    """configs/codec/tiny.yaml through `codec train` with an iteration cap, then rd-report."""
    from codec.cli import main

    run = tmp_path / "tiny"
    cap = ["--set", "train.iterations=1", "--set", "train.first_task.iterations=2", "--set", "tasks.max_train_images=2",
           "--set", "tasks.max_eval_images=1", "--set", "tasks.crop=32", "--set", "train.batch_size=2",
           "--set", f"tasks.data_root={domains_root.parent}"]
    assert main(["train", str(CONFIGS / "tiny.yaml"), *cap, "--out", str(run), "--quiet"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["tasks"] == ["natural", "cartoon", "sketch"] and res["summary"]["tasks_done"] == 3
    cells = [c for row in res["all_metrics"] for c in row]
    assert all(c is not None and {"bpp", "bpp_est", "psnr", "mse", "rd"} <= set(c) for c in cells)
    assert [len(x) for x in (res["task_summaries"],)] == [3] and res["task_summaries"][2]["trainable_fraction"] < 1
    for k in range(3):
        assert (run / "checkpoints" / f"task{k}.pt").is_file()
    md = tmp_path / "tiny.md"
    assert main(["rd-report", str(run), "-o", str(md), "--no-baselines"]) == 0
    assert "t=3 cawf" in md.read_text()


@pytest.mark.parametrize("arch", ["factorized", "scale-hyperprior", "mean-scale-hyperprior"])
def test_init_arch(tmp_path, arch):
    from codec.cli import main
    from codec.model import load_codec

    out = tmp_path / "m.pt"
    assert main(["init", "-o", str(out), "--arch", arch, "--N", "8", "--M", "12"]) == 0
    m, _ = load_codec(out)
    assert m.arch()["kind"] == arch and m.arch()["N"] == 8 and m.arch()["M"] == 12


def test_init_refusals(tmp_path, capsys):
    from codec.cli import main

    assert main(["init", "-o", str(tmp_path / "m.pt"), "--arch", "cawf"]) == 2
    assert "unknown source codec kind" in capsys.readouterr().err and not (tmp_path / "m.pt").exists()
    assert main(["init", "-o", str(tmp_path / "m.pt"), "--arch", "factorized", "--compressai", "x.pth"]) == 2
    assert "leave out --arch" in capsys.readouterr().err


def test_experiments_tool_plans_driver_runs(tmp_path):
    """tools/codec_experiments.py: every training job is `codec train` on the config; the
    strategies start from the source run's task-end checkpoint; the fine-tuning keeps the
    config's lr drop (0.8 of the steps)."""
    from conftest import load_tool

    tool = load_tool("codec_experiments")
    import argparse

    a = argparse.Namespace(out=str(tmp_path), config="configs/codec/pacs_cpu.yaml", set=None, lambdas=[0.008],
                           strategies=["cawf"], joint=True, base_lambda=0.002, finetune_iters=400, finetune_lr=5e-4,
                           joint_iters=None, check=False, joint_first=False, check_images=12)
    jobs = {j.name: j for j in tool.plan(a)}
    assert set(jobs) == {"baselines", "base", "src_0.008", "cawf_0.008", "joint_0.008"}
    for n in ("base", "src_0.008", "cawf_0.008", "joint_0.008"):
        assert jobs[n].cmd[1:5] == ["-m", "codec.cli", "train", "configs/codec/pacs_cpu.yaml"]
    sets = lambda j: [j.cmd[i + 1] for i, x in enumerate(j.cmd) if x == "--set"]  # noqa: E731
    assert f"tasks.init_from={tmp_path}/src_0.008/checkpoints/task0.pt" in sets(jobs["cawf_0.008"])
    assert {"train.first_task.iterations=400", "train.first_task.lr_steps=[320]", "tasks.stop_after=1",
            f"learner.source_checkpoint={tmp_path}/base/checkpoints/task0.pt"} <= set(sets(jobs["src_0.008"]))
    assert {"train.first_task.iterations=600", "tasks.joint=true"} <= set(sets(jobs["joint_0.008"]))
    # a started run continues with --resume
    (tmp_path / "cawf_0.008").mkdir()
    (tmp_path / "cawf_0.008" / "config.yaml").write_text("{}")
    assert "--resume" in tool.command(jobs["cawf_0.008"]) and not tool.is_done(jobs["cawf_0.008"])


def test_hyperprior_crop_not_multiple_of_64_refused(tmp_path, capsys, domains_root):
    """A hyperprior needs crops in multiples of 64: a clear one-line error naming tasks.crop,
    not a shape error inside compressai; the same crop trains a factorized codec."""
    from codec.cli import main

    base = ["--set", "train.iterations=1", "--set", "tasks.max_train_images=1", "--set", "tasks.max_eval_images=1",
            "--set", "tasks.crop=32", "--set", "train.batch_size=1", "--set", "tasks.stop_after=1",
            "--set", f"tasks.data_root={domains_root.parent}", "--set", "learner.N=8", "--quiet"]
    rc = main(["train", str(CONFIGS / "tiny.yaml"), *base, "--set", "learner.arch=mean-scale-hyperprior",
               "--out", str(tmp_path / "msh")])
    err = capsys.readouterr().err
    assert rc == 2 and "tasks.crop = 32" in err and "multiple of 64" in err and "Traceback" not in err
    assert main(["train", str(CONFIGS / "tiny.yaml"), *base, "--out", str(tmp_path / "fact")]) == 0


def test_export_and_bd_are_codec_subcommands(capsys):
    from codec.cli import main

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--half" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bd", "--help"])
    assert "jpeg2000" in capsys.readouterr().out.lower()
