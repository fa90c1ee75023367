"""What the graphs package reads of the model and the runtime, under the names it uses.

Architecture facts come from the model's anatomy (:mod:`interpkit.models.anatomy`), batching from
:mod:`interpkit.batching`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.batching import Batcher as Batcher
from interpkit.batching import free_memory_bytes as free_memory_bytes
from interpkit.models.anatomy import Norm as FinalNorm
from interpkit.models.anatomy import norm_affine as norm_affine
from interpkit.models.anatomy import norm_eps as norm_eps

if TYPE_CHECKING:
    import torch


def final_norm(model: Any) -> FinalNorm:
    """The final norm (the identity in a model without one)."""
    return model.anatomy.final_norm


def post_attn_norm(model: Any, layer: int) -> FinalNorm | None:
    """The norm after block ``layer``'s attention (Gemma 2, OLMo2), else None."""
    return model.anatomy.post_attn_norm(layer)


def head_out_weights(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W_O`` ``(layer, head, d_head, d_model)`` and ``b_O`` ``(layer, d_model)`` (None without bias)."""
    return model.anatomy.head_out


def unembed_weights(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_U`` ``(d_model, d_vocab)`` and ``b_U`` ``(d_vocab,)``."""
    return model.anatomy.unembed


__all__ = [
    "Batcher",
    "FinalNorm",
    "final_norm",
    "free_memory_bytes",
    "head_out_weights",
    "norm_affine",
    "norm_eps",
    "post_attn_norm",
    "unembed_weights",
]
