"""tools/incdet_experiments.py: the old/new/all tables from run directories (fabricated results)."""
import json
from pathlib import Path

import pytest

from conftest import load_tool



@pytest.fixture(scope="module")
def tool():
    return load_tool("incdet_experiments")


def _write(run: Path, rows):
    """rows[i][j]: {class: AP} evaluated on task j after task i (None: not measured)."""
    tasks = [f"t{i}" for i in range(len(rows))]
    am = [[None if c is None else {**{f"AP/{k}": v for k, v in c.items()}, "mAP": 0.0} for c in r] for r in rows]
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "metric": "mAP", "higher_is_better": True, "tasks": tasks,
        "matrix": [[None if c is None else 0.0 for c in r] for r in rows], "all_metrics": am}))
    (run / "wall.json").write_text(json.dumps({"seconds": 12.0, "threads": 1, "cpu": "test cpu"}))


def test_old_new_all_and_nan(tool):
    aps = {"a": 10.0, "b": float("nan"), "c": 30.0}
    s = tool.old_new_all(aps, ["a", "b"], ["c"])
    assert s == {"old": 10.0, "new": 30.0, "all": 20.0}


def test_split_table_by_hand(tool, tmp_path):
    out = tmp_path / "exp"
    a = {"a": 40.0, "b": 20.0}  # A(old) = 30
    # after B: the last row's evaluation on the last task covers all classes seen so far
    _write(out / "15+5_distill", [[a, None], [a, {"a": 36.0, "b": 18.0, "c": 9.0}]])
    _write(out / "15+5_naive", [[a, None], [a, {"a": 0.0, "b": 2.0, "c": 12.0}]])
    _write(out / "joint", [[{"a": 50.0, "b": 30.0, "c": 10.0}]])
    t = tool.split_table("15+5", out)
    lines = t.splitlines()
    # 15+5 is thesis table 3.3's analogue: the thesis' VOC 2007 old | new | all of the same row beside ours
    assert lines[0].endswith("| wall time | thesis (VOC 2007): old | new | all |")
    assert lines[2] == "| A(2 old classes) | 30.0 | - | - | (in the next row) | 70.5 | - | - |"
    assert "| +B distillation (biased sampling) | 27.0 | 9.0 | 21.0 | 12 s (CPU) | 68.4 | 58.4 | 65.9 |" in lines
    # the thesis has no naive row in table 3.3
    assert "| +B w/o distillation (naive fine-tuning) | 1.0 | 12.0 | 4.7 | 12 s (CPU) | - | - | - |" in lines
    assert "| +B distillation, unbiased sampling | not run | | | | - | - | - |" in lines
    assert "| joint training A(1-20) | 40.0 | 10.0 | 30.0 | 12 s (CPU) | 70.9 | 66.7 | 69.8 |" in lines
    assert all(ln.count("|") == lines[1].count("|") for ln in lines)


def test_thesis_cells_per_table(tool):
    # table 3.1 (19+1): the naive row and its own A(1-20) row; table 3.2 (10+10): EWC
    assert tool.thesis_cells("19+1", "19+1_naive") == " 25.0 | 52.1 | 26.4 |"
    assert tool.thesis_cells("19+1", "joint") == " 69.6 | 73.9 | 69.8 |"
    assert tool.thesis_cells("10+10", "joint") == " 68.4 | 71.3 | 69.8 |"
    assert tool.thesis_cells("10+10", "10+10_ewc") == " 31.6 | 61.0 | 46.3 |"
    assert tool.thesis_cells("10+10", "10+10_ce") == " - | - | - |"  # our extra row: not in the thesis' table
    assert tool.thesis_cells("15+1x5", "15+1x5_unbiased") == " 45.8 | 46.5 | 46.0 |"
    assert tool.thesis_cells("19+1", "A") == " 68.4 | - | - |"
    assert tool.thesis_cells("probe_b", "joint") == ""


