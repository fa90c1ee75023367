"""Data-parallel harvests under ``torchrun``: one process per device, each writing its own shards.

Every rank reads and tokenizes the same data and so sees the same shard plan; rank ``r`` of
``N`` computes the shards whose index is ``r`` modulo ``N`` and writes them into the shared
output folder, and rank 0 writes the manifest once all are done. The shard files are therefore
the same, file for file, as a single-process harvest's. Ranks exchange their outcome at each
step (``all_gather_object``), so a failure on one rank is raised on all instead of leaving the
others waiting. The process group is the standard one (``env://`` from torchrun; gloo on CPU,
NCCL on GPU); when interpkit creates it, it also destroys it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from interpkit.cache._errors import CacheError

if TYPE_CHECKING:
    from interpkit.models import Model


@dataclasses.dataclass
class Group:
    """This process's place among the harvest's processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    owned: bool = False

    def owns(self, shard: int) -> bool:
        return shard % self.world == self.rank

    def agree(self, error: BaseException | None) -> None:
        """Raise ``error`` here, or any other rank's failure, on every rank alike."""
        if self.world > 1:
            import torch.distributed as dist

            outcomes: list[str | None] = [None] * self.world
            dist.all_gather_object(outcomes, None if error is None else f"{type(error).__name__}: {error}")
            if error is None:
                failed = [(r, m) for r, m in enumerate(outcomes) if m is not None]
                if failed:
                    rank, message = failed[0]
                    raise CacheError(f"harvest failed on rank {rank} of {self.world}: {message}")
        if error is not None:
            raise error

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def join(model: Model, distributed: bool | None) -> Group:
    """The process group to harvest in: an existing one, one torchrun asks for, or none."""
    if distributed is False:
        return Group()
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if distributed:
            raise CacheError(
                "distributed=True needs a torchrun launch (WORLD_SIZE > 1) or an initialised process group"
            )
        return Group()
    if not dist.is_available():
        raise CacheError("torch.distributed is not available in this torch build")
    backend = "nccl" if model.device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(model.device)
    dist.init_process_group(backend)
    return Group(dist.get_rank(), dist.get_world_size(), owned=True)
