"""Plotly figures for circuits: the circuit drawn over the model's graph, and faithfulness curves.

The circuit figure lays the graph out left to right in residual order: ``embed``, then per
layer a column of heads and a column for the MLP, then ``logits``. Each edge is a line from its
sender to its receiver input (a head's q, k and v inputs sit just left of the head, a shared KV
input under grouped-query attention left of its group), its width proportional to |score| and
its colour the sign (the project's diverging colours). Hovering the small marker at an edge's
midpoint shows its label and score. Components the circuit does not touch are faint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.plots._style import NEGATIVE, POSITIVE, style

if TYPE_CHECKING:
    from interpkit.results import Result

# A circuit (interpkit.circuits.Circuit) is read duck-typed: plots sit above the engines and import none of them.
Circuit = Any

_OFFSET = {"q": 0.22, "k": 0.0, "v": -0.22}


def _layout(circuit: Circuit) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """Positions of sender components and of receiver inputs (nodes of other kinds: by stage and index)."""
    ident = circuit.identity
    per_layer = 1 if ident.attn_only else 2
    group = max(1, ident.n_heads // max(1, ident.n_kv_heads))
    gqa = ident.n_kv_heads < ident.n_heads

    def head_y(h: float) -> float:
        return (ident.n_heads - 1) / 2 - h

    def column(node: Any) -> float:
        return 1.0 + per_layer * node.layer + node.stage

    comps: dict[str, tuple[float, float]] = {}
    inputs: dict[str, tuple[float, float]] = {}
    for node in circuit.graph.senders:
        if node.kind == "embed":
            comps[node.label] = (0.0, 0.0)
        elif node.kind == "mlp":
            comps[node.label] = (column(node), 0.0)
        else:  # heads, and any other kind: one row per index
            comps[node.label] = (column(node), head_y(node.index or 0))
    for node in circuit.graph.receivers:
        if node.kind == "logits":
            inputs[node.label] = (1.0 + per_layer * ident.n_layers, 0.0)
        elif node.kind in _OFFSET and gqa and node.kind != "q":
            centre = head_y(node.index * group + (group - 1) / 2)
            inputs[node.label] = (column(node) - 0.4, centre + _OFFSET[node.kind])
        elif node.kind in _OFFSET:
            inputs[node.label] = (column(node) - 0.2, head_y(node.index) + _OFFSET[node.kind])
        else:
            inputs[node.label] = (column(node) - 0.2, 0.0 if node.index is None else head_y(node.index))
    return comps, inputs


def circuit_figure(circuit: Circuit, title: str | None = None) -> Any:
    """The circuit over its model's graph (see the module docstring)."""
    import plotly.graph_objects as go

    comps, inputs = _layout(circuit)
    fig = go.Figure()
    _edges(fig, circuit, comps, inputs)
    _inputs(fig, circuit, comps, inputs)
    used = set(circuit.nodes)
    for active in (False, True):
        labels = [c for c in comps if (c in used) == active] + [
            r for r in inputs if r == "logits" and ("logits" in used) == active
        ]
        pos = [comps.get(c) or inputs[c] for c in labels]
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pos], y=[p[1] for p in pos], mode="markers+text" if active else "markers",
                text=labels, textposition="top center", hovertemplate="%{text}<extra></extra>",
                marker={"size": 16 if active else 10, "color": "#333333" if active else "#dddddd", "symbol": "square"},
                showlegend=False,
            )
        )  # fmt: skip
    ident = circuit.identity
    per_layer = 1 if ident.attn_only else 2
    ticks = [0.0] + [1.0 + per_layer * layer for layer in range(ident.n_layers)] + [1.0 + per_layer * ident.n_layers]
    tick_text = ["embed"] + [f"L{layer}" for layer in range(ident.n_layers)] + ["logits"]
    title = title or f"circuit: {len(circuit)} edges of {circuit.graph.n_edges} ({ident.name})"
    return style(
        fig,
        title,
        height=max(350, 60 * ident.n_heads + 120),
        xaxis={"tickvals": ticks, "ticktext": tick_text, "showgrid": False, "zeroline": False},
        yaxis={"showticklabels": False, "showgrid": False, "zeroline": False},
    )


