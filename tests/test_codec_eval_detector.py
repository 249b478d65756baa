"""tools/codec_detector_eval.py: the whole chain (codecs x rates -> decode -> detectors -> mAP / mIoU vs
bpp, BD-rate over accuracy curves, CAwF compatibility) on tiny random models and 4 tiny images."""
import json
import math
from pathlib import Path

import pytest
import torch

from codec import bitstream as bs
from codec.cli import main as codec_main
from codec.model import FactorizedCodec, rd_loss, save_checkpoint
from codec.strategies.cawf import CAwFCodec
from incdet.errors import ConfigError

from conftest import load_tool

de = load_tool("codec_detector_eval")
main = de.main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny shapes-voc (4 test images of 64 px), a 2-iteration incdet run, a random tiny
    BlitzNet, and tiny codecs: two source codecs (two 'rates') and CAwF codecs adapted from them."""
    from blitznet.model import BlitzNet, BlitzNetConfig
    from blitznet.predict import save_weights
    from incdet.engine.trainer import run_training

    tmp = tmp_path_factory.mktemp("evaldet")
    overrides = [
        f"tasks.root={tmp / 'shapes'}", "tasks.shapes={n_train: 8, n_val: 0, n_test: 4, size: 64}",
        "learner.proposals=sliding_window", "learner.proposal_cache=null", "learner.max_proposals=100",
        "learner.model.min_size=64", "learner.model.max_size=64", "learner.model.rois_per_image=16",
        "learner.model.score_thresh=0.0", "train.iterations=1", "train.first_task.iterations=1",
        "train.first_task.lr_steps=[]", "train.lr_steps=[]", "train.warmup_iters=0", "train.checkpoint_every=0",
    ]
    run_training(ROOT / "configs" / "incdet" / "shapes_15+5.yaml", overrides, run_dir=tmp / "run", device="cpu", quiet=True)
    classes = (tmp / "shapes" / "classes.txt").read_text().split()
    torch.manual_seed(0)
    bn = BlitzNet(BlitzNetConfig(num_classes=len(classes), backbone="resnet18", input_size=64, final_stride=8,
                                 channels=32, seg_channels=8))
    save_weights(bn, tmp / "blitz.pt", classes)
    ck = {}
    for k, lam in enumerate((0.002, 0.02)):
        torch.manual_seed(k)
        src = FactorizedCodec(8)
        src.update()
        save_checkpoint(tmp / f"src{k}.pt", src.eval(), {"lmbda": lam})
        cawf = CAwFCodec(src, K=2)
        cawf.add_domain()
        opt = torch.optim.Adam(cawf.trainable_parameters(1), lr=1e-2)
        cawf.train()
        for i in range(2):  # a couple of adaptation steps, so the branch differs from the source
            x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(i))
            loss = rd_loss(cawf(x, 1), x, lam)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        cawf.update()
        save_checkpoint(tmp / f"cawf{k}.pt", cawf.eval(), {"lmbda": lam})
    return tmp


def _run(chain, out, extra=()):
    t = chain
    argv = ["--data", str(t / "shapes"), "--split", "test",
            "--incdet", str(t / "run" / "checkpoints" / "task1.pt"), "--proposal-method", "sliding_window",
            "--blitznet", str(t / "blitz.pt"), "--blitznet-score-thresh", "0.05", "--jpeg", "10", "50", "--jpeg2000", "40", "10",
            "--neural", f"source={t / 'src0.pt'},{t / 'src1.pt'}", "--neural", f"cawf={t / 'cawf*.pt'}",
            "--out", str(out)] + list(extra)
    return main(argv)


def test_whole_chain_writes_consistent_tables(chain, tmp_path):
    out = tmp_path / "o"
    assert _run(chain, out) == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert [(r["codec"], r["param"]) for r in rows] == [
        ("original", ""), ("JPEG", "10"), ("JPEG", "50"), ("JPEG2000", "40"), ("JPEG2000", "10"),
        ("source", "0.002"), ("source", "0.02"), ("cawf", "0.002"), ("cawf", "0.02")]
    es = de.load_eval_set(chain / "shapes", "test")
    assert res["images"] == len(es.images) == 4
    # real rates: the JPEG row's bpp is the mean file size of Pillow's encoding
    jpeg10 = de.pil_rate_points("jpeg", [10])[0]
    want = sum(8 * len(jpeg10.encode(im)) / (im.shape[1] * im.shape[2]) for im in es.images) / 4
    assert rows[1]["bpp"] == pytest.approx(want)
    assert rows[1]["bpp"] < rows[2]["bpp"] and rows[3]["bpp"] < rows[4]["bpp"]
    # neural rows: bpp of the real bitstreams of the CAwF codec in its new domain (1)
    cawf = de.neural_rate_points("cawf", [chain / "cawf0.pt"])[0]
    assert cawf.domain == 1
    want = sum(8 * len(bs.encode(cawf.model, im, 1)) / (im.shape[1] * im.shape[2]) for im in es.images) / 4
    assert rows[7]["bpp"] == pytest.approx(want)
    for r in rows:
        for k in ("incdet/mAP", "blitznet/mAP", "blitznet/mIoU"):
            assert r[k] is None or 0.0 <= r[k] <= 100.0, (r, k)
    # the original row agrees with running the detector + VOC mAP directly
    det = de.IncdetDetector(chain / "run" / "checkpoints" / "task1.pt", proposals="decoded", method="sliding_window")
    direct = de.detection_map(det.predict(es.images, es.ids), es, det.classes)
    assert rows[0]["incdet/mAP"] == pytest.approx(direct)
    # BD-rate tables: one per metric, square over the codecs, 0 on the diagonal
    assert set(res["bd_rate"]) == {"incdet/mAP", "blitznet/mAP", "blitznet/mIoU"}
    tab = res["bd_rate"]["incdet/mAP"]
    assert set(tab) == {"JPEG", "JPEG2000", "source", "cawf"} and tab["JPEG"]["JPEG"] == 0.0
    # compatibility: source files decode bit-exactly with CAwF and give the same detections
    comp = res["compatibility"]
    assert len(comp) == 2 and all(c["ok"] for c in comp)
    assert all(c["decoded_identical"] == 4 and c["same_detections"] == {"incdet": 4, "blitznet": 4} for c in comp)
    assert all(c["reencoded_identical_bytes"] == 4 and c["refused"] == 0 for c in comp)
    md = (out / "results.md").read_text()
    assert "| JPEG2000 | 40 |" in md and "BD-rate over the incdet/mAP" in md and "bit-exactly" in md
    assert set(res["rate_at_accuracy"]) == {"incdet/mAP", "blitznet/mAP", "blitznet/mIoU"}
    assert (out / "rate_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_compatibility_check_on_the_first_images_only(chain, tmp_path):
    es = de.load_eval_set(chain / "shapes", "test", masks=False)
    det = de.IncdetDetector(chain / "run" / "checkpoints" / "task1.pt", method="sliding_window")
    res = de.run_eval_detector(es, [], [det], tmp_path / "o", log=None, compat_images=2,
                               compat=[("s:c", str(chain / "src0.pt"), str(chain / "cawf0.pt"))])
    assert res["images"] == 4 and res["rows"][0]["images"] == 4
    c = res["compatibility"][0]
    assert c["images"] == 2 and c["decoded_identical"] == 2 and c["same_detections"] == {"incdet": 2} and c["ok"]


def test_compatibility_flags_a_retrained_codec(chain):
    es = de.load_eval_set(chain / "shapes", "test", max_images=2, masks=False)
    r = de.compatibility_check(chain / "src0.pt", chain / "src1.pt", es, [])
    assert r["refused"] == 2 and r["decoded_identical"] == 0 and not r["ok"]


def test_bd_rate_over_accuracy_curves_and_non_monotone_points():
    def rows(codec, bpps, maps):
        return [{"codec": codec, "param": str(b), "bpp": b, "m/mAP": m} for b, m in zip(bpps, maps)]

    a = rows("A", [0.1, 0.2, 0.4, 0.8], [10.0, 20.0, 30.0, 40.0])
    b = rows("B", [0.05, 0.1, 0.2, 0.4], [10.0, 20.0, 30.0, 40.0])  # same accuracy at half the rate
    tab = de.bd_rate_table(a + b, "m/mAP")
    assert tab["B"]["A"] == pytest.approx(-50.0, abs=1e-6) and tab["A"]["B"] == pytest.approx(100.0, abs=1e-6)
    # a non-monotone point (worse accuracy at a higher rate) is dropped: same BD-rate
    c = rows("C", [0.05, 0.1, 0.15, 0.2, 0.4], [10.0, 20.0, 15.0, 30.0, 40.0])
    assert de.bd_rate_table(a + c, "m/mAP")["C"]["A"] == pytest.approx(-50.0, abs=1e-6)
    # a flat curve keeps one point: undefined
    d = rows("D", [0.1, 0.2, 0.4], [50.0, 50.0, 50.0])
    assert math.isnan(de.bd_rate_table(a + d, "m/mAP")["D"]["A"])


def test_rate_at_accuracy_worked_by_hand():
    a = [{"bpp": 0.1, "psnr": 10.0}, {"bpp": 0.4, "psnr": 30.0}, {"bpp": 0.2, "psnr": 5.0}, {"bpp": 1.6, "psnr": 40.0}]
    # 20 lies halfway between the envelope points (0.1, 10) and (0.4, 30) -> geometric mean 0.2
    # ((0.2, 5) is dominated by the lower-rate (0.1, 10) and dropped)
    assert de.rate_at_accuracy(a, 20.0) == pytest.approx(0.2)
    assert de.rate_at_accuracy(a, 35.0) == pytest.approx(0.8)   # halfway 0.4 -> 1.6 in log
    assert de.rate_at_accuracy(a, 40.0) == pytest.approx(1.6)
    assert de.rate_at_accuracy(a, 8.0) == pytest.approx(0.1)    # reached at the lowest rate
    assert math.isnan(de.rate_at_accuracy(a, 41.0))
    rows = [{"codec": "original", "param": "", "bpp": float("nan"), "d/mAP": 40.0}]
    rows += [{"codec": "A", "param": str(p["bpp"]), "bpp": p["bpp"], "d/mAP": p["psnr"]} for p in a]
    tab = de.rate_at_accuracy_table(rows, "d/mAP", fractions=(0.5, 0.875))
    assert tab["A"]["0.5"] == pytest.approx(0.2) and tab["A"]["0.875"] == pytest.approx(0.8)
    assert de.rate_at_accuracy_table(rows, "d/mIoU") == {}


def test_bad_inputs(chain, tmp_path, capsys):
    with pytest.raises(ConfigError, match="LABEL"):
        de.parse_neural_spec("no-equals-sign")
    with pytest.raises(Exception, match="no checkpoint matches"):
        de.parse_neural_spec(f"x={tmp_path / 'none*.pt'}")
    assert main(["--data", str(chain / "shapes"), "--out", str(tmp_path / "o")]) == 2
    assert "give a detector" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nowhere"), "--blitznet", str(chain / "blitz.pt"),
                 "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(ConfigError, match="not in the dataset"):
        es = de.load_eval_set(chain / "shapes", "test", max_images=1, masks=False)
        de.detection_map([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                           "scores": torch.zeros(0)}], es, ["unicorn"])


def test_metrics_map_labels_by_class_name(chain):
    """Ground truth given back as predictions scores 100 mAP and 100 mIoU, also for a detector
    whose class list is a permutation of the dataset's (labels mapped by name)."""
    es = de.load_eval_set(chain / "shapes", "test")
    perm = list(reversed(es.classes))
    to_det = {k + 1: perm.index(c) + 1 for k, c in enumerate(es.classes)}
    preds = []
    for g, m in zip(es.gts, es.masks):
        lab = torch.tensor([to_det[int(l)] for l in g["labels"]], dtype=torch.long)
        mask = m.clone().long()
        mask[mask == 255] = 0
        mask = torch.tensor([0] + [to_det[k] for k in range(1, len(es.classes) + 1)])[mask]
        preds.append({"boxes": g["boxes"], "labels": lab, "scores": torch.ones(len(lab)), "mask": mask})
    assert de.detection_map(preds, es, perm) == pytest.approx(100.0)
    assert de.segmentation_miou(preds, es, perm) == pytest.approx(100.0)
    # with the labels read in the dataset's order instead, the scores drop
    assert de.detection_map(preds, es, es.classes) < 100.0


