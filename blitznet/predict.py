"""Inference API and output writers.

Weights file: ``{"format": "blitznet-weights", "version": 1, "config": <BlitzNetConfig as dict>,
"classes": [names], "state_dict": ...}``, loadable with ``torch.load(weights_only=True)``,
written atomically. :class:`BlitzNetPredictor` also accepts a driver checkpoint
(``RUN/checkpoint.pt``) of a ``blitznet`` run.

>>> p = BlitzNetPredictor("w.pt")                       # doctest: +SKIP
>>> out = p.predict([img_uint8_chw, "photo.jpg"])       # doctest: +SKIP
>>> out[0]["boxes"], out[0]["labels"], out[0]["scores"], out[0]["mask"]   # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from incdet.engine.checkpoint import save_atomic
from incdet.errors import CheckpointError, ConfigError
from incdet.vis import coco_results, palette, to_chw_uint8, write_outputs  # noqa: F401 (re-exported)

from blitznet.model import BlitzNet, BlitzNetConfig

FORMAT = "blitznet-weights"
VERSION = 1


def weights_dict(model: BlitzNet, classes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    n = model.config.num_classes
    classes = list(classes) if classes else [f"class{k}" for k in range(1, n + 1)]
    if len(classes) != n:
        raise ValueError(f"{len(classes)} class names for a model with {n} classes")
    return {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(), "classes": classes,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def save_weights(model: BlitzNet, path: Union[str, Path], classes: Optional[Sequence[str]] = None) -> None:
    """Write a weights file atomically (:func:`incdet.engine.checkpoint.save_atomic`: temp file
    in the same folder, fsync, ``os.replace``); the folder is created when missing. A target
    that is a folder, or a folder that cannot be created or written, raises
    :class:`CheckpointError` naming the path (nothing is left behind)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give the weights file's path")
    weights = weights_dict(model, classes)
    try:
        save_atomic(weights, path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write the weights file ({e.strerror or e})") from None


def check_inference_options(compile_model: bool, freezing: bool) -> None:
    """``freezing`` only with ``compile_model`` (a :class:`ConfigError` otherwise)."""
    if freezing and not compile_model:
        raise ConfigError("freezing=True applies to compile_model=True (inductor's inference freezing)")


def prepare_inference(model: BlitzNet, channels_last: bool = False, fold_bn: bool = False,
                      compile_model: bool = False, freezing: bool = False):
    """Apply the inference options to ``model`` in place and return the callable that runs it on a
    normalized ``[B, 3, S, S]`` batch: ``fold_bn`` (BatchNorm folded into the convolutions),
    ``channels_last`` (NHWC weights; the callable converts its input too), ``compile_model``
    (``torch.compile``; ``freezing``: inductor's inference freezing, the weights must not change
    afterwards). With no option the callable is ``model`` itself. Used by
    :class:`BlitzNetPredictor` and ``blitznet eval-weights``, so both run the same network."""
    check_inference_options(compile_model, freezing)
    if fold_bn:
        from blitznet.model import fold_batchnorm

        fold_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model, options={"freezing": True} if freezing else None) if compile_model else model
    if not channels_last:
        return fwd

    def forward_nhwc(x):
        return fwd(x.contiguous(memory_format=torch.channels_last))

    return forward_nhwc


