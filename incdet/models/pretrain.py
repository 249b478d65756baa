"""Backbone pretraining: the stage ImageNet plays in the papers, on data of our own.

``incdet pretrain`` trains a ResNet (the trunk of incdet's Fast R-CNN, :class:`ResNetC4`, whose
parameter names are torchvision's) as a 30-way classifier on ``shapes-pretrain``
(:mod:`incdet.data.shapes_pretrain`: generated images whose classes share no shape and no
pattern with shapes-voc), then writes a torchvision-format state dict (``conv1``, ``bn1``,
``layer1..4``, ``fc``) that ``learner.model.weights`` (incdet) and
``learner.model.backbone_weights`` (BlitzNet, ``width=64``) load. Width 16 gives incdet's
shapes trunk; width 64 is torchvision's ResNet-18/50 layout.

Training, in the style of torchvision's classification reference: SGD with Nesterov momentum,
linear warm-up then cosine decay, label smoothing 0.1, flips; AMP (bf16) on CUDA. The run
directory holds ``checkpoint.pt`` (model, optimizer, step, RNG state, the metrics so far;
written atomically every ``--checkpoint-every`` steps and at the end) and ``metrics.jsonl``;
``--resume`` continues a killed run from its last checkpoint, and ``--init WEIGHTS`` (a path or
``zoo:NAME``) starts a new run from earlier weights, so compute accumulates across sessions.

Metrics: top-1 accuracy (%) on ``--val-images`` held-out generated images (a disjoint stream).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from incdet.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    depth: int = 18
    width: int = 16
    size: int = 64
    iterations: int = 3000
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-5
    warmup_iters: int = 100
    label_smoothing: float = 0.1
    val_images: int = 1500
    eval_every: int = 1000
    checkpoint_every: int = 250
    num_workers: int = 2
    seed: int = 0

    def validate(self) -> "PretrainConfig":
        """Ranges of every option (:func:`~incdet.engine.config.check_range`, named as on the CLI)."""
        from incdet.engine.config import check_choice, check_range

        check_choice("", "--depth", self.depth, (18, 34, 50, 101))
        bounds = {"width": (4, 256), "size": (32, 512), "iterations": (1, None), "batch_size": (2, None),
                  "lr": (0, 10), "momentum": (0, 1), "weight_decay": (0, None), "warmup_iters": (0, None),
                  "label_smoothing": (0, 1), "val_images": (30, None), "eval_every": (1, None),
                  "checkpoint_every": (1, None), "num_workers": (0, None), "seed": (0, 2**63 - 1)}
        for name, (lo, hi) in bounds.items():
            check_range("", "--" + name.replace("_", "-"), getattr(self, name), lo, hi,
                        lo_open=name == "lr", hi_open=name in ("momentum", "label_smoothing"))
        return self


class Classifier(nn.Module):
    """A :class:`ResNetC4` trunk + global average pooling + ``fc``: torchvision's ResNet layout."""

    def __init__(self, depth: int, width: int, num_classes: int):
        super().__init__()
        from incdet.models.fastrcnn import ResNetC4

        self.backbone = ResNetC4(depth, width, "bn", res5_stride=2)
        self.fc = nn.Linear(self.backbone.out_channels, num_classes)

    def forward(self, x):
        return self.fc(self.backbone.layer4(self.backbone.trunk(x)).mean((2, 3)))

    def torchvision_state_dict(self, half: bool = False) -> Dict[str, torch.Tensor]:
        """``conv1.weight`` ... ``layer4.*``, ``fc.*``: what ``torchvision.models.resnet*`` holds."""
        out = {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}
        out.update({f"fc.{k}": v.detach().cpu().clone() for k, v in self.fc.state_dict().items()})
        if half:
            out = {k: (v.half() if v.is_floating_point() else v) for k, v in out.items()}
        return out


