"""Generic plotly figures for any Result: heatmaps for 2-D scores, bars for 1-D.

One style everywhere: a diverging colour scale centred on zero for signed scores, hover text
with the exact value and both labels, and a title naming the metric.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpkit.errors import ResultError

if TYPE_CHECKING:
    from interpkit.results import Result

DIVERGING = "RdBu"


def _axis_labels(result: Result, dim: str) -> list[str]:
    size = result.scores.shape[result.dims.index(dim)]
    return list(result.labels.get(dim) or [str(i) for i in range(size)])


def _title(result: Result, title: str | None) -> str:
    if title:
        return title
    parts = [result.kind]
    if result.metric:
        parts.append(f"metric: {result.metric}")
    if "direction" in result.meta:
        parts.append(f"{result.meta['direction']}")
    return " · ".join(parts)


def heatmap(result: Result, title: str | None = None, normalised: bool = False) -> Any:
    """Heatmap of a 2-D result, first dim on the y axis, colour centred on zero."""
    import plotly.graph_objects as go

    if result.scores.ndim != 2:
        raise ResultError(f"heatmap needs a 2-D result; this one has dims {result.dims}")
    values = (result.normalised() if normalised else result.scores).detach().float().cpu()
    ydim, xdim = result.dims
    y, x = _axis_labels(result, ydim), _axis_labels(result, xdim)
    # Plotly joins identical category labels; make repeated tokens distinct by position.
    x_unique = [f"{lab} ({i})" if x.count(lab) > 1 else lab for i, lab in enumerate(x)]
    bound = float(values.abs().max()) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=values.numpy(),
            x=x_unique,
            y=y,
            colorscale=DIVERGING,
            zmid=0.0,
            zmin=-bound,
            zmax=bound,
            hovertemplate=f"{ydim}: %{{y}}<br>{xdim}: %{{x}}<br>value: %{{z:.6g}}<extra></extra>",
            colorbar={"title": "normalised" if normalised else (result.metric or "score")},
        )
    )
    fig.update_layout(title=_title(result, title), xaxis_title=xdim, yaxis_title=ydim, yaxis={"autorange": "reversed"})
    return fig


def bars(result: Result, title: str | None = None, normalised: bool = False) -> Any:
    """Bar chart of a 1-D result, bars coloured by sign."""
    import plotly.graph_objects as go

    if result.scores.ndim != 1:
        raise ResultError(f"bars needs a 1-D result; this one has dims {result.dims}")
    values = (result.normalised() if normalised else result.scores).detach().float().cpu().tolist()
    (dim,) = result.dims
    x = _axis_labels(result, dim)
    colours = ["#b2182b" if v < 0 else "#2166ac" for v in values]
    fig = go.Figure(
        go.Bar(x=x, y=values, marker_color=colours, hovertemplate=f"{dim}: %{{x}}<br>value: %{{y:.6g}}<extra></extra>")
    )
    fig.update_layout(title=_title(result, title), xaxis_title=dim, yaxis_title=result.metric or "score")
    return fig


def fold_to_2d(result: Result) -> Result:
    """A 2-D view of a 3-D+ result: position-like dim as columns, the others folded into rows.

    ``(layer, pos, head)`` becomes rows ``L3H5`` x columns ``pos``.
    """

    col = next((d for d in ("pos", "dest_src", "src") if d in result.dims), result.dims[-1])
    rows = [d for d in result.dims if d != col]
    order = [result.dims.index(d) for d in (*rows, col)]
    values = result.scores.permute(*order)
    n_rows = 1
    for d in rows:
        n_rows *= result.scores.shape[result.dims.index(d)]
    names = [""]
    for d in rows:
        size = result.scores.shape[result.dims.index(d)]
        labs = result.labels.get(d) or [f"{d}{i}" for i in range(size)]
        names = [f"{a}{b}" for a in names for b in labs]
    return dataclasses.replace(
        result,
        scores=values.reshape(n_rows, values.shape[-1]),
        dims=("component", col),
        labels={"component": names, **({col: result.labels[col]} if col in result.labels else {})},
    )


def figure_for(result: Result, **kwargs: Any) -> Any:
    """The default figure of a result: heatmap for 2-D (3-D folded to 2-D), bars for 1-D."""
    if result.scores.ndim >= 3:
        return heatmap(fold_to_2d(result), **kwargs)
    if result.scores.ndim == 2:
        return heatmap(result, **kwargs)
    if result.scores.ndim == 1:
        return bars(result, **kwargs)
    raise ResultError(f"no default figure for a 0-D result {result.dims}")
