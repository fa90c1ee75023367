"""Weights read from a TransformerLens 4 bridge, in TransformerLens's layouts, checked against the config.

Attention keeps grouped-query attention native: ``W_Q`` is ``(n_heads, d_model, d_head)`` and
``W_K``/``W_V`` are ``(n_kv_heads, d_model, d_head)``; ``W_O`` is ``(n_heads, d_head, d_model)``.
MLPs: ``W_in``/``W_gate`` ``(d_model, d_mlp)``, ``W_out`` ``(d_mlp, d_model)``. The unembedding
``W_U`` is ``(d_model, d_vocab)``. Shapes are checked, so an architecture whose bridge exposes a
weight differently fails loudly rather than silently.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpkit.errors import ModelLoadError
from interpkit.models.anatomy._norms import attr

if TYPE_CHECKING:
    import torch


class AnatomyError(ModelLoadError):
    """The bridge does not expose a piece of the model the way interpkit reads it."""


ACTIVATIONS = ("relu", "silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def activation(name: str) -> Any:
    """The elementwise function named ``name`` (TransformerLens / Hugging Face names)."""
    import torch.nn.functional as F

    name = name.lower()
    if name == "relu":
        return F.relu
    if name in ("silu", "swish"):
        return F.silu
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    raise AnatomyError(f"activation {name!r} is not one interpkit implements (valid: {', '.join(ACTIVATIONS)})")


@dataclasses.dataclass(frozen=True)
class AttnWeights:
    """One layer's attention weights (biases None where the model has none)."""

    W_Q: torch.Tensor  # (n_heads, d_model, d_head)
    W_K: torch.Tensor  # (n_kv_heads, d_model, d_head)
    W_V: torch.Tensor  # (n_kv_heads, d_model, d_head)
    W_O: torch.Tensor  # (n_heads, d_head, d_model)
    b_Q: torch.Tensor | None  # (n_heads, d_head)
    b_K: torch.Tensor | None  # (n_kv_heads, d_head)
    b_V: torch.Tensor | None
    b_O: torch.Tensor | None  # (d_model,)

    def input_weight(self, kind: str) -> torch.Tensor:
        """``W_Q``, ``W_K`` or ``W_V`` for ``kind`` "q", "k" or "v"."""
        return {"q": self.W_Q, "k": self.W_K, "v": self.W_V}[kind]


@dataclasses.dataclass(frozen=True)
class MLPWeights:
    """One layer's MLP: ``act(x W_gate) * (x W_in + b_in)`` when gated, else ``act(x W_in + b_in)``; then ``W_out``."""

    W_in: torch.Tensor  # (d_model, d_mlp)
    W_gate: torch.Tensor | None
    b_in: torch.Tensor | None
    W_out: torch.Tensor  # (d_mlp, d_model)
    b_out: torch.Tensor | None
    act_name: str

    @property
    def gated(self) -> bool:
        return self.W_gate is not None

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return activation(self.act_name)(x)


def _detached(x: Any) -> Any:
    return None if x is None else x.detach()


def _heads_bias(b: Any, n: int, d_head: int, what: str) -> Any:
    if b is None:
        return None
    if b.numel() != n * d_head:
        raise AnatomyError(f"attention bias {what} has shape {tuple(b.shape)}, expected {(n, d_head)}")
    return b.detach().reshape(n, d_head)


def attn_weights(bridge: Any, layer: int, n_heads: int, n_kv: int, d_model: int, d_head: int) -> AttnWeights:
    """The attention weights of block ``layer``; AnatomyError where a shape is not understood."""
    a = bridge.blocks[layer].attn
    w_q, w_k, w_v = (_detached(attr(a, name)) for name in ("W_Q", "W_K", "W_V"))
    w_o = _w_o(a, layer, n_heads, d_head, d_model)
    want = {"W_Q": (n_heads, d_model, d_head), "W_K": (n_kv, d_model, d_head), "W_V": (n_kv, d_model, d_head)}
    for name, w in zip(want, (w_q, w_k, w_v), strict=True):
        if w is None or tuple(w.shape) != want[name]:
            shape = None if w is None else tuple(w.shape)
            raise AnatomyError(f"attention weight {name} of layer {layer} has shape {shape}, expected {want[name]}")
    b_o = _detached(attr(a, "b_O"))
    if b_o is not None and b_o.numel() != d_model:
        raise AnatomyError(
            f"attention output bias of layer {layer} has shape {tuple(b_o.shape)}, expected {(d_model,)}"
        )
    return AttnWeights(
        w_q,
        w_k,
        w_v,
        w_o,
        _heads_bias(attr(a, "b_Q"), n_heads, d_head, f"b_Q of layer {layer}"),
        _heads_bias(attr(a, "b_K"), n_kv, d_head, f"b_K of layer {layer}"),
        _heads_bias(attr(a, "b_V"), n_kv, d_head, f"b_V of layer {layer}"),
        None if b_o is None else b_o.reshape(d_model),
    )


def _w_o(a: Any, layer: int, n_heads: int, d_head: int, d_model: int) -> torch.Tensor:
    import torch

    w_o = _detached(attr(a, "W_O"))
    if w_o is not None and tuple(w_o.shape) == (n_heads, d_head, d_model):
        return w_o
    o = attr(a, "o")  # the output projection module itself
    inner = attr(o, "_original_component") if o is not None else None
    weight = attr(inner, "weight")
    if weight is None:
        raise AnatomyError(f"cannot find the attention output weight of layer {layer}")
    if isinstance(inner, torch.nn.Linear):  # (d_model, n_heads * d_head)
        weight = weight.T
    if tuple(weight.shape) != (n_heads * d_head, d_model):
        raise AnatomyError(f"attention output weight of layer {layer} has shape {tuple(weight.shape)}, not understood")
    return weight.detach().reshape(n_heads, d_head, d_model)


def mlp_weights(bridge: Any, layer: int, d_model: int, act_name: str, gated: bool) -> MLPWeights:
    """The MLP weights of block ``layer``."""
    m = bridge.blocks[layer].mlp
    w_in, w_out = _detached(attr(m, "W_in")), _detached(attr(m, "W_out"))
    gate = _detached(attr(m, "W_gate")) if gated else None
    if w_in is None or w_out is None or w_in.shape[0] != d_model or w_out.shape[-1] != d_model:
        raise AnatomyError(
            f"cannot read the MLP weights of layer {layer} (W_in (d_model, d_mlp), W_out (d_mlp, d_model))"
        )
    if gated and gate is None:
        raise AnatomyError(f"the gated MLP of layer {layer} exposes no W_gate")
    return MLPWeights(w_in, gate, _detached(attr(m, "b_in")), w_out, _detached(attr(m, "b_out")), act_name)


def unembed_weights(bridge: Any, d_model: int, d_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_U`` ``(d_model, d_vocab)`` and ``b_U`` ``(d_vocab,)`` (zeros without bias)."""
    import torch

    with torch.no_grad():
        w_u = attr(bridge, "W_U")
        if w_u is None or tuple(w_u.shape) != (d_model, d_vocab):
            raise AnatomyError(f"cannot read the unembedding W_U {(d_model, d_vocab)}")
        b_u = attr(bridge, "b_U")
        if b_u is None:
            b_u = torch.zeros(d_vocab, dtype=w_u.dtype, device=w_u.device)
        return w_u.detach(), b_u.detach()