def test_steps_table_and_markdown(tool, tmp_path):
    out = tmp_path / "exp"
    a = {"a": 40.0, "b": 20.0}
    s1 = {"a": 30.0, "b": 20.0, "c": 10.0}
    s2 = {"a": 20.0, "b": 10.0, "c": 5.0, "d": 8.0}
    _write(out / "15+1x5_distill", [[a, None, None], [None, s1, None], [None, None, s2]])
    st = tool.steps_table("15+1x5_distill", out).splitlines()
    assert st[0] == "| after | old (1-2) | c | d | all seen |"
    assert st[2] == "| t0 | 30.0 |  |  | 30.0 |"
    assert st[3] == "| t1 | 25.0 | 10.0 |  | 20.0 |"
    assert st[4] == "| t2 | 15.0 | 5.0 | 8.0 | 10.8 |"
    # thesis table 3.9's columns only for a run with as many steps (6): not this 3-task one
    assert tool.steps_table("15+1x5_distill", out, thesis=True).splitlines() == st
    md = tmp_path / "incdet.md"
    text = tool.write_markdown(out, md)
    assert md.read_text() == text and "test cpu" in text and "## 15+5" in text and "Not run yet." in text



def test_steps_table_thesis_columns_for_six_steps(tool, tmp_path):
    out = tmp_path / "exp"
    classes = ["c1", "c2", "c3", "c4", "c5"]
    rows = []
    for i in range(6):  # step i has seen the old class "a" (AP 50 - 10 i) and classes c1..ci (AP 10)
        aps = {"a": 50.0 - 10 * i, **{c: 10.0 for c in classes[:i]}}
        rows.append([aps if j == i else None for j in range(6)])
    _write(out / "15+1x5_distill", rows)
    st = tool.steps_table("15+1x5_distill", out, thesis=True).splitlines()
    assert st[0].endswith("| all seen | thesis (VOC 2007): old (1-15) | all seen |")
    assert st[1].count("|") == st[0].count("|")
    assert st[2] == "| t0 | 50.0 |  |  |  |  |  | 50.0 | 70.5 | 70.5 |"
    assert st[3] == "| t1 | 40.0 | 10.0 |  |  |  |  | 25.0 | 69.7 | 67.0 |"
    assert st[7] == "| t5 | 0.0 | 10.0 | 10.0 | 10.0 | 10.0 | 10.0 | 8.3 | 66.0 | 62.4 |"

VOC = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
       "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def test_thesis_registry_has_every_row(tool):
    names = {e.name for e in tool.THESIS_EXPERIMENTS}
    want = {"voc07_19+1_distill", "voc07_19+1_naive", "voc07_19+1_frozen_trunk", "voc07_19+1_all_frozen",
            "voc07_19+1_frozen_trunk_distill", "voc07_19+1_ce", "voc07_19+1_nobox", "voc07_10+10_distill",
            "voc07_10+10_naive", "voc07_10+10_ce", "voc07_10+10_nobox", "voc07_10+10_ewc", "voc07_15+5_distill",
            "voc07_15+1x5_distill", "voc07_15+1x5_unbiased", "voc07_joint"}
    assert names == want and set(tool.THESIS_ORDER) == want
    by = tool.BY_NAME
    assert by["voc07_19+1_frozen_trunk"].sets == ["learner.freeze=trunk", "learner.distill=none"]
    assert by["voc07_19+1_frozen_trunk_distill"].sets == ["learner.freeze=trunk"]
    assert by["voc07_19+1_all_frozen"].sets == ["learner.freeze=all_but_new", "learner.distill=none"]
    assert by["voc07_15+1x5_unbiased"].init_from == "voc07_15+5_distill"
    order = tool.THESIS_ORDER
    for e in tool.THESIS_EXPERIMENTS:  # an A-training run comes before the variants that start from it
        if e.init_from:
            assert order.index(e.init_from) < order.index(e.name)
    # the existing shapes-voc order is unchanged (the thesis runs need a GPU and VOC 2007)
    assert not set(tool.RUN_ORDER) & want


