"""Run checkpoints: atomic writes, RNG state capture, loading with ``weights_only=True``.

A run checkpoint is a dict of tensors and builtins::

    {"format": "incdet-run", "version": 1,
     "learner_name": "toy",                 # the learner that wrote it (absent before 2026-12)
     "task_index": t, "step": s,            # s optimizer steps done in task t
     "phase": "train" | "done",             # "done": end_task + evaluation of task t finished
     "global_step": g, "task_names": [...],
     "learner": learner.state_dict(), "optimizer": ..., "scheduler": {...}, "scaler": ... | None,
     "rng": {"python": ..., "numpy": ..., "torch": ..., "cuda": [...]},
     "results": ResultsMatrix.to_dict(), "config": RunConfig.to_dict()}
"""
from __future__ import annotations

import contextlib
import errno
import os
import random
import threading
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional, Union

import numpy as np
import torch

from incdet.errors import CheckpointError

FORMAT = "incdet-run"
VERSION = 1


def save_atomic(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to a temp file in the same directory, fsync, then ``os.replace``
    (:func:`write_atomic`; ``path``'s folder is created when missing): a reader (or a crash)
    sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(obj, f), binary=True)


def _temp_path(path: Path, suffix: str = "") -> Path:
    """The temp file beside ``path`` that this process and thread writes: ``.NAME.tmp-PID-TID``
    + ``suffix`` (hidden; the ``.*.tmp-*`` pattern that run folders clean up matches it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}{suffix}")


def _remove_temp(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # gone already (replaced) or unremovable: keep the first error
        tmp.unlink()


def write_atomic(path: Union[str, Path], write: Callable[[IO], Any], binary: bool = False) -> None:
    """Call ``write(f)`` on a temp file in ``path``'s folder (text mode, UTF-8, unless
    ``binary``), flush and fsync it, then ``os.replace`` it onto ``path``: readers (and a
    crash) see the old file or the new one, never half of one.

    On any error (from ``write``, the disk or the replace) the exception propagates, the old
    file is left as it was and the temp file is removed: nothing new is created. The folder
    must exist. Temp names are unique per process and thread (:func:`_temp_path`), so
    threads may write different files of one folder at once."""
    def write_file(tmp: Path) -> None:
        with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)

    write_atomic_path(path, write_file, suffix="")


def write_atomic_path(path: Union[str, Path], write: Callable[[Path], Any], suffix: Optional[str] = None) -> None:
    """:func:`write_atomic` for writers that take a file name, not a file object
    (``np.savez``, ``PIL.Image.save``): call ``write(tmp)`` with the temp
    file's path, fsync the file it wrote, then ``os.replace`` it onto ``path``.

    The temp name ends with ``suffix`` (default: ``path``'s own suffix, e.g. ``.npz``), for
    writers that choose a format or append an extension by name. The same guarantees as
    :func:`write_atomic`; a ``write`` that creates no file at ``tmp`` raises
    ``FileNotFoundError`` naming ``path`` and ``tmp``."""
    path = Path(path)
    tmp = _temp_path(path, path.suffix if suffix is None else suffix)
    try:
        write(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(errno.ENOENT, f"{path}: the writer created no temp file", str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        _remove_temp(tmp)


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
    for key, types in _REQUIRED.items():
        if not isinstance(ckpt.get(key), types) or isinstance(ckpt.get(key), bool):
            raise CheckpointError(f"{path}: damaged checkpoint: {key!r} is missing or not a {types[0].__name__}")
    if ckpt["phase"] not in ("train", "done") or ckpt["task_index"] < 0 or ckpt["step"] < 0:
        raise CheckpointError(f"{path}: damaged checkpoint: phase {ckpt['phase']!r}, task_index "
                              f"{ckpt['task_index']}, step {ckpt['step']}")
    return ckpt


#: keys every run checkpoint has, with their types
_REQUIRED = {"task_index": (int,), "step": (int,), "phase": (str,), "global_step": (int,),
             "task_names": (list,), "learner": (dict,), "results": (dict,)}


def checkpoint_learner(ckpt: Dict[str, Any]) -> Optional[str]:
    """Name of the learner that wrote ``ckpt``: its ``learner_name``, or for checkpoints
    written before that field, the ``learner.name`` of its saved config; None if neither."""
    name = ckpt.get("learner_name")
    if name is None:
        cfg = ckpt.get("config")
        learner = cfg.get("learner") if isinstance(cfg, dict) else None
        name = learner.get("name") if isinstance(learner, dict) else None
    return name if isinstance(name, str) else None


def check_learner(ckpt: Dict[str, Any], name: str, path: Union[str, Path], same_family: bool = False) -> None:
    """CheckpointError unless ``ckpt`` was written by learner ``name`` (``same_family``: by a
    learner with the same dotted prefix, e.g. ``pkg.a`` for ``pkg.b``, as
    ``tasks.init_from`` allows). A checkpoint naming no learner is accepted."""
    have = checkpoint_learner(ckpt)
    if have is None or have == name:
        return
    if same_family and have.split(".")[0] == name.split(".")[0]:
        return
    raise CheckpointError(f"{path}: written by learner {have!r}, cannot be loaded into learner {name!r}")


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
