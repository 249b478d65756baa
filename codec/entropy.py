"""Helpers around compressai's ``EntropyBottleneck`` (the rANS coder is compressai's own).

The quantised CDF tables (``_quantized_cdf``, ``_cdf_length``, ``_offset``) are registered
buffers of the bottleneck; they are computed once by ``update()`` after training and then
saved in the checkpoint, so decoding never recomputes them. Their size depends on the
trained quantiles, so loading a checkpoint into a fresh module must first resize them
(:func:`resize_entropy_buffers`), as compressai's ``CompressionModel.load_state_dict`` does.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Iterable, Tuple

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")


GC_BUFFERS = CDF_BUFFERS + ("scale_table",)  #: a ``GaussianConditional``'s tables


def resize_entropy_buffers(module: nn.Module, state_dict: Dict[str, Tensor]) -> None:
    """Resize every ``EntropyBottleneck`` / ``GaussianConditional`` table buffer of ``module``
    to the shape found in ``state_dict``."""
    for name, sub in module.named_modules():
        if isinstance(sub, EntropyBottleneck):
            bufs = CDF_BUFFERS
        elif isinstance(sub, GaussianConditional):
            bufs = GC_BUFFERS
        else:
            continue
        prefix = f"{name}." if name else ""
        for buf in bufs:
            key = prefix + buf
            if key in state_dict:
                old = getattr(sub, buf)
                new = state_dict[key]
                sub.register_buffer(buf, torch.zeros_like(new, dtype=old.dtype, device=old.device))


def is_updated(eb) -> bool:
    """True when the CDF tables of an ``EntropyBottleneck`` / ``GaussianConditional`` have been
    computed (``update()`` was called)."""
    return eb._offset.numel() > 0 and eb._quantized_cdf.numel() > 0


def bits_from_likelihoods(likelihoods: Iterable[Tensor]) -> Tensor:
    """Estimated rate in bits: ``sum(-log2 p)`` over all likelihood tensors."""
    return sum((-torch.log2(lk)).sum() for lk in likelihoods)


def tensors_digest(named: Iterable[Tuple[str, Tensor]], n_bytes: int = 8) -> bytes:
    """A short SHA-256 digest of named tensors (names, dtypes, shapes and raw bytes).

    Used as the *codec id* in bitstream headers: the digest of everything the decoder of
    one domain reads (CDF tables, medians, decoder weights). Same bytes -> same id on any
    machine; any retraining of those tensors -> a different id.
    """
    h = hashlib.sha256()
    for name, t in named:
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.digest()[:n_bytes]


def cached_digest(owner, key, named) -> bytes:
    """:func:`tensors_digest` memoised on ``owner`` while no tensor changed: the cache key holds
    the bytes of every small tensor and, for large ones (conv weights), the storage pointer and
    autograd version counter (bumped by every in-place update: optimizer steps,
    ``load_state_dict``, ``copy_``)."""
    named = list(named)

    def tag(n, t):
        if t.numel() <= 65536:  # small tensors (CDF tables, medians, GDN params): their bytes
            return (n, str(t.dtype), tuple(t.shape), t.detach().cpu().contiguous().numpy().tobytes())
        return (n, str(t.dtype), tuple(t.shape), t.device.type, t.data_ptr(), t._version)

    sig = (key,) + tuple(tag(n, t) for n, t in named)
    cache = owner.__dict__.setdefault("_digest_cache", {})
    hit = cache.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    d = tensors_digest(named)
    cache[key] = (sig, d)
    return d


def entropy_model_tensors(eb: EntropyBottleneck, prefix: str):
    """Named tensors that fully define decoding with ``eb``: CDF tables and medians."""
    out = [(prefix + b, getattr(eb, b)) for b in CDF_BUFFERS]
    out.append((prefix + "medians", eb.quantiles[:, :, 1:2]))
    return out


def latent_bits_estimate(eb: EntropyBottleneck, y: Tensor) -> float:
    """Estimated bits of quantised ``y`` under ``eb`` (eval-mode likelihoods)."""
    was = eb.training
    eb.eval()
    with torch.no_grad():
        _, lk = eb(y)
    eb.train(was)
    return float(bits_from_likelihoods([lk]))

