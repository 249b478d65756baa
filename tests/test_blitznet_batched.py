"""Batched BlitzNet post-processing (issue 18): one capped NMS call for the whole batch gives,
image by image, the same detections as the per-image path; inference options of the predictor."""
from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import Phase, given, settings, strategies as st

import blitznet.nms as nms
from blitznet.model import BlitzNet, BlitzNetConfig
from blitznet.nms import capped_nms, capped_nms_flat, capped_nms_per_image

TINY = dict(backbone="resnet18", input_size=64, final_stride=8, channels=16, seg_channels=4, num_classes=3)
METHODS = ["batched", "cluster"]


def random_batch(seed: int, B: int, N: int, C: int, integer: bool = False, class_boxes: bool = False):
    """Clustered overlapping boxes (like dense anchor outputs) and softmax scores, per image.
    Scores are continuous (no exact ties: with tied scores either order is a valid result and
    the two paths may pick different ones at a cap)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(B, 8, 2, generator=g) * 100
    pick = torch.randint(0, 8, (B, N), generator=g)
    xy = torch.gather(centres, 1, pick.unsqueeze(-1).expand(-1, -1, 2)) + torch.randn(B, N, 2, generator=g) * 6
    wh = torch.rand(B, N, 2, generator=g) * 30 + 2
    if class_boxes:
        xy = xy.unsqueeze(2) + torch.randn(B, N, C, 2, generator=g) * 3
        wh = wh.unsqueeze(2).expand(-1, -1, C, -1)
    if integer:  # integer coordinates: exact IoU ties with the threshold, equal boxes
        xy, wh = xy.round(), wh.round().clamp(min=1)
    boxes = torch.cat([xy, xy + wh], -1)
    scores = (torch.randn(B, N, C + 1, generator=g) * 3).softmax(-1)[..., 1:]
    return boxes, scores


def mismatch(out, ref):
    """None when both lists hold the same detections per image (boxes, scores, labels, order)."""
    if len(out) != len(ref):
        return f"{len(out)} images vs {len(ref)}"
    for i, (a, r) in enumerate(zip(out, ref)):
        for name, x, y in zip(("boxes", "scores", "labels"), a, r):
            if x.shape != y.shape or not torch.equal(x, y):
                return f"image {i}: {name} differ ({tuple(x.shape)} vs {tuple(y.shape)})"
    return None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed,B,class_boxes", [(0, 4, False), (1, 1, False), (2, 3, True)])
def test_batched_equals_per_image(method, seed, B, class_boxes):
    boxes, scores = random_batch(seed, B, 1500, 5, class_boxes=class_boxes)
    for kw in (dict(pre_nms_top=150), dict(per_class=3, max_det=10, pre_nms_top=100),
               dict(pre_nms_top=40, iou_thresh=0.3), dict(score_thresh=0.3, pre_nms_top=120)):
        ref = capped_nms_per_image(boxes, scores, method=method, **kw)
        assert mismatch(capped_nms(boxes, scores, method=method, **kw), ref) is None, kw
    assert sum(len(r[0]) for r in ref) > 0


@pytest.mark.parametrize("method", METHODS)
def test_flat_layout_and_empty_images(method):
    boxes, scores = random_batch(4, 3, 300, 4)
    scores[1] = 0.0  # nothing above the threshold in image 1
    b, s, c, im = capped_nms_flat(boxes, scores, method=method)
    assert (im[1:] >= im[:-1]).all() and not (im == 1).any()
    out = capped_nms(boxes, scores, method=method)
    assert len(out[1][0]) == 0 and out[1][0].shape == (0, 4)
    assert mismatch(out, capped_nms_per_image(boxes, scores, method=method)) is None
    empty = capped_nms(boxes[:0], scores[:0], method=method)
    assert empty == []


def _tiny_outputs(seed: int, B: int, seg: bool = True, sharpen: float = 1.0):
    torch.manual_seed(seed)
    m = BlitzNet(BlitzNetConfig(**TINY, segmentation=seg)).eval()
    with torch.no_grad():
        out = m(m.normalize(torch.rand(B, 3, 64, 64) * 255))
    out["cls_logits"] = out["cls_logits"] * sharpen + torch.randn_like(out["cls_logits"]) * sharpen
    return m, out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sizes", [None, [(100, 150), (64, 64), (31, 200)], [(90, 70)] * 3])
def test_postprocess_batched_equals_per_image_on_model_outputs(method, sizes):
    m, out = _tiny_outputs(0, 3, sharpen=3.0)
    kw = dict(method=method, score_thresh=0.05, max_det=50, pre_nms_top=150)
    a = m.postprocess(out, (64, 64), sizes, **kw)
    r = m.postprocess(out, (64, 64), sizes, per_image=True, **kw)
    assert sum(len(x["boxes"]) for x in r) > 0
    for x, y in zip(a, r):
        assert set(x) == set(y) == {"boxes", "scores", "labels", "mask"}
        for k in x:
            assert torch.equal(x[k], y[k]), k
    if sizes:  # boxes inside each image
        for x, (h, w) in zip(a, sizes):
            assert (x["boxes"] >= 0).all() and (x["boxes"][:, 0::2] <= w - 1).all() and (x["boxes"][:, 1::2] <= h - 1).all()
            assert x["mask"].shape == (h, w)


def test_postprocess_raw_random_model_scores_equal():
    """Untrained heads give near-uniform scores (many close values): still identical."""
    m, out = _tiny_outputs(1, 4, seg=False)
    a = m.postprocess(out, (64, 64), pre_nms_top=200)
    r = m.postprocess(out, (64, 64), per_image=True, pre_nms_top=200)
    for x, y in zip(a, r):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(x[k], y[k])


# -- fuzz: batched vs per-image on drawn shapes, caps and thresholds ------------------------

def _bug(name: str, C: int):
    """Reintroduced bugs the checker must catch (patching the batched path only)."""
    if name == "no_image_offset":  # one call for the batch, classes offset, images not
        real = nms._offset_nms
        return mock.patch.multiple(nms, _offset_nms=lambda b, s, g, t: real(b, s, g % C, t), CPU_NMS_PER_IMAGE=False)
    if name == "max_det_per_batch":  # the per-image cap applied to the whole batch
        real = nms._rank_within_group

        def rank(groups):
            return real(torch.zeros_like(groups)) if groups.numel() and groups.max() < 64 else real(groups)
        return mock.patch.object(nms, "_rank_within_group", rank)
    raise ValueError(name)


def _fuzz(bug, max_examples):
    phases = [Phase.generate] if bug else list(Phase)  # known-bad cases: no shrinking needed
    @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None, phases=phases)
    @given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 4), N=st.integers(1, 80), C=st.integers(1, 4),
           integer=st.booleans(), class_boxes=st.booleans(), method=st.sampled_from(METHODS),
           pre=st.integers(1, 100), per_class=st.integers(1, 30), max_det=st.integers(1, 60),
           iou=st.sampled_from([0.3, 0.45, 0.5, 0.7]), thresh=st.sampled_from([0.0, 0.01, 0.2]),
           one_call=st.booleans())
    def check(seed, B, N, C, integer, class_boxes, method, pre, per_class, max_det, iou, thresh, one_call):
        boxes, scores = random_batch(seed, B, N, C, integer=integer, class_boxes=class_boxes)
        kw = dict(method=method, pre_nms_top=pre, per_class=per_class, max_det=max_det, iou_thresh=iou,
                  score_thresh=thresh)
        ref = capped_nms_per_image(boxes, scores, **kw)
        if bug is None:  # one_call: the single NMS call CUDA makes, on CPU
            with mock.patch.object(nms, "CPU_NMS_PER_IMAGE", not one_call):
                out = capped_nms(boxes, scores, **kw)
        else:
            with _bug(bug, C):
                out = capped_nms(boxes, scores, **{**kw, "method": "batched"})
        problem = mismatch(out, ref)
        assert problem is None, problem

    check()


@pytest.mark.parametrize("bug", [None, "no_image_offset", "max_det_per_batch"])
def test_fuzz_batched_equals_per_image(bug):
    if bug is None:
        _fuzz(None, 80)
    else:  # the checker catches a reintroduced bug within the same budget
        with pytest.raises(AssertionError):
            _fuzz(bug, 80)


@pytest.mark.slow
def test_fuzz_batched_equals_per_image_long():
    _fuzz(None, 2000)


# -- predictor inference options -------------------------------------------------------------

def _weights(tmp_path):
    from blitznet.predict import save_weights

    torch.manual_seed(0)
    p = tmp_path / "w.pt"
    save_weights(BlitzNet(BlitzNetConfig(**TINY)).eval(), p)
    return p


def _images():
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for h, w in ((80, 60), (64, 64), (50, 90))]


def test_predictor_channels_last_matches_default(tmp_path):
    from blitznet.predict import BlitzNetPredictor

    w = _weights(tmp_path)
    base = BlitzNetPredictor(w, device="cpu", batch_size=2)
    cl = BlitzNetPredictor(w, device="cpu", batch_size=2, channels_last=True)
    assert cl.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        a = base.model(base.model.normalize(x))
        b = cl.model(cl.model.normalize(x).contiguous(memory_format=torch.channels_last))
    for k in ("cls_logits", "box_deltas", "seg_logits"):
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    pa, pb = base.predict(_images()), cl.predict(_images())
    assert [r["mask"].shape for r in pa] == [r["mask"].shape for r in pb] == [(80, 60), (64, 64), (50, 90)]
    for ra, rb in zip(pa, pb):
        assert torch.allclose(ra["scores"][:5], rb["scores"][:5], atol=1e-4)


def test_predictor_fold_bn_matches_default(tmp_path):
    from blitznet.predict import BlitzNetPredictor

    w = _weights(tmp_path)
    base = BlitzNetPredictor(w, device="cpu", batch_size=2)
    folded = BlitzNetPredictor(w, device="cpu", batch_size=2, fold_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    pa, pb = base.predict(_images()), folded.predict(_images())
    for ra, rb in zip(pa, pb):
        assert torch.equal(ra["mask"], rb["mask"])
        assert torch.equal(ra["labels"][:5], rb["labels"][:5])
        assert torch.allclose(ra["scores"][:5], rb["scores"][:5], atol=1e-4)
        assert torch.allclose(ra["boxes"][:5], rb["boxes"][:5], atol=1e-2)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_needs_cuda_one_clear_error(tmp_path, amp):
    from blitznet.predict import BlitzNetPredictor
    from incdet.errors import ConfigError

    w = _weights(tmp_path)
    with pytest.raises(ConfigError, match=f"amp={amp}: mixed-precision inference needs a CUDA device"):
        BlitzNetPredictor(w, device="cpu", amp=amp)
    with pytest.raises(ConfigError, match="amp: 'fp8'"):
        BlitzNetPredictor(w, device="cpu", amp="fp8")


def test_cli_amp_on_cpu_exits_2_without_output(tmp_path, capsys):
    from PIL import Image

    from blitznet.cli import main

    w = _weights(tmp_path)
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(img)
    out = tmp_path / "out"
    rc = main(["predict", str(img), "--weights", str(w), "--out", str(out), "--device", "cpu", "--amp", "fp16"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA device" in err[0] and "Traceback" not in err[0]
    assert not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-only option (autocast on the GPU)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cuda_close_to_fp32(tmp_path, amp):
    from blitznet.predict import BlitzNetPredictor

    w = _weights(tmp_path)
    ref = BlitzNetPredictor(w, device="cuda").predict(_images())
    out = BlitzNetPredictor(w, device="cuda", amp=amp, channels_last=True).predict(_images())
    for a, b in zip(ref, out):
        assert a["mask"].shape == b["mask"].shape
        n = min(5, len(a["scores"]), len(b["scores"]))
        assert torch.allclose(a["scores"][:n], b["scores"][:n], atol=2e-2)


@pytest.mark.slow
@pytest.mark.parametrize("freezing", [False, True])
def test_predictor_compile_matches_eager(tmp_path, freezing):
    from blitznet.predict import BlitzNetPredictor

    w = _weights(tmp_path)
    a = BlitzNetPredictor(w, device="cpu").predict(_images()[:1])
    b = BlitzNetPredictor(w, device="cpu", compile_model=True, freezing=freezing).predict(_images()[:1])
    assert torch.equal(a[0]["mask"], b[0]["mask"])
    assert torch.allclose(a[0]["scores"][:5], b[0]["scores"][:5], atol=1e-4)


def test_freezing_needs_compile(tmp_path):
    from blitznet.predict import BlitzNetPredictor
    from incdet.errors import ConfigError

    with pytest.raises(ConfigError, match="freezing=True applies to compile_model=True"):
        BlitzNetPredictor(_weights(tmp_path), device="cpu", freezing=True)
