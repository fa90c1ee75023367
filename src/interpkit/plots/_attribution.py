"""Attribution figures: direct logit attribution bars, per-head grids and the logit lens table.

``dla_bars`` takes a direct-logit-attribution Result over ``component`` (optionally also
``batch``: bars are then the mean with standard-error whiskers), such as
``ik.cache.run(...).logit_attrs(...)`` read at each example's answer position. ``head_grid``
lays the ``L{layer}H{head}`` components of such a result out as a layer x head heatmap.
``logit_lens_table`` shows, for each layer's residual stream and each position, the token the
unembedding would predict there, coloured by its probability (nostalgebraist 2020,
"interpreting GPT: the logit lens").

    >>> import torch
    >>> from interpkit.results import Result
    >>> from interpkit.plots import dla_bars, head_grid
    >>> res = Result(torch.tensor([0.5, -1.0, 2.0, 0.1]), ("component",),
    ...              {"component": ["embed", "L0H0", "L0H1", "L0.mlp"]}, metric="logit_diff", kind="dla")
    >>> [bar for bar in dla_bars(res, top=2).data[0].x]
    ['L0H1', 'L0H0']
    >>> head_grid(res).data[0].z.shape
    (1, 2)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import ResultError
from interpkit.plots._basic import axis_labels, bars, heatmap
from interpkit.plots._style import SEQUENTIAL, style, title_for, unique_labels

if TYPE_CHECKING:
    import torch

    from interpkit.results import Result

_HEAD = re.compile(r"^L(\d+)H(\d+)$")


def _per_component(result: Result) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """Mean ``(component,)`` and standard error (or None) of a ``component`` or ``component x batch`` result."""
    if result.dims[:1] != ("component",) or result.scores.ndim not in (1, 2):
        raise ResultError(f"expected a result over (component,) or (component, batch); got dims {result.dims}")
    values = result.scores.detach().double().cpu()
    labels = axis_labels(result, "component")
    if values.ndim == 1:
        return values, None, labels
    n = values.shape[1]
    se = values.std(1) / n**0.5 if n > 1 else None
    return values.mean(1), se, labels


def dla_bars(result: Result, top: int | None = 20, sort: bool = True, title: str | None = None) -> Any:
    """Bars of direct logit attribution per component: the ``top`` largest in magnitude, largest first.

    ``sort=False`` keeps the model's order (embed, L0H0, ..., L0.mlp, L1H0, ...).
    """
    import torch

    from interpkit.results import Result

    mean, se, labels = _per_component(result)
    order = torch.argsort(mean.abs(), descending=True) if sort else torch.arange(len(mean))
    if top is not None:
        order = order[:top] if sort else torch.sort(torch.argsort(mean.abs(), descending=True)[:top]).values
    idx = order.tolist()
    shown = Result(mean[idx].float(), ("component",), {"component": [labels[i] for i in idx]}, metric=result.metric)
    what = "Direct logit attribution"
    if top is not None and top < len(mean):
        what += f" (top {top} of {len(mean)} components)"
    fig = bars(shown, title=title or title_for(result, what=what), error=None if se is None else se[idx])
    fig.update_layout(xaxis_title="component", yaxis_title=f"direct effect on {result.metric or 'the logit'}")
    return fig


def head_grid(result: Result, title: str | None = None, signed: bool = True) -> Any:
    """The ``L{layer}H{head}`` components of a per-component result as a layer x head heatmap."""
    import torch

    from interpkit.results import Result

    mean, _, labels = _per_component(result)
    cells = {}
    for value, label in zip(mean.tolist(), labels, strict=True):
        match = _HEAD.match(label)
        if match:
            cells[int(match[1]), int(match[2])] = value
    if not cells:
        raise ResultError("head_grid found no head components (labels like 'L3H5') in this result")
    layers = sorted({lay for lay, _ in cells})
    n_heads = max(h for _, h in cells) + 1
    grid = torch.full((len(layers), n_heads), float("nan"))
    for (lay, h), value in cells.items():
        grid[layers.index(lay), h] = value
    shown = Result(
        grid,
        ("layer", "head"),
        {"layer": [f"L{lay}" for lay in layers], "head": [f"H{h}" for h in range(n_heads)]},
        metric=result.metric,
        kind=result.kind,
        meta=dict(result.meta or {}),
    )
    return heatmap(shown, title=title or title_for(result, what="Per-head " + (result.kind or "score")), signed=signed)


def logit_lens_table(
    logits: Result | torch.Tensor,
    decode: Callable[[list[int]], list[str]] | None = None,
    tokens: Sequence[str] | None = None,
    components: Sequence[str] | None = None,
    batch: int = 0,
    k: int = 5,
    answer: int | None = None,
    title: str | None = None,
) -> Any:
    """Top predicted token per (layer, position), coloured by its probability; hover lists the top ``k``.

    ``logits``: a logit-lens Result ``(component, batch, pos, d_vocab)`` (``cache.logit_lens()``)
    or a tensor ``(component, pos, d_vocab)``. ``decode``: token ids to strings (e.g.
    ``model.to_str_tokens``). ``tokens``: the input tokens, labelling the columns. ``answer``:
    a token id whose probability and rank the hover text also reports.
    """
    import plotly.graph_objects as go

    if hasattr(logits, "scores"):
        values = logits.scores
        components = components or axis_labels(logits, logits.dims[0])
        if values.ndim == 4:
            values = values[:, batch]
    else:
        values = logits
    if values.ndim != 3:
        raise ResultError(f"logit_lens_table needs logits (component, pos, d_vocab); got shape {tuple(values.shape)}")
    n_comp, n_pos, _ = values.shape
    probs = values.detach().float().cpu().softmax(-1)
    top_p, top_i = probs.topk(k, dim=-1)  # (component, pos, k)
    decode = decode or (lambda ids: [f"<{i}>" for i in ids])
    flat = decode(top_i.reshape(-1).tolist())
    words = [[[flat[(c * n_pos + p) * k + j] for j in range(k)] for p in range(n_pos)] for c in range(n_comp)]
    rows = list(components or [f"layer {c}" for c in range(n_comp)])
    cols = unique_labels(tokens if tokens is not None else [str(p) for p in range(n_pos)])
    hover = []
    for c in range(n_comp):
        row = []
        for p in range(n_pos):
            lines = [f"{rows[c]} at {cols[p]}"]
            lines += [f"{j + 1}. {words[c][p][j]!r}  p={top_p[c, p, j]:.3f}" for j in range(k)]
            if answer is not None:
                rank = int((probs[c, p] > probs[c, p, answer]).sum()) + 1
                lines.append(f"answer {decode([answer])[0]!r}: p={probs[c, p, answer]:.3f}, rank {rank}")
            row.append("<br>".join(lines))
        hover.append(row)
    text = [[words[c][p][0].replace("\n", "\\n") for p in range(n_pos)] for c in range(n_comp)]
    fig = go.Figure(
        go.Heatmap(
            z=top_p[..., 0].numpy(),
            x=cols,
            y=rows,
            text=text,
            texttemplate="%{text}",
            textfont={"size": 10},
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale=SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": {"text": "p(top token)"}},
            xgap=1,
            ygap=1,
        )
    )
    return style(
        fig,
        title or "Logit lens: top prediction of each layer's residual stream (colour: its probability)",
        height=min(1600, max(360, 140 + 24 * n_comp)),
        xaxis={"title": {"text": "input position"}, "tickangle": -45, "side": "bottom"},
        yaxis={"title": {"text": "residual stream"}, "autorange": "reversed"},
    )