@pytest.mark.parametrize("name", sorted(n for n in load_tool("incdet_experiments").BY_NAME))
def test_every_experiment_config_loads(tool, name):
    """Each run's config with its --set overrides is a valid run config (as `incdet train` reads it)."""
    from incdet.engine.config import load_config

    e = tool.BY_NAME[name]
    load_config(tool.ROOT / e.config, list(e.sets) + ["tasks.init_from=null"])


def _write_cfg(run: Path, norm):
    (run / "config.yaml").write_text("learner:\n  name: incdet.fastrcnn\n" +
                                     (f"  distill_norm: {norm}\n" if norm else ""))


def test_thesis_table_layout_and_norms(tool, tmp_path):
    out = tmp_path / "exp"
    a = {c: 60.0 for c in VOC[:19]}
    a["aeroplane"] = 79.0  # A(1-19) = 61.0
    after = {**{c: 50.0 for c in VOC[:19]}, "tvmonitor": 40.0}
    _write(out / "voc07_19+1_distill", [[a, None], [a, after]])
    _write_cfg(out / "voc07_19+1_distill", "thesis")
    _write(out / "voc07_19+1_frozen_trunk", [[a, None], [a, {**after, "tvmonitor": 10.0}]])
    _write_cfg(out / "voc07_19+1_frozen_trunk", None)  # predates the switch: released code
    t = tool.thesis_table(tool.THESIS_TABLES[0], out).splitlines()
    assert t[0] == "| method | old | new | all | thesis: old | new | all |"
    assert t[2] == "| A(1-19) | 61.0 | - | - | 68.4 | - | - |"
    assert "| +B(20) w distillation | 50.0 | 40.0 | 49.5 | 68.3 | 58.3 | 67.8 |" in t
    assert "| +B(20) w frozen trunk | 50.0 | 10.0 | 48.0 | 53.5 | 43.1 | 52.9 |" in t
    assert "| +B(20) w all layers frozen | not run yet | |  | 69.1 | 41.6 | 66.6 |" in t
    assert "| A(1-20) | not run yet | |  | 69.6 | 73.9 | 69.8 |" in t
    names = [r.name for r in tool.THESIS_TABLES[0].rows]
    line = tool.norm_line(names, out)
    assert "`voc07_19+1_frozen_trunk`: `released_code`" in line and "`voc07_19+1_distill`: `thesis`" in line
    assert tool.norm_line(["voc07_19+1_distill"], out).endswith("`thesis` in every finished run of this table.")
    t3 = tool.thesis_table(tool.THESIS_TABLES[2], out)
    assert "| +A(16)+...+A(20) (separate networks; not supported by this tool) | not supported | |  | 70.5 | 37.8 | 62.4 |" in t3


def test_thesis_steps_table_and_markdown(tool, tmp_path):
    out = tmp_path / "exp"
    a = {c: 60.0 for c in VOC[:15]}
    rows = []
    seen = dict(a)
    for i in range(6):
        if i:
            seen = {**{c: 50.0 for c in VOC[:15]}, **{c: 10.0 * i for c in VOC[15:15 + i]}}
        rows.append([None] * i + [dict(seen)] + [None] * (5 - i))
    _write(out / "voc07_15+1x5_distill", rows)
    st = tool.thesis_steps_table(out).splitlines()
    assert st[2] == "| A(1-15) | 60.0 | - | - | - | - | - | 60.0 | 70.5 | - | - | - | - | - | 70.5 |"
    # after +B(16)(17): classes 16, 17 at 20.0; all seen = (15 x 50 + 2 x 20) / 17
    assert st[4] == "| +B(16)(17) | 50.0 | 20.0 | 20.0 | - | - | - | 46.5 | 67.4 | 27.9 | 46.8 | - | - | - | 63.9 |"
    md = tmp_path / "incdet.md"
    text = tool.write_markdown(out, md)
    assert "## Thesis tables 3.1-3.3 and 3.9 on VOC 2007" in text and "### Table 3.9" in text
    assert "| A(1-19) | not run yet | - | - | 68.4 | - | - |" in text
    assert "Distillation normalisation (`learner.distill_norm`): no finished run." in text


