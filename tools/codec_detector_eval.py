"""Rate versus detection accuracy: compress a detector's inputs, decode, detect (issue 7).

    python tools/codec_detector_eval.py --data ROOT --split test --incdet CKPT [--blitznet W]
        --jpeg Q.. --jpeg2000 R.. --neural LABEL[@D]=CKPT,.. --out DIR

An integration harness (it imports the detectors, ``incdet.models`` and ``blitznet``), so it
lives in ``tools/`` and the ``codec`` package depends on neither detector.

For a detection dataset in VOC layout (``ImageSets/Main/<split>.txt``, ``JPEGImages``,
``Annotations``, optional ``SegmentationClass``), every image is encoded and decoded by each
codec at each rate; trained detectors run on the decoded images and the tool reports, per codec
and rate, the real bits per pixel (file bytes / pixels, averaged over images, headers
included), PSNR, and the detectors' accuracy:

- an incdet Fast R-CNN (:class:`IncdetDetector`, a driver checkpoint ``RUN/checkpoints/taskK.pt``
  through :class:`incdet.models.predict.FastRCNNPredictor`): VOC mAP (%, all-point AP at IoU
  0.5, difficult objects "don't care", :func:`incdet.eval.voc.voc_evaluate`);
- a BlitzNet (:class:`BlitzNetDetector`, a weights file or run checkpoint through
  :class:`blitznet.predict.BlitzNetPredictor`): VOC mAP of its boxes and mIoU (%, background
  included, void pixels ignored, :class:`incdet.eval.segmentation.ConfusionMatrix`) of its masks.

Codecs (one :class:`RatePoint` per codec and rate):

- ``JPEG`` (Pillow, ``param`` = quality) and ``JPEG2000`` (Pillow's OpenJPEG, irreversible 9/7
  wavelet, colour transform on, ``param`` = compression ratio), both through
  ``codec.metrics.encode_pil`` (the encoder settings of the codec's RD tables);
- neural codecs from checkpoints (``codec init`` / driver checkpoints, one per
  lambda): real bitstreams through :func:`codec.bitstream.encode` / ``decode``; the domain is
  the codec's last one by default (a CAwF or adapter codec's newest domain; 0 for a plain
  source codec).

``original`` (the uncompressed images) is evaluated once as the reference accuracy.

Rate saving at equal accuracy (:func:`bd_rate_table`): Bjontegaard delta rate of one codec's
accuracy-rate curve against another's, with the accuracy (mAP or mIoU) on the quality axis in
place of PSNR, computed by :func:`codec.metrics.bd_rate` (the ``bjontegaard`` package, pchip,
for 4+ points; the same piecewise cubic Hermite in log-rate for 2-3 points). Accuracy curves
are often *not monotone* in rate (detector noise at high rates, saturation at the uncompressed
accuracy). Handling: each curve is first reduced to its upper envelope with
:func:`codec.report.pareto`, i.e. a point is kept only if its accuracy is strictly above the
accuracy of every lower-rate point of the same curve (the points an encoder would pick; a flat
saturated tail keeps only its first point). BD-rate is then integrated over the accuracy
interval where both envelopes overlap; it is NaN ("n/a") when an envelope keeps fewer than 2
points or the intervals do not overlap. Negative = the test codec needs fewer bits for the same
accuracy.

Compatibility check (:func:`compatibility_check`): for a pair (source codec checkpoint, CAwF
checkpoint adapted from it), every image is encoded by the source codec ("written before the
adaptation"), decoded by both, and the detectors run on both decodings: counts of bit-exact
decodings, identical detections (boxes, labels, scores and masks equal), files refused, and
source-domain re-encodings by the adapted codec giving identical bytes.
"""
from __future__ import annotations

import argparse
import glob as _glob
import io
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from incdet.errors import CheckpointError, ConfigError, DataError, IncdetError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_number  # noqa: E402  (shared by the tools)

ORIGINAL = "original"


# ------------------------------------------------------------------------------------ codecs
@dataclass
class RatePoint:
    """One codec at one rate: ``encode(uint8 [3,H,W]) -> bytes`` and ``decode(bytes) -> uint8
    [3,H,W]``. ``codec`` is the curve label, ``param`` the rate parameter (quality, ratio,
    checkpoint)."""

    codec: str
    param: str
    encode: Callable[[Tensor], bytes]
    decode: Callable[[bytes], Tensor]
    kind: str = "pil"                      #: pil | neural
    model: object = None                   #: the neural codec module (kind neural)
    domain: int = 0


