"""Rows per forward that fit in memory: estimate from free memory, halve on out-of-memory, share across ranks.

(A low layer of its own, re-exported by :mod:`interpkit.runtime`, so that ``metrics`` can batch too.)

Every engine runs its work as *rows* (one row: one patched forward of one example) in chunks
of as many rows as memory allows. :func:`auto_rows` estimates the chunk from free memory and a
token budget; :class:`Batcher` runs chunks, halves one that runs out of memory (keeping the
finished ones) and remembers the halved size; :func:`sweep` runs segments of rows in chunks and,
under ``torchrun``, gives each rank a contiguous block of the same chunks a single process would
run, so results are bit-identical to one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import PatchingError

if TYPE_CHECKING:
    import torch

    from interpkit.distributed import Group
    from interpkit.models import Model


def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or "not enough memory" in text or type(exc).__name__ == "OutOfMemoryError"


def free_memory_bytes(device: Any) -> int:
    """Free memory on ``device`` (CUDA: the allocator's view; CPU: MemAvailable)."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def auto_rows(model: Model, n_pos: int) -> int:
    """Rows per forward: a quarter of free memory over a generous per-row estimate, capped by a token budget."""
    c = model.cfg
    itemsize = 4 if model.dtype.is_floating_point and model.dtype.itemsize >= 4 else 2
    width = c.d_model * 8 + (c.d_mlp or 0) * 4 + c.n_heads * n_pos * 3
    per_row = n_pos * width * itemsize * 2
    free = min(free_memory_bytes(d) for d in model.devices)  # a split model: the fullest device decides
    by_memory = free // 4 // max(per_row, 1)
    tokens_budget = int(os.environ.get("INTERPKIT_TOKENS_PER_FORWARD", 65536 if model.device.type == "cuda" else 4096))
    return int(max(1, min(by_memory, max(1, tokens_budget // max(n_pos, 1)), 4096)))


class Batcher:
    """Rows per forward that adapt to memory: start from an estimate, halve on out-of-memory, remember.

    Finished chunks are kept: a chunk that runs out of memory is retried in halves, the chunks
    before it are not recomputed, and the halved size carries over to every later chunk (and to
    every later :meth:`run` on the same Batcher), so one out-of-memory costs one failed forward.

        >>> b = Batcher(8)
        >>> [t for t in b.run(0, 20, lambda start, stop: (start, stop))]
        [(0, 8), (8, 16), (16, 20)]
    """

    def __init__(self, rows: int, on_oom: Callable[[int], None] | None = None) -> None:
        self.rows = max(1, int(rows))
        self.initial = self.rows
        self.halvings = 0
        self.on_oom = on_oom

    def run(self, start: int, stop: int, fn: Callable[[int, int], Any]) -> list[Any]:
        """``fn(a, b)`` over ``[start, stop)`` in chunks of at most ``self.rows`` rows."""
        out: list[Any] = []
        at = start
        while at < stop:
            end = min(stop, at + self.rows)
            failed = False
            try:
                out.append(fn(at, end))
            except (RuntimeError, MemoryError) as exc:
                if not is_oom(exc) or end - at == 1:
                    raise
                failed = True
            if failed:  # outside the except block, so the failed forward's tensors are freed first
                self.rows = max(1, (end - at) // 2)
                self.halvings += 1
                if self.on_oom is not None:
                    self.on_oom(self.rows)
                _empty_cache()
                continue
            at = end
        return out


def run_chunked(
    n_rows: int,
    batch_rows: int,
    run: Callable[[int, int], torch.Tensor],
    on_oom: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Call ``run(start, stop)`` over row chunks; halve the chunk and retry on out-of-memory."""
    return Batcher(batch_rows, on_oom).run(0, n_rows, run)


def sweep(
    segments: int | Sequence[int],
    run: Callable[..., Any],
    *,
    model: Model | None = None,
    n_pos: int = 1,
    batch_size: int | None = None,
    group: Group | None = None,
) -> Batcher:
    """Run ``run(segment, start, stop)`` over every row of every segment, in adaptive chunks.

    The shared batching helper: ``segments`` are row counts (an int is one segment; the
    patching engine uses one per layer). Rows per forward are ``batch_size``, else
    :func:`auto_rows` of ``model`` for ``n_pos`` tokens per row; out-of-memory halves them.
    Under a :class:`~interpkit.distributed.Group` every rank plans the same chunks (the smallest
    batch size of all ranks) and runs a contiguous block of them, so each chunk is the very
    batch a single process would run; ``run`` writes its rows into a zero-filled tensor that
    :func:`interpkit.distributed.combine` then sums over ranks. A failure on any rank is raised
    on every rank. Returns the Batcher (its ``rows`` and ``halvings`` say what happened).

        >>> seen = []
        >>> sweep([3, 2], lambda seg, a, b: seen.append((seg, a, b)), batch_size=2).rows
        2
        >>> seen
        [(0, 0, 2), (0, 2, 3), (1, 0, 2)]
    """
    from interpkit.distributed import Group, share

    group = group or Group()
    sizes = [segments] if isinstance(segments, int) else list(segments)
    batch_size = check_batch_size(batch_size)
    if batch_size is not None:
        rows = int(batch_size)
    elif model is not None:
        rows = auto_rows(model, n_pos)
    else:
        raise PatchingError("sweep needs batch_size or a model to size batches from")
    batcher = Batcher(group.min_int(rows))
    chunks = [(seg, a, min(n, a + batcher.rows)) for seg, n in enumerate(sizes) for a in range(0, n, batcher.rows)]
    error: BaseException | None = None
    mine = share(group, chunks)
    bar = _bar(mine, group.rank)
    try:
        for seg, a, b in mine:
            batcher.run(a, b, lambda start, stop, seg=seg: run(seg, start, stop))
            if bar is not None:
                bar.update(b - a)
    except BaseException as exc:
        error = exc
    finally:
        if bar is not None:
            bar.close()
    group.agree(error)
    return batcher


def _bar(chunks: list[tuple[int, int, int]], rank: int) -> Any:
    """A progress bar in rows for a sweep of several chunks, on rank 0 (``TQDM_DISABLE=1`` hides it)."""
    if len(chunks) < 2 or rank != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=sum(b - a for _, a, b in chunks), desc="patching", unit="row", leave=False, mininterval=1.0)


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def grad_rows(model: Model, n_pos: int) -> int:
    """Rows per forward+backward: a quarter of :func:`auto_rows` (autograd keeps every layer's activations)."""
    return max(1, auto_rows(model, n_pos) // 4)


def check_batch_size(batch_size: Any) -> int | None:
    """``batch_size`` as a positive int (None: automatic); a PatchingError for anything else."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PatchingError(f"batch_size must be a positive int or None (automatic), got {batch_size!r}")
    return batch_size
