"""Attention-pattern scores that name what a head does: previous-token and induction heads.

An induction head completes ``[A][B] ... [A] -> [B]``: at the second ``A`` it attends to the
token right after the earlier ``A`` and copies it. It relies on a previous-token head in an
earlier layer, which writes "the token before me was A" into the residual stream at ``B``
(Olsson et al. 2022, "In-context Learning and Induction Heads", section "Key concepts";
Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits", for the two-layer
attention-only case). Both roles are read straight off the attention patterns:

- previous-token score of a head: mean attention from position ``i`` to ``i - 1`` over every
  query ``i >= 1`` (position 0 has no predecessor);
- induction score: over every query ``i`` whose token occurred before, the mean attention to
  ``j + 1``, where ``j`` is the most recent earlier occurrence of that token.

Taking the most recent earlier occurrence makes the induction score well defined on any
sequence with repeats (random blocks tiled with any period, natural text), not only on the
``[r, r]`` half-repeat layout. Both scores lie in ``[0, 1]``; 1 means all attention sits on the
predicted key. Patterns are ``(layer, batch, head, q_pos, k_pos)``, as stacked by
:func:`head_patterns` from ``blocks.{layer}.attn.hook_pattern``.

    >>> import torch
    >>> pattern = torch.zeros(1, 1, 1, 4, 4)  # (layer, batch, head, q_pos, k_pos)
    >>> pattern[..., 0, 0] = 1.0
    >>> pattern[..., [1, 2, 3], [0, 1, 2]] = 1.0  # every query looks one position back
    >>> previous_token_scores(pattern)
    tensor([[1.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from interpkit.models import Model

__all__ = ["head_patterns", "induction_scores", "previous_token_scores"]


def _stack(patterns: Tensor | Sequence[Tensor]) -> Tensor:
    """Patterns as one float tensor ``(layer, batch, head, q_pos, k_pos)``."""
    items = [] if isinstance(patterns, Tensor) else list(patterns)
    stacked = patterns if isinstance(patterns, Tensor) else torch.stack([p.to(items[0].device) for p in items])
    if stacked.ndim != 5:
        raise ValueError(
            f"patterns must be (layer, batch, head, q_pos, k_pos) or a list of (batch, head, q_pos, k_pos); "
            f"got shape {tuple(stacked.shape)}"
        )
    if stacked.shape[-1] != stacked.shape[-2]:
        raise ValueError(f"patterns must be square over (q_pos, k_pos); got shape {tuple(stacked.shape)}")
    return stacked.float()


def previous_token_scores(patterns: Tensor | Sequence[Tensor]) -> Tensor:
    """Mean attention from each position to the one before it, per head: ``(layer, head)``.

    >>> import torch
    >>> uniform = torch.tril(torch.ones(6, 6))
    >>> uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None, None]  # (1, 1, 1, 6, 6)
    >>> round(previous_token_scores(uniform).item(), 3)  # mean of 1/2, 1/3, ..., 1/6
    0.29
    """
    p = _stack(patterns)
    if p.shape[-1] < 2:
        raise ValueError("previous-token scores need at least two positions")
    back_one = torch.diagonal(p, offset=-1, dim1=-2, dim2=-1)  # (layer, batch, head, pos - 1)
    return back_one.mean(dim=(1, 3))


def _induction_targets(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """For each query, the key after the most recent earlier occurrence of its token.

    Returns ``(target, valid)``, both ``(batch, pos)``; ``target`` is meaningless where ``valid``
    is False (the token has not occurred before).
    """
    pos = tokens.shape[-1]
    same = tokens[:, :, None] == tokens[:, None, :]  # (batch, q_pos, k_pos)
    earlier = torch.ones(pos, pos, dtype=torch.bool, device=tokens.device).tril(diagonal=-1)
    index = torch.arange(pos, device=tokens.device).expand(pos, pos)
    last = torch.where(same & earlier, index, -1).amax(dim=-1)  # (batch, q_pos); -1 if none
    valid = last >= 0
    return (last + 1).clamp(min=0), valid


def induction_scores(patterns: Tensor | Sequence[Tensor], tokens: Tensor) -> Tensor:
    """Mean attention to the token after the previous occurrence of the query's token: ``(layer, head)``.

    ``tokens`` is ``(batch, pos)``, the sequences the patterns were computed on. Only queries
    whose token occurred earlier count; a batch without any repeat is an error.

    >>> import torch
    >>> tokens = torch.tensor([[5, 6, 7, 5, 6, 7]])
    >>> pattern = torch.zeros(1, 1, 1, 6, 6)
    >>> pattern[0, 0, 0, torch.arange(6), torch.tensor([0, 0, 0, 1, 2, 3])] = 1.0
    >>> induction_scores(pattern, tokens)
    tensor([[1.]])
    """
    p = _stack(patterns)
    if tokens.ndim != 2 or tuple(tokens.shape) != (p.shape[1], p.shape[-1]):
        raise ValueError(
            f"tokens must be (batch, pos) = {(p.shape[1], p.shape[-1])} to match the patterns; "
            f"got shape {tuple(tokens.shape)}"
        )
    target, valid = _induction_targets(tokens.to(p.device))
    n_valid = valid.sum()
    if n_valid == 0:
        raise ValueError("no token in `tokens` repeats an earlier one, so induction scores are undefined")
    n_layers, _, n_heads, _, _ = p.shape
    index = target[None, :, None, :, None].expand(n_layers, -1, n_heads, -1, 1)
    to_target = p.gather(-1, index).squeeze(-1)  # (layer, batch, head, q_pos)
    weights = valid[None, :, None, :].to(p.dtype)
    return (to_target * weights).sum(dim=(1, 3)) / n_valid


def head_patterns(model: Model | Any, tokens: Tensor) -> Tensor:
    """Attention patterns of every layer on ``tokens``: ``(layer, batch, head, q_pos, k_pos)``.

    >>> from interpkit.models import load_model
    >>> model = load_model("toy-induction")
    >>> head_patterns(model, torch.randint(0, 128, (2, 10))).shape
    torch.Size([2, 2, 4, 10, 10])
    """
    if tokens.ndim == 1:
        tokens = tokens[None]
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(
            tokens.to(model.device), names_filter=lambda name: name.endswith("attn.hook_pattern")
        )
        patterns = [cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)]
        return torch.stack([p.to(model.device) for p in patterns])  # each layer's, gathered on model.device
