"""Plotly figures for probing Results; every function takes Results and returns a ``go.Figure``.

- ``accuracy_by_layer``: the probe's test score per site with a 95% band, the shuffled-label
  baseline band (mean +- 2 sd over shuffles), the control task, the random-init model and chance;
- ``selectivity_figure``: task accuracy, control-task accuracy and their difference per site;
- ``pca_figure``: activations at one site projected on two principal axes, coloured by label;
- ``steering_figure``: the task metric per class along a steering sweep;
- ``learning_curve_figure``, ``inlp_figure``, ``removal_figure``, ``das_figure``.

    >>> from interpkit.plots import accuracy_by_layer
    >>> fig = accuracy_by_layer(res, shuffled=shuf, control=ctrl)       # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from interpkit.errors import ResultError
from interpkit.plots._style import LINE_COLOURS as COLOURS

if TYPE_CHECKING:
    from interpkit.results import Result


def _need(result: Result | None, kind: str) -> None:
    if result is not None and not result.kind.startswith(kind):
        raise ResultError(f"expected a {kind!r} Result, got {result.kind!r}")


def _metric_index(result: Result, metric: str | None) -> tuple[int, str]:
    names = result.labels["metric"]
    metric = metric or names[0]
    if metric not in names:
        raise ResultError(f"metric {metric!r} is not in this result; it has {names}")
    return names.index(metric), metric


def _band(fig: Any, x: list[str], lo: list[float], hi: list[float], colour: str, name: str) -> None:
    import plotly.graph_objects as go

    fig.add_trace(go.Scatter(x=x, y=hi, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip"))
    fig.add_trace(
        go.Scatter(
            x=x, y=lo, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=colour, name=name, hoverinfo="skip"
        )
    )


def accuracy_by_layer(
    result: Result,
    shuffled: Result | None = None,
    control: Result | None = None,
    random_init: Result | None = None,
    metric: str | None = None,
    title: str | None = None,
) -> Any:
    """Test score per site with its 95% band, plus whichever baselines are given."""
    import plotly.graph_objects as go

    _need(result, "probe")
    i, metric = _metric_index(result, metric)
    x = list(result.labels["site"])
    v, se = result.scores[:, i, 0].tolist(), result.scores[:, i, 1].tolist()
    fig = go.Figure()
    _band(
        fig,
        x,
        [a - 1.96 * b for a, b in zip(v, se, strict=True)],
        [a + 1.96 * b for a, b in zip(v, se, strict=True)],
        "rgba(33,102,172,0.2)",
        "probe 95% CI",
    )
    fig.add_trace(
        go.Scatter(
            x=x, y=v, mode="lines+markers", name=f"probe ({result.meta.get('method')})", line={"color": COLOURS[0]}
        )
    )
    if shuffled is not None:
        _need(shuffled, "probe_shuffled")
        m, sd = shuffled.scores[:, i, 0].tolist(), shuffled.scores[:, i, 1].tolist()
        _band(
            fig,
            x,
            [a - 2 * b for a, b in zip(m, sd, strict=True)],
            [a + 2 * b for a, b in zip(m, sd, strict=True)],
            "rgba(120,120,120,0.25)",
            "shuffled labels (mean +- 2 sd)",
        )
    if control is not None:
        _need(control, "probe_selectivity")
        k = control.labels["quantity"].index("control_accuracy")
        fig.add_trace(
            go.Scatter(
                x=x,
                y=control.scores[:, k, 0].tolist(),
                mode="lines",
                name="control task",
                line={"color": COLOURS[4], "dash": "dash"},
            )
        )
    if random_init is not None:
        _need(random_init, "probe")
        fig.add_trace(
            go.Scatter(
                x=x,
                y=random_init.scores[:, i, 0].tolist(),
                mode="lines",
                name="random-init model",
                line={"color": COLOURS[3], "dash": "dot"},
            )
        )
    if "chance" in result.meta and metric == "accuracy":
        fig.add_hline(
            y=result.meta["chance"],
            line={"color": "black", "dash": "dot", "width": 1},
            annotation_text="majority class",
        )
    fig.update_layout(title=title or f"Probe {metric} by site (test split)", xaxis_title="site", yaxis_title=metric)
    return fig


def selectivity_figure(control: Result, title: str | None = None) -> Any:
    """Task accuracy, control-task accuracy (Hewitt and Liang 2019) and selectivity per site."""
    import plotly.graph_objects as go

    _need(control, "probe_selectivity")
    x = list(control.labels["site"])
    fig = go.Figure()
    for k, (name, colour) in enumerate(
        zip(control.labels["quantity"], (COLOURS[0], COLOURS[4], COLOURS[2]), strict=True)
    ):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=control.scores[:, k, 0].tolist(),
                error_y={"array": (1.96 * control.scores[:, k, 1]).tolist(), "visible": True},
                mode="lines+markers",
                name=name,
                line={"color": colour, "width": 3 if name == "selectivity" else 1.5},
            )
        )
    fig.update_layout(
        title=title or "Selectivity: task accuracy - control-task accuracy", xaxis_title="site", yaxis_title="accuracy"
    )
    return fig


def pca_figure(result: Result, title: str | None = None) -> Any:
    """Scatter of the first two principal axes, one colour per class (a colour scale for regression)."""
    import plotly.graph_objects as go

    _need(result, "probe_pca")
    xy = result.scores.tolist()
    y = result.extras["y"]
    classes = result.meta.get("classes")
    ev = result.meta.get("explained", [0, 0])
    fig = go.Figure()
    if classes:
        for c, name in enumerate(classes):
            pts = [p for p, lab in zip(xy, y.tolist(), strict=True) if lab == c]
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in pts],
                    y=[p[1] if len(p) > 1 else 0 for p in pts],
                    mode="markers",
                    name=name,
                    marker={"color": COLOURS[c % len(COLOURS)], "size": 6, "opacity": 0.7},
                )
            )
    else:
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in xy],
                y=[p[1] for p in xy],
                mode="markers",
                marker={"color": y.tolist(), "colorscale": "Viridis", "showscale": True},
                name="target",
            )
        )
    fig.update_layout(
        title=title or f"PCA of {result.meta['site']} by label",
        xaxis_title=f"PC1 ({100 * ev[0]:.1f}% var)",
        yaxis_title=f"PC2 ({100 * ev[1]:.1f}% var)" if len(ev) > 1 else "PC2",
    )
    return fig


def _lines(
    result: Result, xdim: str, series_dim: str, title: str, xtitle: str, ytitle: str, numeric_x: bool = True
) -> Any:
    import plotly.graph_objects as go

    x = [float(v) for v in result.labels[xdim]] if numeric_x else list(result.labels[xdim])
    fig = go.Figure()
    table = result.scores.movedim((result.dims.index(xdim), result.dims.index(series_dim)), (0, 1))  # (x, series, stat)
    for k, name in enumerate(result.labels[series_dim]):
        vals = table[:, k]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=vals[:, 0].tolist(),
                error_y={"array": (1.96 * vals[:, 1]).tolist(), "visible": True},
                mode="lines+markers",
                name=str(name),
                line={"color": COLOURS[k % len(COLOURS)]},
            )
        )
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle)
    return fig


def steering_figure(result: Result, title: str | None = None) -> Any:
    """The task metric per class against the steering scale (in sd of the activations along the direction)."""
    _need(result, "probe_steering")
    site = result.meta.get("site")
    return _lines(
        result,
        "scale",
        "class",
        title or f"Steering along the probe direction at {site}",
        "scale (sd along direction)",
        result.metric or "metric",
    )


def learning_curve_figure(result: Result, sites: list[str] | None = None, title: str | None = None) -> Any:
    """Test score against the number of training examples, one line per site."""
    import dataclasses

    _need(result, "probe_learning_curve")
    if sites is not None:
        index = [result.labels["site"].index(s) for s in sites]
        result = dataclasses.replace(
            result, scores=result.scores[:, index], labels={**result.labels, "site": list(sites)}
        )
    fig = _lines(
        result,
        "size",
        "site",
        title or "Probe score against training examples",
        "training examples",
        result.metric or "score",
    )
    fig.update_xaxes(type="log")
    return fig


def inlp_figure(result: Result, title: str | None = None) -> Any:
    """Test score of a refitted probe against the number of directions removed (INLP), per site."""
    _need(result, "probe_inlp")
    return _lines(
        result,
        "removed",
        "site",
        title or "Iterative nullspace projection",
        "iterations removed",
        result.metric or "score",
    )


def removal_figure(result: Result, title: str | None = None) -> Any:
    """Task metric per site: unedited, probe subspace removed, random subspace removed."""
    import plotly.graph_objects as go

    _need(result, "probe_removal")
    q = result.labels["quantity"]
    x = list(result.labels["site"])
    fig = go.Figure()
    for k, name in enumerate(("metric_clean", "metric_removed", "metric_random")):
        j = q.index(name)
        fig.add_trace(
            go.Bar(
                x=x,
                y=result.scores[:, j, 0].tolist(),
                error_y={"array": (1.96 * result.scores[:, j, 1]).tolist()},
                name=name,
                marker_color=COLOURS[k],
            )
        )
    fig.update_layout(
        barmode="group",
        title=title or f"Removing the probe subspace ({result.meta.get('method')})",
        yaxis_title=result.metric,
    )
    return fig


def das_figure(result: Result, title: str | None = None) -> Any:
    """Interchange intervention accuracy per direction, with each direction's nullspace share."""
    import plotly.graph_objects as go

    _need(result, "probe_das")
    q = result.labels["quantity"]
    names = list(result.labels["direction"])
    iia, null = result.scores[:, q.index("iia")], result.scores[:, q.index("nullspace_fraction"), 0]
    text = [f"null {v:.2f}" if v == v else "" for v in null.tolist()]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=iia[:, 0].tolist(),
            error_y={"array": (1.96 * iia[:, 1]).tolist()},
            text=text,
            marker_color=COLOURS[0],
        )
    )
    fig.update_layout(
        title=title or f"1-D DAS at {result.meta.get('site')}: interchange intervention accuracy",
        yaxis_title="IIA (held-out pairs)",
        yaxis_range=[0, 1.05],
    )
    return fig
