"""The base codec: Balle et al.'s factorized-prior autoencoder, built from compressai parts.

Encoder ``g_a``: four 5x5 stride-2 convolutions with GDN between them; decoder ``g_s``: four
5x5 stride-2 transposed convolutions with inverse GDN between them; a per-channel factorized
entropy model (compressai ``EntropyBottleneck``; its rANS coder writes the real bitstream).
Module names match ``compressai.models.FactorizedPrior`` so its ``bmshj2018-factorized``
state_dicts load as they are (:func:`import_compressai`).

Every codec here (this one, CAwF, the adapter codec) exposes the same *domain codec*
interface used by :mod:`codec.bitstream` and the learner:

- ``forward(x, domain=0)``: ``x`` float ``[B, 3, H, W]`` in ``[0, 1]``, H and W multiples of 16.
  Train mode: additive-noise proxy; eval mode: rounding. Returns ``{"x_hat", "likelihoods":
  {"y": ...}}`` (plus extra entries for strategies, e.g. ``"gate_logits"``).
- ``analysis(x, domain)`` -> latent ``y``; ``entropy_model(domain)`` -> ``EntropyBottleneck``;
  ``synthesis(y_hat, domain, side)`` -> ``x_hat`` (unclamped);
  ``side_info(y, domain)`` -> bytes written in the bitstream; ``parse_side(bytes, domain)``.
- ``decoder_tensors(domain)``: every tensor the decoder of that domain reads; its digest is the
  ``codec_id`` written in bitstream headers.
- ``arch()``: builtins that rebuild the module with :func:`codec.registry.build_codec`
  (every codec class registers its ``kind`` with :func:`codec.registry.register_codec`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from codec.bitstream import pad_to_multiple  # noqa: F401  (re-exported: it lived here)
from codec.entropy import cached_digest, entropy_model_tensors, resize_entropy_buffers
from codec.registry import build_codec, register_codec
from incdet.errors import CheckpointError

#: DANICE's four rate-distortion trade-offs (loss R + lambda * 255^2 * MSE, compressai convention)
LAMBDAS = (0.002, 0.008, 0.016, 0.032)

CKPT_FORMAT = "incdet-codec"
CKPT_VERSION = 1


class ChannelAffine(nn.Module):
    """Per-channel ``alpha * z + beta`` (DANICE selective fine-tuning); identity at init."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.alpha + self.beta