def _pil_decode(data: bytes) -> Tensor:
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def pil_rate_points(fmt: str, params: Sequence) -> List[RatePoint]:
    """JPEG (``fmt='jpeg'``, params = qualities 1..95) or JPEG2000 (``'jpeg2000'``, params =
    compression ratios > 1) rate points, with the encoder settings of :mod:`codec.metrics`."""
    from codec.metrics import encode_pil

    if fmt not in ("jpeg", "jpeg2000"):
        raise ConfigError(f"unknown baseline codec {fmt!r} (known: jpeg, jpeg2000)")
    label = "JPEG" if fmt == "jpeg" else "JPEG2000"
    out = []
    for q in params:
        q = float(q)
        if fmt == "jpeg" and not 1 <= q <= 100:
            raise ConfigError(f"JPEG quality {q:g} outside 1..100")
        if fmt == "jpeg2000" and not q > 1:
            raise ConfigError(f"JPEG2000 compression ratio {q:g} must be > 1")
        qq = int(q) if fmt == "jpeg" else q

        def enc(img: Tensor, _q=qq) -> bytes:
            return encode_pil(img.permute(1, 2, 0).contiguous().numpy(), fmt, _q)

        out.append(RatePoint(label, f"{q:g}", enc, _pil_decode))
    return out


def parse_neural_spec(spec: str) -> Tuple[str, Optional[int], List[str]]:
    """``LABEL[@DOMAIN]=CKPT[,CKPT...]`` -> ``(label, domain or None, paths)``; each CKPT may be
    a glob pattern (sorted). One checkpoint per rate (lambda)."""
    if "=" not in spec:
        raise ConfigError(f"--neural {spec!r}: expected LABEL[@DOMAIN]=CKPT[,CKPT...]")
    head, paths = spec.split("=", 1)
    domain = None
    if "@" in head:
        head, d = head.split("@", 1)
        try:
            domain = int(d)
        except ValueError:
            raise ConfigError(f"--neural {spec!r}: domain {d!r} is not an integer") from None
    label = head.strip()
    if not label:
        raise ConfigError(f"--neural {spec!r}: empty label")
    files: List[str] = []
    for p in [p for p in paths.split(",") if p.strip()]:
        hits = sorted(_glob.glob(p)) if any(c in p for c in "*?[") else [p]
        if not hits:
            raise CheckpointError(f"--neural {label}: no checkpoint matches {p!r}")
        files += hits
    if not files:
        raise ConfigError(f"--neural {spec!r}: no checkpoint given")
    return label, domain, files


def default_domain(model) -> int:
    """The newest domain of a CAwF / adapter codec, 0 for a plain codec."""
    n = model.n_domains()
    return 0 if n is None else n - 1


def neural_rate_points(label: str, checkpoints: Sequence, domain: Optional[int] = None,
                       device: str = "cpu") -> List[RatePoint]:
    """One rate point per codec checkpoint (real bitstreams, :mod:`codec.bitstream`)."""
    from codec import bitstream as bs
    from codec.model import load_codec

    out = []
    for ck in checkpoints:
        model, meta = load_codec(ck)
        model = model.to(device).eval()
        d = default_domain(model) if domain is None else int(domain)
        n = model.n_domains()
        if d < 0 or (n is not None and d >= n):
            raise ConfigError(f"{ck}: codec has domains 0..{(n or 1) - 1}, asked for domain {d}")
        lam = _ckpt_lambda(meta)
        param = f"{lam:g}" if lam is not None else Path(ck).parent.name + "/" + Path(ck).name

        def enc(img: Tensor, _m=model, _d=d) -> bytes:
            return bs.encode(_m, img, _d)

        def dec(data: bytes, _m=model, _ck=str(ck)) -> Tensor:
            return bs.decode(_m, data, name=_ck)

        out.append(RatePoint(label, param, enc, dec, kind="neural", model=model, domain=d))
    return out


def _ckpt_lambda(meta: dict) -> Optional[float]:
    for key in ("lmbda", "lambda"):
        if isinstance(meta.get(key), (int, float)):
            return float(meta[key])
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    lam = (cfg.get("learner") or {}).get("lmbda") if isinstance(cfg.get("learner"), dict) else None
    return float(lam) if isinstance(lam, (int, float)) else None


