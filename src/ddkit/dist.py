"""torch.distributed under torchrun: the process group, this rank's device, and rank-0-only writes.

Without torchrun (WORLD_SIZE unset or 1) every helper is a no-op, so single-process code paths are the
same code. Backend: nccl when CUDA is available, gloo on CPU.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup() -> tuple[int, int]:
    """(rank, world), initialising the process group once under torchrun; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """(rank, world) of an initialised process group; (0, 1) otherwise. Never initialises."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each rank drives its own GPU (LOCAL_RANK); CPU stays CPU."""
    if rank_world()[1] > 1 and device.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        return dev
    return device


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
