"""The batched patching engine.

A sweep of P patches over a task of B examples is P x B forward passes in the literal method
(``transformer_lens.patching`` runs them one at a time). Here they are rows of as few batched
forwards as memory allows:

* every row is (patch p, example b); one hook per hook point writes each row's patch with a
  boolean mask and ``torch.where`` (the caller's activations are never changed in place);
* rows whose patch sits in layer l start from the target run's cached ``resid_pre`` of layer l
  (``start_at_layer``), so layers below the patch are not recomputed;
* the forward stops at the final residual stream, and only the answer position of each row goes
  through the final norm and unembedding (the vocabulary projection is the largest matmul of a
  small model); this tail is checked once per model against the full forward and skipped when it
  does not reproduce the logits;
* the row batch size comes from free memory and halves on out-of-memory, keeping finished chunks
  (:class:`Batcher`, :func:`sweep`: the shared helper other engines call);
* under ``torchrun`` the row chunks are shared between ranks and the values combined
  (:mod:`interpkit.distributed`), bit-identical to a single process with the same batch size.

Everything runs under ``torch.inference_mode``. A model loaded with ``device_map`` has its blocks
on several devices: captured activations stay on the device their hook fired on, a hook puts
what it writes on ``act.device``, and what a forward returns (logits, metric values) comes back
to ``model.device``, where the results are gathered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import InterpkitError
from interpkit.hooks import hooks

if TYPE_CHECKING:
    import torch

    from interpkit.distributed import Group
    from interpkit.models import Model


class PatchingError(InterpkitError):
    """A patching run cannot proceed (NaN metric, impossible ablation, bad positions)."""


class _StopForward(Exception):
    pass


def final_hook(model: Model) -> str:
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


def capture(model: Model, tokens: torch.Tensor, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward of ``tokens``; returns {hook name: activation} and the logits."""
    import torch

    store: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        store[hook.name] = act.detach().clone()

    canonical = sorted({model.resolve_hook(n) for n in names})
    with torch.inference_mode(), hooks(model, fwd=[(n, keep) for n in canonical]):
        logits = model.bridge(tokens)
    return store, logits.to(model.device)


def _tail(model: Model, resid: torch.Tensor) -> torch.Tensor:
    """Logits ``(rows, d_vocab)`` on ``model.device`` from the final residual ``(rows, d_model)``."""
    return model.bridge.unembed(model.bridge.ln_final(resid[:, None, :]))[:, 0, :].to(model.device)


def tail_is_exact(model: Model) -> bool:
    """Whether final norm + unembedding on the last residual reproduces the model's logits."""
    import torch

    cached = getattr(model, "_interpkit_tail_exact", None)
    if cached is not None:
        return cached
    tokens = torch.arange(min(5, model.cfg.n_ctx), device=model.device)[None] % model.cfg.d_vocab
    store, logits = capture(model, tokens, [final_hook(model)])
    with torch.inference_mode():
        ok = bool(
            torch.allclose(
                _tail(model, store[model.resolve_hook(final_hook(model))][0]), logits[0], atol=1e-4, rtol=1e-4
            )
        )
    model._interpkit_tail_exact = ok
    return ok


def forward_final(
    model: Model,
    start: torch.Tensor,
    start_layer: int,
    answer_pos: torch.Tensor,
    fwd: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> torch.Tensor:
    """Logits ``(rows, d_vocab)`` at ``answer_pos`` of a forward from ``start``.

    ``start`` is token ids when ``start_layer`` is None, else the residual stream entering
    block ``start_layer``. ``fwd`` are extra forward hooks (the patches).
    """
    import torch

    rows = torch.arange(start.shape[0], device=start.device)
    kwargs = {} if start_layer is None else {"start_at_layer": start_layer}
    if not tail_is_exact(model):
        with hooks(model, fwd=fwd):
            logits = model.bridge(start, **kwargs)
        return logits[rows.to(logits.device), answer_pos.to(logits.device)].to(model.device)
    caught: dict[str, torch.Tensor] = {}

    def stop(act: torch.Tensor, hook: Any) -> None:
        caught["resid"] = act[rows.to(act.device), answer_pos.to(act.device)]
        raise _StopForward

    try:
        with hooks(model, fwd=[*fwd, (final_hook(model), stop)]):
            model.bridge(start, **kwargs)
    except _StopForward:
        pass
    return _tail(model, caught["resid"])


def capture_final(
    model: Model, tokens: torch.Tensor, names: Sequence[str], answer_pos: torch.Tensor, batcher: Batcher | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forwards of ``tokens`` in row chunks: {hook: activation} of ``names`` and logits ``(batch, d_vocab)``.

    Unlike :func:`capture`, only the answer position's logits are kept (never the full
    ``(batch, pos, d_vocab)`` tensor), and the rows go in chunks that halve on out-of-memory.
    """
    import torch

    canonical = sorted({model.resolve_hook(n) for n in names})
    batcher = batcher or Batcher(auto_rows(model, tokens.shape[1]))

    def run(a: int, b: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        store: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor, hook: Any) -> None:
            store[hook.name] = act.detach().clone()

        with torch.inference_mode():
            final = forward_final(model, tokens[a:b], None, answer_pos[a:b], [(n, keep) for n in canonical])
        return store, final

    parts = batcher.run(0, tokens.shape[0], run)
    if len(parts) == 1:
        return parts[0]
    return {n: torch.cat([p[0][n] for p in parts]) for n in canonical}, torch.cat([p[1] for p in parts])


def _is_oom(exc: BaseException) -> bool:
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
                if not _is_oom(exc) or end - at == 1:
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


def masked_patch_hook(
    mask_fn: Callable[[torch.Size, torch.device], torch.Tensor], source: torch.Tensor
) -> Callable[..., Any]:
    """A hook writing ``source`` where ``mask_fn(act.shape, act.device)`` is True (new tensor, no in-place change).

    Mask and source are used on the activation's device (a no-op on a single-device model).
    """
    import torch

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        mask = mask_fn(act.shape, act.device).to(act.device)
        return torch.where(mask, source.to(act.device, act.dtype), act)

    return hook
