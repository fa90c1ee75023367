"""The pieces of the suffix-only forward (:mod:`interpkit.runtime._suffix`): which architectures it
implements, and each layer's weights and norms, all read from the model's anatomy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from interpkit.errors import InterpkitError
from interpkit.models.anatomy import ACTIVATIONS

if TYPE_CHECKING:
    import torch

    from interpkit.models import Model


class SuffixUnsupported(InterpkitError):
    """The suffix forward does not implement this model's architecture (use the hook engine)."""


def unsupported_reason(model: Model) -> str | None:
    """Why the suffix forward cannot run ``model`` (None when it is implemented).

    Whatever passes is still checked against the bridge once per model (``SuffixRunner.check``).
    """
    an = model.anatomy
    checks = [
        (an.norm_kind not in (None, "LN", "RMS"), f"normalization {an.norm_kind!r}"),
        (an.positional not in ("standard", "rotary"), "positional embedding"),
        (an.attn_soft_cap is not None, "attention soft-capping"),
        (an.logit_soft_cap is not None, "logit soft-capping"),
        (an.parallel, "parallel attention and MLP"),
        (an.local_attention, "local attention"),
        (an.sliding_window, "sliding window"),
        (an.rotary_interleaved, "adjacent-pair rotary"),
        (an.layer_scaled_attention, "per-layer attention scale"),
        (not an.attn_only and an.act_name.lower() not in ACTIVATIONS, f"activation {an.act_name!r}"),
        (an.rotary and an.model_type is None, "native rotary models"),
        # Its weights and caches would have to follow each block to its device; the hook engine does that.
        (len(model.devices) > 1, "a model split over several devices (device_map)"),
    ]
    bad = [why for failed, why in checks if failed]
    return f"suffix forward does not implement {', '.join(bad)}" if bad else None


@dataclasses.dataclass
class _Layer:
    ln1: Callable[[torch.Tensor], torch.Tensor]
    ln2: Callable[[torch.Tensor], torch.Tensor] | None
    w_qkv: torch.Tensor  # (d_model, (n_heads + 2 n_kv_heads) d_head)
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor  # (n_heads d_head, d_model)
    b_o: torch.Tensor | None
    w_in: torch.Tensor | None  # (d_model, d_mlp)
    w_gate: torch.Tensor | None
    b_in: torch.Tensor | None
    w_out: torch.Tensor | None  # (d_mlp, d_model)
    b_out: torch.Tensor | None
    q_norm: Any = None  # per-head (d_head) or whole (n_heads d_head) query norm module (Qwen3, OLMo2)
    k_norm: Any = None
    post_attn: Callable[[torch.Tensor], torch.Tensor] | None = None  # norms after attention / MLP (Gemma 2, OLMo2)
    post_mlp: Callable[[torch.Tensor], torch.Tensor] | None = None


def read_layer(model: Model, layer: int) -> _Layer:
    """Block ``layer``'s weights and norms as the suffix forward uses them."""
    import torch

    an, c = model.anatomy, model.cfg
    a = an.attn(layer)
    w_qkv = torch.cat([w.permute(1, 0, 2).reshape(c.d_model, -1) for w in (a.W_Q, a.W_K, a.W_V)], dim=1)
    b_qkv = None
    if any(b is not None for b in (a.b_Q, a.b_K, a.b_V)):
        heads = (c.n_heads, c.n_kv_heads, c.n_kv_heads)
        b_qkv = torch.cat(
            [
                torch.zeros(n * c.d_head, device=w_qkv.device, dtype=w_qkv.dtype) if b is None else b.reshape(-1)
                for b, n in zip((a.b_Q, a.b_K, a.b_V), heads, strict=True)
            ]
        )
    mlp = None if c.attn_only else an.mlp(layer)
    post_attn, post_mlp = an.post_attn_norm(layer), an.post_mlp_norm(layer)
    return _Layer(
        ln1=an.ln1(layer).apply,
        ln2=None if c.attn_only else an.ln2(layer).apply,
        w_qkv=w_qkv.contiguous(),
        b_qkv=b_qkv,
        w_o=a.W_O.reshape(-1, c.d_model),
        b_o=a.b_O,
        w_in=None if mlp is None else mlp.W_in,
        w_gate=None if mlp is None else mlp.W_gate,
        b_in=None if mlp is None else mlp.b_in,
        w_out=None if mlp is None else mlp.W_out,
        b_out=None if mlp is None else mlp.b_out,
        q_norm=an.qk_norm(layer, "q"),
        k_norm=an.qk_norm(layer, "k"),
        post_attn=None if post_attn is None else post_attn.apply,
        post_mlp=None if post_mlp is None else post_mlp.apply,
    )
