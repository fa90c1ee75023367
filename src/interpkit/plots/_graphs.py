"""The figure of an attribution graph: nodes by position (x) and layer (y), edges by sign.

Token embeddings sit on the bottom row, logits on the top row, features and error nodes at their
layer; several nodes in one (layer, position) cell spread across the cell. Marker size grows with
a node's influence on the logits; the ``top_edges`` strongest edges are drawn, blue positive and
red negative, their opacity by magnitude. Hover gives each node's id, kind, activation and
influence. For a readable figure pass a pruned graph (``graph.prune().figure()``).

    >>> import torch
    >>> from interpkit.graphs import Graph, Node
    >>> nodes = [Node("E_5_0", "embedding", -1, 0, 5, label="a"), Node("0_3_0", "neuron", 0, 0, 3, 1.0),
    ...          Node("2_7_0", "logit", 1, 0, 7, probability=1.0)]
    >>> adj = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 2.0, 0]]).to_sparse()
    >>> fig = graph_figure(Graph(nodes, adj, [5], ["a"], meta={"n_layers": 1}))
    >>> len(fig.data[-1].x)
    3
"""

from __future__ import annotations

from typing import Any

from interpkit.plots._style import NEGATIVE, POSITIVE, style, token_text

# An attribution graph (interpkit.graphs.Graph), read duck-typed: plots import no engine.
Graph = Any

_COLOURS = {"embedding": "#4d4d4d", "neuron": "#2166ac", "feature": "#2166ac", "error": "#b8860b", "logit": "#762a83"}
_SYMBOLS = {"embedding": "square", "neuron": "circle", "feature": "circle", "error": "diamond", "logit": "square"}


def _layout(graph: Graph) -> list[tuple[float, float]]:
    cells: dict[tuple[int, int], list[int]] = {}
    for i, n in enumerate(graph.nodes):
        cells.setdefault((n.layer, n.position), []).append(i)
    xy = [(0.0, 0.0)] * len(graph.nodes)
    for (layer, pos), members in cells.items():
        for k, i in enumerate(members):
            offset = (k + 0.5) / len(members) - 0.5 if len(members) > 1 else 0.0
            xy[i] = (pos + 0.8 * offset, float(layer))
    return xy


def graph_figure(graph: Graph, top_edges: int = 400, title: str | None = None, height: int | None = None) -> Any:
    """A plotly figure of ``graph`` (see the module docstring)."""
    import plotly.graph_objects as go
    import torch

    xy = _layout(graph)
    a = graph.adjacency.coalesce()
    (targets, sources), weights = a.indices(), a.values().float()
    order = torch.argsort(weights.abs(), descending=True)[:top_edges]
    biggest = float(weights.abs().max()) if len(weights) else 1.0
    fig = go.Figure()
    for sign, colour in ((1, POSITIVE), (-1, NEGATIVE)):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for e in order.tolist():
            if (weights[e] > 0) == (sign > 0):
                (x0, y0), (x1, y1) = xy[int(sources[e])], xy[int(targets[e])]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": colour, "width": 1},
                opacity=0.35,
                hoverinfo="skip",
                name="positive edges" if sign > 0 else "negative edges",
            )
        )
    influence = torch.tensor([n.influence or 0.0 for n in graph.nodes])
    size = 6 + 18 * (influence / influence.max().clamp_min(1e-12)).sqrt()
    hover = [
        f"{n.id} ({n.kind})<br>{n.label}<br>activation: {n.activation if n.activation is not None else '-'}"
        f"<br>influence: {n.influence or 0.0:.4g}"
        for n in graph.nodes
    ]
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in xy],
            y=[p[1] for p in xy],
            mode="markers",
            marker={
                "size": size.tolist(),
                "color": [_COLOURS[n.kind] for n in graph.nodes],
                "symbol": [_SYMBOLS[n.kind] for n in graph.nodes],
                "line": {"width": 0.5, "color": "white"},
            },
            text=hover,
            hovertemplate="%{text}<extra></extra>",
            name="nodes",
        )
    )
    n_layers = int(graph.meta.get("n_layers", max(n.layer for n in graph.nodes)))
    ticks = list(range(len(graph.token_strs)))
    style(
        fig,
        title
        or f"Attribution graph · {len(graph.nodes)} nodes · strongest {min(top_edges, len(weights))} edges "
        f"(largest |weight| {biggest:.3g})",
        height=height or min(1200, 220 + 26 * (n_layers + 2)),
        xaxis={
            "title": {"text": "position"},
            "tickvals": ticks,
            "ticktext": [token_text(t) for t in graph.token_strs],
            "tickangle": -45,
        },
        yaxis={
            "title": {"text": "layer"},
            "tickvals": [-1, *range(n_layers), n_layers],
            "ticktext": ["emb", *[f"L{i}" for i in range(n_layers)], "logit"],
        },
    )
    return fig
