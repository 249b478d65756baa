"""Run checkpoints: atomic writes, RNG state capture, loading with ``weights_only=True``.

A run checkpoint is a dict of tensors and builtins::

    {"format": "incdet-run", "version": 1,
     "task_index": t, "step": s,            # s optimizer steps done in task t
     "phase": "train" | "done",             # "done": end_task + evaluation of task t finished
     "global_step": g, "task_names": [...],
     "learner": learner.state_dict(), "optimizer": ..., "scheduler": {...}, "scaler": ... | None,
     "rng": {"python": ..., "numpy": ..., "torch": ..., "cuda": [...]},
     "results": ResultsMatrix.to_dict(), "config": RunConfig.to_dict()}
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from incdet.errors import CheckpointError

FORMAT = "incdet-run"
VERSION = 1


def save_atomic(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``:
    a reader (or a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    """Load a run checkpoint with ``weights_only=True``; bad file -> CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an incdet run checkpoint (no format={FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} not supported (expected {VERSION})")
    return ckpt


def rng_state() -> Dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors/builtins."""
    v, st, gauss = random.getstate()
    key, arr, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": {"version": v, "state": torch.tensor(st, dtype=torch.int64), "gauss": gauss},
        "numpy": {"key": key, "state": torch.from_numpy(arr.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
