"""Data-parallel runs under ``torchrun``: the process group and the few collectives interpkit needs.

One process per device, launched by ``torchrun`` (``env://``; gloo on CPU, NCCL on GPU). Every
rank holds the whole model and the whole task; the expensive part of a job (the patched
forwards of a sweep, the shards of a harvest, the backward passes of an attribution) is split
between ranks, and the per-example numbers are exchanged so that every rank ends with the same,
complete Result. Nothing here is cluster code: it is ``torch.distributed`` with a group that
interpkit reuses when the caller made one, and creates (and destroys) when ``torchrun`` asked
for one and nobody had made it.

Two ways to split work, both deterministic and identical on every rank:

* :func:`example_range` gives rank ``r`` a contiguous slice of the task's examples, and
  :func:`gather_examples` puts the per-example values back together (attribution, ablation);
* :func:`share` gives rank ``r`` a contiguous block of a list of work items (the patching
  engine's row chunks, so that every chunk is the very batch a single process would run, and
  the result is bit-identical to it), and :func:`combine` sums the disjoint pieces.

    >>> from interpkit.distributed import Group, example_range
    >>> example_range(Group(rank=1, world=3), 10)
    (3, 6)
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from interpkit.errors import InterpkitError

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model

T = TypeVar("T")
_OWNED_GROUPS = itertools.count(1)  # the same sequence on every rank: interpkit's calls are collective


class DistributedError(InterpkitError):
    """A data-parallel run cannot proceed: no launcher, no ``torch.distributed``, or a rank failed."""


@dataclasses.dataclass
class Group:
    """This process's place among a run's processes (rank 0 of 1 when not distributed).

    ``owned``: interpkit created the process group and destroys it in :meth:`close`.
    ``error``: the exception class :meth:`agree` raises for another rank's failure.
    """

    rank: int = 0
    world: int = 1
    owned: bool = False
    error: type[InterpkitError] = DistributedError

    @property
    def active(self) -> bool:
        return self.world > 1

    def owns(self, shard: int) -> bool:
        """Round-robin ownership of shard ``shard`` (the harvest's split)."""
        return shard % self.world == self.rank

    def agree(self, error: BaseException | None) -> None:
        """Raise ``error`` here, or any other rank's failure, on every rank alike.

        Call it at each point where ranks must meet, so that a failure on one rank is raised on
        all of them instead of leaving the others waiting in a collective.
        """
        if self.active:
            import torch.distributed as dist

            outcomes: list[str | None] = [None] * self.world
            dist.all_gather_object(outcomes, None if error is None else f"{type(error).__name__}: {error}")
            if error is None:
                failed = [(r, m) for r, m in enumerate(outcomes) if m is not None]
                if failed:
                    rank, message = failed[0]
                    raise self.error(f"failed on rank {rank} of {self.world}: {message}")
        if error is not None:
            raise error

    def min_int(self, value: int) -> int:
        """The smallest ``value`` over all ranks (so that every rank plans the same batches)."""
        if not self.active:
            return int(value)
        import torch
        import torch.distributed as dist

        t = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False


def join(model: Model, distributed: bool | None, error: type[InterpkitError] = DistributedError) -> Group:
    """The process group to run in: an existing one, one ``torchrun`` asks for, or none.

    ``distributed``: ``None`` detects (an initialised group, or ``WORLD_SIZE > 1`` from
    ``torchrun``); ``False`` runs alone whatever the environment; ``True`` insists.
    """
    if distributed is False:
        return Group(error=error)
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), error=error)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if distributed:
            raise error("distributed=True needs a torchrun launch (WORLD_SIZE > 1) or an initialised process group")
        return Group(error=error)
    if not dist.is_available():
        raise error("torch.distributed is not available in this torch build")
    backend = "nccl" if model.device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(model.device)
    # torch names every default group "0" once the last one is destroyed, and torchrun's store
    # outlives them: a later group under the same prefix would read this one's stale rendezvous
    # keys (gloo then dials a closed address and hangs). Each group interpkit owns gets its own.
    store, rank, size = next(dist.rendezvous("env://"))
    prefix = f"interpkit/{next(_OWNED_GROUPS)}/"
    dist.init_process_group(backend, store=dist.PrefixStore(prefix, store), rank=rank, world_size=size)
    return Group(dist.get_rank(), dist.get_world_size(), owned=True, error=error)


def _collective_device() -> Any:
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def example_range(group: Group, n_examples: int) -> tuple[int, int]:
    """``(start, stop)`` of this rank's contiguous slice of ``n_examples`` (sizes differ by at most one)."""
    return group.rank * n_examples // group.world, (group.rank + 1) * n_examples // group.world


def share(group: Group, items: Sequence[T]) -> list[T]:
    """This rank's contiguous block of ``items`` (the same split on every rank)."""
    n = len(items)
    return list(items[group.rank * n // group.world : (group.rank + 1) * n // group.world])


def gather_examples(group: Group, per_example: torch.Tensor, n_examples: int) -> torch.Tensor:
    """All ranks' per-example values, in example order: ``(..., n_local)`` -> ``(..., n_examples)``.

    ``per_example`` holds this rank's values for the examples ``example_range(group,
    n_examples)``, along the last dimension; every rank gets the full tensor back, on the
    device and in the dtype it gave. Values are copied, never summed, so the result is exactly
    what the ranks computed. Without a group it returns ``per_example`` unchanged.

    How a method uses it (attribution, say)::

        group = join(model, distributed)
        lo, hi = example_range(group, len(task))
        scores = my_method(model, task.select(range(lo, hi)))      # (..., hi - lo)
        scores = gather_examples(group, scores, len(task))          # (..., len(task)) on every rank
        group.close()
    """
    if not group.active:
        return per_example
    import torch
    import torch.distributed as dist

    lo, hi = example_range(group, n_examples)
    if per_example.shape[-1] != hi - lo:
        raise group.error(
            f"rank {group.rank} holds {per_example.shape[-1]} examples but its slice of {n_examples} is {hi - lo}"
        )
    width = -(-n_examples // group.world)
    device = _collective_device()
    local = torch.zeros((*per_example.shape[:-1], width), dtype=per_example.dtype, device=device)
    local[..., : hi - lo] = per_example.to(device)
    parts = [torch.empty_like(local) for _ in range(group.world)]
    dist.all_gather(parts, local)
    sizes = [(r + 1) * n_examples // group.world - r * n_examples // group.world for r in range(group.world)]
    return torch.cat([p[..., :k] for p, k in zip(parts, sizes, strict=True)], dim=-1).to(per_example.device)


def combine(group: Group, partial: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``partial`` tensors that are zero wherever another rank wrote.

    Each entry is written by exactly one rank and is zero on all others, so the sum is that
    rank's value exactly (adding zeros never rounds). Returns a new tensor on ``partial``'s device.
    """
    if not group.active:
        return partial
    import torch.distributed as dist

    out = partial.to(_collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(partial.device)
