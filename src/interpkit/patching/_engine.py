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
* the row batch size comes from free memory and halves on out-of-memory, keeping finished chunks.

Everything runs under ``torch.inference_mode`` on the model's device.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import InterpkitError
from interpkit.hooks import hooks

if TYPE_CHECKING:
    import torch

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
    return store, logits


def _tail(model: Model, resid: torch.Tensor) -> torch.Tensor:
    return model.bridge.unembed(model.bridge.ln_final(resid[:, None, :]))[:, 0, :]


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
        return logits[rows, answer_pos]
    caught: dict[str, torch.Tensor] = {}

    def stop(act: torch.Tensor, hook: Any) -> None:
        caught["resid"] = act[rows, answer_pos]
        raise _StopForward

    try:
        with hooks(model, fwd=[*fwd, (final_hook(model), stop)]):
            model.bridge(start, **kwargs)
    except _StopForward:
        pass
    return _tail(model, caught["resid"])


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
    by_memory = free_memory_bytes(model.device) // 4 // max(per_row, 1)
    tokens_budget = int(os.environ.get("INTERPKIT_TOKENS_PER_FORWARD", 65536 if model.device.type == "cuda" else 4096))
    return int(max(1, min(by_memory, max(1, tokens_budget // max(n_pos, 1)), 4096)))


def run_chunked(
    n_rows: int,
    batch_rows: int,
    run: Callable[[int, int], torch.Tensor],
    on_oom: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Call ``run(start, stop)`` over row chunks; halve the chunk and retry on out-of-memory."""
    out: list[torch.Tensor] = []
    start = 0
    size = max(1, batch_rows)
    while start < n_rows:
        stop = min(n_rows, start + size)
        try:
            out.append(run(start, stop))
        except (RuntimeError, MemoryError) as exc:
            if not _is_oom(exc) or size == 1:
                raise
            size //= 2
            if on_oom is not None:
                on_oom(size)
            _empty_cache()
            continue
        start = stop
    return out


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def masked_patch_hook(mask_fn: Callable[[torch.Size], torch.Tensor], source: torch.Tensor) -> Callable[..., Any]:
    """A hook writing ``source`` where ``mask_fn(act.shape)`` is True (new tensor, no in-place change)."""
    import torch

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.where(mask_fn(act.shape), source.to(act.dtype), act)

    return hook
