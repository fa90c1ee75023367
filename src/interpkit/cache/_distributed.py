"""Data-parallel harvests under ``torchrun``: one process per device, each writing its own shards.

Every rank reads and tokenizes the same data and so sees the same shard plan; rank ``r`` of
``N`` computes the shards whose index is ``r`` modulo ``N`` and writes them into the shared
output folder, and rank 0 writes the manifest once all are done. The shard files are therefore
the same, file for file, as a single-process harvest's. Ranks exchange their outcome at each
step (``Group.agree``), so a failure on one rank is raised on all instead of leaving the
others waiting. The group itself is the shared one of :mod:`interpkit.distributed`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interpkit.cache._errors import CacheError
from interpkit.distributed import Group as Group
from interpkit.distributed import join as _join

if TYPE_CHECKING:
    from interpkit.models import Model


def join(model: Model, distributed: bool | None) -> Group:
    """The process group to harvest in (failures raise :class:`CacheError`)."""
    return _join(model, distributed, error=CacheError)
