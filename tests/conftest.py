"""Shared test fixtures: the ``../shared`` data folder (skip with a reason when absent)."""
from __future__ import annotations

import os
from pathlib import Path

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
