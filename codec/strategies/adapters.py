"""Decoder adapters with a gate (Presta et al., "Domain Adaptation for Learned Image
Compression with Supervised Adapters"), on any source codec whose decoder ``g_s`` has the
factorized layout (transposed conv, inverse GDN, ... four transposed convs): the factorized
prior (:mod:`codec.model`) and compressai's scale / mean-scale hyperpriors
(:mod:`codec.hyperprior`).

What is Presta et al.'s (the paper, section 3):

- ``K + 1`` adapters: one per target domain *and one for the source domain* (index 0), all
  trained ("the adapter on the source domain could be skipped but it turns out to be useful").
  Each adapter set has a 3x3 stride-2 transposed conv beside each of the last three transposed
  convs of ``g_s`` (the paper's choice for Cheng et al.'s CNN decoder, "the last three layers");
  the layer's output becomes ``l_j(y) + sum_k v_k Ad_j^k(y)`` (eq. 1-2).
- Adapters are initialised from a Gaussian (weights ``N(0, init_std)``, biases 0; the paper
  says "initialised from a Gaussian distribution", the authors' code uses std 0.01, the
  default here; ``init_std = 0`` gives zero adapters, i.e. a decoder that starts as the source
  decoder).
- A gate on the unquantised latent ``y`` (Fig. 1d): conv 3x3 -> ReLU -> MaxPool 2 -> adaptive
  pooling -> linear -> softmax over the ``K + 1`` domains, giving ``v``.
- Loss ``gamma * MSE + CE(domain, v)`` (eq. 3), gamma = 0.5. The paper does not state the MSE
  scale; as written (images in [0, 1], compressai's ``ToTensor``) it is the MSE of [0, 1]
  images, the default here (``mse_scale = 1``). The authors' released code
  (``GateDistorsionLoss``) multiplies it by ``255^2`` (``mse_scale = 65025``): the distortion
  term then outweighs the cross-entropy by 10-1000x and drives the gate, which routes by
  distortion rather than by domain (measured on the tiny test codecs: gate accuracy on the
  source domain 0 % after the first task with 255^2, 100 % with 1).
- The source codec (encoder, entropy model, decoder) is frozen: the latents and their rate are
  those of the source codec, and a file written by the source codec is decoded by the plain
  source decoder (see compatibility below).
- Blending policies (paper section 4.3): ``soft`` (weighted sum, the paper's), ``top1`` (only
  the arg-max adapter), ``oracle`` (the adapter of the true domain, i.e. the domain id written
  in the header).

What differs (the paper trains all domains jointly, once; here domains may arrive one task at
a time, and old files must keep decoding):

- ``v`` is written in the bitstream as side information and counted in bpp: one byte with the
  number of adapters ``n`` then, for ``soft``, ``n`` bytes ``round(255 v_k)``; for ``top1`` one
  byte (the index); for ``oracle`` nothing more. In eval mode the forward pass uses the same
  quantised ``v`` so it reproduces the decoder exactly.
- Compatibility. A file with no side bytes (written by the source codec: its codec id, no gate
  bytes) is decoded with the plain source decoder, pixel for pixel as the source codec decodes
  it. A file that names ``n`` adapters is decoded with adapters ``0..n-1`` only (the codec id
  covers the source decoder + those adapters), and the learner freezes the adapters of a task
  when it ends, so files written after task ``t`` decode bit-exactly after tasks ``t+1, ...``.
- Incremental training (:mod:`codec.learner`): the source adapter trains with the first target
  adapter (task 1) and is frozen afterwards; the gate trains at every task over all domains
  seen so far, from a memory of earlier domains (``learner.gate_memory``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from compressai.models.utils import deconv
from torch import Tensor, nn

from codec.entropy import cached_digest
from codec.registry import Strategy, build_codec, register_codec, register_strategy
from incdet.errors import ConfigError

POLICIES = ("soft", "top1", "oracle")
ADAPTED_LAYERS = (2, 4, 6)  # indices of the adapted transposed convs in g_s (the last three)
DEFAULT_INIT_STD = 0.01     # authors' code: normal_(weight, 0, 0.01), zero bias


def check_decoder_layout(source: nn.Module) -> None:
    """``source.g_s`` must be ``deconv, GDN^-1, deconv, GDN^-1, deconv, GDN^-1, deconv`` (the
    factorized / hyperprior decoders): else ``ConfigError`` saying what was found."""
    g_s = getattr(source, "g_s", None)
    kind = source.arch().get("kind") if hasattr(source, "arch") else type(source).__name__
    ok = isinstance(g_s, nn.Sequential) and len(g_s) == 7 and all(
        isinstance(g_s[i], nn.ConvTranspose2d) == (i % 2 == 0) for i in range(7))
    if not ok:
        found = [type(m).__name__ for m in g_s] if isinstance(g_s, nn.Sequential) else type(g_s).__name__
        raise ConfigError(f"adapters: the source codec ({kind!r}) has no decoder g_s of the factorized layout "
                          f"(4 transposed convs with inverse GDN between them); found {found}")


class Gate(nn.Module):
    """Latent -> logits over ``n`` domains (Presta et al. Fig. 1d)."""

    def __init__(self, M: int, n: int, hidden: int = 64):
        super().__init__()
        self.conv = nn.Conv2d(M, hidden, 3, padding=1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.fc = nn.Linear(hidden, n)

    def forward(self, y: Tensor) -> Tensor:
        h = self.pool(F.relu(self.conv(y)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))

    def grow(self) -> None:
        """One more output (a new domain); old rows kept, the new row starts at zero weight and
        the mean old bias (no preference)."""
        old = self.fc
        new = nn.Linear(old.in_features, old.out_features + 1).to(old.weight.device)
        with torch.no_grad():
            new.weight[:-1].copy_(old.weight)
            new.bias[:-1].copy_(old.bias)
            new.weight[-1].zero_()
            new.bias[-1].fill_(float(old.bias.mean()))
        self.fc = new


def _adapter_set(layers: nn.Sequential, init_std: float) -> nn.ModuleList:
    mods = []
    for i in ADAPTED_LAYERS:
        l = layers[i]
        a = deconv(l.in_channels, l.out_channels, kernel_size=3, stride=2)
        with torch.no_grad():
            if init_std > 0:
                nn.init.normal_(a.weight, 0.0, init_std)
            else:
                nn.init.zeros_(a.weight)
            nn.init.zeros_(a.bias)
        mods.append(a)
    return nn.ModuleList(mods)


@register_codec("adapters")
class AdapterCodec(nn.Module):
    """Frozen source codec + per-domain decoder adapters + gate. See the module docstring.

    Args:
        source: a source codec (``base_codec = True``) whose ``g_s`` has the factorized layout.
        n_domains: adapter sets to create (the source one included).
        policy: ``soft`` | ``top1`` | ``oracle``.
        gate_hidden: channels of the gate's conv.
        init_std: std of the Gaussian init of adapter weights (0: zeros).
    """

    kind = "adapters"

    def __init__(self, source: nn.Module, n_domains: int = 1, policy: str = "soft", gate_hidden: int = 64,
                 init_std: float = DEFAULT_INIT_STD):
        super().__init__()
        if policy not in POLICIES:
            raise ConfigError(f"unknown adapter policy {policy!r}; known: {', '.join(POLICIES)}")
        if not getattr(source, "base_codec", False):
            raise ConfigError(f"adapters wrap a source codec, got a {type(source).__name__}")
        if getattr(source, "enc_affine", None) is not None:
            raise ConfigError("adapters need a plain source codec (no selective-fine-tuning affines)")
        check_decoder_layout(source)
        self.base = source
        self.base.requires_grad_(False)
        self.N, self.M = source.N, source.M
        self.policy = policy
        self.gate_hidden = int(gate_hidden)
        self.init_std = float(init_std)
        self.gate = Gate(self.M, n_domains, self.gate_hidden)
        self.adapters = nn.ModuleList(_adapter_set(source.g_s, self.init_std) for _ in range(n_domains))

    @classmethod
    def from_arch(cls, arch: dict) -> "AdapterCodec":
        base_arch = arch.get("base") or {"kind": "factorized", "N": arch["N"], "M": arch["M"]}
        return cls(build_codec(base_arch), arch["n_domains"], arch["policy"], arch.get("gate_hidden", 64),
                   arch.get("init_std", 0.0))

    def arch(self) -> dict:
        return {"kind": self.kind, "N": self.N, "M": self.M, "n_domains": len(self.adapters),
                "policy": self.policy, "gate_hidden": self.gate_hidden, "init_std": self.init_std,
                "base": self.base.arch()}

    def add_domain(self) -> int:
        """Add an adapter set (Gaussian init) and a gate output; returns its domain id."""
        self.adapters.append(_adapter_set(self.base.g_s, self.init_std).to(next(self.base.parameters()).device))
        self.gate.grow()
        return len(self.adapters) - 1

    def n_domains(self) -> int:
        return len(self.adapters)

    # -- what the base codec decides --------------------------------------------------------
    @property
    def two_stream(self) -> bool:
        return bool(getattr(self.base, "two_stream", False))

    @property
    def downsampling_factor(self) -> int:
        return self.base.downsampling_factor

    # -- gate <-> weights ---------------------------------------------------------------
    def quantise_gate(self, logits: Tensor, domain, labels: Optional[Tensor] = None) -> Tensor:
        """Weights ``v`` ``[B, n]`` as the decoder will see them (after the byte round trip).
        ``oracle``: one-hot of ``labels`` (per item) or else of ``domain``."""
        n = logits.shape[1]
        if self.policy == "oracle":
            if labels is None:
                labels = torch.full((logits.shape[0],), int(domain), device=logits.device)
            return F.one_hot(labels.to(logits.device).long(), n).to(logits.dtype)
        if self.policy == "top1":
            return F.one_hot(logits.argmax(1), n).to(logits.dtype)
        q = torch.round(torch.softmax(logits, 1) * 255)
        return q / q.sum(1, keepdim=True).clamp_min(1)

    def blend_weights(self, logits: Tensor, domain, labels: Optional[Tensor] = None) -> Tensor:
        """Weights used in training (differentiable soft weights for ``soft``)."""
        if self.policy == "soft" and self.training:
            return torch.softmax(logits, 1)
        return self.quantise_gate(logits, domain, labels)

    def side_info(self, y: Tensor, domain: int = 0) -> bytes:
        n = len(self.adapters)
        logits = self.gate(y)
        if self.policy == "oracle":
            return bytes([n])
        if self.policy == "top1":
            return bytes([n, int(logits[0].argmax())])
        q = torch.round(torch.softmax(logits, 1)[0] * 255).to(torch.int64).tolist()
        return bytes([n] + q)

    def parse_side(self, data: bytes, domain: int = 0) -> Optional[Tensor]:
        """Blend weights ``[1, n]`` from the side bytes; no bytes (a file of the source codec)
        -> None (the plain source decoder)."""
        if len(data) == 0:
            return None
        n = data[0]
        if n < 1 or n > len(self.adapters):
            raise ValueError(f"bitstream uses {n} adapters, this codec has {len(self.adapters)}")
        body = data[1:]
        if self.policy == "oracle":
            if body or domain >= n:
                raise ValueError(f"oracle policy: expected no gate body and domain < {n}")
            v = F.one_hot(torch.tensor([domain]), n).float()
        elif self.policy == "top1":
            if len(body) != 1 or body[0] >= n:
                raise ValueError("top1 policy: expected one adapter index byte")
            v = F.one_hot(torch.tensor([body[0]]), n).float()
        else:
            if len(body) != n:
                raise ValueError(f"soft policy: expected {n} gate bytes, got {len(body)}")
            q = torch.tensor(list(body), dtype=torch.float32)[None]
            v = q / q.sum(1, keepdim=True).clamp_min(1)
        return v

    # -- domain codec interface (the base codec's encoder and entropy coding) -----------------
    def latent_channels(self, domain: int = 0) -> int:
        return self.base.latent_channels(0)

    def hyper_channels(self, domain: int = 0) -> int:
        """Channels of the side latent ``z`` (a hyperprior base only)."""
        return self.base.hyper_channels(0)

    def entropy_model(self, domain: int = 0):
        em = getattr(self.base, "entropy_model", None)
        return em(0) if callable(em) else self.base.entropy_bottleneck

    def entropy_encode(self, y: Tensor, domain: int = 0):
        """The base codec's streams for ``y`` (one for the factorized prior, ``z`` then ``y`` for
        a hyperprior): the adapted codec writes the source codec's latents as they are."""
        enc = getattr(self.base, "entropy_encode", None)
        if enc is not None:
            return enc(y, 0)
        return [(self.entropy_model(0).compress(y)[0], tuple(int(s) for s in y.shape[1:]))]

    def entropy_decode(self, streams, domain: int = 0, name: str = "<bytes>") -> Tensor:
        """``y_hat`` ``[1, C, h, w]`` from the streams of :meth:`entropy_encode` (the base codec's
        bounds-checked decoder)."""
        dec = getattr(self.base, "entropy_decode", None)
        if dec is not None:
            return dec(streams, 0, name)
        from codec.bitstream import entropy_decode as _single_stream

        (payload, shape), = streams
        return _single_stream(self.entropy_model(0), payload, shape, name)

    def analysis(self, x: Tensor, domain: int = 0) -> Tensor:
        return self.base.analysis(x, 0)

    def latents(self, y: Tensor, domain: int = 0) -> Tuple[Tensor, Dict[str, Tensor]]:
        return self.base.latents(y, 0)

    def synthesis(self, y_hat: Tensor, domain: int = 0, side=None) -> Tensor:
        """``side``: blend weights ``[B, n]`` (``n`` <= number of adapters); None -> the source
        decoder (``base.synthesis``)."""
        if side is None:
            return self.base.synthesis(y_hat, 0)
        v = side.to(y_hat.device, y_hat.dtype)
        n = v.shape[1]
        x = y_hat
        j = 0
        for i, layer in enumerate(self.base.g_s):
            out = layer(x)
            if i in ADAPTED_LAYERS:
                for k in range(n):
                    out = out + v[:, k, None, None, None] * self.adapters[k][j](x)
                j += 1
            x = out
        return x

    def forward(self, x: Tensor, domain: int = 0, labels: Optional[Tensor] = None,
                extra_y: Optional[Tensor] = None) -> Dict:
        """Adapted forward pass. ``labels`` (``[B]`` domain ids): the oracle policy's adapters
        per item. ``extra_y``: latents (e.g. a memory of earlier domains) run through the gate
        only, their logits returned as ``"extra_logits"``."""
        y = self.base.analysis(x, 0)
        y_hat, lk = self.base.latents(y, 0)
        logits = self.gate(y)
        v = self.blend_weights(logits, domain, labels)
        out = {"x_hat": self.synthesis(y_hat, domain, v), "likelihoods": lk, "gate_logits": logits, "gate_v": v}
        if extra_y is not None:
            out["extra_logits"] = self.gate(extra_y)
        return out

    def decoder_tensors(self, domain: int = 0, n: Optional[int] = None) -> List[Tuple[str, Tensor]]:
        n = len(self.adapters) if n is None else n
        out = list(self.base.decoder_tensors(0))
        for k in range(n):
            out += [(f"adapters.{k}." + kk, v) for kk, v in self.adapters[k].state_dict().items()]
        return out

    def codec_id(self, domain: int = 0, side: bytes = b"") -> bytes:
        """No side bytes: the source codec's id (its files decode with the source decoder);
        ``n`` adapters named: the digest of the source decoder + adapters ``0..n-1``."""
        if not side:
            return self.base.codec_id(0)
        n = side[0]
        if n < 1 or n > len(self.adapters):
            return b"\xff" * 8  # names adapters this codec does not have: never matches
        return cached_digest(self, n, self.decoder_tensors(domain, n))

    def update(self, force: bool = True) -> None:
        self.base.update(force=force)

    def adapter_loss(self, out: Dict, x: Tensor, domain_labels: Tensor, gamma: float, mse_scale: float = 1.0,
                     extra_labels: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``gamma * mse_scale * MSE + CE(domain, gate)`` (Presta et al. eq. 3, gamma = 0.5; MSE of
        [0, 1] images times ``mse_scale``, see the module docstring). The cross-entropy covers the
        batch's logits and, when given, ``out["extra_logits"]`` with ``extra_labels`` (latents of
        earlier domains from the gate memory), each logit row weighted equally."""
        mse = F.mse_loss(out["x_hat"], x)
        logits, labels = out["gate_logits"], domain_labels
        if extra_labels is not None and "extra_logits" in out:
            logits = torch.cat([logits, out["extra_logits"]])
            labels = torch.cat([labels, extra_labels.to(labels.device)])
        ce = F.cross_entropy(logits, labels.long())
        return {"loss": gamma * mse_scale * mse + ce, "mse_loss": mse, "ce_loss": ce}


def trainable_adapters(task_index: int, n_domains: int, joint: bool = False) -> List[int]:
    """Adapters that train in task ``t``: all of them in a joint task; else adapter ``t``, plus the
    source adapter 0 in the first adaptation task (t = 1). Earlier adapters stay frozen."""
    if joint:
        return list(range(n_domains))
    return [0, task_index] if task_index == 1 else [task_index]


@register_strategy("adapters")
class Adapters(Strategy):
    """Task ``t``: wrap the source codec (``config.policy``, ``config.adapter_init_std``), add
    adapters up to ``t``; the gate and the adapters of :func:`trainable_adapters` train."""

    def grow(self, model: nn.Module, task_index: int, config) -> "AdapterCodec":
        if not isinstance(model, AdapterCodec):
            if not getattr(model, "base_codec", False):
                raise ConfigError(f"strategy adapters cannot wrap a {model.arch().get('kind')!r} codec")
            model = AdapterCodec(model, 1, config.policy,
                                 init_std=getattr(config, "adapter_init_std", DEFAULT_INIT_STD))
        while model.n_domains() <= task_index:
            model.add_domain()
        return model

    def set_trainable(self, model: "AdapterCodec", task_index: int, joint: bool = False) -> None:
        model.requires_grad_(False)
        model.gate.requires_grad_(True)
        for k in trainable_adapters(task_index, model.n_domains(), joint):
            model.adapters[k].requires_grad_(True)
