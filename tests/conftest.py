"""Shared test fixtures: the ``../shared`` data folder (skip with a reason when absent), the
tools loader, and the tiny run configurations the CPU, CUDA and CLI tests share."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INCDET_SHARED", REPO.parent / "shared"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def load_tool(name: str):
    """Import ``tools/<name>.py`` (the tools are scripts, not a package) as module ``name``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules[name] = m  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(m)
    return m


# ------------------------------------------------------------------------ tiny run configs
#: configs/incdet/shapes_15+5.yaml shrunk to a seconds-long CPU run (two tasks, 1-15 and 16-20)
INCDET_CONFIG = REPO / "configs" / "incdet" / "shapes_15+5.yaml"
INCDET_TINY: Dict[str, str] = {
    "tasks.shapes": "{n_train: 24, n_val: 0, n_test: 8, size: 64}",
    "learner.proposals": "sliding_window", "learner.proposal_cache": "null", "learner.max_proposals": "150",
    "learner.model.width": "16", "learner.model.min_size": "64", "learner.model.max_size": "64",
    "learner.model.rois_per_image": "16", "train.iterations": "2", "train.first_task.iterations": "3",
    "train.first_task.lr_steps": "[]", "train.lr_steps": "[]", "train.warmup_iters": "0", "train.num_workers": "0",
    "train.checkpoint_every": "0",
}
#: configs/blitznet/shapes_15+5.yaml shrunk the same way (64 px input, 16 channels)
BLITZNET_CONFIG = REPO / "configs" / "blitznet" / "shapes_15+5.yaml"
BLITZNET_TINY: Dict[str, str] = {
    "tasks.shapes": "{n_train: 12, n_test: 4, n_val: 0, size: 64}",
    "train.iterations": "2", "train.first_task.iterations": "2", "train.first_task.lr_steps": "[]",
    "train.lr_steps": "[]", "train.batch_size": "2", "train.num_workers": "0", "learner.model.input_size": "64",
    "learner.model.channels": "16", "learner.model.seg_channels": "4", "learner.eval_batch_size": "4",
}


def tiny_overrides(base: Dict[str, str], shapes_root: Path, *extra: str) -> List[str]:
    """``KEY=VALUE`` overrides: ``base`` (:data:`INCDET_TINY` or :data:`BLITZNET_TINY`) with
    ``tasks.root`` set to ``shapes_root`` (the generated shapes-voc is cached there), then each
    ``extra`` ``KEY=VALUE`` replacing or adding its key."""
    merged = {"tasks.root": str(shapes_root), **base}
    for item in extra:
        key, value = item.split("=", 1)
        merged[key] = value
    return [f"{k}={v}" for k, v in merged.items()]


def as_cli_sets(overrides: List[str]) -> List[str]:
    """``["--set", o, ...]`` for a CLI command line."""
    return [a for o in overrides for a in ("--set", o)]


def codec_tiny_config(domains_root: Path, out: Path, device: str = "cpu") -> dict:
    """A two-task (photo -> sketch) CAwF codec run config on 32 px crops of ``../shared/data/domains``,
    as a plain dict in the YAML layout (write it with ``yaml.safe_dump``)."""
    return {
        "experiment": {"name": "t", "seed": 0, "out": str(out), "device": device},
        "tasks": {"builder": "domains", "sequence": ["photo", "sketch"], "eval_sets": {},
                  "data_root": str(Path(domains_root).parent), "crop": 32, "max_train_images": 4, "max_eval_images": 1},
        "learner": {"name": "codec.cawf", "N": 8, "K": 2, "eval_msssim": False},
        "train": {"iterations": 2, "batch_size": 2, "optimizer": "adam", "lr": 0.001, "amp": "none",
                  "checkpoint_every": 0},
    }


def tiny_codec(N: int = 8, seed: int = 0):
    """An untrained factorized-prior codec with its CDF tables built (eval mode)."""
    from codec.model import FactorizedCodec

    torch.manual_seed(seed)
    m = FactorizedCodec(N).eval()
    m.update()
    return m


def shared_path(*parts: str) -> Path:
    """Path under ``../shared``; skips the calling test when it does not exist."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p} does not exist (CI has ../shared beside the repo)")
    return p


@pytest.fixture
def voc100_root() -> Path:
    """``../shared/data/voc2012-100/VOCdevkit/VOC2012``."""
    return shared_path("data", "voc2012-100", "VOCdevkit", "VOC2012")


@pytest.fixture
def coco_tiny_root() -> Path:
    """``../shared/data/coco-tiny`` (annotations/, train2017/, val2017/)."""
    return shared_path("data", "coco-tiny")


@pytest.fixture
def kodak_root() -> Path:
    return shared_path("data", "kodak")


@pytest.fixture
def domains_root() -> Path:
    return shared_path("data", "domains")
