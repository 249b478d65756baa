"""The README's pictures, each regenerated from trained runs by one command.

    python tools/showcase.py incdet   --a RUN/checkpoints/task0.pt --naive RUN2/checkpoints/task1.pt \
                                      --distill RUN/checkpoints/task1.pt --data data/shapes-voc \
                                      --out docs/img/incdet_steps.jpg
    python tools/showcase.py heatmap  --run RUN --out docs/img/forgetting.png
    python tools/showcase.py blitznet --weights W.pt --images IMG [IMG ...] --out docs/img/blitznet_voc.jpg

``incdet``: a grid, one row per test image, columns: the ground truth, A(old classes), +B without
distillation, +B with distillation; each detector's top ``--top`` detections above
``--min-score`` are drawn (boxes of old classes in one colour per class, with name and score).
Proposals come from the data set's selective-search cache when present (what evaluation used).
``heatmap``: the results matrix ``R[i][j]`` of a sequential run as a heatmap (``results.json``).
``blitznet``: BlitzNet's boxes and masks blended over each image, one tile per image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _top(pred: dict, k: int, min_score: float) -> dict:
    keep = torch.argsort(pred["scores"], descending=True)[:k]
    keep = keep[pred["scores"][keep] >= min_score]
    return {key: (v[keep] if isinstance(v, torch.Tensor) and v.dim() and key != "mask" else v)
            for key, v in pred.items()}


def _tile(img: Image.Image, scale: int) -> Image.Image:
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _grid(rows: List[List[Image.Image]], pad: int = 4) -> Image.Image:
    w = max(im.width for r in rows for im in r)
    h = max(im.height for r in rows for im in r)
    ncol = max(len(r) for r in rows)
    out = Image.new("RGB", (ncol * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            out.paste(im, (pad + j * (w + pad), pad + i * (h + pad)))
    return out


def _scaled(pred: dict, s: int) -> dict:
    return {**pred, "boxes": pred["boxes"] * s}


def incdet_steps(a: str, naive: str, distill: str, data: str, out: str, images: Optional[Sequence[str]] = None,
                 n: int = 3, top: int = 8, min_score: float = 0.05, scale: int = 2, split: str = "test") -> Path:
    from incdet.data.voc import VOCDetection
    from incdet.models.predict import FastRCNNPredictor
    from incdet.models.proposals import ProposalSource
    from incdet.vis import overlay

    preds = {name: FastRCNNPredictor(p, device="cpu") for name, p in
             (("A(1-15)", a), ("+B(16-20) w/o distillation", naive), ("+B(16-20) with distillation", distill))}
    classes = preds["+B(16-20) with distillation"].classes
    ds = VOCDetection(data, split)
    ids = list(images) if images else [ds.annotation(i).image_id for i in range(n)]
    by_id = {ds.annotation(i).image_id: i for i in range(len(ds))}
    cache = Path(data) / "proposals_selective_search.npz"
    src = ProposalSource(str(cache) if cache.is_file() else "selective_search", max_proposals=2000, nms_iou=0.7)
    rows = []
    for iid in ids:
        s = ds[by_id[iid]]
        props = [src.get(s.image_id, None, s.image)]
        big = s.image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        gt = {"boxes": s.boxes.float(), "labels": s.labels, "scores": torch.ones(len(s.labels))}
        row = [overlay(_scaled(gt, scale), big, ds.classes, 0.0, title="ground truth")]
        for name, p in preds.items():
            d = _top(p.predict([s.image], props)[0], top, min_score)
            row.append(overlay(_scaled(d, scale), big, classes, 0.0, title=name))
        rows.append(row)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    _grid(rows).save(path, quality=92)
    return path


def heatmap(run: str, out: str) -> Path:
    from incdet.engine.results import load_results

    r = load_results(Path(run))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    r.plot(path)
    return path


def blitznet_tiles(weights: str, images: Sequence[str], out: str, min_score: float = 0.3, top: int = 20,
                   max_side: int = 320) -> Path:
    from blitznet.predict import BlitzNetPredictor
    from incdet.vis import overlay, to_chw_uint8

    p = BlitzNetPredictor(weights, device="cpu")
    tiles = []
    for path in images:
        img = to_chw_uint8(path)
        d = _top(p.predict([img])[0], top, min_score)
        tiles.append(overlay(d, img, p.classes, 0.0, title=Path(path).name))
    s = [min(1.0, max_side / max(t.size)) for t in tiles]
    tiles = [t.resize((round(t.width * f), round(t.height * f))) for t, f in zip(tiles, s)]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    _grid([tiles[i:i + 3] for i in range(0, len(tiles), 3)]).save(path, quality=92)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="showcase", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("incdet", help="detections of A, naive +B and distilled +B on test images")
    p.add_argument("--a", required=True)
    p.add_argument("--naive", required=True)
    p.add_argument("--distill", required=True)
    p.add_argument("--data", default="data/shapes-voc")
    p.add_argument("--images", nargs="*", default=None, help="image ids (default: the first --n of the split)")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--min-score", type=float, default=0.05)
    p.add_argument("--out", default="docs/img/incdet_steps.jpg")
    p = sub.add_parser("heatmap", help="a run's results matrix as a heatmap")
    p.add_argument("--run", required=True)
    p.add_argument("--out", default="docs/img/forgetting.png")
    p = sub.add_parser("blitznet", help="BlitzNet boxes and masks on images")
    p.add_argument("--weights", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--min-score", type=float, default=0.3)
    p.add_argument("--out", default="docs/img/blitznet_voc.jpg")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.cmd == "incdet":
        path = incdet_steps(a.a, a.naive, a.distill, a.data, a.out, a.images, a.n, a.top, a.min_score)
    elif a.cmd == "heatmap":
        path = heatmap(a.run, a.out)
    else:
        path = blitznet_tiles(a.weights, a.images, a.out, a.min_score)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