def test_incdet_proposals_from_a_file_of_original_image_proposals(chain, tmp_path):
    """``proposals=<npz>``: the original images' proposals by image id; on the original images it
    gives the same detections as proposals computed on the fly with the same method."""
    from incdet.models.proposals import save_npz, sliding_window_proposals

    es = de.load_eval_set(chain / "shapes", "test", max_images=2, masks=False)
    ck = chain / "run" / "checkpoints" / "task1.pt"
    live = de.IncdetDetector(ck, proposals="decoded", method="sliding_window", max_proposals=100)
    npz = tmp_path / "p.npz"
    save_npz(npz, {i: sliding_window_proposals(im.shape[1], im.shape[2], 100) for i, im in zip(es.ids, es.images)})
    cached = de.IncdetDetector(ck, proposals=str(npz), max_proposals=100)
    a, b = live.predict(es.images, es.ids), cached.predict(es.images, es.ids)
    assert all(de.same_prediction(x, y) for x, y in zip(a, b))
    with pytest.raises(Exception, match="nowhere.npz"):
        de.IncdetDetector(ck, proposals=str(tmp_path / "nowhere.npz"))


def test_compat_pairs_default_and_lambda_order(chain):
    src = [str(chain / "src0.pt"), str(chain / "src1.pt")]
    cawf = [str(chain / "cawf0.pt"), str(chain / "cawf1.pt")]
    pairs = de.compat_pairs([("source", src), ("cawf", cawf)])
    assert pairs == [("source:cawf", src[0], cawf[0]), ("source:cawf", src[1], cawf[1])]
    with pytest.raises(ConfigError, match="different lambdas"):
        de.compat_pairs([("source", src), ("cawf", cawf[::-1])])
    with pytest.raises(ConfigError, match="no --neural codec labelled"):
        de.compat_pairs([("source", src)], ["source:other"])


def test_codec_cli_points_at_the_tool(capsys):
    """``codec eval-detector`` is a one-line pointer to the tool; the codec package imports
    neither detector."""
    import subprocess
    import sys

    assert codec_main(["eval-detector", "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert "tools/codec_detector_eval.py --data x" in err and len(err.strip().splitlines()) == 1
    code = ("import sys, codec, codec.cli, codec.bitstream, codec.metrics, codec.report, codec.learner; "
            "bad = [m for m in sys.modules if m.startswith(('blitznet', 'incdet.models'))]; print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
