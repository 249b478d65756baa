"""CAwF: Codec Adaptation without Forgetting (Katakol et al., DANICE).

The source codec (``shared``, a :class:`~codec.model.FactorizedCodec`) is frozen. Each new
domain ``d >= 1`` adds a :class:`CustomBranch`: ``K`` custom filters per conv layer (DANICE: 64
shared + 16 custom), a block-structured GDN and its own entropy model over the ``M + K``
latent channels. Block structure: shared output channels are computed by the frozen source
layers from shared inputs only (shared never read custom), custom output channels read
shared and custom inputs. The last decoder layer adds a custom ``K -> 3`` transposed conv.

Initialisation (DANICE does not specify one): a new branch starts *exactly* at the source
codec's function, in distortion and in rate, so adaptation can only move away from the source
where the target-domain loss says so:

- the custom ``K -> 3`` output conv of the decoder is zero: the custom decoder channels add
  nothing to the image;
- the last custom encoder conv (producing the ``K`` custom latent channels) is zero: the custom
  latent is exactly 0 (quantised: 0);
- the branch's entropy model copies the source model's densities for the ``M`` shared channels
  and gives the ``K`` custom channels a deterministic logistic density centred on 0 with scale
  :data:`CUSTOM_DENSITY_SCALE` (zero biases, compressai's matrix init): a zero custom latent
  costs ~0 bits (about 1e-4 bit per element in eval mode, ~2.4 x scale bit per element under
  training noise).

Earlier versions initialised the last custom encoder conv randomly and the custom densities with
compressai's default (``init_scale=10``, random biases): the custom latent then cost about
0.35 bpp on PACS at the start of every task, which 100 adaptation steps did not recover.

Hidden custom encoder/decoder filters keep their random (compressai) init: with the zero last
layers they do not change the output, and they give the gradient something to work with (the
decoder custom path reads the shared latent from step 1, so CAwF can lower distortion without
spending bits before it learns to use the custom latent).

Domain 0 runs exactly the source codec's modules, so its outputs, its rate-distortion and its
codec id are those of the source model by construction; a branch never changes once its
task is over, so every bitstream written at time t decodes bit-exactly at any later time.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from codec.entropy import cached_digest, entropy_model_tensors
from codec.model import FactorizedCodec
from codec.registry import Strategy, register_codec, register_strategy
from incdet.errors import ConfigError

#: scale of the logistic density given to the custom latent channels of a new branch's entropy
#: model (a zero custom latent then costs ~0 bits; see the module docstring)
CUSTOM_DENSITY_SCALE = 0.05


def _init_custom_density(eb: EntropyBottleneck, start: int, scale: float = CUSTOM_DENSITY_SCALE) -> None:
    """Channels ``start:`` of ``eb``: a logistic CDF centred on 0 with scale ``scale``.

    compressai's cumulative is ``H_L(...H_1(x))`` with ``H_i(x) = softplus(M_i) x + b_i`` plus
    ``tanh(a_i) tanh(.)`` gates; with compressai's matrix init for ``init_scale = scale``, zero
    biases and zero gates it is exactly ``x / scale``. Quantiles ``[-scale, 0, scale]`` (median
    0), as compressai initialises them.
    """
    ref = EntropyBottleneck(eb.channels - start, init_scale=scale, filters=eb.filters)
    with torch.no_grad():
        for dst, src in zip(eb.matrices, ref.matrices):
            dst[start:].copy_(src)
        for dst in list(eb.biases) + list(eb.factors):
            dst[start:].zero_()
        eb.quantiles[start:].copy_(ref.quantiles)


class BlockGDN(nn.Module):
    """The custom rows of a (inverse) GDN over ``S + K`` channels: normalises the ``K`` custom
    channels by all ``S + K`` inputs. compressai's ``GDN`` holds the parameters and their
    reparametrisation; only rows ``S:`` are used (the shared rows are the frozen source GDN)."""

    def __init__(self, S: int, K: int, inverse: bool = False):
        super().__init__()
        self.S, self.K = S, K
        self.gdn = GDN(S + K, inverse=inverse)

    def forward(self, x: Tensor) -> Tensor:
        C = x.shape[1]
        beta = self.gdn.beta_reparam(self.gdn.beta)[self.S:]
        gamma = self.gdn.gamma_reparam(self.gdn.gamma).reshape(C, C, 1, 1)[self.S:]
        norm = F.conv2d(x ** 2, gamma, beta)
        norm = torch.sqrt(norm) if self.gdn.inverse else torch.rsqrt(norm)
        return x[:, self.S:] * norm

    def n_used_parameters(self) -> int:
        return self.K + self.K * (self.S + self.K)


class CustomBranch(nn.Module):
    """The custom parameters of one domain (``K`` filters per layer + entropy model)."""

    def __init__(self, N: int, M: int, K: int, source_eb: Optional[EntropyBottleneck] = None):
        super().__init__()
        self.N, self.M, self.K = N, M, K
        # encoder: layer 0 reads the image, later layers read shared + custom
        self.enc = nn.ModuleList([conv(3, K), conv(N + K, K), conv(N + K, K), conv(N + K, K)])
        self.enc_gdn = nn.ModuleList([BlockGDN(N, K) for _ in range(3)])
        self.dec = nn.ModuleList([deconv(M + K, K), deconv(N + K, K), deconv(N + K, K), deconv(K, 3)])
        self.dec_gdn = nn.ModuleList([BlockGDN(N, K, inverse=True) for _ in range(3)])
        # start at the source codec's function (module docstring): zero custom latent, zero
        # custom image contribution, ~0-bit density for the custom latent channels
        for last in (self.enc[3], self.dec[3]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.entropy_bottleneck = EntropyBottleneck(M + K)
        _init_custom_density(self.entropy_bottleneck, M)
        if source_eb is not None:  # warm start: the shared channels' densities of the source model
            with torch.no_grad():
                for dst, src in zip(self.entropy_bottleneck.parameters(), source_eb.parameters()):
                    if dst.shape[1:] == src.shape[1:] and dst.shape[0] == src.shape[0] + K:
                        dst[: src.shape[0]].copy_(src)


@register_codec("cawf")
class CAwFCodec(nn.Module):
    """Shared frozen source codec + one custom branch per new domain.

    ``forward(x, domain)``: domain 0 is the source codec; domain ``d >= 1`` uses branch ``d-1``.
    The latent of domain ``d >= 1`` has ``M + K`` channels (shared first).
    """

    kind = "cawf"

    def __init__(self, source: FactorizedCodec, K: int = 16):
        super().__init__()
        if source.enc_affine is not None:
            raise ValueError("CAwF needs a plain source codec (no selective-fine-tuning affines)")
        self.shared = source
        self.K = int(K)
        self.N, self.M = source.N, source.M
        self.branches = nn.ModuleList()
        self.shared.requires_grad_(False)

    @classmethod
    def from_arch(cls, arch: dict) -> "CAwFCodec":
        m = cls(FactorizedCodec(arch["N"], arch["M"]), K=arch["K"])
        for _ in range(arch.get("n_custom", 0)):
            m.branches.append(CustomBranch(m.N, m.M, m.K))
        return m

    def arch(self) -> dict:
        return {"kind": self.kind, "N": self.N, "M": self.M, "K": self.K, "n_custom": len(self.branches)}

    def add_domain(self) -> int:
        """Add a custom branch that starts as the source codec (zero last custom encoder and
        decoder convs, source densities for the shared latent channels, ~0-bit densities for the
        custom ones); returns its domain id."""
        dev = next(self.shared.parameters()).device
        self.branches.append(CustomBranch(self.N, self.M, self.K, self.shared.entropy_bottleneck).to(dev))
        return len(self.branches)

    def n_domains(self) -> int:
        return 1 + len(self.branches)

    def branch(self, domain: int) -> CustomBranch:
        if not 1 <= domain <= len(self.branches):
            raise ValueError(f"CAwF codec has domains 0..{len(self.branches)}, got {domain}")
        return self.branches[domain - 1]

    def trainable_parameters(self, domain: int) -> List[nn.Parameter]:
        return list(self.branch(domain).parameters())

    # -- domain codec interface ---------------------------------------------------------
    def latent_channels(self, domain: int = 0) -> int:
        return self.M if domain == 0 else self.M + self.K

    def entropy_model(self, domain: int = 0) -> EntropyBottleneck:
        return self.shared.entropy_bottleneck if domain == 0 else self.branch(domain).entropy_bottleneck

    def analysis(self, x: Tensor, domain: int = 0) -> Tensor:
        if domain == 0:
            return self.shared.analysis(x)
        br = self.branch(domain)
        convs = [self.shared.g_a[i] for i in (0, 2, 4, 6)]
        gdns = [self.shared.g_a[i] for i in (1, 3, 5)]
        s, c = x, None
        for l in range(4):
            inp = s if c is None else torch.cat([s, c], 1)
            s_new = convs[l](s)
            c_new = br.enc[l](inp)
            if l < 3:
                s, c = gdns[l](s_new), br.enc_gdn[l](torch.cat([s_new, c_new], 1))
            else:
                s, c = s_new, c_new
        return torch.cat([s, c], 1)

    def synthesis(self, y_hat: Tensor, domain: int = 0, side=None) -> Tensor:
        if domain == 0:
            return self.shared.synthesis(y_hat)
        br = self.branch(domain)
        convs = [self.shared.g_s[i] for i in (0, 2, 4, 6)]
        igdns = [self.shared.g_s[i] for i in (1, 3, 5)]
        s, c = y_hat[:, : self.M], y_hat[:, self.M:]
        for l in range(3):
            s_new = convs[l](s)
            c_new = br.dec[l](torch.cat([s, c], 1))
            s, c = igdns[l](s_new), br.dec_gdn[l](torch.cat([s_new, c_new], 1))
        return convs[3](s) + br.dec[3](c)

    def side_info(self, y: Tensor, domain: int = 0) -> bytes:
        return b""

    def parse_side(self, data: bytes, domain: int = 0):
        if data:
            raise ValueError(f"CAwF writes no side information, got {len(data)} bytes")
        return None

    def forward(self, x: Tensor, domain: int = 0) -> Dict:
        y = self.analysis(x, domain)
        y_hat, y_lk = self.entropy_model(domain)(y)
        return {"x_hat": self.synthesis(y_hat, domain), "likelihoods": {"y": y_lk}}

    def decoder_tensors(self, domain: int = 0) -> List[Tuple[str, Tensor]]:
        out = self.shared.decoder_tensors(0)
        if domain == 0:
            return out  # identical to the source model's: source bitstreams decode here
        br = self.branch(domain)
        out = [(k, v) for k, v in out if not k.startswith("entropy_bottleneck.")]
        out += entropy_model_tensors(br.entropy_bottleneck, f"branch{domain}.entropy_bottleneck.")
        out += [(f"branch{domain}.dec." + k, v) for k, v in br.dec.state_dict().items()]
        out += [(f"branch{domain}.dec_gdn." + k, v) for k, v in br.dec_gdn.state_dict().items()]
        return out

    def codec_id(self, domain: int = 0, side: bytes = b"") -> bytes:
        return cached_digest(self, domain, self.decoder_tensors(domain))

    def update(self, force: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, EntropyBottleneck):
                m.update(force=force)

    def custom_parameter_count(self, domain: int) -> int:
        """Parameters a domain's branch really uses (unused shared rows of the GDN excluded)."""
        br = self.branch(domain)
        n = sum(p.numel() for p in br.enc.parameters()) + sum(p.numel() for p in br.dec.parameters())
        n += sum(g.n_used_parameters() for g in list(br.enc_gdn) + list(br.dec_gdn))
        n += sum(p.numel() for p in br.entropy_bottleneck.parameters())
        return n


@register_strategy("cawf")
class CAwF(Strategy):
    """Task ``t``: wrap the source codec (``config.K`` custom filters), add branches up to ``t``;
    only branch ``t`` trains."""

    def grow(self, model: nn.Module, task_index: int, config) -> "CAwFCodec":
        if not isinstance(model, (FactorizedCodec, CAwFCodec)):
            kind = model.arch().get("kind") if hasattr(model, "arch") else type(model).__name__
            raise ConfigError(f"strategy cawf needs a factorized source codec (learner.arch=factorized): its custom "
                              f"filter blocks extend the factorized prior's layers and entropy bottleneck; the source "
                              f"is a {kind!r} codec (use strategy adapters for the hyperprior family)")
        if isinstance(model, FactorizedCodec):
            model = CAwFCodec(model, K=config.K)
        while model.n_domains() <= task_index:
            model.add_domain()
        return model

    def set_trainable(self, model: "CAwFCodec", task_index: int) -> None:
        model.requires_grad_(False)
        model.branch(task_index).requires_grad_(True)