# --------------------------------------------------------------------------------- detectors
class IncdetDetector:
    """An incdet Fast R-CNN from a driver checkpoint; ``predict(images, ids)``.

    ``proposals``: ``"decoded"`` computes class-agnostic proposals (``method``: selective search
    or sliding windows) on each *decoded* image, as a deployed system would; a path to an
    ``.npz`` / ``.pkl`` proposal file uses the proposals of the *original* images by image id
    (faster; optimistic, since the proposals have seen the uncompressed image).
    """

    name = "incdet"
    metrics = ("mAP",)

    def __init__(self, checkpoint, device: str = "cpu", proposals: str = "decoded",
                 method: str = "selective_search", max_proposals: Optional[int] = None,
                 score_thresh: Optional[float] = None):
        from incdet.models.predict import FastRCNNPredictor

        self.predictor = FastRCNNPredictor(checkpoint, device=device, proposals=method,
                                           max_proposals=max_proposals, score_thresh=score_thresh)
        self.classes = list(self.predictor.classes)
        self.source = None
        if proposals != "decoded":
            from incdet.models.proposals import ProposalSource

            c = self.predictor.learner.config
            self.source = ProposalSource(proposals, max_proposals=max_proposals or c.max_proposals,
                                         nms_iou=c.proposal_nms, max_side=c.proposal_max_side)
        self.proposals = proposals

    def predict(self, images: Sequence[Tensor], ids: Sequence[str]) -> List[dict]:
        if self.source is None:
            return self.predictor.predict(list(images))
        props = [self.source.get(i, (int(im.shape[-2]), int(im.shape[-1])), None) for i, im in zip(ids, images)]
        return self.predictor.predict(list(images), proposals=props)


class BlitzNetDetector:
    """A BlitzNet from a weights file / run checkpoint; boxes, labels, scores and ``mask``."""

    name = "blitznet"
    metrics = ("mAP", "mIoU")

    def __init__(self, weights, device: str = "cpu", score_thresh: float = 0.01):
        from blitznet.predict import BlitzNetPredictor

        self.predictor = BlitzNetPredictor(weights, device=device, score_thresh=score_thresh)
        self.classes = list(self.predictor.classes)
        cfg = self.predictor.model.config
        self.metrics = tuple(m for m, on in (("mAP", getattr(cfg, "detection", True)),
                                             ("mIoU", getattr(cfg, "segmentation", True))) if on)

    def predict(self, images: Sequence[Tensor], ids: Sequence[str]) -> List[dict]:
        return self.predictor.predict(list(images))


# ------------------------------------------------------------------------------ evaluation set
@dataclass
class EvalSet:
    """Images (uint8 ``[3,H,W]``), ids, ground truth (boxes, labels, difficult) and masks."""

    ids: List[str]
    images: List[Tensor]
    gts: List[dict]
    masks: List[Optional[Tensor]]
    classes: List[str]
    root: str = ""
    split: str = ""


def load_eval_set(root, split: str = "test", max_images: Optional[int] = None, masks: bool = True) -> EvalSet:
    """A VOC-layout split (:class:`incdet.data.voc.VOCDetection`, difficult objects kept and
    flagged) loaded in memory."""
    from incdet.data.voc import VOCDetection

    ds = VOCDetection(root, split, use_difficult=True, keep_masks=masks)
    n = len(ds) if max_images is None else min(len(ds), int(max_images))
    if n == 0:
        raise DataError(f"{root}: split {split!r} has no images")
    ids, images, gts, ms = [], [], [], []
    for i in range(n):
        s = ds[i]
        ids.append(str(s.image_id))
        images.append(s.image)
        gts.append({"boxes": s.boxes, "labels": s.labels, "difficult": s.difficult})
        ms.append(s.mask)
    return EvalSet(ids, images, gts, ms, list(ds.classes), str(root), split)


def _label_map(det_classes: Sequence[str], data_classes: Sequence[str], who: str) -> Dict[int, int]:
    """dataset label -> detector label, for the dataset classes the detector knows."""
    missing = [c for c in det_classes if c not in data_classes]
    if missing:
        raise ConfigError(f"{who}: classes {missing[:5]} are not in the dataset's classes {list(data_classes)[:25]}")
    return {data_classes.index(c) + 1: k + 1 for k, c in enumerate(det_classes)}


def detection_map(preds: Sequence[dict], es: EvalSet, det_classes: Sequence[str], who: str = "detector") -> float:
    """VOC mAP (%) of detections (labels 1-based into ``det_classes``) over the detector's
    classes; ground-truth objects of classes the detector does not know are left out."""
    from incdet.eval.voc import voc_evaluate

    lm = _label_map(det_classes, es.classes, who)
    gts = {}
    for i, g in zip(es.ids, es.gts):
        keep = torch.tensor([int(l) in lm for l in g["labels"]], dtype=torch.bool)
        labels = torch.tensor([lm[int(l)] for l in g["labels"][keep]], dtype=torch.int64)
        gts[i] = {"boxes": g["boxes"][keep], "labels": labels, "difficult": g["difficult"][keep]}
    dets = {i: {k: p[k] for k in ("boxes", "labels", "scores")} for i, p in zip(es.ids, preds)}
    res = voc_evaluate(dets, gts, list(det_classes))
    return 100.0 * res.mAP if math.isfinite(res.mAP) else float("nan")


