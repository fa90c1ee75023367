"""Forwards the engines run: from tokens or from the residual stream entering block k, to the
answer position's logits only.

A row that patches layer k needs nothing below it: :func:`forward_final` with ``start_layer=k``
feeds the cached residual stream entering block k to the bridge (TransformerLens's
``start_at_layer``) and **skips blocks 0..k-1** (TransformerLens 4.3 still runs them and discards
their output; here each one passes its input through for the duration of the call, so the cost
is that of the blocks from k on). The forward stops at the final residual stream, and only the
answer position of each row goes through the final norm and unembedding (the vocabulary
projection is the largest matmul of a small model). Both shortcuts are checked once per model
against the plain forward (``model.anatomy``: ``tail_is_exact`` and the ``skip_blocks`` verdict)
and not taken where they would change the logits.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.hooks import hooks
from interpkit.models.anatomy import StopForward, answer_logits, tail
from interpkit.models.anatomy import final_hook as _final_hook

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


def final_hook(model: Model) -> str:
    """The hook of the final residual stream (``blocks.{n_layers - 1}.hook_resid_post``)."""
    return _final_hook(model.cfg.n_layers)


def capture(model: Model, tokens: torch.Tensor, names: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward of ``tokens``; returns {canonical hook name: activation} and the logits.

    >>> import interpkit as ik
    >>> from interpkit.runtime import capture
    >>> model = ik.load_model("toy-induction")
    >>> acts, logits = capture(model, model.check_tokens([[1, 2, 3]]), ["blocks.0.attn.hook_z"])
    >>> acts["blocks.0.attn.hook_z"].shape, logits.shape
    (torch.Size([1, 3, 4, 32]), torch.Size([1, 3, 128]))
    """
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
    return tail(model.bridge, resid).to(model.device)


def tail_is_exact(model: Model) -> bool:
    """Whether final norm + unembedding on the last residual reproduces the model's logits."""
    return model.anatomy.tail_is_exact


_LAYER = re.compile(r"^blocks\.(\d+)\.")


@contextlib.contextmanager
def skipping_blocks(model: Model, layer: int) -> Iterator[None]:
    """Blocks ``0..layer-1`` pass their input through unchanged while the context is open.

    For a forward that starts at ``layer`` (the bridge swaps the given residual in at that block),
    whatever those blocks compute is discarded; skipping them leaves the logits unchanged and
    saves ``layer / n_layers`` of the forward. Any instance-level ``forward`` (accelerate's) is
    restored on exit.
    """
    arity = model.anatomy.block_arity
    modules = [blk.original_component for blk in model.bridge.blocks[:layer]]

    def passthrough(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        return hidden_states if arity == 0 else (hidden_states, *([None] * (arity - 1)))

    with getattr(model, "lock", None) or contextlib.nullcontext():  # no other thread runs the model meanwhile
        saved = [vars(m).get("forward") for m in modules]
        try:
            for m in modules:
                m.forward = passthrough
            yield
        finally:
            for m, before in zip(modules, saved, strict=True):
                if before is None:
                    vars(m).pop("forward", None)
                else:
                    m.forward = before


def _from_layer(
    fwd: Sequence[tuple[str, Callable[..., Any]]], start_layer: int
) -> list[tuple[str, Callable[..., Any]]]:
    """The hooks at or after ``start_layer``: a block below it is not computed, so its hooks have nothing to see."""
    out = []
    for name, fn in fwd:
        m = _LAYER.match(name)
        if not (m and int(m.group(1)) < start_layer):
            out.append((name, fn))
    return out


def _skip_is_exact(model: Model) -> bool:
    """Whether skipping the blocks below the start layer leaves the logits unchanged (checked once)."""
    import torch

    n = model.cfg.n_layers
    if n < 2:
        return True
    tokens = torch.arange(min(6, model.cfg.n_ctx), device=model.device)[None] % model.cfg.d_vocab
    layer = n // 2
    store, _ = capture(model, tokens, [f"blocks.{layer}.hook_resid_pre"])
    start = store[model.resolve_hook(f"blocks.{layer}.hook_resid_pre")]
    with torch.inference_mode():
        plain = model.bridge(start, start_at_layer=layer).to(model.device)
        with skipping_blocks(model, layer):
            skipped = model.bridge(start, start_at_layer=layer).to(model.device)
    return bool(torch.allclose(plain, skipped, atol=1e-5, rtol=1e-5))


def skips_blocks(model: Model) -> bool:
    """Whether forwards from layer k skip blocks 0..k-1 on ``model`` (a once-per-model check)."""
    return model.anatomy.verdict("skip_blocks", lambda: _skip_is_exact(model))


def _run(
    model: Model,
    start: torch.Tensor,
    start_layer: int | None,
    fwd: Sequence[tuple[str, Callable[..., Any]]],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The bridge's forward of ``start`` (tokens, or the residual entering ``start_layer``) under ``fwd``."""
    kwargs: dict[str, Any] = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(model.device)
    if start_layer is None:
        with hooks(model, fwd=fwd):
            return model.bridge(start, **kwargs)
    skip = skipping_blocks(model, start_layer) if start_layer and skips_blocks(model) else contextlib.nullcontext()
    with skip, hooks(model, fwd=_from_layer(fwd, start_layer)):
        return model.bridge(start, start_at_layer=start_layer, **kwargs)


def forward_final(
    model: Model,
    start: torch.Tensor,
    start_layer: int | None,
    answer_pos: torch.Tensor,
    fwd: Sequence[tuple[str, Callable[..., Any]]] = (),
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``(rows, d_vocab)`` at ``answer_pos`` of a forward from ``start``.

    ``start`` is token ids when ``start_layer`` is None, else the residual stream entering
    block ``start_layer`` (blocks below it are not computed, and hooks on them are dropped).
    ``fwd`` are extra forward hooks (the patches).

    >>> import interpkit as ik, torch
    >>> from interpkit.runtime import capture, forward_final
    >>> model = ik.load_model("toy-induction")
    >>> tokens = model.check_tokens([[5, 6, 7, 5, 6]])
    >>> acts, logits = capture(model, tokens, ["blocks.1.hook_resid_pre"])
    >>> final = forward_final(model, acts["blocks.1.hook_resid_pre"], 1, torch.tensor([4]))
    >>> torch.allclose(final, logits[:, 4], atol=1e-5)
    True
    """
    return answer_logits(
        model, answer_pos, lambda extra: _run(model, start, start_layer, [*fwd, *extra], attention_mask)
    )


def capture_from(
    model: Model,
    start: torch.Tensor,
    start_layer: int,
    names: Sequence[str],
    fwd: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> dict[str, torch.Tensor]:
    """The activations at ``names`` of a forward from the residual ``start`` entering ``start_layer``,
    stopping as soon as all of them are seen (no block after the last one runs)."""
    import torch

    wanted = {model.resolve_hook(n) for n in names}
    kept: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        kept[hook.name] = act.detach().clone()
        if wanted <= set(kept):
            raise StopForward

    try:
        with torch.inference_mode():
            _run(model, start, start_layer, [*fwd, *[(n, keep) for n in sorted(wanted)]])
    except StopForward:
        pass
    return kept
