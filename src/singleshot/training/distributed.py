"""Data-parallel set-up for runs launched by ``torchrun`` (PyTorch DDP, nothing home-made).

``torchrun --nproc_per_node=G [--nnodes=N --node_rank=K --rdzv_endpoint=HOST:PORT] -m
singleshot.cli train ...`` starts one process per GPU with ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in the environment; `init_distributed` reads them and joins the process
group (NCCL on GPUs, gloo on CPUs). A plain ``singleshot train`` is a world of one.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistInfo",
    "init_distributed",
    "select_device",
    "all_max",
    "all_sum",
    "agree_on_step",
    "broadcast_from_main",
    "barrier",
    "cleanup",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and scores the evaluations."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(preference: str, local_rank: int = 0, local_world_size: int = 1) -> torch.device:
    """ "auto" -> the local rank's GPU when CUDA is available, else the CPU; "cpu"; "cuda[:i]".

    ``local_world_size``: the processes torchrun started on this node. Under torchrun each
    takes the GPU of its local rank; an explicit "cuda:i" (every process on GPU i) or more
    processes than GPUs (processes sharing a GPU) are errors rather than a silent pile-up.
    """
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        device = torch.device(preference)
        count = torch.cuda.device_count()
        if device.index is not None and local_world_size > 1:
            raise ValueError(
                f"device {preference!r} would put all {local_world_size} processes of this node on one "
                "GPU; under torchrun give --device cuda (each process takes its local rank's GPU)"
            )
        if local_world_size > count:
            raise ValueError(
                f"{local_world_size} processes on this node but {count} GPU(s): they would share GPUs; "
                f"start torchrun with --nproc_per_node={count} or fewer"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    if preference != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda[:i], got {preference!r}")
    return torch.device("cpu")


def init_distributed(
    device_preference: str = "auto", timeout_minutes: float = 60.0
) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device.

    ``timeout_minutes``: how long a collective waits for the other processes (for NCCL,
    the watchdog's limit) before the run fails.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    info = DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)
    device = select_device(device_preference, local_rank, local_world_size)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict = {"device_id": device} if device.type == "cuda" else {}
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    if dist.is_initialized():
        info = DistInfo(rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size())
    return info, device


def all_max(values: list[float], device: torch.device) -> list[float]:
    """The maximum of each value over all processes (one all-reduce); identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def agree_on_step(
    loss: Tensor, values: Sequence[Tensor], time_spent: float
) -> tuple[bool, float, list[float]]:
    """A training step's numbers, read from the device at once (one host sync per step).

    Args:
        loss: the step's 0-dim loss.
        values: 0-dim tensors to read as well (the loss terms).
        time_spent: this process's share of the time budget spent.

    Returns:
        (whether the loss is not finite on any process, the largest ``time_spent`` of the
        processes, this process's ``values`` as floats). Under DDP the first two come from
        one all-reduce (max) of a tensor made on the device, so it waits for no copy.
    """
    flags = torch.stack((
        torch.isfinite(loss.detach()).logical_not().to(torch.float64),
        torch.full((), float(time_spent), dtype=torch.float64, device=loss.device),
    ))  # fmt: skip
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    numbers = torch.cat((flags, torch.stack([v.detach().to(torch.float64) for v in values]))).cpu().tolist()
    return numbers[0] > 0, numbers[1], numbers[2:]


def all_sum(value: int, device: torch.device) -> int:
    """The sum of an integer over all processes; identity when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return int(value)
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(tensor)
    return int(tensor.item())


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` (picklable) on every process, by one broadcast; ``value`` itself when
    not distributed. Every process must call it; the others' ``value`` is ignored."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