def _conv_indices(seq: nn.Sequential) -> List[int]:
    return [i for i, m in enumerate(seq) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@register_codec("factorized")
class FactorizedCodec(nn.Module):
    """Factorized-prior codec (Balle et al. 2018, compressai's ``bmshj2018-factorized``).

    Args:
        N: channels of the hidden layers (64 in DANICE; 128 / 192 in compressai's zoo).
        M: latent channels (defaults to N).
        affine: insert identity-initialised per-channel ``alpha * z + beta`` after every
            convolution (used by selective fine-tuning; absent from compressai checkpoints).

    One model for every domain: the ``domain`` arguments are accepted and ignored (the domain
    id still goes into the bitstream header as information).
    """

    kind = "factorized"
    base_codec = True     #: a source codec (not a wrapper of one)
    two_stream = False    #: one entropy-coded stream (``y``)

    def __init__(self, N: int = 64, M: Optional[int] = None, affine: bool = False):
        super().__init__()
        M = N if M is None else M
        self.N, self.M = int(N), int(M)
        self.entropy_bottleneck = EntropyBottleneck(self.M)
        self.g_a = nn.Sequential(
            conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M),
        )
        self.g_s = nn.Sequential(
            deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
            deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
        )
        self.enc_affine: Optional[nn.ModuleList] = None
        self.dec_affine: Optional[nn.ModuleList] = None
        if affine:
            self.add_affine()

    # -- construction --------------------------------------------------------------
    def add_affine(self) -> None:
        """Insert per-channel affines after every conv (identity, so outputs are unchanged)."""
        if self.enc_affine is not None:
            return
        dev = next(self.parameters()).device
        self.enc_affine = nn.ModuleList(ChannelAffine(self.g_a[i].out_channels) for i in _conv_indices(self.g_a)).to(dev)
        self.dec_affine = nn.ModuleList(ChannelAffine(self.g_s[i].out_channels) for i in _conv_indices(self.g_s)).to(dev)

    def arch(self) -> dict:
        return {"kind": self.kind, "N": self.N, "M": self.M, "affine": self.enc_affine is not None}

    @classmethod
    def from_arch(cls, arch: dict) -> "FactorizedCodec":
        return cls(arch["N"], arch["M"], affine=bool(arch.get("affine", False)))

    @property
    def downsampling_factor(self) -> int:
        return 16

    # -- domain codec interface --------------------------------------------------------
    def latent_channels(self, domain: int = 0) -> int:
        return self.M

    def entropy_model(self, domain: int = 0) -> EntropyBottleneck:
        return self.entropy_bottleneck

    @staticmethod
    def _run(seq: nn.Sequential, affines: Optional[nn.ModuleList], x: Tensor) -> Tensor:
        k = 0
        for m in seq:
            x = m(x)
            if affines is not None and isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                x = affines[k](x)
                k += 1
        return x

    def analysis(self, x: Tensor, domain: int = 0) -> Tensor:
        return self._run(self.g_a, self.enc_affine, x)

    def synthesis(self, y_hat: Tensor, domain: int = 0, side=None) -> Tensor:
        return self._run(self.g_s, self.dec_affine, y_hat)

    def side_info(self, y: Tensor, domain: int = 0) -> bytes:
        return b""

    def parse_side(self, data: bytes, domain: int = 0):
        if data:
            raise ValueError(f"this codec writes no side information, got {len(data)} bytes")
        return None

    def latents(self, y: Tensor, domain: int = 0) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(y_hat, likelihoods)`` of the latent ``y`` (noise in train mode, rounding in eval)."""
        y_hat, y_lk = self.entropy_model(domain)(y)
        return y_hat, {"y": y_lk}

    def forward(self, x: Tensor, domain: int = 0) -> Dict:
        y = self.analysis(x, domain)
        y_hat, lk = self.latents(y, domain)
        x_hat = self.synthesis(y_hat, domain)
        return {"x_hat": x_hat, "likelihoods": lk}

    def entropy_encode(self, y: Tensor, domain: int = 0) -> List[Tuple[bytes, Tuple[int, int, int]]]:
        """One rANS stream of ``y`` ``[1, M, h, w]`` (compressai's ``EntropyBottleneck.compress``):
        ``[(bytes, (M, h, w))]``."""
        from codec import bitstream

        return bitstream.eb_encode(self.entropy_model(domain), y)

    def entropy_decode(self, streams, domain: int = 0, name: str = "<bytes>") -> Tensor:
        """``y_hat`` ``[1, M, h, w]`` from :meth:`entropy_encode`'s stream (bounds-checked
        decoder; a bad stream -> ``CorruptStream`` naming ``name``)."""
        from codec import bitstream

        return bitstream.eb_decode_streams(self.entropy_model(domain), streams, name)

    def decoder_tensors(self, domain: int = 0) -> List[Tuple[str, Tensor]]:
        out = entropy_model_tensors(self.entropy_bottleneck, "entropy_bottleneck.")
        out += [("g_s." + k, v) for k, v in self.g_s.state_dict().items()]
        if self.dec_affine is not None:
            out += [("dec_affine." + k, v) for k, v in self.dec_affine.state_dict().items()]
        return out

    def codec_id(self, domain: int = 0, side: bytes = b"") -> bytes:
        """8-byte digest of what decoding ``domain`` reads (see :func:`codec.entropy.tensors_digest`)."""
        return cached_digest(self, 0, self.decoder_tensors(domain))

    def update(self, force: bool = True) -> None:
        """Compute the quantised CDF tables of every entropy model (call after training)."""
        for m in self.modules():
            if isinstance(m, EntropyBottleneck):
                m.update(force=force)

    def n_domains(self) -> Optional[int]:
        return None  # any domain id


def rd_loss(out: Dict, x: Tensor, lmbda: float) -> Dict[str, Tensor]:
    """``R + lambda * 255^2 * MSE`` with R in bits per pixel (compressai's convention)."""
    n, _, h, w = x.shape
    num_pixels = n * h * w
    bpp = sum((-torch.log2(lk)).sum() for lk in out["likelihoods"].values()) / num_pixels
    mse = F.mse_loss(out["x_hat"], x)
    return {"loss": bpp + lmbda * 255 ** 2 * mse, "bpp_loss": bpp, "mse_loss": mse}


# ---------------------------------------------------------------------------------------
# building, saving, loading
# ---------------------------------------------------------------------------------------
def load_state_into(model: nn.Module, state: Dict[str, Tensor], strict: bool = True, what: str = "checkpoint") -> None:
    """``load_state_dict`` after resizing the CDF buffers; a mismatch -> ``CheckpointError``."""
    resize_entropy_buffers(model, state)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise CheckpointError(f"{what}: weights do not fit the codec architecture: {str(e)[:400]}") from None


#: compressai zoo architectures :func:`import_compressai` reads -> codec kind
COMPRESSAI_SUPPORTED = {"bmshj2018-factorized": "factorized", "bmshj2018-hyperprior": "scale-hyperprior",
                        "mbt2018-mean": "mean-scale-hyperprior"}


def _supported() -> str:
    return ", ".join(f"{k} ({v})" for k, v in COMPRESSAI_SUPPORTED.items())


def detect_compressai(state: Dict[str, Tensor], what: str = "compressai state_dict") -> Tuple[str, int, int]:
    """``(codec kind, N, M)`` of a compressai state_dict, from its keys and weight shapes:
    ``g_a`` only -> ``bmshj2018-factorized``; ``h_a`` / ``h_s`` with ``h_s``'s last conv giving M
    channels -> ``bmshj2018-hyperprior`` (scale), 2M -> ``mbt2018-mean`` (mean-scale). A context
    model (``mbt2018``, ``cheng2020-*``: ``context_prediction`` / ``entropy_parameters``) or
    anything else -> ``CheckpointError`` naming the supported architectures."""
    keys = set(state)
    if any(k.startswith(("context_prediction.", "entropy_parameters.")) for k in keys):
        raise CheckpointError(f"{what}: a compressai context-model state_dict (mbt2018 / cheng2020: "
                              f"context_prediction / entropy_parameters layers) is not supported; supported: "
                              f"{_supported()}")
    need = ("g_a.0.weight", "g_a.6.weight")
    if not all(k in keys for k in need) or state["g_a.0.weight"].dim() != 4 or state["g_a.6.weight"].dim() != 4:
        raise CheckpointError(f"{what}: not a supported compressai state_dict (no 4-D g_a.0.weight / g_a.6.weight, "
                              f"the layout of the supported architectures: {_supported()})")
    N = int(state["g_a.0.weight"].size(0))
    M = int(state["g_a.6.weight"].size(0))
    has_hyper = any(k.startswith(("h_a.", "h_s.")) for k in keys)
    if not has_hyper:
        return "factorized", N, M
    last = state.get("h_s.4.weight")
    if last is None or last.dim() != 4 or "h_a.0.weight" not in keys:
        raise CheckpointError(f"{what}: a hyperprior state_dict without the h_a.0 / h_s.4 layers of the supported "
                              f"architectures ({_supported()})")
    if int(last.size(0)) == M:
        return "scale-hyperprior", N, M
    if int(last.size(0)) == 2 * M:
        return "mean-scale-hyperprior", N, M
    raise CheckpointError(f"{what}: h_s.4 gives {int(last.size(0))} channels, neither M={M} (bmshj2018-hyperprior) "
                          f"nor 2M (mbt2018-mean); supported: {_supported()}")


def import_compressai(state_or_path, affine: bool = False) -> nn.Module:
    """Build a codec from a compressai state_dict (a dict or a local file holding it,
    optionally under a ``"state_dict"`` key): ``bmshj2018-factorized`` ->
    :class:`FactorizedCodec`, ``bmshj2018-hyperprior`` / ``mbt2018-mean`` -> the
    :mod:`codec.hyperprior` codecs; N and M from the weight shapes (:func:`detect_compressai`;
    context models -> ``CheckpointError``).

    The CDF tables are taken from the state_dict when present (an ``update()``-d model),
    else computed here with ``update()``. ``affine`` (identity per-channel affines) applies to
    the factorized codec only.
    """
    what = str(state_or_path)
    if isinstance(state_or_path, (str, Path)):
        path = Path(state_or_path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such compressai checkpoint")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
            raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({e.__class__.__name__}: {e})") from None
        what = str(path)
    else:
        state = state_or_path
        what = "compressai state_dict"
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: not a compressai state_dict (a mapping of names to tensors)")
    # DataParallel prefixes and the older compressai key names (_matrix0 ...), as compressai does
    from compressai.models.utils import remap_old_keys
    from compressai.zoo.pretrained import load_pretrained

    state = remap_old_keys("entropy_bottleneck", load_pretrained(state))
    kind, N, M = detect_compressai(state, what)
    if affine and kind != "factorized":
        raise CheckpointError(f"{what}: per-channel affines apply to the factorized codec, this is a {kind}")
    import codec.hyperprior  # noqa: F401 - registers the hyperprior kinds

    model = build_codec({"kind": kind, "N": N, "M": M})
    load_state_into(model, state, strict=True, what=what)
    if affine:
        model.add_affine()
    from codec.entropy import is_updated

    if not all(is_updated(m) for m in model.modules() if m.__class__.__name__ in ("EntropyBottleneck",
                                                                                  "GaussianConditional")):
        model.update(force=True)
    elif kind != "factorized":  # keep the imported scale table's size for a later update()
        from compressai.models.google import get_scale_table

        table = model.gaussian_conditional.scale_table
        k = table.numel()
        if 2 <= k <= 4096 and torch.allclose(table.cpu(), get_scale_table(levels=k)):
            model.scale_levels = k
    return model.eval()


def save_checkpoint(path, model: nn.Module, extra: Optional[dict] = None) -> None:
    """Write ``{"format", "version", "arch", "state_dict", **extra}`` atomically
    (:func:`incdet.engine.checkpoint.save_atomic`; the folder is created when missing)."""
    from incdet.engine.checkpoint import save_atomic

    obj = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "arch": model.arch(),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if extra:
        obj.update(extra)
    save_atomic(obj, path)


def load_codec(path, map_location="cpu") -> Tuple[nn.Module, dict]:
    """Load a codec checkpoint written by :func:`save_checkpoint` (or a plain compressai
    state_dict of a supported architecture, :func:`import_compressai`), or a zoo entry ``zoo:NAME`` (sha256 checked). Returns ``(model in
    eval mode, checkpoint dict without weights)``; for a driver checkpoint the dict's ``run_meta`` holds
    its ``task_index`` / ``step`` / ``phase``."""
    from incdet import zoo

    if zoo.is_zoo_ref(str(path)):
        path = zoo.resolve(str(path))
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such codec checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read as a torch checkpoint ({e.__class__.__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a codec checkpoint (a {type(obj).__name__})")
    if obj.get("format") == "incdet-run" and isinstance(obj.get("learner"), dict) and "arch" in obj["learner"]:
        obj = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "arch": obj["learner"]["arch"],
               "state_dict": obj["learner"]["model"], "task": obj.get("task_index"), "run_checkpoint": str(path),
               "run_meta": {k: obj.get(k) for k in ("task_index", "step", "phase") if k in obj}}
    elif "arch" in obj and "model" in obj and "format" not in obj:  # a CodecLearner.state_dict()
        obj = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "arch": obj["arch"], "state_dict": obj["model"]}
    if obj.get("format") != CKPT_FORMAT:
        inner = obj.get("state_dict", obj) if isinstance(obj.get("state_dict", obj), dict) else {}
        if any(str(k).startswith(("g_a.", "module.g_a.")) for k in inner):  # a plain compressai state_dict
            m = import_compressai(path)
            return m, {"arch": m.arch(), "imported": str(path)}
        raise CheckpointError(f"{path}: not a codec checkpoint (format {obj.get('format')!r}, expected {CKPT_FORMAT!r})")
    if obj.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{path}: codec checkpoint version {obj.get('version')} not supported (expected {CKPT_VERSION})")
    if not isinstance(obj.get("arch"), dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{path}: codec checkpoint without 'arch' / 'state_dict'")
    model = build_codec(obj["arch"])
    load_state_into(model, obj["state_dict"], what=str(path))
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return model.eval(), meta