def test_seed_rows_and_targets_by_hand(tool, tmp_path):
    """Three seeds of A / +B distill / +B naive / joint over classes old = (a, b), new = (c):
    mean, sample std and every target verdict worked out by hand."""
    out = tmp_path / "exp"
    for k, (a_old, d_old, n_old, j_all) in enumerate([(50.0, 47.0, 2.0, 60.0), (52.0, 48.0, 4.0, 62.0),
                                                      (54.0, 49.0, 3.0, 64.0)]):
        sfx = "" if k == 0 else f"_s{k}"
        a = {"a": a_old, "b": a_old}
        _write(out / f"15+5_distill{sfx}", [[a, None], [a, {"a": d_old, "b": d_old, "c": 40.0}]])
        _write(out / f"15+5_naive{sfx}", [[a, None], [a, {"a": n_old, "b": n_old, "c": 50.0}]])
        _write(out / f"joint{sfx}", [[{"a": j_all, "b": j_all, "c": j_all}]])
    r = tool.seed_values(out)
    assert r["A(1-15)"] == [50.0, 52.0, 54.0] and r["naive old"] == [2.0, 4.0, 3.0]
    assert r["distill all"] == pytest.approx([(47 * 2 + 40) / 3, (48 * 2 + 40) / 3, (49 * 2 + 40) / 3])
    m, sd, n = tool.mean_std(r["A(1-15)"])
    assert (m, n) == (52.0, 3) and sd == pytest.approx(2.0)
    t = tool.seeds_table(out).splitlines()
    assert "| A(1-15) | 50.0 | 52.0 | 54.0 | 52.0 | 2.0 (3) |" in t
    lines = "\n".join(tool.targets_lines(out))
    # joint mean 62 >= 60; distill old 48 / A 52 = 92.3 % >= 90; distill all 45.33 / 62 = 73.1 % < 90;
    # naive old 3 / 52 = 5.8 % <= 30; gap 45 > 5 x max(std 1.0, std 1.0) = 5
    assert "A(1-20) >= 60 mAP: 62.0 (mean of 3 seeds): **met**" in lines
    assert "old classes >= 90 % of A: 92.3 %: **met**" in lines
    assert "all classes >= 90 % of joint: 73.1 %: **not met**" in lines
    assert "old classes <= 30 % of A: 5.8 %: **met**" in lines
    assert "(45.0) larger than 5x the seed spread (5 x 1.0): **met**" in lines
    assert "10+10 distillation, all classes after the last step >= 85 % of joint: - % (- mAP, mean of 0 seed(s)): not measured" in lines
    # one seed missing: the mean is over what is there; std of one value is not a spread
    import shutil
    for k in (1, 2):
        shutil.rmtree(out / f"15+5_naive_s{k}")
    assert tool.mean_std(tool.seed_values(out)["naive old"])[2] == 1
    assert "seed spread (5 x -): not measured" in "\n".join(tool.targets_lines(out))


def test_shapes_19_1_rows_and_seed_runs(tool):
    by = tool.BY_NAME
    for suf in ("naive", "frozen_trunk", "all_frozen", "frozen_trunk_distill", "ce", "nobox"):
        assert by[f"19+1_{suf}"].init_from == "19+1_distill" and by[f"19+1_{suf}"].split == "19+1"
    assert by["19+1_frozen_trunk"].sets == ["learner.freeze=trunk", "learner.distill=none"]
    assert by["10+10_ce"].sets == ["learner.distill=ce"]
    assert by["15+5_naive_s2"].init_from == "15+5_distill_s2"
    assert by["15+5_naive_s2"].sets == ["experiment.seed=2", "learner.distill=none"]
    order = tool.RUN_ORDER
    assert order.index("15+5_distill_s1") < order.index("15+5_naive_s1") and set(order) >= set(by) - set(tool.THESIS_ORDER)