def segmentation_miou(preds: Sequence[dict], es: EvalSet, det_classes: Sequence[str], who: str = "detector") -> float:
    """mIoU (%) of predicted masks (0 background, k = ``det_classes[k-1]``) against the
    dataset's ``SegmentationClass`` maps, over the images that have one (VOC annotates only a
    subset); pixels of classes the detector does not know are void."""
    from incdet.eval.segmentation import ConfusionMatrix

    if all(m is None for m in es.masks):
        raise DataError(f"{es.root}: no image of split {es.split!r} has a SegmentationClass mask (mIoU needs them)")
    lm = _label_map(det_classes, es.classes, who)
    lut = np.full(256, 255, dtype=np.int64)
    lut[0] = 0
    for dl, kl in lm.items():
        lut[dl] = kl
    cm = ConfusionMatrix(len(det_classes) + 1)
    for p, m in zip(preds, es.masks):
        if m is None:
            continue
        if p.get("mask") is None:
            raise DataError(f"{who}: the model gives no segmentation mask")
        cm.update(np.asarray(p["mask"], dtype=np.int64), lut[m.numpy().astype(np.int64)])
    r = cm.compute()
    return 100.0 * r.miou if math.isfinite(r.miou) else float("nan")


def score_detector(det, preds: Sequence[dict], es: EvalSet) -> Dict[str, float]:
    out = {}
    if "mAP" in det.metrics:
        out["mAP"] = detection_map(preds, es, det.classes, det.name)
    if "mIoU" in det.metrics:
        out["mIoU"] = segmentation_miou(preds, es, det.classes, det.name)
    return out


def _predict_all(det, images: Sequence[Tensor], ids: Sequence[str], batch: int = 8) -> List[dict]:
    out: List[dict] = []
    for k in range(0, len(images), batch):
        out += det.predict(images[k:k + batch], ids[k:k + batch])
    return out


# ------------------------------------------------------------------------------------ runner
def evaluate_point(point: Optional[RatePoint], es: EvalSet, detectors: Sequence) -> dict:
    """Encode + decode every image with ``point`` (``None``: the original images), run the
    detectors, return ``{codec, param, bpp, psnr, <detector>/<metric>..., seconds...}``."""
    from codec.metrics import psnr

    t0 = time.perf_counter()
    if point is None:
        decoded, bpps, psnrs = list(es.images), [float("nan")], [float("inf")]
        enc_s = dec_s = 0.0
    else:
        decoded, bpps, psnrs = [], [], []
        enc_s = dec_s = 0.0
        for img in es.images:
            a = time.perf_counter()
            data = point.encode(img)
            b = time.perf_counter()
            rec = point.decode(data)
            c = time.perf_counter()
            enc_s += b - a
            dec_s += c - b
            h, w = img.shape[-2:]
            bpps.append(8.0 * len(data) / (h * w))
            psnrs.append(psnr(img, rec))
            decoded.append(rec)
    row = {"codec": ORIGINAL if point is None else point.codec, "param": "" if point is None else point.param,
           "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs)), "images": len(es.images),
           "encode_s_per_image": enc_s / len(es.images), "decode_s_per_image": dec_s / len(es.images)}
    for det in detectors:
        a = time.perf_counter()
        preds = _predict_all(det, decoded, es.ids)
        row[f"{det.name}_s_per_image"] = (time.perf_counter() - a) / len(es.images)
        for k, v in score_detector(det, preds, es).items():
            row[f"{det.name}/{k}"] = v
    row["seconds"] = time.perf_counter() - t0
    return row


def same_prediction(a: dict, b: dict) -> bool:
    for k in ("boxes", "labels", "scores", "mask"):
        x, y = a.get(k), b.get(k)
        if x is None and y is None:
            continue
        if x is None or y is None or not torch.equal(torch.as_tensor(x), torch.as_tensor(y)):
            return False
    return True


