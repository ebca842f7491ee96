"""torchrun / DistributedDataParallel helpers.

``torchrun --nproc_per_node N -m visionlab train CONFIG`` starts N processes with the
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` environment
variables; :func:`init_distributed` reads them and joins the process group (NCCL when the run
uses CUDA, Gloo on CPU). Without them every helper here is a no-op for a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes, or return a single-process DistInfo.

    Args:
        device: the run's device setting; ``cpu`` forces Gloo even where CUDA exists.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        # Evaluation runs on rank 0 while the others wait at a barrier: allow it an hour.
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            timeout=datetime.timedelta(hours=1),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def get_info() -> DistInfo:
    """The current process group as a DistInfo (single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistInfo(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
    return DistInfo()


def is_main() -> bool:
    return get_info().is_main


def barrier() -> None:
    if get_info().enabled:
        dist.barrier()


def _all_reduce(values: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    out = values.detach().clone()
    if get_info().enabled:
        if dist.get_backend() == "nccl" and not out.is_cuda:
            out = out.cuda()
        dist.all_reduce(out, op=op)
        out = out.to(values.device)
    return out


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over all processes (a copy; the input is not changed)."""
    return _all_reduce(values, dist.ReduceOp.SUM) / get_info().world_size


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``values`` over all processes (a copy)."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def broadcast_object(obj: object) -> object:
    """``obj`` from rank 0 on every process."""
    if not get_info().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    """Leave the process group (call once, at the end of the run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
