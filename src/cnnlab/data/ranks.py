"""Which share of the work this process has under DDP, and the collectives that put the shares back together.

torch.distributed is set up by the launcher (Lightning Fabric for `--devices N`, torchrun for several nodes); these
helpers read it directly, so the data layer and the frozen-feature pass need no Fabric object. Without a process
group every helper is the one-process identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def process_share() -> tuple[int, int]:
    """(rank, world size) of this process under DDP (torch.distributed set up by the launcher), else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device() -> torch.device:
    """Where collectives take their tensors: NCCL only moves GPU memory, gloo CPU memory."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def every_rank(flag: bool) -> bool:
    """Whether `flag` holds on every process (e.g. a cache file each one can read: nodes may not share a disk, and a
    rank that skipped a collective the others entered would leave them waiting for ever)."""
    if process_share()[1] == 1:
        return flag
    value = torch.tensor([int(flag)], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def gather_rows(mine: torch.Tensor, total: int) -> torch.Tensor:
    """The rows [total, ...] each process computed for positions rank, rank + world, ... (its `mine`), gathered in
    order on every process: the shares are padded to one length for all_gather and interleaved back."""
    _, world = process_share()
    if world == 1:
        return mine
    per = -(-total // world)
    padded = torch.zeros(per, *mine.shape[1:], dtype=mine.dtype, device=_device())
    padded[: len(mine)] = mine.to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, 1).reshape(per * world, *mine.shape[1:])[:total].cpu()