def test_long_schedule_table_by_hand(tool, tmp_path):
    out = tmp_path / "exp"
    a = {"a": 60.0, "b": 40.0}  # A(old) = 50
    _write(out / "15+5_long_distill", [[a, None], [a, {"a": 48.0, "b": 42.0, "c": 30.0}]])
    _write(out / "15+5_long_naive", [[a, None], [a, {"a": 2.0, "b": 0.0, "c": 40.0}]])
    _write(out / "joint_6k", [[{"a": 60.0, "b": 60.0, "c": 60.0}]])
    t = tool.long_table(out)
    assert "| 2000 iterations (the former schedule) | not run | | | | | | |" in t
    assert "| 6000 iterations (the configs now) | 50.0 | 45.0 | 30.0 | 40.0 | 1.0 | 40.0 | 14.0 |" in t
    # 45 / 50 = 90 % of A; all 40 / joint 60 = 66.7 %
    assert "keeps 90.0 % of A on the old classes; all classes 40.0 = 66.7 % of joint" in t


def test_former_schedule_rows_say_so_and_configs_train_a_6000(tool):
    """The page's rows were made with A at 2000 iterations: every A-training shapes row carries the
    override; the configs' own schedule (6000) is what the ``converged`` rows run."""
    import yaml

    by = tool.BY_NAME
    for name in ("15+5_distill", "10+10_distill", "19+1_distill", "joint", "15+5_distill_s1", "joint_lr4e-3"):
        assert by[name].sets[:2] == tool.SHORT, name
    assert by["joint_lr4e-3"].sets == tool.SHORT + ["train.first_task.lr=0.004"]
    assert by["15+5_naive"].sets == ["learner.distill=none"]  # starts from 15+5_distill's A: no schedule of its own
    assert by["joint_6k"].sets == ["train.first_task.iterations=6000", "train.first_task.lr_steps=[4800]"]
    for k in tool.SEEDS:
        assert by[f"6k_15+5_distill_s{k}"].sets == [f"experiment.seed={k}"]
        assert by[f"6k_15+5_naive_s{k}"].init_from == f"6k_15+5_distill_s{k}"
        assert by[f"6k_15+1x5_distill_s{k}"].init_from == f"6k_15+5_distill_s{k}"
    root = Path(__file__).resolve().parents[1]
    for split in ("15+5", "10+10", "15+1x5", "19+1", "joint"):
        ft = yaml.safe_load((root / f"configs/incdet/shapes_{split}.yaml").read_text())["train"]["first_task"]
        assert (ft["iterations"], ft["lr_steps"]) == (6000, [4800]), split