def _edges(fig: Any, circuit: Circuit, comps: dict, inputs: dict) -> None:
    """One line per edge (width |score|, colour its sign), and a hover marker at each midpoint."""
    import plotly.graph_objects as go

    scores = circuit.scores or {}
    biggest = max((abs(v) for v in scores.values()), default=0.0) or 1.0
    groups: dict[tuple[str, int], tuple[list, list]] = {}
    mids: dict[str, list] = {"x": [], "y": [], "text": [], "colour": []}
    for edge in circuit.edges:
        sender, receiver = edge.split("->")
        score = scores.get(edge)
        colour = "#888888" if score is None else (POSITIVE if score >= 0 else NEGATIVE)
        width = 2 if score is None else 1 + round(5 * abs(score) / biggest)
        xs, ys = groups.setdefault((colour, width), ([], []))
        (x0, y0), (x1, y1) = comps[sender], inputs[receiver]
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        mids["x"].append((x0 + x1) / 2)
        mids["y"].append((y0 + y1) / 2)
        mids["text"].append(edge if score is None else f"{edge}<br>score {score:+.4g}")
        mids["colour"].append(colour)
    for (colour, width), (xs, ys) in sorted(groups.items(), key=lambda kv: kv[0][1]):
        fig.add_trace(
            go.Scatter(
                x=xs, y=ys, mode="lines", line={"color": colour, "width": width}, opacity=0.75,
                hoverinfo="skip", showlegend=False,
            )
        )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=mids["x"], y=mids["y"], mode="markers", marker={"size": 7, "color": mids["colour"], "opacity": 0.35},
            text=mids["text"], hovertemplate="%{text}<extra></extra>", name="edges", showlegend=False,
        )
    )  # fmt: skip


def _inputs(fig: Any, circuit: Circuit, comps: dict, inputs: dict) -> None:
    """The receiver inputs the circuit uses: a small marker, tied by a thin line to the components it feeds."""
    import plotly.graph_objects as go

    ties: tuple[list, list] = ([], [])
    used_inputs = sorted({e.split("->")[1] for e in circuit.edges} - {"logits"})
    receivers = {n.label: n for n in circuit.graph.receivers}
    for label in used_inputs:
        x, y = inputs[label]
        owners = [s.label for s in circuit.graph.senders if s.component in receivers[label].feeds]
        for owner in owners:
            ties[0].extend([x, comps[owner][0], None])
            ties[1].extend([y, comps[owner][1], None])
    fig.add_trace(
        go.Scatter(x=ties[0], y=ties[1], mode="lines", line={"color": "#aaaaaa", "width": 1}, hoverinfo="skip",
                   showlegend=False)
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=[inputs[r][0] for r in used_inputs], y=[inputs[r][1] for r in used_inputs], mode="markers+text",
            text=[r.rsplit(".", 1)[-1] if "." in r else "in" for r in used_inputs], textposition="middle left",
            customdata=used_inputs, hovertemplate="%{customdata}<extra></extra>",
            marker={"size": 6, "color": "#555555"}, textfont={"size": 10}, showlegend=False,
        )
    )  # fmt: skip


def curve_figure(result: Result) -> Any:
    """Normalised faithfulness against the fraction of edges kept (a ``faithfulness_curve`` Result)."""
    from interpkit.plots._lines import line_bands

    meta = result.meta or {}
    x = meta.get("fractions") or list(range(len(result.scores)))
    title = f"faithfulness ({meta.get('ablation')} ablation): CPR {meta.get('cpr', float('nan')):.3f}, CMD {meta.get('cmd', float('nan')):.3f}"
    return line_bands(
        x,
        {meta.get("method") or "top-k edges": result.scores},
        title=title,
        x_title="fraction of edges",
        y_title=f"normalised faithfulness ({result.metric})",
        hlines={"full model": 1.0, "empty circuit": 0.0},
    )
