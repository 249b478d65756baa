"""The ``codec`` command line.

    codec compress IMG -o FILE --model CKPT [--domain D]
    codec decompress FILE -o OUT.png --model CKPT
    codec info FILE                                   # header fields, no model needed
    codec init -o CKPT [--arch factorized|scale-hyperprior|mean-scale-hyperprior] [--N 64] [--M ...]
    codec init -o CKPT --compressai SRC               # import a compressai state_dict
    codec train CONFIG [--set learner.lmbda=0.002 ...] --out RUN   # the shared driver (incdet.engine)
    codec train --resume RUN
    codec eval RUN / codec report RUN                 # the driver's verbs
    codec rd --model CKPT --images DIR_OR_DOMAIN [--domain D]   # real-bitstream RD point
    codec rd-report RUN_DIR... -o docs/results/codec.md [--plots DIR]   # DANICE table of driver runs
    codec eval-detector ...   # moved: python tools/codec_detector_eval.py (needs the detectors)

Every codec training goes through the shared driver (``codec train``, configs/codec/*.yaml);
``--model`` takes a codec checkpoint, a driver run checkpoint (RUN/checkpoints/taskK.pt) or a
zoo entry (``zoo:NAME``).
"""
from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from incdet.engine.cli import run_cli
from incdet.errors import ConfigError

log = logging.getLogger("codec")


def _load_model(path, device="cpu"):
    from codec.model import load_codec
    from incdet.engine.distributed import resolve_device

    dev = resolve_device(device)  # before loading: a bad --device is refused first
    m, meta = load_codec(path)
    return m.to(dev).eval(), meta


def _limits(args):
    from codec.bitstream import DecodeLimits

    if args.max_pixels is None:
        return DecodeLimits()
    if args.max_pixels < 1:
        raise ConfigError(f"--max-pixels {args.max_pixels}: must be >= 1")
    return DecodeLimits(max_pixels=args.max_pixels, max_latent_elements=max(DecodeLimits().max_latent_elements,
                                                                            args.max_pixels))


def cmd_compress(args) -> int:
    from codec.bitstream import compress_file

    model, _ = _load_model(args.model, args.device)
    info = compress_file(model, args.image, args.output, domain=args.domain)
    print(f"{args.output}: {info['bytes']} bytes, {info['bpp']:.4f} bpp ({info['width']}x{info['height']})")
    return 0


def cmd_decompress(args) -> int:
    from codec.bitstream import decompress_file

    model, _ = _load_model(args.model, args.device)
    img = decompress_file(model, args.file, args.output, limits=_limits(args))
    print(f"{args.output}: {img.shape[2]}x{img.shape[1]}")
    return 0


def cmd_info(args) -> int:
    from codec.bitstream import read_header

    h = read_header(args.file, _limits(args))
    size = Path(args.file).stat().st_size
    print(json.dumps({"version": h.version, "codec_id": h.codec_id.hex(), "domain": h.domain, "width": h.width,
                      "height": h.height, "latent_shape": list(h.latent_shape), "header_bytes": h.header_bytes,
                      "streams": [{"shape": list(s), "bytes": n} for s, n in h.streams],
                      "side_bytes": h.side_len, "payload_bytes": h.payload_len, "file_bytes": size,
                      "bpp": 8 * size / (h.width * h.height)}, indent=1))
    return 0


def base_arches() -> list:
    """The registered source codec kinds (``codec init --arch``, ``learner.arch``)."""
    import codec.learner  # noqa: F401  (registers every codec kind)
    from codec.registry import CODECS

    return [k for k in CODECS.names() if getattr(CODECS.get(k), "base_codec", False)]


def cmd_init(args) -> int:
    from codec.model import import_compressai, save_checkpoint
    from codec.registry import build_codec

    for opt in ("N", "M"):
        v = getattr(args, opt)
        if v is not None and not 1 <= v <= 4096:
            raise ConfigError(f"--{opt} {v}: must be between 1 and 4096 channels")
    if Path(args.output).is_dir():
        raise ConfigError(f"-o {args.output}: is a directory; give the checkpoint file name")
    if args.compressai:
        if args.arch is not None:
            raise ConfigError("--compressai: the architecture comes from the state_dict; leave out --arch")
        m = import_compressai(args.compressai)
    else:
        import torch

        arch = args.arch or "factorized"
        known = base_arches()
        if arch not in known:
            raise ConfigError(f"--arch {arch!r}: unknown source codec kind; known: {', '.join(known)}")
        torch.manual_seed(args.seed)
        m = build_codec({"kind": arch, "N": args.N, "M": args.M if args.M is not None else args.N})
        m.update(force=True)
    save_checkpoint(args.output, m, {"note": "imported" if args.compressai else "untrained"})
    print(f"{args.output}: {m.arch()}")
    return 0


