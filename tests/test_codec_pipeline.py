"""Codec metrics, domain data, runs through the shared driver, report and CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from codec.metrics import bd_rate, baseline_curve, psnr


def test_bd_rate_hand_made_cases():
    r = [0.1, 0.2, 0.4, 0.8]
    p = [28.0, 31.0, 34.0, 37.0]
    # same quality at 10% fewer bits everywhere -> -10%
    assert bd_rate(r, p, [x * 0.9 for x in r], p) == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(r, p, [x * 1.25 for x in r], p, method="akima") == pytest.approx(25.0, abs=1e-6)
    # 3 points: the local pchip fallback gives the same answer
    assert bd_rate(r[:3], p[:3], [x * 0.9 for x in r[:3]], p[:3]) == pytest.approx(-10.0, abs=1e-6)
    # log-linear RD (psnr = 10 log2 r + c): +1 dB at equal rate = rate * 2^(-1/10)
    rr = [0.125, 0.25, 0.5, 1.0]
    pp = [10 * math.log2(x) + 40 for x in rr]
    assert bd_rate(rr, pp, rr, [q + 1 for q in pp]) == pytest.approx((2 ** -0.1 - 1) * 100, abs=1e-3)
    # no overlap / single points -> NaN, never an exception
    assert math.isnan(bd_rate([0.1], [30.0], [0.2], [31.0]))


def test_psnr_known_values():
    a = torch.zeros(3, 4, 4, dtype=torch.uint8)
    b = a.clone()
    assert psnr(a, b) == float("inf")
    b[0, 0, 0] = 255  # MSE = 255^2 / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(48))


def test_jpeg_and_jpeg2000_baselines_monotone():
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 64, 80, generator=g) * 60 + torch.linspace(0, 190, 80)).clamp(0, 255).to(torch.uint8)
    for fmt in ("jpeg", "jpeg2000"):
        pts = baseline_curve([img], fmt)
        assert len(pts) >= 5
        assert pts[0]["bpp"] < pts[-1]["bpp"] and pts[0]["psnr"] < pts[-1]["psnr"]


def test_domain_files_and_tasks(domains_root, kodak_root):
    from codec.data import domain_files, split_files
    from codec.learner import DomainTasksConfig, build_domain_tasks

    data_root = domains_root.parent
    assert len(domain_files("kodak", data_root)) == 24
    cart = domain_files("cartoon", data_root)
    tr, ev = split_files(cart, 5)
    assert len(tr) + len(ev) == len(cart) and not set(tr) & set(ev)
    tasks = build_domain_tasks(DomainTasksConfig(sequence=["photo", "sketch"], eval_sets={}, data_root=str(data_root),
                                                 crop=48, max_train_images=4, max_eval_images=2))
    assert [t.name for t in tasks] == ["photo", "sketch"]
    crop = tasks[1].train_set[0]
    assert crop.shape == (3, 48, 48) and crop.dtype == torch.uint8
    full = tasks[1].eval_set[0]
    assert full.shape == (3, 227, 227)
    from incdet.errors import DataError

    with pytest.raises(DataError, match="unknown image domain"):
        domain_files("nope", data_root)


def test_voc_image_set_is_a_domain(tmp_path):
    """A VOC image-set file names the domain's images (a detector's training split)."""
    from PIL import Image

    from codec.data import domain_files
    from incdet.errors import DataError

    root = tmp_path / "voc"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i in ("b", "a", "c"):
        Image.new("RGB", (8, 8)).save(root / "JPEGImages" / f"{i}.jpg")
    split = root / "ImageSets" / "Main" / "train.txt"
    split.write_text("b\na  1\n\n")
    assert [p.name for p in domain_files(str(split))] == ["a.jpg", "b.jpg"]
    split.write_text("a\nzz\n")
    with pytest.raises(DataError, match=r"train.txt: 1 of 2 listed images are missing, e.g. .*zz.jpg"):
        domain_files(str(split))
    split.write_text("\n")
    with pytest.raises(DataError, match="train.txt: VOC image set is empty"):
        domain_files(str(split))
    loose = tmp_path / "ids.txt"
    loose.write_text("a\n")
    with pytest.raises(DataError, match=r"ids.txt: a VOC image set must be ROOT/ImageSets/"):
        domain_files(str(loose))


def _tiny_cfg(tmp_path, data_root, **over):
    """A tiny two-domain driver config (CAwF, N=8) as a file; ``over``: section -> dict updates."""
    import yaml

    cfg = {
        "experiment": {"name": "t", "seed": 0, "out": str(tmp_path), "device": "cpu"},
        "tasks": {"builder": "domains", "sequence": ["photo", "sketch"], "eval_sets": {}, "data_root": str(data_root),
                  "crop": 32, "max_train_images": 4, "max_eval_images": 1},
        "learner": {"name": "codec.cawf", "N": 8, "K": 2, "lmbda": 0.01, "eval_msssim": False},
        "train": {"iterations": 2, "batch_size": 2, "optimizer": "adam", "lr": 0.001, "grad_clip": 1.0,
                  "amp": "none", "checkpoint_every": 0},
        "eval": {"future_tasks": True},
    }
    for k, v in over.items():
        cfg[k].update(v)
    f = tmp_path / f"c{len(list(tmp_path.glob('c*.yaml')))}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return str(f)


def test_tiny_run_and_report(tmp_path, domains_root):
    """Two tasks, two lambdas, CAwF through the driver: source results unchanged at t=2, the
    source model measured on the target too (future_tasks); the report renders."""
    from codec.cli import main
    from codec.report import make_report

    runs = []
    for lm in (0.004, 0.03):
        out = tmp_path / f"cawf_{lm}"
        assert main(["train", _tiny_cfg(tmp_path, domains_root.parent), "--set", f"learner.lmbda={lm}",
                     "--out", str(out), "--quiet"]) == 0
        runs.append(out)
        m = json.loads((out / "results.json").read_text())["all_metrics"]
        assert len(m) == 2 and all(c is not None for row in m for c in row)
        assert m[1][0]["bpp"] == m[0][0]["bpp"] and m[1][0]["psnr"] == m[0][0]["psnr"]  # no forgetting
        assert (out / "checkpoints" / "task1.pt").is_file()
    md = tmp_path / "codec.md"
    text = make_report(runs, md, tmp_path / "plots", baselines=False)
    assert "t=1 (source)" in text and "t=2 cawf" in text
    assert "| t=1 (source) | sketch |" in text  # the source model on the target domain (future task)
    assert (tmp_path / "plots" / "rd_photo.png").is_file()


def test_source_run_then_strategy_run_reuses_its_row(tmp_path, domains_root, monkeypatch):
    """A source-only run (tasks.stop_after=1), then a strategy run from its task-end checkpoint
    (tasks.init_from): task 0 is not trained again and row 0 equals the source run's, copied
    when the learner measures the same way, else measured again on the same weights; a
    different eval set is refused under eval.init_rows=copy."""
    from codec.cli import main

    root = domains_root.parent
    src = tmp_path / "src"
    assert main(["train", _tiny_cfg(tmp_path, root, learner={"name": "codec.naive"}), "--set", "tasks.stop_after=1",
                 "--out", str(src), "--quiet"]) == 0
    rs = json.loads((src / "results.json").read_text())
    assert rs["summary"]["tasks_done"] == 1 and rs["all_metrics"][1] == [None, None]
    assert rs["all_metrics"][0][1] is not None  # the source model on sketch
    cfg = _tiny_cfg(tmp_path, root, tasks={"init_from": str(src / "checkpoints" / "task0.pt")})
    run = tmp_path / "cawf"
    assert main(["train", cfg, "--out", str(run), "--quiet"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert json.dumps(res["all_metrics"][0]) == json.dumps(rs["all_metrics"][0])
    assert res["all_metrics"][1][0]["bpp"] == rs["all_metrics"][0][0]["bpp"]  # CAwF: source row unchanged
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(x.get("task") == 0 and "step" in x for x in logged)  # task 0 not trained again
    assert res["task_summaries"][1]["trainable_fraction"] < 1.0  # CAwF trains its filters only
    assert main(["train", cfg, "--set", "eval.init_rows=copy", "--set", "tasks.max_eval_images=2",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    # a learner that names the options its evaluation depends on (lambda enters `rd`): the
    # source run's row 0 is copied, not measured again, and another lambda is refused
    from codec.learner import CodecLearner

    monkeypatch.setattr(CodecLearner, "eval_keys", ("lmbda", "eval_msssim"), raising=False)
    run2 = tmp_path / "copied"
    assert main(["train", cfg, "--set", "eval.init_rows=copy", "--out", str(run2), "--quiet"]) == 0
    logged = [json.loads(x) for x in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert not any(x.get("event") == "eval" and x["after_task"] == 0 for x in logged)
    assert json.dumps(json.loads((run2 / "results.json").read_text())["all_metrics"][0]) == json.dumps(rs["all_metrics"][0])
    assert main(["train", cfg, "--set", "eval.init_rows=copy", "--set", "learner.lmbda=0.02",
                 "--out", str(tmp_path / "y"), "--quiet"]) == 2


def test_cli_compress_decompress_info(tmp_path, kodak_root, capsys):
    from codec.cli import main

    ck = tmp_path / "m.pt"
    assert main(["init", "-o", str(ck), "--N", "8"]) == 0
    img = kodak_root / "kodim23.png"
    assert main(["compress", str(img), "-o", str(tmp_path / "k.nic"), "--model", str(ck)]) == 0
    assert main(["decompress", str(tmp_path / "k.nic"), "-o", str(tmp_path / "k.png"), "--model", str(ck)]) == 0
    from codec.bitstream import read_image

    assert read_image(tmp_path / "k.png").shape == read_image(img).shape
    capsys.readouterr()
    assert main(["info", str(tmp_path / "k.nic")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["width"] == 768 and info["height"] == 512 and info["latent_shape"] == [8, 32, 48]
    assert main(["compress", str(tmp_path / "missing.png"), "-o", str(tmp_path / "x.nic"), "--model", str(ck)]) == 2


def test_registered_with_engine():
    import codec  # noqa: F401
    from incdet import engine

    assert "codec.cawf" in engine.LEARNERS and "codec" in engine.LEARNERS
    if hasattr(engine, "TASK_BUILDERS"):
        assert "domains" in engine.TASK_BUILDERS
    cls = engine.LEARNERS.get("codec.naive")
    assert cls.Config().strategy == "naive"


def test_shared_driver_runs_codec_learner(tmp_path, domains_root):
    trainer = pytest.importorskip("incdet.engine.trainer")
    import yaml

    from codec.model import load_codec

    cfg = {
        "experiment": {"name": "t", "seed": 0, "out": str(tmp_path), "device": "cpu"},
        "tasks": {"builder": "domains", "sequence": ["photo", "sketch"], "eval_sets": {}, "data_root": str(domains_root.parent),
                  "crop": 32, "max_train_images": 4, "max_eval_images": 1},
        "learner": {"name": "codec.cawf", "N": 8, "K": 2, "eval_msssim": False},
        "train": {"iterations": 2, "batch_size": 2, "optimizer": "adam", "lr": 0.001, "amp": "none", "checkpoint_every": 0},
    }
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    trainer.run_training(str(f), run_dir=tmp_path / "run", quiet=True)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["matrix"][1][0] == res["matrix"][0][0]  # CAwF: source rd unchanged
    m, _ = load_codec(tmp_path / "run" / "checkpoints" / "task1.pt")
    assert m.n_domains() == 2


def _driver_run(d, lm, names, eval_names, rows):
    """A fabricated driver run directory: config.yaml + results.json (``rows``: the trained rows)."""
    import yaml

    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({
        "tasks": {"builder": "domains", "sequence": names, "eval_sets": dict(zip(names, eval_names)), "joint": False},
        "learner": {"name": "codec.cawf", "strategy": "cawf", "lmbda": lm}}))
    am = [list(r) for r in rows] + [[None] * len(names) for _ in range(len(names) - len(rows))]
    (d / "results.json").write_text(json.dumps({"metric": "rd", "higher_is_better": False, "tasks": names,
                                                "matrix": [[None] * len(names)] * len(names), "all_metrics": am}))


def test_report_table_on_hand_made_results(tmp_path):
    """Synthetic results: the adapted model reaches the same PSNR with 20% fewer bits on the
    target and is identical on the source -> table cells 0.00 and -20.00 against t=1."""
    from codec.report import make_report

    rates = {0.002: 0.1, 0.008: 0.2, 0.016: 0.4, 0.032: 0.8}
    psnrs = {0.002: 27.0, 0.008: 30.0, 0.016: 33.0, 0.032: 36.0}
    dirs = []
    for lm in rates:
        src = {"bpp": rates[lm], "psnr": psnrs[lm]}
        tgt0 = {"bpp": rates[lm] * 1.5, "psnr": psnrs[lm] - 2}
        tgt1 = {"bpp": tgt0["bpp"] * 0.8, "psnr": tgt0["psnr"]}
        d = tmp_path / f"cawf_{lm}"
        _driver_run(d, lm, ["natural", "cartoon"], ["kodak", "cartoon"], [[src, tgt0], [src, tgt1]])
        dirs.append(d)
    text = make_report(dirs, tmp_path / "codec.md", baselines=False)
    assert "natural (kodak)" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.split("## RD points")[0].splitlines()
            if line.startswith("| t=")}
    assert rows["t=1 (source)"][:2] == ["+0.00", "+0.00"]
    assert rows["t=2 cawf"][0] == "+0.00"
    assert float(rows["t=2 cawf"][1]) == pytest.approx(-20.0, abs=0.01)
    from codec.report import load_runs
    from incdet.errors import DataError

    with pytest.raises(DataError, match="no results.json"):
        load_runs([tmp_path / "nope"])
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"config": {}, "tasks": ["a"], "matrix": [[{}]]}))
    with pytest.raises(DataError, match="removed `codec run`"):
        load_runs([old])
