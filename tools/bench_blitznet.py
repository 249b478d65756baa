"""BlitzNet benchmarks (CPU here, CUDA when present): prints tables, writes JSON.

1. Capped fast NMS (per class: score > 0.01, top 400, NMS 0.45, <= 50; <= 200 per image) versus
   ``torchvision.ops.batched_nms`` over every candidate above 0.01, on BlitzNet300's 45,390
   anchors x 20 foreground classes (21 with background): scores from random logits (two
   distributions: ``flat`` -- nearly every one of the 907,800 candidates passes 0.01, the worst
   case; ``peaked`` -- background-dominated, like a trained detector) and, with ``--weights``,
   from a trained model on real images. Reports time per image, speed-up, and agreement with
   the uncapped result (share of the uncapped top-200 / top-50 detections found by the capped
   NMS, same box and class). With ``--weights`` and ``--data-root`` (a VOC-layout folder, e.g.
   shapes-voc) it also reports the mAP with both NMS variants.
2. BlitzNet300 (ResNet-50, s4, 512 channels, random init) images/s versus torchvision's
   ``ssd300_vgg16(weights=None, weights_backbone=None)`` at batch 1 and 8, end to end (network +
   post-processing), as a ratio; plus the share of BlitzNet's time spent in NMS (decoding +
   capped NMS) and in the segmentation head (head + mask upsampling/argmax). The detection
   post-processing is timed both ways: batched (one capped NMS call for the batch, what
   ``BlitzNet.postprocess`` does) and the former per-image loop (``per_image=True``); the
   ratio and NMS share are given for both. ``--channels-last``, ``--amp bf16|fp16`` (CUDA
   only), ``--compile`` and ``--fold-bn`` apply to BlitzNet's network (SSD300 stays fp32, eager); with
   ``--channels-last`` SSD300 is also timed in NHWC, and the ratio against that is given too;
   with ``--compile --compile-peer`` SSD300 is also timed with its backbone and head compiled the
   same way (NHWC with ``--channels-last``; its transform and post-processing stay eager).
3. Post-processing alone, batched vs per-image loop, on random BlitzNet300-sized outputs
   (45,390 anchors x 20 classes, peaked scores) at each ``--batches`` size; checks that both
   give the same detections.

    python tools/bench_blitznet.py [--device auto] [--out bench_blitznet.json] [--quick]
        [--weights W --images IMG... | --data-root ROOT --split test --max-images N]
        [--skip-nms] [--skip-speed] [--channels-last] [--amp bf16|fp16] [--compile [--freezing] [--compile-peer]] [--fold-bn]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blitznet.losses import decode_boxes  # noqa: E402
from blitznet.model import BlitzNet, blitznet300  # noqa: E402
from blitznet.nms import capped_nms, capped_nms_per_image, capped_nms_single, uncapped_nms  # noqa: E402
from blitznet.predict import prepare_inference  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable, device, reps: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def agreement(capped, uncapped, k: int) -> float:
    """Share of the uncapped top-k detections (box and class) present in the capped output."""
    ub, _, uc = uncapped
    cb, _, cc = capped
    ub, uc = ub[:k], uc[:k]
    if len(ub) == 0:
        return 1.0
    if len(cb) == 0:
        return 0.0
    same = (ub[:, None, :] == cb[None, :, :]).all(-1) & (uc[:, None] == cc[None, :])
    return float(same.any(1).float().mean())


def nms_case(name: str, boxes, probs, device, reps_capped: int, reps_uncapped: int) -> Dict:
    n_cand = int((probs > 0.01).sum())
    row = {"case": name, "anchors": int(boxes.shape[0]), "classes": int(probs.shape[1]), "candidates>0.01": n_cand}
    for method in ("cluster", "batched"):  # "auto" picks cluster on CUDA, batched on CPU
        row[f"capped_{method}_ms"] = 1000 * timeit(lambda: capped_nms_single(boxes, probs, method=method), device, reps_capped)
    row["uncapped_ms"] = 1000 * timeit(lambda: uncapped_nms(boxes, probs), device, reps_uncapped, warmup=0)
    cap, unc = capped_nms_single(boxes, probs), uncapped_nms(boxes, probs)
    row["speedup_cluster"] = row["uncapped_ms"] / row["capped_cluster_ms"]
    row["speedup_batched"] = row["uncapped_ms"] / row["capped_batched_ms"]
    row["agree_top200"] = agreement(cap, unc, 200)
    row["agree_top50"] = agreement(cap, unc, 50)
    row["n_capped"], row["n_uncapped"] = len(cap[0]), len(unc[0])
    return row


def random_scores(anchors, C: int, kind: str, gen: torch.Generator, device):
    N = anchors.shape[0]
    deltas = torch.randn(N, 4, generator=gen) * 0.5
    boxes = decode_boxes(deltas, anchors.cpu())
    if kind == "flat":
        logits = torch.randn(N, C + 1, generator=gen)
    else:  # background-dominated: most anchors confidently background, a few objects
        logits = torch.randn(N, C + 1, generator=gen) * 2.0
        logits[:, 0] += 6.0
    return boxes.to(device), logits.softmax(-1)[:, 1:].contiguous().to(device)


def bench_nms(args, device) -> List[Dict]:
    model = BlitzNet(blitznet300(backbone="resnet18", channels=16, seg_channels=4))  # anchors only
    anchors = model.anchors(model.feature_sizes((300, 300)), (300, 300))
    assert anchors.shape[0] == 45390
    gen = torch.Generator().manual_seed(0)
    rows = []
    for kind in ("flat", "peaked"):
        boxes, probs = random_scores(anchors, 20, kind, gen, device)
        rows.append(nms_case(f"random-{kind}", boxes, probs, device, args.reps_nms, 1 if kind == "flat" else 2))
    if args.weights:
        rows += bench_trained(args, device)
    return rows


def bench_trained(args, device) -> List[Dict]:
    from blitznet.predict import load_weights
    from incdet.vis import to_chw_uint8
    from blitznet.augment import ResizeOnly

    model, classes = load_weights(args.weights, device)
    S = model.config.input_size
    rs = ResizeOnly(S)
    rows = []
    imgs = [to_chw_uint8(p) for p in (args.images or [])[:3]]
    for k, img in enumerate(imgs):
        with torch.no_grad():
            out = model(model.normalize(rs({"image": img})[0][None].to(device)))
        anchors = model.anchors(out["feature_sizes"], (S, S), device)
        boxes = decode_boxes(out["box_deltas"][0].float(), anchors)
        probs = out["cls_logits"][0].float().softmax(-1)[:, 1:].contiguous()
        rows.append(nms_case(f"trained-img{k}", boxes, probs, device, args.reps_nms, 2))
    if args.data_root:
        rows.append(map_with_both(args, model, classes, device))
    return rows


def map_with_both(args, model, classes, device) -> Dict:
    """mAP on a VOC-layout split with capped vs uncapped NMS (same network outputs)."""
    from blitznet.augment import ResizeOnly
    from incdet.data import VOCDetection
    from incdet.eval.voc import voc_evaluate

    ds = VOCDetection(args.data_root, args.split, keep_masks=False)
    S = model.config.input_size
    rs = ResizeOnly(S)
    n = min(len(ds), args.max_images)
    dets = {"capped": {}, "uncapped": {}}
    gts = {}
    t_c = t_u = 0.0
    for i in range(n):
        s = ds[i]
        with torch.no_grad():
            out = model(model.normalize(rs(s)[0][None].to(device)))
        anchors = model.anchors(out["feature_sizes"], (S, S), device)
        boxes = decode_boxes(out["box_deltas"][0].float(), anchors)
        probs = out["cls_logits"][0].float().softmax(-1)[:, 1:].contiguous()
        H, W = s.orig_size
        sc = boxes.new_tensor([W / S, H / S, W / S, H / S])
        t = time.perf_counter(); c = capped_nms_single(boxes, probs); _sync(device); t_c += time.perf_counter() - t
        t = time.perf_counter(); u = uncapped_nms(boxes, probs); _sync(device); t_u += time.perf_counter() - t
        for key, (b, sco, lab) in (("capped", c), ("uncapped", u)):
            dets[key][s.image_id] = {"boxes": (b * sc).cpu(), "scores": sco.cpu(), "labels": (lab + 1).cpu()}
        keep = s.labels <= len(classes)
        gts[s.image_id] = {"boxes": s.boxes[keep], "labels": s.labels[keep], "difficult": s.difficult[keep]}
    m_c = voc_evaluate(dets["capped"], gts, classes).mAP
    m_u = voc_evaluate(dets["uncapped"], gts, classes).mAP
    return {"case": f"mAP on {Path(args.data_root).name}/{args.split} ({n} images)", "mAP_capped": m_c,
            "mAP_uncapped": m_u, "mAP_diff": m_c - m_u, "capped_ms_per_img": 1000 * t_c / max(n, 1),
            "uncapped_ms_per_img": 1000 * t_u / max(n, 1)}


def bench_post(args, device) -> List[Dict]:
    """Capped NMS for a batch: one batched call vs the per-image loop (same detections)."""
    model = BlitzNet(blitznet300(backbone="resnet18", channels=16, seg_channels=4))  # anchors only
    anchors = model.anchors(model.feature_sizes((300, 300)), (300, 300))
    gen = torch.Generator().manual_seed(1)
    rows = []
    for bs in args.batches:
        pairs = [random_scores(anchors, 20, "peaked", gen, device) for _ in range(bs)]
        boxes, probs = torch.stack([b for b, _ in pairs]), torch.stack([p for _, p in pairs])
        row = {"batch": bs}
        for method in ("cluster", "batched"):
            row[f"per_image_{method}_ms"] = 1000 * timeit(lambda: capped_nms_per_image(boxes, probs, method=method), device, args.reps_nms)
            row[f"batched_{method}_ms"] = 1000 * timeit(lambda: capped_nms(boxes, probs, method=method), device, args.reps_nms)
            row[f"speedup_{method}"] = row[f"per_image_{method}_ms"] / row[f"batched_{method}_ms"]
            a, r = capped_nms(boxes, probs, method=method), capped_nms_per_image(boxes, probs, method=method)
            row[f"same_{method}"] = all(torch.equal(x, y) for da, dr in zip(a, r) for x, y in zip(da, dr))
        rows.append(row)
    return rows


def bench_speed(args, device) -> List[Dict]:
    from torchvision.models.detection import ssd300_vgg16

    torch.manual_seed(0)
    blitz = BlitzNet(blitznet300(num_classes=20)).to(device).eval()
    ssd = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21).to(device).eval()
    ssd_cl = None
    # BlitzNet's network exactly as BlitzNetPredictor / `blitznet predict` build it (SSD300's VGG16
    # has no BatchNorm: nothing to fold there)
    net = prepare_inference(blitz, channels_last=args.channels_last, fold_bn=args.fold_bn,
                            compile_model=args.compile, freezing=args.freezing)
    if args.channels_last:
        # the peer in the same memory format too, so the ratio is not only the format's gain
        ssd_cl = copy.deepcopy(ssd).to(memory_format=torch.channels_last)
    # inductor's inference freezing as a per-call option, as prepare_inference passes it
    compile_opts = {"freezing": True} if args.freezing else None
    ssd_c = None
    if args.compile_peer:  # the peer's network through the same compiler (and format); its transform
        ssd_c = copy.deepcopy(ssd_cl if ssd_cl is not None else ssd)  # and post-processing stay eager
        ssd_c.backbone = torch.compile(ssd_c.backbone, options=compile_opts)
        ssd_c.head = torch.compile(ssd_c.head, options=compile_opts)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

    def fwd(x):
        x = blitz.normalize(x)
        if amp_dtype is not None:
            with torch.autocast(device.type, dtype=amp_dtype):
                return net(x)
        return net(x)

    def clock(fn):
        _sync(device)
        t = time.perf_counter()
        r = fn()
        _sync(device)
        return time.perf_counter() - t, r

    rows = []
    for bs in args.batches:
        x = torch.rand(bs, 3, 300, 300, device=device) * 255
        xs = [im / 255 for im in x]
        reps = args.reps_speed
        parts = {"fwd": [], "det_post": [], "det_post_per_image": [], "seg_post": [], "fwd_noseg": [], "ssd": []}
        if ssd_cl is not None:
            parts["ssd_cl"] = []
        if ssd_c is not None:
            parts["ssd_c"] = []
        with torch.no_grad():
            for _ in range(2):  # warm-up at every batch size (cuDNN picks kernels per shape)
                blitz.postprocess(fwd(x), (300, 300))
                blitz.config.segmentation = False
                try:
                    fwd(x)
                finally:
                    blitz.config.segmentation = True
                ssd(xs)
                if ssd_cl is not None:
                    ssd_cl(xs)
                if ssd_c is not None:
                    ssd_c(xs)
            for _ in range(reps):
                t, out = clock(lambda: fwd(x))
                parts["fwd"].append(t)
                det_only = {k: v for k, v in out.items() if k != "seg_logits"}
                seg_only = {k: v for k, v in out.items() if k in ("seg_logits", "feature_sizes")}
                parts["det_post"].append(clock(lambda: blitz.postprocess(det_only, (300, 300)))[0])
                parts["det_post_per_image"].append(
                    clock(lambda: blitz.postprocess(det_only, (300, 300), per_image=True))[0])
                parts["seg_post"].append(clock(lambda: blitz.postprocess(seg_only, (300, 300)))[0])
                blitz.config.segmentation = False  # same network without the segmentation head
                try:
                    parts["fwd_noseg"].append(clock(lambda: fwd(x))[0])
                finally:
                    blitz.config.segmentation = True
                parts["ssd"].append(clock(lambda: ssd(xs))[0])
                if ssd_cl is not None:
                    parts["ssd_cl"].append(clock(lambda: ssd_cl(xs))[0])
                if ssd_c is not None:
                    parts["ssd_c"].append(clock(lambda: ssd_c(xs))[0])
        med = {k: sorted(v)[len(v) // 2] for k, v in parts.items()}
        t_blitz = med["fwd"] + med["det_post"] + med["seg_post"]
        t_old = med["fwd"] + med["det_post_per_image"] + med["seg_post"]
        seg_time = max(med["fwd"] - med["fwd_noseg"], 0.0) + med["seg_post"]
        rows.append({
            "batch": bs, "reps": reps, "blitznet300_img_s": bs / t_blitz, "ssd300_img_s": bs / med["ssd"],
            "ratio_blitz_over_ssd": med["ssd"] / t_blitz, "ratio_per_image_post": med["ssd"] / t_old,
            "blitz_forward_ms": 1000 * med["fwd"], "det_post_ms": 1000 * med["det_post"],
            "det_post_per_image_ms": 1000 * med["det_post_per_image"],
            "blitz_nms_share": med["det_post"] / t_blitz, "nms_share_per_image": med["det_post_per_image"] / t_old,
            "blitz_seg_share": seg_time / t_blitz,
            "blitz_total_ms": 1000 * t_blitz, "ssd_total_ms": 1000 * med["ssd"],
        })
        if ssd_cl is not None:
            rows[-1].update({"ssd300_channels_last_img_s": bs / med["ssd_cl"],
                             "ratio_vs_ssd_channels_last": med["ssd_cl"] / t_blitz})
        if ssd_c is not None:
            rows[-1].update({"ssd300_compiled_img_s": bs / med["ssd_c"], "ratio_vs_ssd_compiled": med["ssd_c"] / t_blitz})
    return rows


def table(rows: List[Dict], title: str) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def f(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [title, "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench_blitznet.json")
    ap.add_argument("--weights", help="trained blitznet weights / run checkpoint for the trained-score NMS case")
    ap.add_argument("--images", nargs="*", help="images for the trained-score case (up to 3)")
    ap.add_argument("--data-root", help="VOC-layout folder for the capped-vs-uncapped mAP check (needs --weights)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-images", type=int, default=100)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--reps-nms", type=int, default=3)
    ap.add_argument("--reps-speed", type=int, default=5)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-nms", action="store_true", help="skip the capped-vs-uncapped NMS section")
    ap.add_argument("--skip-post", action="store_true", help="skip the batched-vs-per-image post-processing section")
    ap.add_argument("--channels-last", action="store_true", help="BlitzNet in NHWC (inputs too)")
    ap.add_argument("--amp", choices=["bf16", "fp16"], help="autocast BlitzNet's network (CUDA only)")
    ap.add_argument("--compile", action="store_true", help="torch.compile BlitzNet's network")
    ap.add_argument("--fold-bn", action="store_true", help="fold BlitzNet's BatchNorms into its convolutions")
    ap.add_argument("--compile-peer", action="store_true",
                    help="with --compile: also time SSD300 with its backbone and head compiled the same way "
                         "(and in NHWC with --channels-last)")
    ap.add_argument("--freezing", action="store_true",
                    help="with --compile: inductor's inference freezing, torch.compile(options={'freezing': True}) (weight folding/prepacking)")
    ap.add_argument("--quick", action="store_true", help="batch 1 only, 1 repetition")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.reps_nms, args.reps_speed = [1], 1, 1
    from incdet.engine.distributed import resolve_device
    from incdet.errors import IncdetError

    try:
        dev = resolve_device(args.device)
    except IncdetError as e:
        print(f"bench_blitznet: error: {e}", file=sys.stderr)
        return 2
    if args.amp and dev.type != "cuda":
        print(f"bench_blitznet: error: --amp {args.amp}: mixed-precision inference needs a CUDA device, got {dev}",
              file=sys.stderr)
        return 2
    if args.compile_peer and not args.compile:
        print("bench_blitznet: error: --compile-peer applies to --compile; add --compile", file=sys.stderr)
        return 2
    if args.freezing and not args.compile:
        print("bench_blitznet: error: --freezing applies to --compile; add --compile", file=sys.stderr)
        return 2
    desc = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {desc}; torch {torch.__version__}")
    t0 = time.perf_counter()
    nms_rows = [] if args.skip_nms else bench_nms(args, dev)
    print(table(nms_rows, "\nCapped fast NMS vs uncapped torchvision batched_nms (per image)"))
    post_rows = [] if args.skip_post else bench_post(args, dev)
    print(table(post_rows, "\nCapped NMS for a batch: one batched call vs the per-image loop"))
    speed_rows = [] if args.skip_speed else bench_speed(args, dev)
    opts = ", ".join(o for o, on in (("channels_last", args.channels_last), (f"amp {args.amp}", args.amp),
                                     ("compile" + (" (freezing)" if args.freezing else ""), args.compile),
                                     ("BN folded", args.fold_bn)) if on) or "fp32, eager"
    print(table(speed_rows, f"\nBlitzNet300 (ResNet-50, s4; {opts}) vs torchvision ssd300_vgg16, end to end"))
    res = {"device": desc, "torch": torch.__version__, "options": opts, "nms": nms_rows, "post": post_rows,
           "speed": speed_rows, "wall_s": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"\nwrote {args.out} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