def test_converged_page_by_hand_and_records(tool, tmp_path):
    """The 6k rows (every seed suffixed) feed the same seed table and targets; ``table`` keeps the
    finished runs' files under --records and reads a run from there once --out has lost it."""
    out = tmp_path / "exp"
    for k, (d_old, j_all) in enumerate([(45.0, 60.0), (46.0, 62.0), (47.0, 64.0)]):
        a = {"a": 50.0, "b": 50.0}
        _write(out / f"6k_15+5_distill_s{k}", [[a, None], [a, {"a": d_old, "b": d_old, "c": 40.0}]])
        _write(out / f"6k_joint_s{k}", [[{"a": j_all, "b": j_all, "c": j_all}]])
    (out / "6k_joint_s0" / "command.txt").write_text("incdet train x\n")
    _write(out / "15+5_distill", [[{"a": 1.0, "b": 1.0}, None], [None, {"a": 1.0, "b": 1.0, "c": 1.0}]])  # other page
    r = tool.seed_values(out, "6k_")
    assert r["distill old"] == [45.0, 46.0, 47.0] and r["joint all"] == [60.0, 62.0, 64.0]
    assert r["naive old"] == [None, None, None]
    lines = "\n".join(tool.targets_lines(out, "6k_"))
    # distill old 46 / A 50 = 92 %; joint mean 62
    assert "A(1-20) >= 60 mAP: 62.0 (mean of 3 seeds): **met**" in lines
    assert "old classes >= 90 % of A: 92.0 %: **met**" in lines
    md, rec = tmp_path / "p.md", tmp_path / "records"
    assert tool.main(["table", "--page", "6k", "--out", str(out), "--md", str(md), "--records", str(rec)]) == 0
    text = md.read_text()
    assert "| distill old | 45.0 | 46.0 | 47.0 | 46.0 | 1.0 (3) |" in text
    assert f"--out {out}/6k_15+5_naive_s2" in text  # every row's command, run or not
    assert (rec / "6k_joint_s0" / "command.txt").read_text() == "incdet train x\n"
    assert sorted(p.name for p in (rec / "6k_joint_s1").iterdir()) == ["results.json", "wall.json"]
    assert (rec / "15+5_distill" / "results.json").is_file()
    import shutil
    shutil.rmtree(out)
    md2 = tmp_path / "p2.md"
    assert tool.main(["table", "--page", "6k", "--out", str(out), "--md", str(md2), "--records", str(rec)]) == 0
    assert md2.read_text() == text.replace(f"--md {md}", f"--md {md2}")  # the page names its own file
    assert f"--md {md} --records {rec}`" in text  # records other than the default: named too
    tool.main(["table", "--page", "6k", "--out", str(out), "--md", str(md2), "--records", "none"])
    assert "| distill old | - | - | - | " in md2.read_text()


def test_gpu_script_names_only_known_experiments(tool):
    """Every name that tools/gpu_experiments.sh passes to ``$I`` is an experiment of the tool (a
    misspelt name would be refused by ``run --only`` on the lent machine, after its start-up)."""
    import re

    text = (Path(__file__).resolve().parents[1] / "tools" / "gpu_experiments.sh").read_text()
    names = set()
    for ks, body in re.findall(r"for k in ([\d ]+); do(.*?)\ndone", text, flags=re.S):  # loops: each k
        for args in re.findall(r"\$I ([^&>)\n]+)", body):
            names |= {tok.replace("$k", k) for tok in args.split() for k in ks.split()}
    for args in re.findall(r"\$I ([^&>)\n]+)", re.sub(r"for k in [\d ]+; do.*?\ndone", "", text, flags=re.S)):
        names |= set(args.split())
    assert "6k_15+5_distill_s0" in names and "15+5_distill" in names
    assert names <= set(tool.BY_NAME), sorted(names - set(tool.BY_NAME))


def test_run_split_selects_that_tables_runs_in_order(tool, monkeypatch):
    seen = {}
    monkeypatch.setattr(tool, "run", lambda names, out, threads, device: seen.setdefault("names", list(names)) and 0)
    tool.main(["run", "--split", "probe_b"])
    assert seen["names"] == ["6k_15+5_b2000_distill_s0", "6k_15+5_b2000_naive_s0", "6k_15+5_b6000_distill_s0",
                             "6k_15+5_b6000_unbiasedbg_s0", "6k_15+5_unbiasedbg_s0", "6k_15+5_b2000_unbiasedbg_s0",
                             "6k_15+5_b2000_lr1e-3_unbiasedbg_s0", "6k_15+5_b6000_lr1e-3_unbiasedbg_s0"]
    seen.clear()
    tool.main(["run", "--split", "converged", "--only", "joint"])
    names = seen["names"]
    assert names[0] == "joint" and set(names[1:]) == {e.name for e in tool.EXPERIMENTS if e.split == "converged"}
    assert names.index("6k_15+5_distill_s1") < names.index("6k_15+5_naive_s1")
