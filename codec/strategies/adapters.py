"""Decoder adapters with a gate (Presta et al., "Domain Adaptation for Learned Image
Compression with Supervised Adapters"), on the factorized-prior decoder.

- One adapter set per domain (index 0 = source, then one per target domain): a 3x3
  stride-2 transposed conv beside each of the last three transposed convs of ``g_s``
  (Presta et al. plug theirs at the last deconv layers for Cheng et al.'s model); the layer's
  output becomes ``l_j(y) + sum_k v_k Ad_j^k(y)``. Adapters are zero-initialised, so the
  decoder starts as the source decoder (Presta et al. initialise from a Gaussian).
- A gate on the (unquantised) latent ``y``: conv 3x3 -> ReLU -> MaxPool 2 -> adaptive average
  pool -> linear -> softmax over the domains, giving ``v``.
- Blending policies: ``soft`` (weighted sum), ``top1`` (only the arg-max adapter), ``oracle``
  (the adapter of the true domain, i.e. the domain id written in the header).
- ``v`` is written in the bitstream as side information and counted in bpp: one byte with the
  number of adapters ``n`` then, for ``soft``, ``n`` bytes ``round(255 v_k)``; for ``top1`` one
  byte (the index); for ``oracle`` nothing more. In eval mode the forward pass uses the same
  quantised ``v`` so it reproduces the decoder exactly.
- The source codec (encoder, entropy model, decoder) is frozen: the latents and their rate are
  those of the source codec. Loss ``gamma * MSE + CE(domain, v)``.
- Backward compatibility: a bitstream that names ``n`` adapters is decoded with adapters
  ``0..n-1`` only, and adapters of past tasks are frozen, so old files decode bit-exactly
  after new domains are added (the codec id covers the decoder + adapters ``0..n-1``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.models.utils import deconv
from torch import Tensor, nn

from codec.entropy import cached_digest
from codec.model import FactorizedCodec
from codec.registry import Strategy, register_codec, register_strategy

POLICIES = ("soft", "top1", "oracle")
ADAPTED_LAYERS = (2, 4, 6)  # indices of the adapted transposed convs in g_s


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
        """One more output (a new domain); old rows kept."""
        old = self.fc
        new = nn.Linear(old.in_features, old.out_features + 1).to(old.weight.device)
        with torch.no_grad():
            new.weight[:-1].copy_(old.weight)
            new.bias[:-1].copy_(old.bias)
            new.weight[-1].zero_()
            new.bias[-1].fill_(float(old.bias.mean()))
        self.fc = new


def _adapter_set(layers: nn.Sequential) -> nn.ModuleList:
    mods = []
    for i in ADAPTED_LAYERS:
        l = layers[i]
        a = deconv(l.in_channels, l.out_channels, kernel_size=3, stride=2)
        nn.init.zeros_(a.weight)
        nn.init.zeros_(a.bias)
        mods.append(a)
    return nn.ModuleList(mods)


@register_codec("adapters")
class AdapterCodec(nn.Module):
    """Frozen source codec + per-domain decoder adapters + gate. See module docstring."""

    kind = "adapters"

    def __init__(self, source: FactorizedCodec, n_domains: int = 1, policy: str = "soft", gate_hidden: int = 64):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"unknown adapter policy {policy!r}; known: {', '.join(POLICIES)}")
        if source.enc_affine is not None:
            raise ValueError("adapters need a plain source codec (no selective-fine-tuning affines)")
        self.base = source
        self.base.requires_grad_(False)
        self.N, self.M = source.N, source.M
        self.policy = policy
        self.gate_hidden = gate_hidden
        self.gate = Gate(self.M, n_domains, gate_hidden)
        self.adapters = nn.ModuleList(_adapter_set(source.g_s) for _ in range(n_domains))

    @classmethod
    def from_arch(cls, arch: dict) -> "AdapterCodec":
        return cls(FactorizedCodec(arch["N"], arch["M"]), arch["n_domains"], arch["policy"], arch.get("gate_hidden", 64))

    def arch(self) -> dict:
        return {"kind": self.kind, "N": self.N, "M": self.M, "n_domains": len(self.adapters),
                "policy": self.policy, "gate_hidden": self.gate_hidden}

    def add_domain(self) -> int:
        self.adapters.append(_adapter_set(self.base.g_s).to(next(self.base.parameters()).device))
        self.gate.grow()
        return len(self.adapters) - 1

    def n_domains(self) -> int:
        return len(self.adapters)

    # -- gate <-> weights ---------------------------------------------------------------
    def quantise_gate(self, logits: Tensor, domain: int) -> Tensor:
        """Weights ``v`` ``[B, n]`` as the decoder will see them (after the byte round trip)."""
        n = logits.shape[1]
        if self.policy == "oracle":
            return F.one_hot(torch.full((logits.shape[0],), domain, device=logits.device), n).float()
        if self.policy == "top1":
            return F.one_hot(logits.argmax(1), n).float()
        q = torch.round(torch.softmax(logits, 1) * 255)
        return q / q.sum(1, keepdim=True).clamp_min(1)

    def blend_weights(self, logits: Tensor, domain: int) -> Tensor:
        """Weights used in training (differentiable soft weights for ``soft``)."""
        if self.policy == "soft" and self.training:
            return torch.softmax(logits, 1)
        return self.quantise_gate(logits, domain)

    def side_info(self, y: Tensor, domain: int = 0) -> bytes:
        n = len(self.adapters)
        logits = self.gate(y)
        if self.policy == "oracle":
            return bytes([n])
        if self.policy == "top1":
            return bytes([n, int(logits[0].argmax())])
        q = torch.round(torch.softmax(logits, 1)[0] * 255).to(torch.int64).tolist()
        return bytes([n] + q)

    def parse_side(self, data: bytes, domain: int = 0) -> Tensor:
        if len(data) < 1:
            raise ValueError("missing gate bytes")
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

    # -- domain codec interface ---------------------------------------------------------
    def latent_channels(self, domain: int = 0) -> int:
        return self.M

    def entropy_model(self, domain: int = 0) -> EntropyBottleneck:
        return self.base.entropy_bottleneck

    def analysis(self, x: Tensor, domain: int = 0) -> Tensor:
        return self.base.analysis(x)

    def synthesis(self, y_hat: Tensor, domain: int = 0, side=None) -> Tensor:
        """``side``: blend weights ``[B, n]`` (``n`` <= number of adapters); None -> source decoder."""
        if side is None:
            return self.base.synthesis(y_hat)
        v = side.to(y_hat.device)
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

    def forward(self, x: Tensor, domain: int = 0) -> Dict:
        y = self.base.analysis(x)
        y_hat, y_lk = self.base.entropy_bottleneck(y)
        logits = self.gate(y)
        v = self.blend_weights(logits, domain)
        x_hat = self.synthesis(y_hat, domain, v)
        return {"x_hat": x_hat, "likelihoods": {"y": y_lk}, "gate_logits": logits, "gate_v": v}

    def decoder_tensors(self, domain: int = 0, n: Optional[int] = None) -> List[Tuple[str, Tensor]]:
        n = len(self.adapters) if n is None else n
        out = self.base.decoder_tensors(0)
        for k in range(n):
            out += [(f"adapters.{k}." + kk, v) for kk, v in self.adapters[k].state_dict().items()]
        return out

    def codec_id(self, domain: int = 0, side: bytes = b"") -> bytes:
        n = side[0] if side else None
        if n is not None and n > len(self.adapters):
            return b"\xff" * 8  # names adapters this codec does not have: never matches
        return cached_digest(self, n, self.decoder_tensors(domain, n))

    def update(self, force: bool = True) -> None:
        self.base.update(force=force)

    def adapter_loss(self, out: Dict, x: Tensor, domain_labels: Tensor, gamma: float) -> Dict[str, Tensor]:
        """``gamma * MSE + CE(domain, gate)`` (Presta et al. eq. 3, their gamma = 0.5), the MSE of
        [0, 1] images. The adapters only see the MSE term (Adam makes its scale irrelevant for
        them); the gate sees both, and with [0, 1] MSE the cross-entropy dominates it, so it
        learns to recognise domains rather than to pick whichever adapter is trained."""
        mse = F.mse_loss(out["x_hat"], x)
        ce = F.cross_entropy(out["gate_logits"], domain_labels)
        return {"loss": gamma * mse + ce, "mse_loss": mse, "ce_loss": ce}


@register_strategy("adapters")
class Adapters(Strategy):
    """Task ``t``: wrap the source codec (``config.policy``), add adapters up to ``t``; the gate
    and adapter ``t`` train."""

    def grow(self, model: nn.Module, task_index: int, config) -> "AdapterCodec":
        if isinstance(model, FactorizedCodec):
            model = AdapterCodec(model, 1, config.policy)
        while model.n_domains() <= task_index:
            model.add_domain()
        return model

    def set_trainable(self, model: "AdapterCodec", task_index: int) -> None:
        model.requires_grad_(False)
        model.gate.requires_grad_(True)
        model.adapters[task_index].requires_grad_(True)
