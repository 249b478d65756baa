"""BlitzNet learner: joint training, mixed batches, class-incremental growth, evaluation, CLI."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blitznet.cli import main
from conftest import BLITZNET_CONFIG, BLITZNET_TINY, as_cli_sets, tiny_overrides
from blitznet.learner import BlitzNetLearner, BlitzNetLearnerConfig
from blitznet.model import BlitzNetConfig
from blitznet.predict import BlitzNetPredictor, load_weights, save_weights
from incdet.data import Sample
from incdet.engine import LEARNERS, Task
from incdet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backbone="resnet18", input_size=64, final_stride=8, channels=32, seg_channels=8)


def make_sample(i: int, classes=(1, 2, 3), size: int = 64, mask: bool = True, boxes: bool = True) -> Sample:
    """Coloured squares on a dark background; class c is painted in channel (c - 1) % 3 and
    with a size band, so the classes are separable."""
    g = torch.Generator().manual_seed(i)
    img = torch.randint(0, 60, (3, size, size), dtype=torch.uint8, generator=g)
    m = torch.zeros(size, size, dtype=torch.uint8)
    bx, lb = [], []
    for k in range(2):
        c = classes[int(torch.randint(0, len(classes), (1,), generator=g))]
        w = 14 + 4 * ((c - 1) // 3) + int(torch.randint(0, 4, (1,), generator=g))
        x = int(torch.randint(0, size - w, (1,), generator=g))
        y = int(torch.randint(0, size - w, (1,), generator=g))
        img[(c - 1) % 3, y:y + w, x:x + w] = 250
        m[y:y + w, x:x + w] = c
        bx.append([x, y, x + w - 1, y + w - 1])
        lb.append(c)
    if not boxes:
        return Sample(image=img, mask=m, image_id=f"s{i}")
    return Sample(image=img, boxes=torch.tensor(bx, dtype=torch.float32), labels=torch.tensor(lb),
                  mask=m if mask else None, image_id=f"s{i}")


def learner(**kw) -> BlitzNetLearner:
    torch.manual_seed(0)
    return BlitzNetLearner(BlitzNetLearnerConfig(model=BlitzNetConfig(**TINY), augment=False, **kw), "cpu")


def fit(L, task, steps, lr=2e-3):
    ds = L.train_dataset(task)
    batch = L.collate([ds[i] for i in range(len(ds))])
    opt = torch.optim.Adam([p for g in L.parameter_groups() for p in g["params"]], lr)
    hist = []
    for _ in range(steps):
        out = L.training_step(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append({k: float(v.detach()) for k, v in out.items()})
    return hist


def test_registered():
    assert LEARNERS.get("blitznet") is BlitzNetLearner


@functools.lru_cache(maxsize=1)
def _trained_mixed():
    """A tiny learner overfitted (30 Adam steps) on a batch mixing images with boxes + mask,
    boxes only, mask only (no detection annotation), boxes + mask."""
    samples = [make_sample(0), make_sample(1, mask=False), make_sample(2, boxes=False), make_sample(3)]
    task = Task(0, "all", ["a", "b", "c"], ["a", "b", "c"], train_set=samples, eval_set=samples)
    L = learner()
    L.begin_task(task)
    _, targets = L.collate([L.train_dataset(task)[i] for i in range(4)])
    hist = fit(L, task, 30)
    return L, task, targets, hist


def test_mixed_batch_and_overfit():
    L, task, targets, hist = _trained_mixed()
    assert [t["has_det"] for t in targets] == [True, True, False, True]
    assert [t["mask"] is None for t in targets] == [False, True, False, False]
    assert all(np.isfinite(h["loss"]) for h in hist)
    assert {"loss_cls", "loss_box", "loss_seg", "loss"} <= set(hist[0])
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert hist[-1]["loss_seg"] < hist[0]["loss_seg"]


def test_evaluate_metrics_and_cache():
    L, task, _, _ = _trained_mixed()
    m = L.evaluate(task)
    assert set(L.metrics) <= set(m) and L.primary_metric == "mAP"
    # percentages (0-100), like incdet.fastrcnn's
    assert 0.0 <= m["mAP"] <= 100.0 and 0.0 <= m["mIoU"] <= 100.0
    aps = [v for k, v in m.items() if k.startswith("AP/")]
    assert len(aps) == 3 and abs(m["mAP"] - sum(aps) / 3) < 1e-9
    fresh = learner()
    fresh.begin_task(task)
    m0 = fresh.evaluate(task)
    # trained on these very images: far better than the untrained network
    assert m["mAP"] > 50 and m["mAP"] > m0["mAP"] + 30 and m["mIoU"] > m0["mIoU"] + 5
    calls = []
    orig = L.predict_samples
    L.predict_samples = lambda s: calls.append(len(s)) or orig(s)
    m2 = L.evaluate(task)
    assert calls == [] and m2 == m  # cached for the same weights
    L.version += 1  # new weights -> inference runs again
    L.evaluate(task)
    assert calls == [4]


def test_class_incremental_teacher_distillation_and_state(tmp_path):
    old = [make_sample(i, classes=(1, 2)) for i in range(3)]
    new = [make_sample(10 + i, classes=(3,)) for i in range(3)]
    t0 = Task(0, "1-2", ["a", "b"], ["a", "b"], train_set=old, eval_set=old)
    t1 = Task(1, "+3", ["c"], ["a", "b", "c"], train_set=new, eval_set=old + new)
    L = learner()
    L.begin_task(t0)
    assert L.teacher is None and L.unwrapped.config.num_classes == 2
    fit(L, t0, 3)
    L.begin_task(t1)
    assert L.unwrapped.config.num_classes == 3 and L.teacher is not None
    assert not any(p.requires_grad for p in L.teacher.parameters()) and not L.teacher.training
    assert L.teacher not in list(L.model.modules())
    h = fit(L, t1, 2)
    assert {"loss_distill_cls", "loss_distill_box", "loss_distill_seg"} <= set(h[0])
    assert all(np.isfinite(v) for v in h[-1].values())
    m = L.evaluate(t1)
    assert "mAP" in m and "AP/c" in m
    # state round trip restores structure (grown heads + teacher) on a fresh learner
    state = L.state_dict()
    torch.save(state, tmp_path / "s.pt")
    L2 = learner()
    L2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    L2.resume_task(t1)
    assert L2.unwrapped.config.num_classes == 3 and L2.teacher.config.num_classes == 2
    for a, b in zip(L.unwrapped.state_dict().values(), L2.unwrapped.state_dict().values()):
        assert torch.equal(a, b)


def test_predictor_and_cli_predict(tmp_path):
    L = learner()
    L.begin_task(Task(0, "all", ["a", "b", "c"], ["a", "b", "c"]))
    w = tmp_path / "w.pt"
    save_weights(L.unwrapped, w, ["a", "b", "c"])
    d = torch.load(w, weights_only=True)
    assert d["format"] == "blitznet-weights" and d["config"]["num_classes"] == 3
    model, classes = load_weights(w)
    assert classes == ["a", "b", "c"]
    p = BlitzNetPredictor(w, device="cpu")
    s = make_sample(0)
    img_np = s.image.permute(1, 2, 0).numpy()
    res = p.predict([s.image, img_np])
    assert len(res) == 2 and res[0]["mask"].shape == (64, 64)
    assert torch.equal(res[0]["boxes"], res[1]["boxes"])
    paths = []
    for k, size in enumerate([(64, 64), (50, 80)]):
        fp = tmp_path / f"img{k}.jpg"
        Image.fromarray(np.asarray(Image.fromarray(img_np).resize(size[::-1]))).save(fp)
        paths.append(str(fp))
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(w), *paths, "--out", str(out), "--device", "cpu"]) == 0
    for k, size in enumerate([(64, 64), (50, 80)]):
        dets = json.loads((out / f"img{k}.json").read_text())
        assert isinstance(dets, list)
        for d in dets:
            assert set(d) >= {"image_id", "category_id", "bbox", "score"} and len(d["bbox"]) == 4
        mk = Image.open(out / f"img{k}_mask.png")
        assert mk.mode == "P" and mk.size == size[::-1]
        assert Image.open(out / f"img{k}_overlay.jpg").size == size[::-1]
    # bad inputs: clear errors, exit 2
    assert main(["predict", "--weights", str(tmp_path / "nope.pt"), paths[0], "--out", str(out)]) == 2
    assert main(["predict", "--weights", str(w), str(tmp_path / "missing.jpg"), "--out", str(out)]) == 2


def test_cli_predict_bad_inputs_leave_no_output(tmp_path, capsys):
    """Same-stem inputs are refused, a too-large or undecodable image leaves no partial output,
    bad --device values are one line (exit 2) - never a traceback or a silent overwrite."""
    L = learner()
    L.begin_task(Task(0, "all", ["a", "b", "c"], ["a", "b", "c"]))
    w = tmp_path / "w.pt"
    save_weights(L.unwrapped, w, ["a", "b", "c"])
    img = make_sample(0).image.permute(1, 2, 0).numpy()
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(img).save(tmp_path / d / "same.jpg")
    Image.new("RGB", (70000, 2)).save(tmp_path / "huge.png")
    good = tmp_path / "a" / "same.jpg"
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"

    def one_line(argv):
        capsys.readouterr()
        assert main(["predict", "--weights", str(w), *map(str, argv), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("blitznet: error: "), err
        assert not out.exists()
        return err[0]

    assert "same" in one_line([good, tmp_path / "b" / "same.jpg", "--device", "cpu"])
    assert "65500" in one_line([good, tmp_path / "huge.png", "--device", "cpu"])
    assert "trunc.jpg" in one_line([good, tmp_path / "trunc.jpg", "--device", "cpu"])
    assert "device" in one_line([good, "--device", "banana"])
    assert "--score-thresh" in one_line([good, "--score-thresh", "2"])
    assert "--batch-size" in one_line([good, "--batch-size", "0"])
    if not torch.cuda.is_available():
        assert "CUDA" in one_line([good, "--device", "cuda"])
    with pytest.raises(ConfigError, match="device"):
        BlitzNetPredictor(w, device="banana")
    assert main(["eval-weights", "--weights", str(w), "--root", str(tmp_path), "--device", "banana"]) == 2
    assert "device" in capsys.readouterr().err


def test_cli_eval_weights_json_and_export_bad_targets(tmp_path, capsys):
    """eval-weights: metrics in %, --json written atomically (NaN as null), a bad --json target or
    --max-images refused before evaluating; export: a folder target is one line, exit 2."""
    from incdet.data import VOCDetection
    from incdet.data.shapes import make_shapes

    root = make_shapes(tmp_path / "shapes", n_train=1, n_val=0, n_test=3, size=64)
    names = list(VOCDetection(root, "test", keep_masks=True).classes)
    L = learner()
    L.begin_task(Task(0, "all", names, names))
    w = tmp_path / "w.pt"
    save_weights(L.unwrapped, w, names)
    js = tmp_path / "m.json"
    argv = ["eval-weights", "--weights", str(w), "--root", str(root), "--split", "test", "--device", "cpu"]
    assert main(argv + ["--json", str(js)]) == 0
    m = json.loads(js.read_text())
    assert m["mAP"] is None or 0.0 <= m["mAP"] <= 100.0
    assert "%" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "shapes", "w.pt"]  # no temp file left
    for bad in (["--json", str(tmp_path)], ["--json", str(tmp_path / "no" / "m.json")], ["--max-images", "0"]):
        assert main(argv + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("blitznet: error: "), err
    # the predictor's network options: same metrics (BN folding changes outputs by rounding only)
    js2 = tmp_path / "m2.json"
    assert main(argv + ["--json", str(js2), "--fold-bn", "--channels-last"]) == 0
    m2 = json.loads(js2.read_text())
    for k in ("mAP", "mIoU"):
        assert (m[k] is None and m2[k] is None) or abs(m[k] - m2[k]) < 0.5, (k, m[k], m2[k])
    js2.unlink()
    capsys.readouterr()
    assert main(argv + ["--freezing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "freezing" in err[0], err
    (tmp_path / "dir").mkdir()
    assert main(["export", str(w), "--out", str(tmp_path / "dir")]) == 2
    assert "folder" in capsys.readouterr().err and not list((tmp_path / "dir").iterdir())


def test_driver_shapes_incremental_run(tmp_path):
    """``blitznet train`` through the shared driver on a tiny shapes-voc 15+5: results.json has
    mAP and mIoU for every (after-task, task) pair."""
    pytest.importorskip("incdet.data.shapes")
    run = tmp_path / "run"
    rc = main(["train", str(BLITZNET_CONFIG), "--out", str(run), "--quiet", "--device", "cpu",
               *as_cli_sets(tiny_overrides(BLITZNET_TINY, tmp_path / "shapes"))])
    assert rc == 0
    res = json.loads((run / "results.json").read_text())
    assert res["metric"] == "mAP" and len(res["matrix"]) == 2
    for row in res["all_metrics"]:
        for m in row:
            if m is not None:
                assert "mAP" in m and "mIoU" in m
    model, classes = load_weights(run / "checkpoint.pt")
    assert model.config.num_classes == 20 and len(classes) == 20


@pytest.mark.parametrize("det,seg", [(True, False), (False, True)])
def test_single_task_variants(det, seg):
    """Detection-only and segmentation-only networks (the table C.3 rows)."""
    samples = [make_sample(i) for i in range(2)]
    task = Task(0, "all", ["a", "b", "c"], ["a", "b", "c"], train_set=samples, eval_set=samples)
    torch.manual_seed(0)
    L = BlitzNetLearner(BlitzNetLearnerConfig(model=BlitzNetConfig(**TINY, detection=det, segmentation=seg)), "cpu")
    L.begin_task(task)
    h = fit(L, task, 2)
    assert ("loss_seg" in h[0]) == seg and ("loss_cls" in h[0]) == det
    m = L.evaluate(task)
    assert np.isnan(m["mAP"]) != det and np.isnan(m["mIoU"]) != seg


def test_prepare_inference_runs_the_same_network_in_nhwc():
    """prepare_inference: with channels_last the weights are NHWC, the callable takes an NCHW
    batch and returns the model's outputs; with no option it is the model itself."""
    from blitznet.predict import prepare_inference

    torch.manual_seed(0)
    L = learner()
    L.begin_task(Task(0, "all", ["a", "b"], ["a", "b"]))
    m = L.unwrapped.eval()
    x = torch.randn(2, 3, m.config.input_size, m.config.input_size)
    with torch.no_grad():
        ref = m(x)
        assert prepare_inference(m) is m
        fwd = prepare_inference(m, channels_last=True)
        out = fwd(x)
    conv = next(mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert set(out) == set(ref)
    leaves = torch.utils._pytree.tree_leaves
    for k in ref:
        got, want = leaves(out[k]), leaves(ref[k])
        assert len(got) == len(want) and len(want) > 0, k
        for a, b in zip(got, want):
            assert (torch.allclose(a, b, atol=1e-5) if torch.is_tensor(b) else a == b), k
