"""Codec benchmark: real bitstream size vs estimated entropy, and CPU throughput vs compressai.

``--arch``: ``factorized`` (compressai ``FactorizedPrior``), ``scale-hyperprior``
(``ScaleHyperprior``, bmshj2018-hyperprior) or ``mean-scale-hyperprior`` (``MeanScaleHyperprior``,
mbt2018-mean).

1. Size: a codec trained briefly on natural-image crops (VOC + COCO from ../shared/data;
   ``--train-iters``, or ``--model CKPT`` for a trained one) compresses the Kodak images; file
   bytes (header + side + every rANS stream) vs the entropy estimate ``sum -log2 p`` of the
   quantised latents (y, and z for the hyperpriors) under the same model. Target: real /
   estimated <= 1.01. (An untrained model's estimate and real size are meaningless.)
2. Throughput: encode (analysis + entropy coding + header) and decode (header checks +
   bounds-checked rANS + synthesis) in megapixels/s on CPU, for our codec and for compressai's
   model of the same architecture with the same weights and padding, in the same run
   (interleaved, best of ``--repeats``). Target: ratio >= 0.9.

    python tools/bench_codec.py --arch mean-scale-hyperprior --N 64 --train-iters 300 --images 8 \
        --threads 1 --json runs/bench_codec_msh.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import codec.hyperprior  # noqa: E402,F401 - registers the hyperprior kinds
from codec import bitstream as bs  # noqa: E402
from codec.data import RandomCrops, collate_crops, domain_files  # noqa: E402
from codec.metrics import estimated_bits  # noqa: E402
from codec.model import load_codec, pad_to_multiple, rd_loss  # noqa: E402
from codec.registry import build_codec  # noqa: E402

ARCHS = ("factorized", "scale-hyperprior", "mean-scale-hyperprior")
#: compressai's class with the same layers and state_dict names, per codec kind
COMPRESSAI_CLASS = {"factorized": "FactorizedPrior", "scale-hyperprior": "ScaleHyperprior",
                    "mean-scale-hyperprior": "MeanScaleHyperprior"}


def train_quick(N: int, iters: int, crop: int, batch: int, lmbda: float, data_root, seed=0, log=print,
                arch: str = "factorized", M=None, scale_levels: int = 64):
    torch.manual_seed(seed)
    spec = {"kind": arch, "N": N, "M": M if M is not None else N}
    if arch != "factorized":
        spec["scale_levels"] = scale_levels
    m = build_codec(spec)
    files = domain_files("natural", data_root)
    ds = RandomCrops(files, crop, seed=seed)
    params = [p for n, p in m.named_parameters() if not n.endswith("quantiles")]
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    m.train()
    for i in range(iters):
        idx = torch.randint(len(ds), (batch,), generator=g).tolist()
        x = collate_crops([ds[j] for j in idx])
        losses = rd_loss(m(x), x, lmbda)
        opt.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (i + 1) % max(1, iters // 5) == 0:
            log(f"  train {i + 1}/{iters}: loss {losses['loss'].item():.3f} bpp {losses['bpp_loss'].item():.3f} "
                f"mse {losses['mse_loss'].item():.5f} ({time.time() - t0:.0f}s)")
    m.entropy_bottleneck.update(force=True, update_quantiles=True)
    m.update(force=True)
    return m.eval()


@torch.no_grad()
def size_vs_estimate(m, images):
    rows = []
    for name, img in images:
        data = bs.encode(m, img)
        h = bs.parse(data)[0]
        xp, _ = pad_to_multiple(bs.image_to_tensor(img), bs.downsampling_factor(m))
        est_bits = estimated_bits(m, m.analysis(xp))
        npx = img.shape[1] * img.shape[2]
        rows.append({"image": name, "file_bytes": len(data), "payload_bytes": h.payload_len,
                     "header_bytes": h.header_bytes, "stream_bytes": [n for _, n in h.streams],
                     "est_bytes": est_bits / 8, "bpp_file": 8 * len(data) / npx, "bpp_est": est_bits / npx,
                     "rel_diff_file": (len(data) - est_bits / 8) / (est_bits / 8),
                     "rel_diff_payload": (h.payload_len - est_bits / 8) / (est_bits / 8)})
    return rows


@torch.no_grad()
def throughput(m, images, repeats: int):
    from compressai import models

    ref = getattr(models, COMPRESSAI_CLASS[m.arch()["kind"]])(m.N, m.M).eval()
    ref.load_state_dict(m.state_dict())  # same weights and CDF tables (compressai resizes its buffers)
    factor = bs.downsampling_factor(m)
    xs = [bs.image_to_tensor(img) for _, img in images]
    mpx = sum(x.shape[-1] * x.shape[-2] for x in xs) / 1e6
    times = {"ours_enc": [], "ours_dec": [], "ref_enc": [], "ref_dec": []}
    for _ in range(repeats):
        t = time.perf_counter()
        files = [bs.encode(m, x) for x in xs]
        times["ours_enc"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for f in files:
            bs.decode(m, f)
        times["ours_dec"].append(time.perf_counter() - t)
        t = time.perf_counter()
        outs = []
        for x in xs:
            xp, _ = pad_to_multiple(x, factor)
            outs.append(ref.compress(xp))
        times["ref_enc"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for o, x in zip(outs, xs):
            r = ref.decompress(o["strings"], o["shape"])["x_hat"][..., : x.shape[-2], : x.shape[-1]]
            (r * 255).round().to(torch.uint8)
        times["ref_dec"].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    res = {k + "_mpx_s": mpx / v for k, v in best.items()}
    res["enc_ratio"] = res["ours_enc_mpx_s"] / res["ref_enc_mpx_s"]
    res["dec_ratio"] = res["ours_dec_mpx_s"] / res["ref_dec_mpx_s"]
    res["megapixels"] = mpx
    res["repeats"] = repeats
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=ARCHS, default="factorized", help="codec kind (ignored with --model)")
    ap.add_argument("--scale-levels", type=int, default=64, help="hyperpriors: levels of the Gaussian scale table "
                    "(64 = compressai's; finer tables code closer to the estimate, larger checkpoints)")
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--M", type=int, default=None, help="latent channels (default: N for factorized, 1.5 N "
                    "for the hyperpriors, as compressai's 128/192)")
    ap.add_argument("--model", help="trained codec checkpoint (skips the quick training)")
    ap.add_argument("--train-iters", type=int, default=300)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lmbda", type=float, default=0.008)
    ap.add_argument("--images", type=int, default=8, help="number of Kodak images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--json", default="runs/bench_codec.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kodak = domain_files("kodak", args.data_root)[: args.images]
    images = [(p.name, bs.read_image(p)) for p in kodak]
    print(f"torch threads: {torch.get_num_threads()}, Kodak images: {len(images)}")
    t0 = time.time()
    if args.model:
        m, _ = load_codec(args.model)
        trained = f"checkpoint {args.model}"
    else:
        M = args.M if args.M is not None else (args.N if args.arch == "factorized" else args.N * 3 // 2)
        print(f"quick training {args.arch} N={args.N} M={M} for {args.train_iters} iterations on natural crops "
              f"{args.crop}px ...")
        m = train_quick(args.N, args.train_iters, args.crop, args.batch, args.lmbda, args.data_root,
                        arch=args.arch, M=M, scale_levels=args.scale_levels)
        trained = f"{args.train_iters} iterations, crops {args.crop}, batch {args.batch}, lambda {args.lmbda}"
    train_s = time.time() - t0
    rows = size_vs_estimate(m, images)
    tot_file = sum(r["file_bytes"] for r in rows)
    tot_pay = sum(r["payload_bytes"] for r in rows)
    tot_est = sum(r["est_bytes"] for r in rows)
    print()
    print(f"{'image':<12}{'file B':>9}{'est B':>11}{'bpp file':>10}{'bpp est':>9}{'diff':>8}")
    for r in rows:
        print(f"{r['image']:<12}{r['file_bytes']:>9}{r['est_bytes']:>11.1f}{r['bpp_file']:>10.4f}{r['bpp_est']:>9.4f}{100 * r['rel_diff_file']:>7.2f}%")
    print(f"{'total':<12}{tot_file:>9}{tot_est:>11.1f}{'':>19}{100 * (tot_file - tot_est) / tot_est:>7.2f}%  "
          f"(payload only {100 * (tot_pay - tot_est) / tot_est:+.2f}%, header {rows[0]['header_bytes']} B/file); "
          f"real / estimated = {tot_file / tot_est:.4f}")
    tp = throughput(m, images, args.repeats)
    print()
    print(f"{'CPU throughput (MP/s)':<24}{'ours':>8}{'compressai':>12}{'ratio':>8}")
    print(f"{'encode':<24}{tp['ours_enc_mpx_s']:>8.3f}{tp['ref_enc_mpx_s']:>12.3f}{tp['enc_ratio']:>8.3f}")
    print(f"{'decode':<24}{tp['ours_dec_mpx_s']:>8.3f}{tp['ref_dec_mpx_s']:>12.3f}{tp['dec_ratio']:>8.3f}")
    kind = m.arch()["kind"]
    out = {"arch": kind, "compressai_class": COMPRESSAI_CLASS.get(kind), "N": m.N, "M": m.M, "model": trained,
           "scale_levels": getattr(m, "scale_levels", None), "train_seconds": train_s, "threads": torch.get_num_threads(),
           "size": {"images": rows, "total_file_bytes": tot_file, "total_payload_bytes": tot_pay, "total_est_bytes": tot_est,
                    "rel_diff_file": (tot_file - tot_est) / tot_est, "rel_diff_payload": (tot_pay - tot_est) / tot_est,
                    "real_over_estimated": tot_file / tot_est, "target_within": 0.01},
           "throughput": tp, "targets": {"real_over_est_le_1.01": tot_file / tot_est <= 1.01,
                                         "enc_ratio_ge_0.9": tp["enc_ratio"] >= 0.9, "dec_ratio_ge_0.9": tp["dec_ratio"] >= 0.9}}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
