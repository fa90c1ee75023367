"""Capabilities checked on the model itself, once: what the bridge's forward really does.

Some facts cannot be read off a config: whether the final norm and unembedding applied to the
last residual reproduce the logits (``tail_is_exact``), whether the bridge can give every head its
own q/k/v input (``supports_split_inputs``), what a Hugging Face block returns (a tensor or a
tuple, ``block_output_arity``). Each is measured on a short input and cached on the model's
:class:`~interpkit.models.anatomy.Anatomy`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from interpkit.models.anatomy import Anatomy


def final_hook(n_layers: int) -> str:
    """The hook of the final residual stream (the last block's output)."""
    return f"blocks.{n_layers - 1}.hook_resid_post"


def tail(bridge: Any, resid: torch.Tensor) -> torch.Tensor:
    """Logits ``(rows, d_vocab)`` of the final residual ``(rows, d_model)``: the bridge's own final norm and unembedding."""
    return bridge.unembed(bridge.ln_final(resid[:, None, :]))[:, 0, :]


def tail_is_exact(anatomy: Anatomy) -> bool:
    """Whether final norm + unembedding of the last residual reproduces the model's logits (1e-4)."""
    import torch

    from interpkit.hooks import hooks

    model = anatomy.model
    tokens = torch.arange(min(5, model.cfg.n_ctx), device=model.device)[None] % model.cfg.d_vocab
    kept: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        kept["resid"] = act.detach().clone()

    with torch.inference_mode(), hooks(model, fwd=[(final_hook(model.cfg.n_layers), keep)]):
        logits = model.bridge(tokens).to(model.device)
        mine = tail(model.bridge, kept["resid"][0]).to(model.device)
    return bool(torch.allclose(mine, logits[0], atol=1e-4, rtol=1e-4))


def block_output_arity(anatomy: Anatomy) -> int:
    """What a Hugging Face block returns: 0 for a bare tensor, else the length of its tuple."""
    import torch

    model = anatomy.model
    seen: list[Any] = []
    inner = model.bridge.blocks[0].original_component
    handle = inner.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.inference_mode():
            model.bridge(torch.zeros(1, 2, dtype=torch.long, device=model.device))
    finally:
        handle.remove()
    out = seen[0]
    return len(out) if isinstance(out, tuple) else 0


@contextlib.contextmanager
def split_inputs(model: Any) -> Iterator[None]:
    """Give every head its own copy of its q/k/v input and every MLP its own input, then restore.

    Holds ``model.lock`` throughout: the bridge's mode is shared by every thread using the model.
    """
    bridge = model.bridge
    with getattr(model, "lock", None) or contextlib.nullcontext():
        before = (
            bool(getattr(bridge.cfg, "use_split_qkv_input", False)),
            bool(getattr(bridge.cfg, "use_hook_mlp_in", False)),
        )
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
        model.refresh_hooks()  # some adapters (GPT-2's fused qkv) create hook points when the flag is set
        try:
            yield
        finally:
            bridge.set_use_split_qkv_input(before[0])
            bridge.set_use_hook_mlp_in(before[1])
            model.refresh_hooks()


@contextlib.contextmanager
def mlp_inputs(model: Any) -> Iterator[None]:
    """Give every MLP its own input hook (``hook_mlp_in``), then restore (holding ``model.lock``)."""
    bridge = model.bridge
    with getattr(model, "lock", None) or contextlib.nullcontext():
        before = bool(getattr(bridge.cfg, "use_hook_mlp_in", False))
        bridge.set_use_hook_mlp_in(True)
        model.refresh_hooks()
        try:
            yield
        finally:
            bridge.set_use_hook_mlp_in(before)
            model.refresh_hooks()


def supports_split_inputs(anatomy: Anatomy) -> bool:
    """Whether the bridge gives each head its own q/k/v input hook (:func:`split_inputs`)."""
    try:
        with split_inputs(anatomy.model):
            pass
    except NotImplementedError:
        return False
    return True


def hook_writes(anatomy: Anatomy) -> dict[str, bool]:
    """Whether ``hook_attn_out`` / ``hook_mlp_out`` hold exactly what the block adds to the residual
    stream (False where a norm after attention or MLP, as in Gemma 2 or OLMo2, comes after the hook)."""
    import torch

    from interpkit.hooks import hooks

    model = anatomy.model
    names = {k: f"blocks.0.hook_{k}" for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")}
    names = {k: v for k, v in names.items() if v in model.bridge.hook_dict}
    seen: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any, key: str) -> None:
        seen[key] = act.detach().double()

    tokens = torch.arange(min(5, model.cfg.n_ctx), device=model.device)[None] % model.cfg.d_vocab
    fwd = [(name, lambda act, hook, key=key: keep(act, hook, key)) for key, name in names.items()]
    with torch.inference_mode(), hooks(model, fwd=fwd):
        model.bridge(tokens)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool(torch.allclose(a, b, atol=1e-4 * float(b.abs().max()) + 1e-6, rtol=1e-4))

    pre, post = seen["resid_pre"], seen["resid_post"]
    if anatomy.attn_only:
        return {"attn_out": close(post - pre, seen["attn_out"]), "mlp_out": True}
    if anatomy.parallel or "resid_mid" not in seen:
        both = close(post - pre, seen["attn_out"] + seen["mlp_out"])
        return {"attn_out": both, "mlp_out": both}
    mid = seen["resid_mid"]
    return {"attn_out": close(mid - pre, seen["attn_out"]), "mlp_out": close(post - mid, seen["mlp_out"])}