def load_weights(path: Union[str, Path], device="cpu"):
    """``(model in eval mode, class names)`` from a weights file or a blitznet run checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: not a blitznet weights file")
    if d.get("format") == FORMAT:
        cfg_d, sd, classes = d["config"], d["state_dict"], d.get("classes")
    elif isinstance(d.get("learner"), dict) and "model_config" in d["learner"]:
        cfg_d, sd, classes = d["learner"]["model_config"], d["learner"]["model"], d["learner"].get("classes")
    else:
        raise CheckpointError(f"{path}: not a blitznet weights file or blitznet run checkpoint "
                              f"(keys: {sorted(d)[:10]})")
    cfg = BlitzNetConfig.from_saved(dict(cfg_d, backbone_weights=None))
    model = BlitzNet(cfg)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the stored config: {e}") from e
    classes = list(classes) if classes else [f"class{k}" for k in range(1, cfg.num_classes + 1)]
    return model.to(device).eval(), classes


class BlitzNetPredictor:
    """Batch inference: ``predict(images) -> [dict(boxes, labels, scores, mask)]``.

    Images: paths, PIL images, uint8 ``[H, W, 3]`` arrays or uint8 ``[3, H, W]`` tensors, any
    size (resized to the network input). Boxes are xyxy in the image's pixels, labels
    1-based into ``self.classes``, ``mask`` a uint8 ``[H, W]`` label map (None without a
    segmentation head).

    Inference options (results as in fp32 up to the precision used):
    ``channels_last`` (NHWC network and inputs; any device), ``amp`` (``"bf16"`` or ``"fp16"``
    autocast of the network; CUDA only -- on another device it raises :class:`ConfigError`),
    ``compile_model`` (``torch.compile`` of the network; the first batch of every new shape
    pays the compilation; with ``freezing=True`` inductor's inference freezing: weights folded as
    constants and prepacked -- the weights must not change afterwards), ``fold_bn`` (every
    BatchNorm folded into the convolution before it, :func:`blitznet.model.fold_batchnorm`: the
    same function up to float rounding, one memory pass fewer per layer). Post-processing always runs in fp32, batched over the batch.
    """

    AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, weights: Union[str, Path], device: str = "auto", score_thresh: float = 0.01,
                 nms_method: str = "auto", batch_size: int = 8, channels_last: bool = False,
                 amp: Optional[str] = None, compile_model: bool = False, fold_bn: bool = False,
                 freezing: bool = False, **nms_kw):
        from incdet.engine.distributed import resolve_device

        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        if amp is not None and amp not in self.AMP:
            raise ConfigError(f"amp: {amp!r} is not one of bf16, fp16 (or none)")
        if amp is not None and self.device.type != "cuda":
            raise ConfigError(f"amp={amp}: mixed-precision inference needs a CUDA device, got {self.device}")
        check_inference_options(compile_model, freezing)
        self.amp = amp
        self.model, self.classes = load_weights(weights, self.device)
        self._forward = prepare_inference(self.model, channels_last=channels_last, fold_bn=fold_bn,
                                          compile_model=compile_model, freezing=freezing)
        self.nms_kw = dict(score_thresh=score_thresh, method=nms_method, **nms_kw)
        self.batch_size = batch_size
        from blitznet.augment import ResizeOnly

        self._resize = ResizeOnly(self.model.config.input_size)

    @torch.no_grad()
    def predict(self, images: Sequence[Any]) -> List[dict]:
        m = self.model
        S = m.config.input_size
        out: List[dict] = []
        imgs = [to_chw_uint8(i) for i in images]
        for k in range(0, len(imgs), self.batch_size):
            chunk = imgs[k:k + self.batch_size]
            x = torch.stack([self._resize({"image": i})[0] for i in chunk]).to(self.device)
            x = m.normalize(x)
            if self.amp:
                with torch.autocast("cuda", dtype=self.AMP[self.amp]):
                    raw = self._forward(x)
            else:
                raw = self._forward(x)
            res = m.postprocess(raw, (S, S), [tuple(i.shape[-2:]) for i in chunk], **self.nms_kw)
            for r in res:
                r.setdefault("mask", None)
                if "boxes" not in r:
                    r.update(boxes=torch.zeros((0, 4)), labels=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0))
                out.append({k2: (v.cpu() if isinstance(v, torch.Tensor) else v) for k2, v in r.items()})
        return out


__all__ = ["BlitzNetPredictor", "prepare_inference", "load_weights", "save_weights", "weights_dict", "palette", "coco_results",
           "write_outputs"]