def lr_at(step: int, c: PretrainConfig) -> float:
    if step < c.warmup_iters:
        return c.lr * (step + 1) / c.warmup_iters
    t = (step - c.warmup_iters) / max(1, c.iterations - c.warmup_iters)
    return 0.5 * c.lr * (1 + math.cos(math.pi * min(t, 1.0)))


_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _prep(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return (x - _MEAN.to(device)) / _STD.to(device)


@torch.no_grad()
def evaluate(model: Classifier, c: PretrainConfig, device: torch.device) -> float:
    """Top-1 accuracy (%) on the held-out generated images."""
    from incdet.data.shapes_pretrain import ShapesPretrain

    ds = ShapesPretrain(c.val_images, c.size, c.seed, split="val")
    dl = torch.utils.data.DataLoader(ds, batch_size=128, num_workers=c.num_workers)
    was = model.training
    model.eval()
    right = 0
    for x, y in dl:
        right += int((model(_prep(x, device)).argmax(1).cpu() == y).sum())
    model.train(was)
    return 100.0 * right / len(ds)


def load_init(model: Classifier, spec: str) -> str:
    """Load weights from a path or ``zoo:NAME`` into ``model``; return the file's sha256."""
    from incdet import zoo

    path = zoo.resolve(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable file is the user's problem
        raise CheckpointError(f"{path}: cannot read initial weights ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    own = {**{k: v for k, v in model.backbone.state_dict().items()}, **{f"fc.{k}": v for k, v in model.fc.state_dict().items()}}
    bad = sorted(set(own) ^ set(state)) + [k for k in own if k in state and state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: not weights of this ResNet depth and width with a 30-class fc "
                              f"(mismatched keys/shapes: {bad[:5]})")
    model.backbone.load_state_dict({k: v.float() for k, v in state.items() if not k.startswith("fc.")})
    model.fc.load_state_dict({k[3:]: v.float() for k, v in state.items() if k.startswith("fc.")})
    return zoo.sha256_file(path)


CKPT_FORMAT = "incdet-pretrain"


def _load_run_checkpoint(path: Path) -> dict:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a bad checkpoint
        raise CheckpointError(f"{path}: cannot read pretraining checkpoint ({type(e).__name__}: {e})") from None
    keys = ("model", "optimizer", "step", "history", "config", "wall_s", "rng")
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT or any(k not in ck for k in keys):
        raise CheckpointError(f"{path}: not a pretraining checkpoint (format {CKPT_FORMAT!r} with {', '.join(keys)})")
    return ck


def pretrain(c: PretrainConfig, run_dir: Path, out: Optional[Path], device: torch.device, resume: bool = False,
             init: Optional[str] = None, half: bool = False) -> Dict[str, float]:
    """Train (or continue) the classifier; write ``out`` (torchvision state dict); return metrics."""
    from incdet.data.shapes_pretrain import PRETRAIN_CLASSES, ShapesPretrain
    from incdet.engine.checkpoint import rng_state, save_atomic, set_rng_state

    c.validate()
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: --run-dir exists and is not a directory")
    ckpt_path = run_dir / "checkpoint.pt"
    if resume and not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path}: --resume given but the run has no checkpoint")
    if not resume and ckpt_path.exists():
        raise ConfigError(f"{run_dir}: holds a pretraining run already; add --resume to continue it "
                          "or choose another --run-dir")
    if out is not None and out.exists() and out.is_dir():
        raise ConfigError(f"{out}: --out is a directory; give a file name")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(c.seed)
    model = Classifier(c.depth, c.width, len(PRETRAIN_CLASSES)).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=c.lr, momentum=c.momentum, nesterov=True)
    step, history, init_sha, wall0 = 0, [], None, 0.0
    if resume:
        ck = _load_run_checkpoint(ckpt_path)
        saved = ck.get("config", {})
        if {k: saved.get(k) for k in ("depth", "width", "size", "seed")} != {k: getattr(c, k) for k in ("depth", "width", "size", "seed")}:
            raise ConfigError(f"{ckpt_path}: the run was started with {saved}; depth, width, size and seed must match")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, history, init_sha, wall0 = ck["step"], list(ck["history"]), ck.get("init_sha256"), float(ck["wall_s"])
        set_rng_state(ck["rng"])
    elif init:
        init_sha = load_init(model, init)
    (run_dir / "config.json").write_text(json.dumps(asdict(c), indent=2) + "\n")

    # An endless stream of fresh images: step s draws images [s*B, (s+1)*B) of the training stream,
    # so a resumed run sees exactly the images an uninterrupted one would.
    ds = ShapesPretrain(c.iterations * c.batch_size, c.size, c.seed, split="train")
    sampler = list(range(step * c.batch_size, c.iterations * c.batch_size))
    dl = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, sampler), batch_size=c.batch_size,
                                     num_workers=c.num_workers, drop_last=True,
                                     pin_memory=device.type == "cuda",
                                     generator=torch.Generator().manual_seed(c.seed))  # not the global RNG
    amp = device.type == "cuda"
    t0 = time.time()
    log_f = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def save():
        save_atomic({"format": CKPT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history,
                     "config": asdict(c), "init_sha256": init_sha, "wall_s": wall0 + time.time() - t0, "rng": rng_state()}, ckpt_path)

    model.train()
    try:
        for x, y in dl:
            if step >= c.iterations:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, c)
            x = _prep(x, device)
            g = torch.Generator().manual_seed(c.seed * 1_000_003 + step)  # flips: a function of the step
            flip = (torch.rand(x.shape[0], generator=g) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y.to(device), label_smoothing=c.label_smoothing)
            if not torch.isfinite(loss):
                save()
                raise ConfigError(f"pretrain: non-finite loss at step {step} (lower --lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0 or step == c.iterations:
                rec = {"step": step, "loss": round(float(loss.detach()), 5), "lr": lr_at(step - 1, c),
                       "wall_s": round(wall0 + time.time() - t0, 1)}
                log.info("pretrain step %d/%d loss %.4f", step, c.iterations, rec["loss"])
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
            if step % c.eval_every == 0 and step < c.iterations:
                acc = evaluate(model, c, device)
                history.append({"step": step, "top1": acc})
                log.info("pretrain step %d: val top-1 %.2f %%", step, acc)
            if step % c.checkpoint_every == 0:
                save()
    finally:
        log_f.close()
    acc = evaluate(model, c, device)
    history.append({"step": step, "top1": acc})
    save()
    metrics = {"top1": acc, "steps": step, "wall_s": wall0 + time.time() - t0, "init_sha256": init_sha}
    (run_dir / "result.json").write_text(json.dumps({"metrics": metrics, "history": history}, indent=2) + "\n")
    if out is not None:
        save_atomic(model.torchvision_state_dict(half=half), Path(out))
        log.info("pretrain: wrote %s (val top-1 %.2f %%)", out, acc)
    return metrics


def _cmd(args) -> int:
    from incdet.engine.distributed import resolve_device

    c = PretrainConfig(**{k: getattr(args, k) for k in PretrainConfig.__dataclass_fields__})
    device = resolve_device(args.device)
    m = pretrain(c, Path(args.run_dir), Path(args.out) if args.out else None, device, args.resume, args.init, args.half)
    print(json.dumps(m))
    return 0


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain a ResNet trunk on shapes-pretrain (classes disjoint from shapes-voc)",
                       description=__doc__.split("\n\n")[0])
    d = PretrainConfig()
    for k, v in asdict(d).items():
        p.add_argument(f"--{k.replace('_', '-')}", dest=k, type=type(v), default=v)
    p.add_argument("--run-dir", required=True, help="where checkpoint.pt, metrics.jsonl, result.json go")
    p.add_argument("--out", default=None, help="the torchvision-format weights file to write (e.g. zoo/x.pt)")
    p.add_argument("--init", default=None, help="start from these weights (path or zoo:NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    p.add_argument("--half", action="store_true", help="store the weights in float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=_cmd)
