"""Multi-process training through PyTorch's own engine: a torchrun launch is detected from its
environment, the process group is NCCL on CUDA and gloo on CPU, and every collective has a timeout
so no rank is left hanging when another dies.

With one process (no torchrun) every helper here is a cheap no-op, so the loop reads the same."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("trainer")

#: How long any collective may wait for the other ranks before failing the run.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("TRAINER_COLLECTIVE_TIMEOUT_S", "120")))


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_env() -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK; a single process otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def init(world: World, device: torch.device) -> None:
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    log.info("process group up: rank %d of %d (%s)", world.rank, world.world_size, backend)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj`` on every rank (small objects only: RNG states)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def step_consensus(local_loss: torch.Tensor, stop: bool, save_due: bool, world: World) -> tuple[float, bool, bool]:
    """One small all-reduce per optimizer step: the mean loss over ranks (so every rank makes the same
    non-finite decision), whether any rank was asked to stop, and whether rank 0's clock says a
    checkpoint is due. Every rank then takes the same branch at the same step."""
    if not world.distributed:
        return local_loss.item(), stop, save_due
    t = torch.tensor([local_loss.item(), float(stop), float(save_due)], dtype=torch.float64, device=local_loss.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    loss, stops, dues = t.tolist()
    return loss / world.world_size, stops > 0, dues > 0


def sum_all(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (evaluation totals)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
