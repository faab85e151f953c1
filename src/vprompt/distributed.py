"""Several processes (``torchrun --nproc-per-node N -m vprompt train ...``): data sharding and gradient averaging.

Only the prompt (and a trainable head) have gradients, a few hundred kilobytes, so instead of wrapping the
model in DistributedDataParallel the engine averages those gradients with one all-reduce per step, before the
optimizer. Every process then takes the same step; the normalized-gradient update sees the global gradient.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "launched", "init_distributed", "all_reduce_grads", "all_reduce_sum", "barrier", "usable_cpus"]


def usable_cpus() -> int:
    """The CPU cores this process may run on: its affinity where the OS tells it (``taskset``, a container's
    cpuset), which ``os.cpu_count`` (every core of the machine) does not; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched() -> DistEnv:
    """The processes torchrun describes in the environment (a single one without it), joining no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    return DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    env = launched()
    if not env.enabled:
        return env
    local = env.local_rank
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if use_cuda:
            gpus = torch.cuda.device_count()
            if local >= gpus:
                raise ValueError(
                    f"torchrun started local process {local} but this machine shows {gpus} GPU(s): pass "
                    f"--nproc-per-node {gpus} or fewer, or --device cpu to run every process on the CPU (gloo)"
                )
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return env


def all_reduce_grads(params: Iterable[torch.Tensor], world_size: int) -> None:
    """Average the gradients of ``params`` over processes (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world_size <= 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_reduce_sum(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum a tensor over processes (in place) and return it."""
    if world_size > 1:
        dist.all_reduce(t)
    return t


def barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
