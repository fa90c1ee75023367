"""Generic plotly figures for any Result: heatmaps for 2-D scores, bars for 1-D.

Patching results come out as ``(layer, pos)`` with the prompt's tokens as position labels,
``(layer, head)``, or ``(layer, pos, head)`` (folded to ``L3H5`` rows x positions). Every cell's
hover text gives both labels and the exact value, plus the normalised value (clean 1, corrupt
0) where the result has clean and corrupt metric values.

    >>> import torch
    >>> from interpkit.results import Result
    >>> from interpkit.plots import heatmap
    >>> res = Result(torch.randn(2, 3), ("layer", "pos"), {"pos": ["When", " Mary", " and"]}, metric="logit_diff")
    >>> fig = heatmap(res)
    >>> list(fig.data[0].x)
    ['When', ' Mary', ' and']
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from interpkit.errors import ResultError
from interpkit.plots._style import (
    DIVERGING,
    NEGATIVE,
    POSITIVE,
    SEQUENTIAL,
    style,
    symmetric_bound,
    title_for,
    unique_labels,
)

if TYPE_CHECKING:
    from interpkit.results import Result


def axis_labels(result: Result, dim: str) -> list[str]:
    """The labels of ``dim`` (indices as text where the result has none)."""
    size = result.scores.shape[result.dims.index(dim)]
    return list(result.labels.get(dim) or [str(i) for i in range(size)])


def baseline(result: Result) -> float | None:
    """The metric of the run a patching result patched into (corrupt for denoising, else clean)."""
    if result.kind != "patch" or result.clean_value is None or result.corrupt_value is None:
        return None
    direction = (result.meta or {}).get("direction")
    return float(result.corrupt_value if direction == "denoise" else result.clean_value)


def displayed(result: Result, normalised: bool = False, relative: bool | None = None) -> tuple[Any, str, list]:
    """What a figure shows: ``(values, their name, [(name, values) for the hover])`` as numpy arrays.

    Patching results default to ``relative``: the change from the run that was patched into,
    so zero (white) means "no effect" whatever the baseline. ``normalised``: clean 1, corrupt 0.
    """
    raw = result.scores.detach().float().cpu().numpy()
    metric = result.metric or "score"
    extra: list = []
    base = baseline(result)
    can_normalise = result.clean_value is not None and result.corrupt_value is not None
    can_normalise = can_normalise and result.clean_value != result.corrupt_value
    norm = result.normalised().detach().float().cpu().numpy() if can_normalise else None
    if normalised:
        if norm is None:
            result.normalised()  # raises the ResultError that says why
        values, name = norm, f"normalised {metric}"
        extra.append((metric, raw))
    elif (relative is None and base is not None) or (relative and base is not None):
        values, name = raw - base, f"change in {metric}"
        extra.append((metric, raw))
        if norm is not None:
            extra.append(("normalised", norm))
    else:
        values, name = raw, metric
        if norm is not None:
            extra.append(("normalised", norm))
    return values, name, extra


def heatmap(
    result: Result,
    title: str | None = None,
    normalised: bool = False,
    signed: bool = True,
    zmax: float | None = None,
    height: int | None = None,
    relative: bool | None = None,
) -> Any:
    """Heatmap of a 2-D result, first dim on the y axis (top to bottom), second on x.

    ``signed``: a diverging scale centred on zero (default) or, for non-negative scores such as
    attention or head scores, a sequential one from 0. ``zmax`` fixes the colour bound.
    ``relative`` / ``normalised``: see :func:`displayed` (patching results show the change from
    their baseline run by default).
    """
    import plotly.graph_objects as go

    if result.scores.ndim != 2:
        raise ResultError(f"heatmap needs a 2-D result; this one has dims {result.dims}")
    values, name, extra = displayed(result, normalised, relative)
    ydim, xdim = result.dims
    y, x = unique_labels(axis_labels(result, ydim)), unique_labels(axis_labels(result, xdim))
    hover = [
        [
            f"{ydim}: {y[i]}<br>{xdim}: {x[j]}<br>{name}: {values[i, j]:.6g}"
            + "".join(f"<br>{n}: {v[i, j]:.4g}" for n, v in extra)
            for j in range(len(x))
        ]
        for i in range(len(y))
    ]
    bound = zmax or symmetric_bound(values)
    scale = (
        {"colorscale": DIVERGING, "zmid": 0.0, "zmin": -bound, "zmax": bound}
        if signed
        else {"colorscale": SEQUENTIAL, "zmin": 0.0, "zmax": bound}
    )
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=x,
            y=y,
            text=hover,
            hovertemplate="%{text}<extra></extra>",
            colorbar={"title": {"text": name}},
            xgap=1,
            ygap=1,
            **scale,
        )
    )
    rows = len(y)
    style(
        fig,
        title_for(result, title, metric=name),
        height=height or min(1400, max(320, 140 + 22 * rows)),
        xaxis={"title": {"text": xdim}, "tickangle": -45 if xdim in ("pos", "src", "dest_src") else 0},
        yaxis={"title": {"text": ydim}, "autorange": "reversed"},
    )
    return fig


def bars(
    result: Result,
    title: str | None = None,
    normalised: bool = False,
    error: Any = None,
    height: int | None = None,
    relative: bool | None = None,
) -> Any:
    """Bar chart of a 1-D result, bars coloured by sign; ``error`` (same length) draws error bars."""
    import plotly.graph_objects as go

    if result.scores.ndim != 1:
        raise ResultError(f"bars needs a 1-D result; this one has dims {result.dims}")
    values, name, extra = displayed(result, normalised, relative)
    (dim,) = result.dims
    x = unique_labels(axis_labels(result, dim))
    hover = [
        f"{dim}: {x[i]}<br>{name}: {values[i]:.6g}" + "".join(f"<br>{n}: {v[i]:.4g}" for n, v in extra)
        for i in range(len(x))
    ]
    error_y = None
    if error is not None:
        errors = [float(e) for e in (error.tolist() if hasattr(error, "tolist") else error)]
        if len(errors) != len(x):
            raise ResultError(f"bars got {len(errors)} error values for {len(x)} bars")
        error_y = {"type": "data", "array": errors, "thickness": 1, "color": "#555"}
    fig = go.Figure(
        go.Bar(
            x=x,
            y=values.tolist(),
            marker_color=[NEGATIVE if v < 0 else POSITIVE for v in values.tolist()],
            error_y=error_y,
            text=hover,
            textposition="none",
            hovertemplate="%{text}<extra></extra>",
        )
    )
    style(
        fig,
        title_for(result, title, metric=name),
        height=height or 380,
        xaxis={"title": {"text": dim}, "tickangle": -45 if len(x) > 12 else 0},
        yaxis={"title": {"text": name}, "zeroline": True, "zerolinecolor": "#888"},
    )
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
    """The default figure of a result: heatmap for 2-D (3-D folded to 2-D), bars for 1-D.

    Probe results ``(site, metric, stat)`` get the probe accuracy line with its error band, and
    faithfulness curves their line over circuit sizes.
    """
    if result.kind == "probe" and result.dims == ("site", "metric", "stat"):
        from interpkit.plots._lines import probe_accuracy

        return probe_accuracy(result, **kwargs)
    if result.kind == "faithfulness_curve":
        from interpkit.circuits import curve_figure

        return curve_figure(result)
    if result.kind in ("qk", "qk_loadings"):
        from interpkit.plots._qk import qk_heatmap, qk_loadings_figure

        return (qk_heatmap if result.kind == "qk" else qk_loadings_figure)(result, **kwargs)
    if result.scores.ndim >= 3:
        return heatmap(fold_to_2d(result), **kwargs)
    if result.scores.ndim == 2:
        return heatmap(result, **kwargs)
    if result.scores.ndim == 1:
        return bars(result, **kwargs)
    raise ResultError(f"no default figure for a 0-D result {result.dims}")