def cmd_rd(args) -> int:
    from codec import data as cdata
    from codec.bitstream import read_image
    from codec.metrics import evaluate_codec

    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images {args.max_images}: must be >= 1")
    model, _ = _load_model(args.model, args.device)
    files = cdata.image_set_files(args.images, args.max_images, args.data_root)
    res = evaluate_codec(model, (read_image(f) for f in files), args.domain)
    print(json.dumps(res, indent=1))
    return 0


def cmd_report(args) -> int:
    from codec.report import make_report

    if Path(args.output).is_dir():
        raise ConfigError(f"-o {args.output}: is a directory; give the markdown file name")
    make_report(args.runs, args.output, args.plots, baselines=not args.no_baselines)
    print(f"wrote {args.output}")
    return 0


def cmd_eval_detector(args) -> int:
    raise ConfigError("eval-detector moved out of the codec package (it needs the detectors): run "
                      "`python tools/codec_detector_eval.py " + shlex.join(args.rest or ["--help"]) + "`")


def _add_model_args(p):
    p.add_argument("--model", required=True, help="codec checkpoint (codec init, a driver run's checkpoints/taskK.pt, zoo:NAME) or a compressai state_dict")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (decode on the device that encoded for bit-exactness)")


def _add_limit_args(p):
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse files announcing a larger image (width * height; default 16777216 = 4096x4096)")


def register(sub) -> None:
    p = sub.add_parser("compress", help="compress an image into a bitstream file")
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--domain", type=int, default=0, help="domain id (CAwF branch / adapter oracle)")
    _add_model_args(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help="decode a bitstream file into a PNG")
    p.add_argument("file")
    p.add_argument("-o", "--output", required=True, help="output image (.png; the format from the extension)")
    _add_limit_args(p)
    _add_model_args(p)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="print a bitstream's header")
    p.add_argument("file")
    _add_limit_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write an untrained codec checkpoint, or import a compressai one")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--arch", default=None,
                   help="source codec kind: factorized (default) | scale-hyperprior | mean-scale-hyperprior")
    p.add_argument("--N", type=int, default=64, help="channels")
    p.add_argument("--M", type=int, default=None, help="latent channels (default N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compressai", help="local compressai state_dict file (its architecture is detected)")
    p.set_defaults(func=cmd_init)

    for name in ("rd",):
        p = sub.add_parser(name, help="rate-distortion of a codec on images (real bitstreams)")
        p.add_argument("--images", required=True, help="a folder of images or a domain name (kodak, cartoon, ...)")
        p.add_argument("--domain", type=int, default=0)
        p.add_argument("--max-images", type=int)
        p.add_argument("--data-root")
        _add_model_args(p)
        p.set_defaults(func=cmd_rd)

    for name in ("rd-report",):
        p = sub.add_parser(name, help="DANICE forgetting table (markdown) + RD plots from driver runs (`codec train`)")
        p.add_argument("runs", nargs="+", help="run directories of `codec train` (RUN/results.json + config.yaml)")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--plots", help="folder for the RD plot PNGs")
        p.add_argument("--no-baselines", action="store_true", help="skip JPEG / JPEG2000")
        p.set_defaults(func=cmd_report)


def register_eval_detector(sub) -> None:
    p = sub.add_parser("eval-detector", add_help=False, prefix_chars="\0",  # every argument is kept as is
                       help="moved: python tools/codec_detector_eval.py (rate vs detection accuracy)")
    p.add_argument("rest", nargs="*")
    p.set_defaults(func=cmd_eval_detector)


def _registrars():
    from incdet.engine import cli as engine_cli

    regs = [engine_cli.register]
    regs.append(register)
    regs.append(register_eval_detector)
    from codec import export

    regs.append(export.register)  # codec export / codec bd
    return regs


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli("codec", "Neural image codec with real bitstreams and domain adaptation without forgetting.", _registrars(), argv)


if __name__ == "__main__":
    sys.exit(main())
