"""Top-1 of pretrained trunks on the same held-out shapes-pretrain streams, side by side.

    python tools/zoo_trunk_eval.py WEIGHTS [WEIGHTS ...] [--seeds 0 1] [--val-images 1500]
        [--depth 18] [--width 16] [--size 64] [--json OUT.json]

``incdet pretrain`` reports top-1 on the held-out stream of its own ``--seed``, so a continued
run (another seed: new training images) and the version it continues are measured on different
images. This tool scores every WEIGHTS (a path or ``zoo:NAME``, sha256-checked) on the held-out
stream of each ``--seeds`` value with :func:`incdet.models.pretrain.evaluate` (the held-out streams
are disjoint from every training stream), and prints a table (and writes JSON with ``--json``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save_json  # noqa: E402


def score(weights: Sequence[str], seeds: Sequence[int], val_images: int = 1500, depth: int = 18, width: int = 16,
          size: int = 64, device: str = "cpu") -> Dict[str, Dict[str, object]]:
    """``{weights: {"sha256": ..., "top1_val_seed<k>": %, ...}}`` for every weights file and seed."""
    from incdet.data.shapes_pretrain import PRETRAIN_CLASSES
    from incdet.models.pretrain import Classifier, PretrainConfig, load_init, evaluate

    out: Dict[str, Dict[str, object]] = {}
    for spec in weights:
        model = Classifier(depth, width, len(PRETRAIN_CLASSES)).to(device)
        row: Dict[str, object] = {"sha256": load_init(model, spec)}
        for s in seeds:
            c = PretrainConfig(depth=depth, width=width, size=size, seed=int(s), val_images=val_images, num_workers=0)
            row[f"top1_val_seed{s}"] = evaluate(model, c.validate(), torch.device(device))
        out[spec] = row
    return out


def table(res: Dict[str, Dict[str, object]], seeds: Sequence[int]) -> str:
    lines = ["| weights | sha256 | " + " | ".join(f"top-1, val stream of seed {s} (%)" for s in seeds) + " |",
             "|---|---|" + "---:|" * len(seeds)]
    for spec, r in res.items():
        lines.append(f"| {spec} | {str(r['sha256'])[:12]} | " +
                     " | ".join(f"{r[f'top1_val_seed{s}']:.2f}" for s in seeds) + " |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs="+", help="weights files (path or zoo:NAME)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--val-images", type=int, default=1500)
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = score(a.weights, a.seeds, a.val_images, a.depth, a.width, a.size, a.device)
    print(table(res, a.seeds))
    if a.json:
        save_json(a.json, {"args": vars(a), "results": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
