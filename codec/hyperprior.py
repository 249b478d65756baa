"""The hyperprior family: compressai's own models with the codec's domain interface.

- ``scale-hyperprior``: Balle et al. 2018 (compressai ``bmshj2018-hyperprior``): a hyper-encoder
  ``h_a`` turns the latent ``y`` into side latents ``z`` (coded with an ``EntropyBottleneck``),
  the hyper-decoder ``h_s`` predicts the scale of a zero-mean Gaussian for each element of ``y``
  (coded with a ``GaussianConditional``).
- ``mean-scale-hyperprior``: Minnen et al. 2018 without the context model (compressai
  ``mbt2018-mean``): ``h_s`` predicts a mean and a scale.

The classes subclass ``compressai.models.ScaleHyperprior`` / ``MeanScaleHyperprior``, so the
layers, the training forward pass and the state_dict names are compressai's (its pretrained
state_dicts load as they are, :func:`codec.model.import_compressai`). What is added is the
domain codec interface of :mod:`codec.model` (``analysis``, ``synthesis``, ``arch``,
``decoder_tensors``, ``codec_id``); the two-stream bitstream (``z`` then ``y``) is written by
:mod:`codec.bitstream`. One model for every domain: ``domain`` arguments are accepted and ignored.

Input sizes: ``g_a`` divides by 16 and ``h_a`` by 4 more, so images are padded to multiples of
64 (:attr:`downsampling_factor`).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from compressai.models import MeanScaleHyperprior as _CaiMeanScale
from compressai.models import ScaleHyperprior as _CaiScale
from compressai.models.google import get_scale_table
from torch import Tensor

from codec.entropy import cached_digest, entropy_model_tensors
from codec.registry import register_codec
from incdet.errors import DataError

__all__ = ["ScaleHyperpriorCodec", "MeanScaleHyperpriorCodec", "HYPERPRIOR_KINDS"]


class _HyperpriorInterface:
    """The domain codec interface on top of a compressai hyperprior model."""

    kind = ""
    base_codec = True      #: a source codec (not a wrapper of one)
    two_stream = True      #: side latents ``z`` + latents ``y`` (see :mod:`codec.bitstream`)
    compressai_name = ""   #: the compressai zoo architecture with the same layers

    #: compressai's Gaussian scale table: 64 log-spaced scales from 0.11 to 256
    DEFAULT_SCALE_LEVELS = 64

    def _init_levels(self, scale_levels: int) -> None:
        if isinstance(scale_levels, bool) or not isinstance(scale_levels, int) or not 2 <= scale_levels <= 4096:
            raise ValueError(f"scale_levels must be an integer in 2..4096, got {scale_levels!r}")
        self.scale_levels = scale_levels

    def arch(self) -> dict:
        out = {"kind": self.kind, "N": self.N, "M": self.M}
        if self.scale_levels != self.DEFAULT_SCALE_LEVELS:
            out["scale_levels"] = self.scale_levels
        return out

    @classmethod
    def from_arch(cls, arch: dict):
        return cls(int(arch["N"]), int(arch["M"]), scale_levels=int(arch.get("scale_levels", cls.DEFAULT_SCALE_LEVELS)))

    @property
    def downsampling_factor(self) -> int:
        return 64

    def latent_channels(self, domain: int = 0) -> int:
        return self.M

    def hyper_channels(self, domain: int = 0) -> int:
        return self.N

    def analysis(self, x: Tensor, domain: int = 0) -> Tensor:
        return self.g_a(x)

    def synthesis(self, y_hat: Tensor, domain: int = 0, side=None) -> Tensor:
        return self.g_s(y_hat)

    def gaussian_params(self, z_hat: Tensor, domain: int = 0) -> Tuple[Tensor, Tensor]:
        """``(scales_hat, means_hat)`` of ``y`` from the decoded side latents (means may be None)."""
        raise NotImplementedError

    def hyper_analysis(self, y: Tensor, domain: int = 0) -> Tensor:
        """The side latents ``z`` of ``y`` (compressai's ``h_a``; the scale hyperprior on ``|y|``)."""
        return self.h_a(y)

    def entropy_encode(self, y: Tensor, domain: int = 0) -> List[Tuple[bytes, Tuple[int, int, int]]]:
        """``[(z bytes, (N, h/4, w/4)), (y bytes, (M, h, w))]`` for ``y`` ``[1, M, h, w]`` (h, w
        multiples of 4): compressai's ``compress`` (``z`` through the ``EntropyBottleneck``,
        ``y`` through the ``GaussianConditional`` with indexes from the scales predicted from the
        *quantised* ``z``), so the bytes are compressai's own."""
        if y.shape[0] != 1:
            raise ValueError(f"entropy_encode codes one latent, got a batch of {y.shape[0]}")
        from codec.bitstream import check_stream_size

        z = self.hyper_analysis(y, domain)
        check_stream_size(z, "side latent z")
        check_stream_size(y)
        z_bytes = self.entropy_bottleneck.compress(z)[0]
        # = entropy_bottleneck.decompress(...): round(z - medians) + medians
        medians = self.entropy_bottleneck._get_medians().detach().reshape(1, -1, 1, 1)
        z_hat = self.entropy_bottleneck.quantize(z, "dequantize", medians)
        scales_hat, means_hat = self.gaussian_params(z_hat, domain)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_bytes = self.gaussian_conditional.compress(y, indexes, means=means_hat)[0]
        shape = lambda t: tuple(int(s) for s in t.shape[1:])  # noqa: E731
        return [(z_bytes, shape(z)), (y_bytes, shape(y))]

    def entropy_decode(self, streams, domain: int = 0, name: str = "<bytes>") -> Tensor:
        """``y_hat`` ``[1, M, h, w]`` from :meth:`entropy_encode`'s two streams, with the
        bounds-checked decoders of :mod:`codec.bitstream` (``CorruptStream`` naming ``name``);
        the shapes must be the ones :mod:`codec.bitstream` checked against the image size."""
        from codec import bitstream

        if len(streams) != 2:
            raise DataError(f"{name}: {len(streams)} entropy-coded streams, this codec reads 2 (z, y)")
        (z_bytes, z_shape), (y_bytes, y_shape) = streams
        if z_shape[0] != self.N or y_shape[0] != self.M or tuple(y_shape[1:]) != (4 * z_shape[1], 4 * z_shape[2]):
            raise DataError(f"{name}: stream shapes {tuple(z_shape)}, {tuple(y_shape)} do not fit the "
                                      f"codec (N={self.N}, M={self.M}, y 4x z)")
        dev = self.entropy_bottleneck.quantiles.device
        z_hat = bitstream.entropy_decode(self.entropy_bottleneck, z_bytes, tuple(z_shape), name).to(dev)
        scales_hat, means_hat = self.gaussian_params(z_hat, domain)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        return bitstream.gaussian_decode(self.gaussian_conditional, y_bytes, indexes, means_hat, name).to(dev)

    def latents(self, y: Tensor, domain: int = 0) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``(y_hat, {"y", "z"} likelihoods)`` of the latent ``y`` through the hyperprior (noise
        in train mode, rounding in eval mode), as compressai's forward does it."""
        z = self.hyper_analysis(y, domain)
        z_hat, z_lk = self.entropy_bottleneck(z)
        scales_hat, means_hat = self.gaussian_params(z_hat, domain)
        y_hat, y_lk = self.gaussian_conditional(y, scales_hat, means=means_hat)
        return y_hat, {"y": y_lk, "z": z_lk}

    def forward(self, x: Tensor, domain: int = 0) -> Dict:
        """``x`` ``[B, 3, H, W]`` in ``[0, 1]``, H and W multiples of 64. Returns ``{"x_hat",
        "likelihoods": {"y", "z"}}`` (compressai's forward: noise proxy in train mode)."""
        return super().forward(x)

    def side_info(self, y: Tensor, domain: int = 0) -> bytes:
        return b""

    def parse_side(self, data: bytes, domain: int = 0):
        if data:
            raise ValueError(f"this codec writes no side information, got {len(data)} bytes")
        return None

    def decoder_tensors(self, domain: int = 0) -> List[Tuple[str, Tensor]]:
        out = entropy_model_tensors(self.entropy_bottleneck, "entropy_bottleneck.")
        out += [("gaussian_conditional." + k, v) for k, v in self.gaussian_conditional.state_dict().items()]
        out += [("h_s." + k, v) for k, v in self.h_s.state_dict().items()]
        out += [("g_s." + k, v) for k, v in self.g_s.state_dict().items()]
        return out

    def codec_id(self, domain: int = 0, side: bytes = b"") -> bytes:
        """8-byte digest of what decoding reads (see :func:`codec.entropy.tensors_digest`)."""
        return cached_digest(self, 0, self.decoder_tensors(domain))

    def update(self, force: bool = True, scale_table=None) -> bool:
        """CDF tables of the entropy bottleneck and the Gaussian conditional (compressai's), the
        latter for ``scale_table`` (default: ``scale_levels`` log-spaced scales from 0.11 to 256,
        compressai's ``get_scale_table``; 64 = compressai's own).

        The table is a trade-off: ``build_indexes`` codes each element with the smallest table
        scale >= its predicted scale, so a coarse table costs bits over the estimate (measured
        on a briefly trained mean-scale model on Kodak at 0.25 bpp: real / estimated 1.041 with
        64 levels, 1.013 with 256, 1.009 with 512), and each level stores one CDF row
        (about 12.5 KB) in the checkpoint. The table is a buffer of the state_dict, so decoding
        (ours or compressai's with the same state_dict) always uses the writer's."""
        if scale_table is None:
            scale_table = get_scale_table(levels=self.scale_levels)
        return super().update(scale_table=scale_table, force=force)

    def n_domains(self):
        return None  # any domain id


@register_codec("scale-hyperprior")
class ScaleHyperpriorCodec(_HyperpriorInterface, _CaiScale):
    """Balle et al. 2018 scale hyperprior (compressai ``bmshj2018-hyperprior``; N=128, M=192
    at its qualities 1-5, N=192, M=320 at 6-8)."""

    kind = "scale-hyperprior"
    compressai_name = "bmshj2018-hyperprior"

    def __init__(self, N: int = 128, M: int = 192, scale_levels: int = 64):
        super().__init__(N, M)
        self._init_levels(scale_levels)

    def hyper_analysis(self, y: Tensor, domain: int = 0) -> Tensor:
        return self.h_a(torch.abs(y))  # as compressai's ScaleHyperprior forward / compress

    def gaussian_params(self, z_hat: Tensor, domain: int = 0):
        return self.h_s(z_hat), None


@register_codec("mean-scale-hyperprior")
class MeanScaleHyperpriorCodec(_HyperpriorInterface, _CaiMeanScale):
    """Minnen et al. 2018 mean-scale hyperprior without context model (compressai
    ``mbt2018-mean``; N=128, M=192 at qualities 1-4, N=192, M=320 at 5-8)."""

    kind = "mean-scale-hyperprior"
    compressai_name = "mbt2018-mean"

    def __init__(self, N: int = 128, M: int = 192, scale_levels: int = 64):
        super().__init__(N, M)
        self._init_levels(scale_levels)

    def gaussian_params(self, z_hat: Tensor, domain: int = 0):
        scales_hat, means_hat = self.h_s(z_hat).chunk(2, 1)
        return scales_hat, means_hat


HYPERPRIOR_KINDS = ("scale-hyperprior", "mean-scale-hyperprior")
