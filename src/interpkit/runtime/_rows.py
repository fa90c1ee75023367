"""Rows of patched forwards, run in memory-sized chunks: the one loop every engine runs on.

A *row* is one forward of one example under some hooks, from the tokens or from the residual
stream entering a layer, read at the example's answer position. Engines describe their work as
:class:`Rows` (one segment per start layer) and :func:`metric_rows` runs every row in chunks sized
from free memory (halving on out-of-memory, keeping finished chunks; shared between ranks under
``torchrun``), evaluates the task metric and writes it into a table. The engines differ only in
the hooks a chunk gets: a patch mask (activation patching), a sender's change added at a
receiver (exact edges, path patching), removed edges (circuits), an ablation (``ablate``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.batching import Batcher, sweep
from interpkit.metrics import get as get_metric
from interpkit.runtime._forward import forward_final

if TYPE_CHECKING:
    import torch

    from interpkit.distributed import Group
    from interpkit.models import Model
    from interpkit.tasks import Task

# hooks for rows [a, b) of a segment, given those rows' example indices (a tensor on model.device)
HooksFn = Callable[[int, int, "torch.Tensor"], Sequence[tuple[str, Callable[..., Any]]]]


@dataclasses.dataclass
class Rows:
    """One segment of rows that start at the same layer.

    Row ``i`` runs example ``examples[i]`` of the task from ``start[examples[i]]`` (token ids when
    ``layer`` is None, else the residual stream entering block ``layer``) under
    ``hooks(a, b, ex)`` for its chunk, and fills entry ``items[i]`` of the output table.
    """

    layer: int | None
    items: Sequence[int]
    examples: Sequence[int]
    start: torch.Tensor
    hooks: HooksFn

    def __len__(self) -> int:
        return len(self.items)


def grid_rows(layer: int | None, items: Sequence[int], n_examples: int, start: torch.Tensor, hooks: HooksFn) -> Rows:
    """Rows for every (item, example) pair, items outer: the usual sweep layout."""
    return Rows(
        layer, [i for i in items for _ in range(n_examples)], list(range(n_examples)) * len(items), start, hooks
    )


def metric_rows(
    model: Model,
    task: Task,
    segments: Sequence[Rows],
    out: torch.Tensor,
    *,
    metric: str | None = None,
    clean_logprobs: torch.Tensor | None = None,
    relative_to: torch.Tensor | None = None,
    check: Callable[[torch.Tensor, list[int], list[int]], None] | None = None,
    batch_size: int | None = None,
    group: Group | None = None,
) -> Batcher:
    """Run every row of every segment; write the task metric of row ``i`` into ``out[items[i], examples[i]]``.

    ``relative_to`` ``(batch,)``: write the change from it instead (exact edges: patched minus
    unpatched). ``check(values, items, examples)`` sees each chunk's values first (a NaN check).
    Rows per forward are ``batch_size``, else from free memory; out-of-memory halves them. Under a
    ``group`` each rank runs its share of the chunks and fills its rows of ``out`` (the caller
    combines). Returns the Batcher (its ``initial`` and ``halvings`` say what happened).

    >>> import interpkit as ik, torch
    >>> from interpkit.runtime import Rows, metric_rows
    >>> model = ik.load_model("toy-induction")
    >>> task = ik.tasks.load("induction", model, n=4)
    >>> out = torch.zeros(1, 4)
    >>> _ = metric_rows(model, task, [Rows(None, [0] * 4, range(4), task.clean, lambda a, b, ex: [])], out)
    >>> torch.allclose(out[0], ik.metrics.clean_and_corrupt(model, task)["clean_per_example"], atol=1e-5)
    True
    """
    import torch

    fn = get_metric(metric or task.metric)
    dev = model.device

    def run(segment: int, a: int, b: int) -> torch.Tensor:
        seg = segments[segment]
        ex = torch.as_tensor(list(seg.examples[a:b]), device=dev, dtype=torch.long)
        items = list(seg.items[a:b])
        start = seg.start[ex.to(seg.start.device)]
        final = forward_final(model, start, seg.layer, task.answer_pos[ex], seg.hooks(a, b, ex))
        logprobs = None if clean_logprobs is None else clean_logprobs[ex]
        vals = fn(final, task.answer[ex], task.wrong[ex], logprobs)
        if check is not None:
            check(vals, items, ex.tolist())
        if relative_to is not None:
            vals = vals - relative_to[ex]
        out[torch.tensor(items, device=out.device), ex.to(out.device)] = vals.to(out.device, out.dtype)
        return vals

    with torch.inference_mode():
        return sweep([len(s) for s in segments], run, model=model, n_pos=task.n_pos, batch_size=batch_size, group=group)