def compatibility_check(source_ckpt, adapted_ckpt, es: EvalSet, detectors: Sequence, device: str = "cpu",
                        label: str = "") -> dict:
    """Files written by the source codec (domain 0) before adaptation, decoded after it.

    Returns counts over images: ``decoded_identical`` (uint8 image equal to the source codec's
    decoding), ``decoded_different``, ``refused`` (the adapted codec raises ``DataError``, e.g.
    another codec id), ``same_detections[<detector>]`` (detections on both decodings equal),
    ``reencoded_identical_bytes`` (the adapted codec's domain-0 encoding equals the old file).
    """
    from codec import bitstream as bs
    from codec.model import load_codec

    src, _ = load_codec(source_ckpt)
    new, _ = load_codec(adapted_ckpt)
    src, new = src.to(device).eval(), new.to(device).eval()
    r = {"source": str(source_ckpt), "adapted": str(adapted_ckpt), "label": label, "images": len(es.images),
         "adapted_kind": new.arch().get("kind"), "decoded_identical": 0, "decoded_different": 0, "refused": 0,
         "reencoded_identical_bytes": 0, "same_detections": {d.name: 0 for d in detectors}}
    ref_imgs, new_imgs, ids = [], [], []
    for i, img in zip(es.ids, es.images):
        data = bs.encode(src, img, 0)
        ref = bs.decode(src, data, name=f"{i} (source)")
        try:
            rec = bs.decode(new, data, name=f"{i} (adapted)")
        except DataError:
            r["refused"] += 1
            continue
        r["decoded_identical" if torch.equal(rec, ref) else "decoded_different"] += 1
        try:
            same_bytes = bs.encode(new, img, 0) == data
        except DataError:
            same_bytes = False
        r["reencoded_identical_bytes"] += int(same_bytes)
        ref_imgs.append(ref)
        new_imgs.append(rec)
        ids.append(i)
    for det in detectors:
        if not ids:
            continue
        pa, pb = _predict_all(det, ref_imgs, ids), _predict_all(det, new_imgs, ids)
        r["same_detections"][det.name] = sum(same_prediction(a, b) for a, b in zip(pa, pb))
    r["ok"] = (r["decoded_identical"] == r["images"]
               and all(v == r["images"] for v in r["same_detections"].values()))
    return r


# ---------------------------------------------------------------------------------- BD-rates
def metric_keys(rows: Sequence[dict]) -> List[str]:
    keys = []
    for r in rows:
        for k in r:
            if "/" in k and k not in keys:
                keys.append(k)
    return keys


def curves(rows: Sequence[dict], metric: str) -> Dict[str, List[dict]]:
    """``{codec: [{"bpp", "psnr": metric value}] sorted by bpp}`` (the metric in the PSNR slot,
    as :func:`codec.report.pareto` expects), original images excluded."""
    out: Dict[str, List[dict]] = {}
    for r in rows:
        if r["codec"] == ORIGINAL or not math.isfinite(r.get(metric, float("nan"))):
            continue
        out.setdefault(r["codec"], []).append({"bpp": r["bpp"], "psnr": r[metric], "param": r["param"]})
    return {c: sorted(p, key=lambda q: q["bpp"]) for c, p in out.items()}


def bd_rate_table(rows: Sequence[dict], metric: str) -> Dict[str, Dict[str, float]]:
    """``{test codec: {anchor codec: BD-rate %}}`` over the accuracy-rate curves of ``metric``
    (upper envelopes, see the module docstring); NaN where undefined."""
    from codec.report import bd_rate_curves

    cv = curves(rows, metric)
    return {t: {a: (0.0 if a == t else bd_rate_curves(cv[a], cv[t])) for a in cv} for t in cv}


def rate_at_accuracy(curve: Sequence[dict], target: float) -> float:
    """The bpp at which a codec first reaches accuracy ``target`` (same units as the curve's
    ``psnr`` slot): on the curve's upper envelope (:func:`codec.report.pareto`), the first point
    at or above ``target``, linearly interpolated in log-bpp from the envelope point below it.
    NaN when no point of the curve reaches ``target``; the lowest rate's bpp when it already does
    (the codec may reach it at an even lower rate, not measured)."""
    from codec.report import pareto

    env = pareto(list(curve))
    for k, p in enumerate(env):
        if p["psnr"] >= target:
            if k == 0:
                return float(p["bpp"])
            q = env[k - 1]
            t = (target - q["psnr"]) / (p["psnr"] - q["psnr"])
            return float(math.exp(math.log(q["bpp"]) + t * (math.log(p["bpp"]) - math.log(q["bpp"]))))
    return float("nan")


def rate_at_accuracy_table(rows: Sequence[dict], metric: str, fractions: Sequence[float] = (0.8, 0.9, 0.95)
                           ) -> Dict[str, Dict[str, float]]:
    """``{codec: {"<f>": bpp}}``: the bpp each codec needs to reach ``f`` x the accuracy of the
    uncompressed images (:func:`rate_at_accuracy`); empty when the original row lacks ``metric``."""
    orig = next((r for r in rows if r["codec"] == ORIGINAL), None)
    ref = None if orig is None else orig.get(metric)
    if ref is None or not math.isfinite(ref):
        return {}
    return {c: {f"{f:g}": rate_at_accuracy(pts, f * ref) for f in fractions} for c, pts in curves(rows, metric).items()}


