"""Attention patterns with the prompt's tokens on both axes, one head at a time or with a head picker.

A pattern is ``(q_pos, k_pos)``: row i is where query position i attends. Entries above the
diagonal (future keys, masked by causal attention) are left blank rather than drawn as zero.

    >>> import torch
    >>> from interpkit.plots import attention_pattern
    >>> pattern = torch.softmax(torch.randn(2, 4, 4), -1).tril()        # (head, q_pos, k_pos)
    >>> fig = attention_pattern(pattern, ["a", "b", "a", "b"], head_labels=["L1H0", "L1H3"])
    >>> len(fig.data), [b["label"] for b in fig.layout.updatemenus[0].buttons]
    (2, ['L1H0', 'L1H3'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import ResultError
from interpkit.plots._style import SEQUENTIAL, style, unique_labels

if TYPE_CHECKING:
    import torch


def _pattern_hover(pattern: Any, tokens: list[str], head: str) -> list[list[str]]:
    n_q, n_k = pattern.shape
    return [
        [f"{head}<br>query: {tokens[i]}<br>key: {tokens[j]}<br>attention: {pattern[i, j]:.4f}" for j in range(n_k)]
        for i in range(n_q)
    ]


def attention_pattern(
    pattern: torch.Tensor,
    tokens: Sequence[str],
    head_labels: Sequence[str] | None = None,
    title: str | None = None,
    scores: Sequence[float] | None = None,
    score_name: str = "score",
    height: int | None = None,
) -> Any:
    """Attention of one head ``(q_pos, k_pos)``, or of several ``(head, q_pos, k_pos)`` with a head picker.

    ``tokens``: one label per position (the prompt's string tokens). ``head_labels``: one per head
    (``L1H3``); ``scores``: an optional number per head (an induction score, say) shown in the
    picker and the title.
    """
    import numpy as np
    import plotly.graph_objects as go

    values = pattern.detach().float().cpu().numpy() if hasattr(pattern, "detach") else np.asarray(pattern, float)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3 or values.shape[1] != values.shape[2]:
        raise ResultError(f"attention_pattern needs (q_pos, k_pos) or (head, q_pos, k_pos); got shape {values.shape}")
    n_heads, n_pos, _ = values.shape
    if len(tokens) != n_pos:
        raise ResultError(f"attention_pattern got {len(tokens)} tokens for {n_pos} positions")
    heads = list(head_labels) if head_labels is not None else [f"head {h}" for h in range(n_heads)]
    if len(heads) != n_heads:
        raise ResultError(f"attention_pattern got {len(heads)} head labels for {n_heads} heads")
    if scores is not None and len(scores) != n_heads:
        raise ResultError(f"attention_pattern got {len(scores)} scores for {n_heads} heads")
    labels = unique_labels(tokens)
    future = np.triu(np.ones((n_pos, n_pos), dtype=bool), k=1)
    names = [h if scores is None else f"{h} ({score_name} {scores[i]:.2f})" for i, h in enumerate(heads)]
    fig = go.Figure()
    for h in range(n_heads):
        shown = np.where(future & (values[h] == 0), np.nan, values[h])
        fig.add_trace(
            go.Heatmap(
                z=shown,
                x=labels,
                y=labels,
                text=_pattern_hover(values[h], labels, names[h]),
                hovertemplate="%{text}<extra></extra>",
                colorscale=SEQUENTIAL,
                zmin=0.0,
                zmax=1.0,
                colorbar={"title": {"text": "attention"}},
                visible=h == 0,
                name=names[h],
                xgap=1,
                ygap=1,
            )
        )
    base = title or "Attention pattern"
    layout: dict[str, Any] = {
        "xaxis": {"title": {"text": "key position (attended to)"}, "tickangle": -45},
        "yaxis": {"title": {"text": "query position"}, "autorange": "reversed"},
    }
    if n_heads > 1:
        layout["updatemenus"] = [_head_picker(heads, names, base)]
    side = height or min(900, max(440, 170 + 22 * n_pos))
    # Roughly square cells: the plot area is about as wide as it is high (plus room for labels).
    if n_heads > 1:
        layout["margin"] = {"l": 70, "r": 30, "t": 100, "b": 60}  # room for the head picker under the title
    return style(fig, f"{base}: {names[0]}", height=side, width=side + 220, **layout)


def _head_picker(heads: Sequence[str], names: Sequence[str], base: str) -> dict[str, Any]:
    """A dropdown showing one head's trace at a time (and its name in the title)."""
    n = len(heads)
    return {
        "type": "dropdown",
        "x": 0.0,
        "xanchor": "left",
        "y": 1.01,
        "yanchor": "bottom",
        "showactive": True,
        "pad": {"l": 0, "b": 2},
        "buttons": [
            {
                "label": heads[h],
                "method": "update",
                "args": [{"visible": [i == h for i in range(n)]}, {"title.text": f"{base}: {names[h]}"}],
            }
            for h in range(n)
        ],
    }
