"""The codec model zoo: the ``photos`` training domain, exporting a trained source codec into the
zoo, loading it back (sha256 checked) and continuing it with the shared driver."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codec import data as cdata
from incdet.errors import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _img(path: Path, size=(40, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(len(str(path))).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    im = Image.fromarray(arr)
    (im.convert("L") if mode == "L" else im).save(path)
    return path


def _fake_root(root: Path) -> Path:
    """A tiny data root with the layout of ../shared/data: photos, masks, other domains, Kodak."""
    voc = root / "voc2012-100" / "VOCdevkit" / "VOC2012"
    _img(voc / "JPEGImages" / "2008_000001.jpg")
    _img(voc / "SegmentationClass" / "2008_000001.png", mode="L")
    _img(root / "coco-tiny" / "train2017" / "000000000001.jpg")
    _img(root / "coco-tiny" / "val2017" / "000000000002.jpg")
    for dom in ("photo", "cartoon", "sketch", "art_painting"):
        _img(root / "domains" / "pacs" / dom / "dog" / f"{dom}_1.jpg")
    _img(root / "domains" / "faces" / "celeba_hq" / "src" / "female" / "1.jpg")
    _img(root / "domains" / "faces" / "afhq" / "ref" / "cat" / "2.jpg")
    (root / "domains" / "faces" / "PROVENANCE.md").write_text("not an image\n")
    _img(root / "domains" / "camvid" / "val" / "0016E5_1.png")
    _img(root / "domains" / "camvid" / "valannot" / "0016E5_1.png", mode="L")
    _img(root / "domains" / "documents" / "page.jpg")
    _img(root / "kodak" / "kodim01.png")
    return root


def test_photos_domain_layout(tmp_path):
    root = _fake_root(tmp_path)
    files = cdata.domain_files("photos", root)
    rel = sorted(str(f.relative_to(root)) for f in files)
    assert rel == sorted([
        "voc2012-100/VOCdevkit/VOC2012/JPEGImages/2008_000001.jpg",
        "coco-tiny/train2017/000000000001.jpg",
        "coco-tiny/val2017/000000000002.jpg",
        "domains/pacs/photo/dog/photo_1.jpg",
        "domains/faces/celeba_hq/src/female/1.jpg",
        "domains/faces/afhq/ref/cat/2.jpg",
        "domains/camvid/val/0016E5_1.png",
    ])
    assert not any("kodak" in r or "Segmentation" in r or "valannot" in r or "documents" in r for r in rel)
    assert "photos" in cdata.DOMAINS


def test_photos_domain_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="photos"):
        cdata.domain_files("photos", tmp_path)


@pytest.mark.skipif(not (DATA / "kodak").is_dir(), reason="../shared/data is absent")
def test_photos_domain_on_the_shared_data():
    files = cdata.domain_files("photos", DATA)
    kodak = {p.resolve() for p in cdata.domain_files("kodak", DATA)}
    assert len(files) == len(set(files)) == 812   # 100 VOC + 160 COCO + 350 PACS photo + 101 faces + 101 CamVid
    assert not kodak & {f.resolve() for f in files}
    by_top = {}
    for f in files:
        r = f.relative_to(DATA).parts
        key = "/".join(r[:3]) if r[0] == "domains" else "/".join(r[:2])
        by_top[key] = by_top.get(key, 0) + 1
    assert by_top == {"voc2012-100/VOCdevkit": 100, "coco-tiny/train2017": 80, "coco-tiny/val2017": 80,
                      "domains/pacs/photo": 350, "domains/faces/celeba_hq": 56,
                      "domains/faces/afhq": 43, "domains/faces/custom": 2, "domains/camvid/val": 101}
    for f in files:  # no label / mask images: every photo is 3-channel colour
        assert "SegmentationClass" not in f.parts and "valannot" not in f.parts
        with Image.open(f) as im:
            assert im.mode == "RGB", f


# ------------------------------------------------------------------------------ export + zoo
import torch  # noqa: E402

from codec.export import entropy_tensor_names, export_codec, finish_tables, main as export_main  # noqa: E402
from codec.model import load_codec, save_checkpoint  # noqa: E402
from codec.registry import build_codec  # noqa: E402
from incdet import zoo  # noqa: E402
from incdet.errors import CheckpointError  # noqa: E402


def _tiny_codec(path: Path, kind: str = "factorized"):
    torch.manual_seed(0)
    m = build_codec({"kind": kind, "N": 8, "M": 8})
    finish_tables(m)  # as a task end leaves it: quantiles bisected, CDF tables computed
    save_checkpoint(path, m)
    return m


def _same_weights(a, b, atol=0.0) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k].float(), sb[k].float(), atol=atol, rtol=0) for k in sa)


@pytest.mark.parametrize("kind", ["factorized", "mean-scale-hyperprior"])
def test_export_roundtrip_and_half(tmp_path, kind):
    src = _tiny_codec(tmp_path / "src.pt", kind)
    meta = export_codec(str(tmp_path / "src.pt"), tmp_path / "out.pt")
    assert meta["arch"] == src.arch() and not meta["half"]
    back, _ = load_codec(tmp_path / "out.pt")
    assert _same_weights(src, back)
    export_codec(str(tmp_path / "src.pt"), tmp_path / "half.pt", half=True)
    raw = torch.load(tmp_path / "half.pt", weights_only=True)
    keep = entropy_tensor_names(src)
    assert keep  # the entropy models' tensors exist and stay float32
    for k, v in raw["state_dict"].items():
        if v.is_floating_point():
            assert v.dtype == (torch.float32 if k in keep else torch.float16), k
    half, _ = load_codec(tmp_path / "half.pt")
    assert next(half.parameters()).dtype == torch.float32
    assert _same_weights(src, half, atol=1e-2) and not _same_weights(src, half)


def test_export_from_mid_task_driver_checkpoint(tmp_path):
    """A driver checkpoint written mid-task: its task / step / phase go into ``exported_from`` and the
    stale entropy-coding tables are recomputed, as ``end_task`` would."""
    torch.manual_seed(0)
    m = build_codec({"kind": "factorized", "N": 8, "M": 8})
    finish_tables(m)
    done = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():  # training moved the quantiles after the tables were computed
        m.entropy_bottleneck.quantiles.add_(0.5)
    stale = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    torch.save({"format": "incdet-run", "task_index": 1, "step": 40, "phase": "train",
                "learner": {"arch": m.arch(), "model": stale}}, tmp_path / "run.pt")
    meta = export_codec(str(tmp_path / "run.pt"), tmp_path / "out.pt")
    assert {k: meta["exported_from"][k] for k in ("task_index", "step", "phase")} == \
        {"task_index": 1, "step": 40, "phase": "train"}
    out = torch.load(tmp_path / "out.pt", weights_only=True)["state_dict"]
    assert torch.allclose(out["entropy_bottleneck.quantiles"], done["entropy_bottleneck.quantiles"], atol=1e-3)


def test_export_refuses_bad_input(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        export_codec(str(tmp_path / "junk.pt"), tmp_path / "o.pt")
    with pytest.raises(CheckpointError, match="no such"):
        export_codec(str(tmp_path / "missing.pt"), tmp_path / "o.pt")
    assert export_main(["export", str(tmp_path / "junk.pt"), "-o", str(tmp_path / "o.pt")]) == 2
    assert not (tmp_path / "o.pt").exists()


def _zoo(tmp_path, monkeypatch, name="codec_tiny_q3", kind="factorized"):
    root = tmp_path / "zoo"
    root.mkdir()
    monkeypatch.setenv("INCDET_ZOO", str(root))
    _tiny_codec(tmp_path / "src.pt", kind)
    export_codec(str(tmp_path / "src.pt"), root / f"{name}.pt")
    zoo.add(name, root / f"{name}.pt", command="test", hardware="cpu", wall_s=1.0, metrics={"kodak_psnr": 1.0}, root=root)
    return root


def test_zoo_codec_loads_sha256_checked(tmp_path, monkeypatch):
    root = _zoo(tmp_path, monkeypatch)
    m, _ = load_codec("zoo:codec_tiny_q3")
    assert _same_weights(m, load_codec(tmp_path / "src.pt")[0])
    data = bytearray((root / "codec_tiny_q3.pt").read_bytes())
    data[-20] ^= 0xFF  # same size, altered content
    (root / "codec_tiny_q3.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_codec("zoo:codec_tiny_q3")
    with pytest.raises(CheckpointError, match="unknown zoo entry"):
        load_codec("zoo:codec_nope")


def _continuation_overrides(tmp_path, iterations: int, kind: str):
    data = tmp_path / "data"
    if not data.is_dir():
        _fake_root(data)
    return [f"tasks.data_root={data}", f"tasks.eval_sets={{photos: {data / 'kodak'}}}", "tasks.crop=64",  # a multiple of 64 (the hyperprior downsamples by 64)
            "learner.source_checkpoint=zoo:codec_tiny_q3", "learner.N=8", "learner.M=8", f"learner.arch={kind}",
            "learner.train_source=true", f"train.iterations={iterations}", "train.batch_size=2",
            "train.checkpoint_every=0", "experiment.device=cpu"]


@pytest.mark.parametrize("config,kind", [("bmshj2018-factorized.yaml", "factorized"),
                                         ("mbt2018-mean.yaml", "mean-scale-hyperprior")])
def test_continuation_run_starts_from_the_zoo_entry(tmp_path, monkeypatch, config, kind):
    from incdet.engine.trainer import run_training

    _zoo(tmp_path, monkeypatch, kind=kind)
    cfg = Path(__file__).resolve().parents[1] / "configs" / "codec" / "zoo" / config
    zoo_model, _ = load_codec("zoo:codec_tiny_q3")
    # 0 iterations: the run's codec is the zoo entry itself
    run_training(cfg, _continuation_overrides(tmp_path, 0, kind), run_dir=tmp_path / "r0", device="cpu", quiet=True)
    start, _ = load_codec(tmp_path / "r0" / "checkpoints" / "task0.pt")
    assert _same_weights(start, zoo_model)
    # a few steps: it trains on from there (the weights move, the architecture is the zoo's)
    res = run_training(cfg, _continuation_overrides(tmp_path, 2, kind), run_dir=tmp_path / "r2", device="cpu", quiet=True)
    after, _ = load_codec(tmp_path / "r2" / "checkpoints" / "task0.pt")
    assert after.arch() == zoo_model.arch() and not _same_weights(after, zoo_model)
    assert set(res.to_dict()) and (tmp_path / "r2" / "results.json").is_file()


def test_export_half_check_on_images(tmp_path, capsys):
    _tiny_codec(tmp_path / "src.pt")
    imgs = tmp_path / "imgs"
    _img(imgs / "a.png", size=(48, 32))
    out = tmp_path / "z.pt"
    assert export_main(["export", str(tmp_path / "src.pt"), "-o", str(out), "--half", "--check", str(imgs)]) == 0
    rep = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")
    assert set(rep) == {"float32", "exported", "delta_psnr_db", "delta_bpp_rel"} and out.is_file()
    # a tolerance nothing can meet: refused, and nothing is left behind
    out2 = tmp_path / "z2.pt"
    assert export_main(["export", str(tmp_path / "src.pt"), "-o", str(out2), "--half", "--check", str(imgs),
                        "--tol-db", "-1"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "src.pt", "z.pt"]


def test_bd_of_a_set_against_jpeg2000(tmp_path, capsys):
    from codec.export import _interp_psnr, bd_set

    imgs = [torch.from_numpy((np.random.default_rng(i).random((32, 48, 3)) * 255).astype(np.uint8)).permute(2, 0, 1)
            for i in range(2)]
    _tiny_codec(tmp_path / "a.pt")
    res = bd_set([str(tmp_path / "a.pt")], imgs)
    p = res["points"][str(tmp_path / "a.pt")]
    assert p["bpp"] > 0 and np.isfinite(p["psnr"]) and len(res["jpeg2000"]) >= 4
    assert np.isnan(res["bd_rate_vs_jpeg2000"])  # one rate point: no BD-rate
    curve = [{"bpp": 0.25, "psnr": 30.0}, {"bpp": 1.0, "psnr": 36.0}]
    assert _interp_psnr(curve, 0.5) == pytest.approx(33.0) and np.isnan(_interp_psnr(curve, 2.0))