# ----------------------------------------------------------------------------------- outputs
def _f(v, nd=2, sign=False) -> str:
    return fmt_number(v, nd, sign)  # n/a when missing (tools/_common.py)


def write_markdown(res: dict, path) -> str:
    rows = res["rows"]
    keys = metric_keys(rows)
    L = [f"# Rate vs detection accuracy: {res['data']} ({res['split']}, {res['images']} images)", ""]
    L += [f"Command: `{res.get('command', '')}`", ""] if res.get("command") else []
    L += ["bpp: real file bytes x 8 / pixels, averaged over images (headers included). mAP: VOC all-point AP "
          "at IoU 0.5 (%), over the detector's classes. mIoU: % (background included).", ""]
    dnames = [d["name"] for d in res.get("detectors", [])]
    L += ["| codec | param | bpp | PSNR | " + " | ".join(keys) + " | s/img enc+dec | "
          + " | ".join(f"s/img {d}" for d in dnames) + " |",
          "|---|---|---|---|" + "---|" * (len(keys) + 1 + len(dnames))]
    for r in rows:
        L.append(f"| {r['codec']} | {r['param']} | {_f(r['bpp'], 4)} | {_f(r['psnr'])} | "
                 + " | ".join(_f(r.get(k)) for k in keys)
                 + f" | {_f(r['encode_s_per_image'] + r['decode_s_per_image'], 4)} | "
                 + " | ".join(_f(r.get(f"{d}_s_per_image"), 3) for d in dnames) + " |")
    L.append("")
    for k, tab in res.get("bd_rate", {}).items():
        names = list(tab)
        if not names:
            continue
        L += [f"## BD-rate over the {k} - rate curves", "",
              f"Rate change (%) of the row codec against the column codec at equal {k.split('/')[-1]} "
              "(negative = fewer bits); upper envelopes of the curves (non-monotone points dropped); "
              "n/a = too few points or no overlap in accuracy.", "",
              "| codec \\ anchor | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for t in names:
            L.append(f"| {t} | " + " | ".join(_f(tab[t][a], sign=True) for a in names) + " |")
        L.append("")
    for k, tab in res.get("rate_at_accuracy", {}).items():
        if not tab:
            continue
        fr = list(next(iter(tab.values())))
        ref = next((r.get(k) for r in rows if r["codec"] == ORIGINAL), None)
        L += [f"## bpp needed to reach a given {k}", "",
              f"The rate at which each codec first reaches a fraction of the uncompressed {k.split('/')[-1]} "
              f"({_f(ref)}), on its upper envelope, log-linear between measured points; n/a = not reached "
              "at the measured rates; a value equal to the codec's lowest measured bpp means it was already "
              "reached there.", "",
              "| codec | " + " | ".join(f"{float(f) * 100:g} % ({_f(float(f) * ref)})" for f in fr) + " |",
              "|---|" + "---|" * len(fr)]
        for c, d in tab.items():
            L.append(f"| {c} | " + " | ".join(_f(d[f], 3) for f in fr) + " |")
        L.append("")
    if res.get("compatibility"):
        L += ["## Bitstream compatibility across adaptation", "",
              "Files written by the source codec (domain 0) before adaptation, decoded by the adapted codec:", "",
              "| source | adapted | images | decoded bit-exactly | decoded differently | refused | same detections | re-encoded to identical bytes |",
              "|---|---|---|---|---|---|---|---|"]
        for c in res["compatibility"]:
            sd = ", ".join(f"{k}: {v}" for k, v in c["same_detections"].items()) or "-"
            L.append(f"| `{c['source']}` | `{c['adapted']}` ({c['adapted_kind']}) | {c['images']} | {c['decoded_identical']} | "
                     f"{c['decoded_different']} | {c['refused']} | {sd} | {c['reencoded_identical_bytes']} |")
        L.append("")
    text = "\n".join(L) + "\n"
    Path(path).write_text(text)
    return text


def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    keys = metric_keys(rows)
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.2), squeeze=False)
    orig = next((r for r in rows if r["codec"] == ORIGINAL), None)
    for ax, k in zip(axes[0], keys):
        for c, pts in curves(rows, k).items():
            ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], marker="o", label=c)
        if orig is not None and math.isfinite(orig.get(k, float("nan"))):
            ax.axhline(orig[k], color="k", ls="--", lw=1, label="uncompressed")
        ax.set_xlabel("bpp (real files)")
        ax.set_ylabel(k.replace("/", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{Path(res['data']).name} {res['split']} ({res['images']} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_eval_detector(es: EvalSet, points: Sequence[RatePoint], detectors: Sequence, out_dir,
                      compat: Sequence[Tuple[str, str, str]] = (), device: str = "cpu", command: str = "",
                      log: Optional[Callable[[str], None]] = print, compat_images: Optional[int] = None) -> dict:
    """Evaluate the original images and every rate point, the compatibility pairs
    ``(label, source_ckpt, adapted_ckpt)`` (on the first ``compat_images`` images; all by default), write ``results.json``, ``results.md`` and
    ``rate_accuracy.png`` into ``out_dir``; returns the results dict."""
    if not detectors:
        raise ConfigError("eval-detector needs at least one detector (--incdet and/or --blitznet)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for p in [None] + list(points):
        r = evaluate_point(p, es, detectors)
        rows.append(r)
        if log:
            log(f"{r['codec']} {r['param']}: bpp {r['bpp']:.4f} " + " ".join(
                f"{k} {r[k]:.2f}" for k in metric_keys([r])) + f" ({r['seconds']:.1f}s)")
    res = {"data": es.root, "split": es.split, "images": len(es.images), "command": command,
           "detectors": [{"name": d.name, "metrics": list(d.metrics), "classes": list(d.classes)} for d in detectors],
           "rows": rows, "bd_rate": {k: bd_rate_table(rows, k) for k in metric_keys(rows)},
           "rate_at_accuracy": {k: rate_at_accuracy_table(rows, k) for k in metric_keys(rows)}, "compatibility": []}
    ces = es if not compat_images else EvalSet(es.ids[:compat_images], es.images[:compat_images],
                                               es.gts[:compat_images], es.masks[:compat_images], es.classes,
                                               es.root, es.split)
    for label, s, a in compat:
        c = compatibility_check(s, a, ces, detectors, device=device, label=label)
        res["compatibility"].append(c)
        if log:
            log(f"compatibility {label}: {c['decoded_identical']}/{c['images']} bit-exact, "
                f"same detections {c['same_detections']}, refused {c['refused']}")
    res["seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(jsonable(res), indent=1))
    write_markdown(res, out / "results.md")
    plot(res, out / "rate_accuracy.png")
    return res


def jsonable(x):
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def compat_pairs(neural: Sequence[Tuple[str, List[str]]], explicit: Sequence[str] = ()) -> List[Tuple[str, str, str]]:
    """Pairs (label, source ckpt, adapted ckpt) for the compatibility check.

    ``explicit``: ``SOURCE_LABEL:ADAPTED_LABEL`` items, checkpoints paired in order (same
    number per label). Default: the first neural codec whose checkpoints are plain factorized
    codecs is the source, paired in order with every CAwF codec.
    """
    from codec.model import load_codec

    by = dict(neural)
    metas: Dict[str, dict] = {}

    def meta(path) -> dict:
        if str(path) not in metas:
            metas[str(path)] = load_codec(path)[1]
        return metas[str(path)]

    def checked(label: str, pairs: List[Tuple[str, str]]) -> List[Tuple[str, str, str]]:
        out = []
        for x, y in pairs:
            lx, ly = _ckpt_lambda(meta(x)), _ckpt_lambda(meta(y))
            if lx is not None and ly is not None and lx != ly:
                raise ConfigError(f"compatibility pair {label}: {x} (lambda {lx:g}) and {y} (lambda {ly:g}) have "
                                  "different lambdas; list the checkpoints in the same lambda order")
            out.append((label, x, y))
        return out

    if explicit:
        pairs = []
        for e in explicit:
            if ":" not in e:
                raise ConfigError(f"--compat {e!r}: expected SOURCE_LABEL:ADAPTED_LABEL")
            s, a = e.split(":", 1)
            for lab in (s, a):
                if lab not in by:
                    raise ConfigError(f"--compat {e!r}: no --neural codec labelled {lab!r} (have {', '.join(by) or 'none'})")
            if len(by[s]) != len(by[a]):
                raise ConfigError(f"--compat {e!r}: {len(by[s])} source checkpoints but {len(by[a])} adapted ones")
            pairs += checked(f"{s}:{a}", list(zip(by[s], by[a])))
        return pairs
    kinds = {lab: meta(ps[0]).get("arch", {}).get("kind") for lab, ps in neural}
    src = next((lab for lab, k in kinds.items() if k == "factorized"), None)
    if src is None:
        return []
    pairs = []
    for lab, k in kinds.items():
        if k == "cawf" and len(by[lab]) == len(by[src]):
            pairs += checked(f"{src}:{lab}", list(zip(by[src], by[lab])))
    return pairs


__all__ = ["RatePoint", "pil_rate_points", "neural_rate_points", "parse_neural_spec", "IncdetDetector",
           "BlitzNetDetector", "EvalSet", "load_eval_set", "detection_map", "segmentation_miou", "evaluate_point",
           "compatibility_check", "bd_rate_table", "rate_at_accuracy", "rate_at_accuracy_table", "curves", "run_eval_detector", "write_markdown", "plot",
           "compat_pairs"]


# ------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="codec_detector_eval",
        description="Encode every image of a VOC-layout split with JPEG, JPEG2000 and neural codecs at "
                    "several rates, run trained detectors on the decoded images, and write "
                    "OUT/results.{md,json} and OUT/rate_accuracy.png (mAP / mIoU vs bpp per codec).")
    p.add_argument("--data", required=True, help="VOC-layout root (ImageSets/Main, JPEGImages, Annotations)")
    p.add_argument("--split", default="test")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--incdet", help="incdet Fast R-CNN driver checkpoint (RUN/checkpoints/taskK.pt)")
    p.add_argument("--proposals", default="decoded",
                   help="'decoded': proposals computed on each decoded image (default); or an .npz/.pkl file of "
                        "proposals of the original images by image id (faster, optimistic)")
    p.add_argument("--proposal-method", default="selective_search", help="selective_search | sliding_window")
    p.add_argument("--max-proposals", type=int, default=None)
    p.add_argument("--blitznet", help="BlitzNet weights file or blitznet run checkpoint")
    p.add_argument("--blitznet-score-thresh", type=float, default=0.01, help="BlitzNet detection score threshold")
    p.add_argument("--jpeg", type=float, nargs="*", default=[], help="JPEG qualities")
    p.add_argument("--jpeg2000", type=float, nargs="*", default=[], help="JPEG2000 compression ratios")
    p.add_argument("--neural", action="append", metavar="LABEL[@DOMAIN]=CKPT[,CKPT...]",
                   help="a neural codec curve, one checkpoint per rate (globs allowed); domain: default the codec's last")
    p.add_argument("--compat", action="append", metavar="SOURCE_LABEL:ADAPTED_LABEL",
                   help="compatibility pairs (default: the first plain codec vs every CAwF codec)")
    p.add_argument("--no-compat", action="store_true", help="skip the bitstream compatibility check")
    p.add_argument("--compat-max-images", type=int, default=None,
                   help="images in the compatibility check (the first ones of the split; default all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    return p


def run(args) -> int:
    """Run the evaluation of parsed ``args`` (see :func:`build_parser`)."""
    from incdet.engine.distributed import resolve_device

    dev = str(resolve_device(args.device))
    for opt in ("max_images", "max_proposals", "compat_max_images"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise ConfigError(f"--{opt.replace('_', '-')} {v}: must be >= 1")
    if not (args.incdet or args.blitznet):
        raise ConfigError("eval-detector: give a detector (--incdet CKPT and/or --blitznet WEIGHTS)")
    es = load_eval_set(args.data, args.split, args.max_images, masks=bool(args.blitznet))
    dets = []
    if args.incdet:
        dets.append(IncdetDetector(args.incdet, device=dev, proposals=args.proposals, method=args.proposal_method,
                                   max_proposals=args.max_proposals))
    if args.blitznet:
        dets.append(BlitzNetDetector(args.blitznet, device=dev, score_thresh=args.blitznet_score_thresh))
    points = []
    if args.jpeg:
        points += pil_rate_points("jpeg", args.jpeg)
    if args.jpeg2000:
        points += pil_rate_points("jpeg2000", args.jpeg2000)
    neural = []
    for spec in args.neural or []:
        label, dom, files = parse_neural_spec(spec)
        if label in (ORIGINAL, "JPEG", "JPEG2000") or label in dict(neural):
            raise ConfigError(f"--neural {spec!r}: label {label!r} is already used (or reserved: {ORIGINAL}, JPEG, JPEG2000)")
        neural.append((label, files))
        points += neural_rate_points(label, files, dom, dev)
    compat = [] if args.no_compat else compat_pairs(neural, args.compat or [])
    opts = {k: v for k, v in vars(args).items() if v not in (None, [], False)}
    parts = []
    for k, v in opts.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif k in ("neural", "compat"):  # repeated options
            parts += [f"{flag} {shlex.quote(str(x))}" for x in v]
        else:
            parts.append(flag + " " + " ".join(shlex.quote(f"{x:g}" if isinstance(x, float) else str(x))
                                               for x in (v if isinstance(v, list) else [v])))
    cmd = "python tools/codec_detector_eval.py " + " ".join(parts)
    run_eval_detector(es, points, dets, args.out, compat=compat, device=dev, command=cmd,
                      compat_images=args.compat_max_images)
    print(f"wrote {Path(args.out) / 'results.md'}, results.json, rate_accuracy.png")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line; a user error -> one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except IncdetError as e:
        print(f"codec_detector_eval: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
