"""Trained source codecs into the model zoo: export a run's checkpoint as a small codec file and
measure a set of them (Kodak bpp / PSNR with real bitstreams, BD-rate against JPEG2000).

::

    python -m codec.export export RUN/checkpoints/task0.pt -o zoo/codec_mbt2018-mean_q3.pt [--half] [--check kodak]
    python -m codec.export bd zoo:codec_mbt2018-mean_q1 zoo:codec_mbt2018-mean_q2 ... [--images kodak] [--json OUT]

``export`` reads a codec checkpoint (a driver run's ``checkpoint.pt`` / ``checkpoints/taskK.pt``,
a ``codec init`` file, a ``zoo:NAME``) and writes a codec checkpoint (:func:`codec.model.save_checkpoint`
layout: ``format``, ``version``, ``arch``, ``state_dict``) holding only the weights, with
``exported_from`` (the source's sha256, file name, task and step). A checkpoint saved in the
middle of a task (phase ``train``) has stale entropy-coding tables: they are recomputed as the
learner's ``end_task`` does (quantiles by compressai's bisection, then the CDF tables). ``--half``
stores the analysis / synthesis / hyper transforms in float16 (the entropy models stay float32:
their CDF tables and medians must match the tables exactly); the loaded model is float32 again.
``--check IMAGES`` measures the exported file on those images (bpp, PSNR; real bitstreams) and, with
``--half``, against the float32 export of the same checkpoint: it refuses (exit 2, nothing
written) a half export that changes PSNR by more than ``--tol-db`` (default 0.01 dB) or bpp by
more than ``--tol-bpp`` (relative, default 0.2 %).

``bd`` evaluates each codec (real bitstreams: bpp of the whole file) and the JPEG2000 curve
(Pillow OpenJPEG, :data:`codec.metrics.JPEG2000_RATIOS`) on the same images and prints the points
and the set's PSNR BD-rate against JPEG2000 (:func:`codec.report.bd_rate_curves`), plus the
``--metric`` arguments for ``incdet zoo add``.

The file is then recorded with ``incdet zoo add NAME zoo/FILE --command ... --metric ...``
(:mod:`incdet.zoo`: sha256, size, command, hardware, wall time) and used as
``learner.source_checkpoint: zoo:NAME`` (checked against the manifest at load).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from compressai.entropy_models import EntropyBottleneck, EntropyModel

from incdet.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def entropy_tensor_names(model: torch.nn.Module) -> set:
    """state_dict names of tensors that belong to an entropy model (kept float32 by ``--half``)."""
    prefixes = [n + "." for n, m in model.named_modules() if isinstance(m, EntropyModel) and n]
    return {k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)}


def finish_tables(model: torch.nn.Module) -> None:
    """What the learner's ``end_task`` does: quantiles of every factorized entropy model by
    bisection, then every CDF table (a mid-task checkpoint's tables are stale)."""
    for mod in model.modules():
        if isinstance(mod, EntropyBottleneck):
            mod.update(force=True, update_quantiles=True)
    model.update(force=True)


def export_codec(src: str, out, half: bool = False) -> dict:
    """Write the codec of checkpoint ``src`` to ``out`` (see the module docstring); returns the
    file's metadata (``arch``, ``exported_from``, ``half``)."""
    from codec.model import CKPT_FORMAT, CKPT_VERSION, load_codec
    from incdet import zoo
    from incdet.engine.checkpoint import save_atomic

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a directory; give the file name (e.g. zoo/codec_mbt2018-mean_q3.pt)")
    path = Path(zoo.resolve(src)) if zoo.is_zoo_ref(src) else Path(src)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such codec checkpoint")
    if out.exists() and out.resolve() == path.resolve():
        raise ConfigError(f"-o {out}: would overwrite the source checkpoint")
    model, ckpt_meta = load_codec(str(path))  # the file is read once
    run_meta = ckpt_meta.get("run_meta", {})
    if run_meta.get("phase") not in (None, "done"):
        log.info("%s: a mid-task checkpoint (phase %s, step %s): recomputing the entropy-coding tables",
                 path, run_meta.get("phase"), run_meta.get("step"))
        finish_tables(model)
    else:
        model.update(force=False)
    keep32 = entropy_tensor_names(model)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point() and k not in keep32:
            v = v.half()
        state[k] = v.clone()
    meta = {"arch": model.arch(), "half": bool(half),
            "exported_from": {"file": path.name, "sha256": zoo.sha256_file(path), **run_meta}}
    save_atomic({"format": CKPT_FORMAT, "version": CKPT_VERSION, "arch": model.arch(), "state_dict": state,
                 "half": bool(half), "exported_from": meta["exported_from"]}, out)
    return meta


# ------------------------------------------------------------------------------- measurement
def load_images(images: str, max_images: Optional[int] = None, data_root=None) -> List[torch.Tensor]:
    """uint8 ``[3, H, W]`` images of a folder or a domain name (``kodak``, ...)."""
    from codec import data as cdata
    from codec.bitstream import read_image

    return [read_image(f) for f in cdata.image_set_files(images, max_images, data_root)]


def rd_point(model_ref: str, imgs: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Mean bpp (whole files), bpp_est, PSNR of one codec on ``imgs`` (domain 0, real bitstreams)."""
    from codec.metrics import evaluate_codec
    from codec.model import load_codec

    model, _ = load_codec(model_ref)
    model.update(force=False)
    torch.manual_seed(0)
    return evaluate_codec(model.eval(), imgs, 0, with_msssim=False)


def bd_set(model_refs: Sequence[str], imgs: Sequence[torch.Tensor]) -> dict:
    """RD points of each codec, the JPEG2000 curve, and the set's PSNR BD-rate vs JPEG2000 (%)."""
    from codec.metrics import baseline_curve
    from codec.report import bd_rate_curves

    points = {ref: rd_point(ref, imgs) for ref in model_refs}
    j2k = baseline_curve(list(imgs), "jpeg2000")
    for p in points.values():  # a single point's distance to JPEG2000: its PSNR at the same bpp
        p["jpeg2000_psnr_at_bpp"] = _interp_psnr(j2k, p["bpp"])
    curve = [{"bpp": p["bpp"], "psnr": p["psnr"]} for p in points.values()]
    bd = bd_rate_curves(j2k, curve) if len(curve) >= 2 else float("nan")
    return {"points": points, "jpeg2000": j2k, "bd_rate_vs_jpeg2000": bd, "n_images": len(imgs)}


def _interp_psnr(curve, bpp: float) -> float:
    """PSNR of ``curve`` at ``bpp`` (linear in log bpp between its points; NaN outside them)."""
    import numpy as np

    pts = sorted((p["bpp"], p["psnr"]) for p in curve if p["bpp"] > 0)
    if not pts or not (pts[0][0] <= bpp <= pts[-1][0]):
        return float("nan")
    return float(np.interp(np.log(bpp), [np.log(b) for b, _ in pts], [q for _, q in pts]))


# ------------------------------------------------------------------------------------- CLI
def cmd_export(args) -> int:
    imgs = load_images(args.check, args.max_images, args.data_root) if args.check else None
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.check") if imgs is not None else out
    ref = out.with_name(f".{out.name}.ref32")
    meta = export_codec(args.checkpoint, tmp, half=args.half)
    if imgs is not None:
        try:
            # the reference: the same export in float32 (same finished entropy tables), so that
            # the comparison measures what --half changes and nothing else
            if args.half:
                export_codec(args.checkpoint, ref, half=False)
            a = rd_point(str(ref if args.half else tmp), imgs)
            b = rd_point(str(tmp), imgs) if args.half else a
            d_psnr, d_bpp = b["psnr"] - a["psnr"], (b["bpp"] - a["bpp"]) / max(a["bpp"], 1e-12)
            print(json.dumps({"float32": a, "exported": b, "delta_psnr_db": d_psnr, "delta_bpp_rel": d_bpp}, indent=1))
            if abs(d_psnr) > args.tol_db or abs(d_bpp) > args.tol_bpp:
                raise ConfigError(f"{args.output}: float16 changes {args.check} PSNR by {d_psnr:+.4f} dB and bpp by "
                                  f"{100 * d_bpp:+.3f} % against float32 (tolerance {args.tol_db} dB, "
                                  f"{100 * args.tol_bpp} %): not written (export without --half)")
            tmp.replace(out)
        finally:
            for f in (tmp, ref):
                if f != out and f.exists():
                    f.unlink()
    size = out.stat().st_size
    print(f"{out}: {meta['arch']} ({'float16 transforms' if args.half else 'float32'}), {size} bytes "
          f"({size / 2**20:.2f} MiB), from {meta['exported_from']}")
    return 0


def cmd_bd(args) -> int:
    imgs = load_images(args.images, args.max_images, args.data_root)
    res = bd_set(args.models, imgs)
    for ref, p in res["points"].items():
        print(f"{ref}: bpp {p['bpp']:.4f} (estimate {p['bpp_est']:.4f}), PSNR {p['psnr']:.3f} dB "
              f"(JPEG2000 at this bpp: {p['jpeg2000_psnr_at_bpp']:.3f} dB)")
    print(f"BD-rate (PSNR) vs JPEG2000 on {args.images} ({res['n_images']} images): {res['bd_rate_vs_jpeg2000']:+.1f} %")
    bd = res["bd_rate_vs_jpeg2000"]
    for ref, p in res["points"].items():  # arguments for `incdet zoo add`
        print(f"{ref}: --metric {args.images}_bpp={p['bpp']:.4f} --metric {args.images}_psnr={p['psnr']:.3f}"
              + (f" --metric {args.images}_bd_rate_vs_jpeg2000_set={bd:.1f}" if math.isfinite(bd) else ""))
    if args.json:
        from incdet.engine.checkpoint import write_atomic

        write_atomic(args.json, lambda f: f.write(json.dumps(res, indent=1, default=float) + "\n"))
    return 0


def register(sub) -> None:
    """``export`` and ``bd`` subcommands (for ``codec``'s CLI or :func:`main`)."""
    p = sub.add_parser("export", help="write a trained codec (run checkpoint) as a small codec file for the zoo")
    p.add_argument("checkpoint", help="RUN/checkpoints/taskK.pt, RUN/checkpoint.pt, a codec file or zoo:NAME")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--half", action="store_true", help="float16 transforms (entropy models stay float32)")
    p.add_argument("--check", metavar="IMAGES", help="folder or domain (e.g. kodak): refuse an export that changes bpp/PSNR")
    p.add_argument("--tol-db", type=float, default=0.01)
    p.add_argument("--tol-bpp", type=float, default=0.002)
    p.add_argument("--max-images", type=int)
    p.add_argument("--data-root")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("bd", help="RD points of a set of codecs and their BD-rate vs JPEG2000")
    p.add_argument("models", nargs="+", help="codec files or zoo:NAME (one per rate point)")
    p.add_argument("--images", default="kodak")
    p.add_argument("--max-images", type=int)
    p.add_argument("--data-root")
    p.add_argument("--json", help="write points, JPEG2000 curve and BD-rate here")
    p.set_defaults(func=cmd_bd)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from incdet.engine.cli import run_cli

    return run_cli("python -m codec.export", "Export trained source codecs for the model zoo and measure them.",
                   [register], argv)


if __name__ == "__main__":
    sys.exit(main())
