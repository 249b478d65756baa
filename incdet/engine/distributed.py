"""Process-group helpers for ``torchrun --nproc_per_node N -m incdet train ...``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init` then starts the process
group (NCCL on CUDA, gloo on CPU). Without those variables everything is single-process.
"""
from __future__ import annotations

import datetime
import os
import re

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> bool:
    """Start the process group when launched by torchrun; returns whether distributed."""
    if env_world_size() <= 1 or is_dist():
        return is_dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # long timeout: rank 0 evaluates every seen task while the others wait at a barrier
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=3))
    return True


def barrier() -> None:
    if is_dist():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,4})$")


def check_device_name(name, where: str = "--device") -> None:
    """ConfigError unless ``name`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (no GPU check)."""
    from incdet.errors import ConfigError

    if not isinstance(name, str) or not _DEVICE_RE.match(name):
        raise ConfigError(f"{where}: unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def resolve_device(name: str, where: str = "--device") -> torch.device:
    """``auto`` -> CUDA when present (``cuda:LOCAL_RANK`` under torchrun), else CPU.

    Any other name than ``auto | cpu | cuda | cuda:N``, CUDA without a GPU, or ``cuda:N`` past
    the last GPU raises :class:`~incdet.errors.ConfigError` naming ``where``. Every CLI resolves
    its ``--device`` here, before it writes anything."""
    from incdet.errors import ConfigError

    check_device_name(name, where)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: device {name!r} requested but CUDA is not available (use cpu or auto)")
        if name == "cuda":
            return torch.device("cuda", local_rank() if env_world_size() > 1 else torch.cuda.current_device())
        n = torch.cuda.device_count()
        if int(name.split(":")[1]) >= n:
            raise ConfigError(f"{where}: device {name!r} requested but only {n} CUDA device(s) exist")
        return torch.device(name)
    return torch.device("cpu")
