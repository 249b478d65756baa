"""Rate-distortion metrics: bpp (real bytes and estimated entropy), PSNR, MS-SSIM, BD-rate,
and the JPEG / JPEG2000 baselines (Pillow; JPEG2000 through OpenJPEG).

Conventions: images are uint8 RGB; PSNR is on the 8-bit-rounded RGB reconstruction,
``10 log10(255^2 / MSE)`` with the MSE over all pixels and channels of one image, averaged
over images; bpp = bits / (H * W) per image, averaged over images; MS-SSIM from
``pytorch_msssim`` (data_range 255) on images at least 161 px on the short side (NaN below).
"""
from __future__ import annotations

import io
import math
from typing import Dict, Iterable, List, Sequence

import numpy as np
import torch
from PIL import Image

from codec import bitstream as bs
from codec.entropy import bits_from_likelihoods, latent_bits_estimate
from codec.model import pad_to_multiple


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between two uint8 ``[3, H, W]`` images (``inf`` when identical)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """MS-SSIM between two uint8 ``[3, H, W]`` images; NaN when smaller than 161 px."""
    from pytorch_msssim import ms_ssim as _ms

    if min(a.shape[-2:]) < 161:
        return float("nan")
    return float(_ms(a[None].float(), b[None].float(), data_range=255.0))


def bd_rate(rate_anchor: Sequence[float], psnr_anchor: Sequence[float], rate_test: Sequence[float],
            psnr_test: Sequence[float], method: str = "pchip") -> float:
    """Bjontegaard delta rate (%) of ``test`` vs ``anchor`` (negative = test saves bits), from
    the ``bjontegaard`` package (``method`` 'pchip' or 'akima'). Needs >= 4 points per curve
    (the package's interpolators); points are sorted by rate; NaN when the curves do not
    overlap enough in quality or cannot be interpolated."""
    import bjontegaard as bdm

    def prep(r, d):
        r, d = np.asarray(r, float), np.asarray(d, float)
        o = np.argsort(r)
        return r[o], d[o]

    ra, da = prep(rate_anchor, psnr_anchor)
    rt, dt = prep(rate_test, psnr_test)
    if len(ra) < 4 or len(rt) < 4:
        # pchip over fewer points: piecewise cubic Hermite in log-rate, computed directly
        return _bd_rate_pchip(ra, da, rt, dt)
    try:
        return float(bdm.bd_rate(ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0.0))
    except Exception:  # noqa: BLE001 - non-monotonic curves etc.
        return float("nan")


def _bd_rate_pchip(ra, da, rt, dt) -> float:
    from scipy.interpolate import PchipInterpolator

    if len(ra) < 2 or len(rt) < 2:
        return float("nan")
    lo, hi = max(da.min(), dt.min()), min(da.max(), dt.max())
    if not hi > lo or np.any(np.diff(da) <= 0) or np.any(np.diff(dt) <= 0):
        return float("nan")
    fa = PchipInterpolator(da, np.log(ra))
    ft = PchipInterpolator(dt, np.log(rt))
    ia = fa.integrate(lo, hi)
    it = ft.integrate(lo, hi)
    return float((math.exp((it - ia) / (hi - lo)) - 1) * 100)


# ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_codec(model, images: Iterable[torch.Tensor], domain: int = 0, with_msssim: bool = True) -> Dict[str, float]:
    """Compress and decompress every image for real; returns mean ``bpp`` (every byte of the
    file: header, side information, all streams), ``bpp_est`` (entropy of the quantised
    latents under the model: ``y`` and, for the hyperprior family, ``z``), ``psnr``,
    ``ms_ssim`` and ``n``. Images are padded to the model's downsampling factor (16 or 64)."""
    model.eval()
    rows = []
    dev = next(model.parameters()).device
    for img in images:
        data = bs.encode(model, img, domain)
        rec = bs.decode(model, data)
        h, w = img.shape[-2:]
        x, _ = pad_to_multiple(bs.image_to_tensor(img).to(dev), bs.downsampling_factor(model))
        est = estimated_bits(model, model.analysis(x, domain), domain)
        rows.append({"bpp": 8 * len(data) / (h * w), "bpp_est": est / (h * w), "psnr": psnr(img, rec),
                     "ms_ssim": ms_ssim(img, rec) if with_msssim else float("nan")})
    return _mean(rows)


@torch.no_grad()
def estimated_bits(model, y: torch.Tensor, domain: int = 0) -> float:
    """``sum -log2 p`` of the quantised latents of ``y`` under the model (eval mode): the
    model's ``latents`` (every likelihood it returns: ``y``, and ``z`` for the hyperprior
    family), or its ``entropy_model(domain)`` for a codec without ``latents``."""
    fn = getattr(model, "latents", None)
    if fn is None:
        return latent_bits_estimate(model.entropy_model(domain), y)
    was = model.training
    model.eval()
    try:
        _, lk = fn(y, domain)
    finally:
        model.train(was)
    return float(bits_from_likelihoods(lk.values()))


def _mean(rows: List[dict]) -> Dict[str, float]:
    if not rows:
        return {"n": 0}
    out = {k: float(np.nanmean([r[k] for r in rows])) if not all(math.isnan(r[k]) for r in rows) else float("nan")
           for k in rows[0]}
    out["n"] = len(rows)
    return out


def encode_pil(arr: np.ndarray, fmt: str, q) -> bytes:
    """Encode an HxWx3 uint8 array as JPEG (``q`` = quality; 4:4:4 from 90) or lossy JPEG2000
    (``q`` = compression ratio; irreversible 9/7 wavelet, colour transform) with Pillow."""
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if fmt == "jpeg":
        im.save(buf, format="JPEG", quality=int(q), subsampling=0 if q >= 90 else 2)
    else:  # JPEG2000, lossy: irreversible 9/7 wavelet + colour transform, target PSNR layers
        im.save(buf, format="JPEG2000", irreversible=True, mct=1, quality_mode="rates", quality_layers=[float(q)])
    return buf.getvalue()


def evaluate_baseline(images: Iterable[torch.Tensor], fmt: str, q) -> Dict[str, float]:
    """JPEG (``q`` = quality 1..95) or JPEG2000 (``q`` = compression ratio) on uint8 images."""
    rows = []
    for img in images:
        arr = img.permute(1, 2, 0).contiguous().numpy()
        data = encode_pil(arr, fmt, q)
        rec = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)
        h, w = img.shape[-2:]
        rows.append({"bpp": 8 * len(data) / (h * w), "psnr": psnr(img, rec), "ms_ssim": ms_ssim(img, rec)})
    return _mean(rows)


JPEG_QUALITIES = (3, 5, 7, 10, 20, 30, 50, 70, 85, 95)
JPEG2000_RATIOS = (600, 400, 250, 160, 96, 64, 40, 24, 16, 10)


def baseline_curve(images: List[torch.Tensor], fmt: str, params=None) -> List[Dict[str, float]]:
    """RD points of a baseline codec over a list of images (sorted by bpp)."""
    params = params or (JPEG_QUALITIES if fmt == "jpeg" else JPEG2000_RATIOS)
    pts = [dict(evaluate_baseline(images, fmt, q), param=q) for q in params]
    return sorted(pts, key=lambda p: p["bpp"])
