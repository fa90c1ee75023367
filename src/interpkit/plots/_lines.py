"""Lines with uncertainty bands: generic (``line_bands``) and probe accuracy by layer (``probe_accuracy``).

A series is a tensor ``(n,)`` (a line), ``(n, repeats)`` (mean line, band from the mean minus to
plus one standard deviation across repeats) or an explicit band ``(lo, hi)`` given separately.
``probe_accuracy`` reads a probe Result ``(site, metric, stat)`` (``ik.probing.probe``), draws
the test metric with a 95% band from its standard error, a control (a control task or shuffled
labels, Hewitt and Liang 2019) dashed with its own band, and chance as a dotted line.

    >>> import torch
    >>> from interpkit.plots import line_bands
    >>> fig = line_bands([0, 1, 2], {"probe": torch.tensor([0.5, 0.8, 0.9])},
    ...                  bands={"probe": (torch.tensor([0.4, 0.7, 0.85]), torch.tensor([0.6, 0.9, 0.95]))})
    >>> [trace.name for trace in fig.data]
    ['probe band', 'probe']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from interpkit.errors import ResultError
from interpkit.plots._style import LINE_COLOURS, style

if TYPE_CHECKING:
    from interpkit.results import Result


def _array(values: Any) -> Any:
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def line_bands(
    x: Sequence[Any] | Any,
    series: Mapping[str, Any],
    bands: Mapping[str, tuple[Any, Any]] | None = None,
    title: str = "",
    x_title: str = "",
    y_title: str = "",
    dashed: Sequence[str] = (),
    hlines: Mapping[str, float] | None = None,
    height: int | None = None,
) -> Any:
    """Lines over ``x``, each with an optional shaded band; ``hlines``: named horizontal reference lines."""
    import plotly.graph_objects as go

    xs = list(_array(x)) if hasattr(x, "detach") else list(x)
    bands = dict(bands or {})
    fig = go.Figure()
    for i, (name, values) in enumerate(series.items()):
        arr = _array(values)
        if arr.ndim == 2:
            mean, std = arr.mean(1), arr.std(1)
            bands.setdefault(name, (mean - std, mean + std))
            arr = mean
        if arr.shape != (len(xs),):
            raise ResultError(f"series {name!r} has shape {arr.shape}; expected ({len(xs)},) or ({len(xs)}, repeats)")
        colour = "#777777" if name in dashed else LINE_COLOURS[i % len(LINE_COLOURS)]
        if name in bands:
            lo, hi = (_array(b) for b in bands[name])
            if lo.shape != arr.shape or hi.shape != arr.shape:
                raise ResultError(f"band of {name!r} does not match its series length {len(xs)}")
            fig.add_trace(
                go.Scatter(
                    x=[*xs, *xs[::-1]],
                    y=[*hi.tolist(), *lo.tolist()[::-1]],
                    fill="toself",
                    fillcolor=_rgba(colour, 0.18),
                    line={"width": 0},
                    hoverinfo="skip",
                    name=f"{name} band",
                    showlegend=False,
                )
            )
            hover = [
                f"{name}<br>{x_title or 'x'}: {xv}<br>{v:.4g} [{a:.4g}, {b:.4g}]"
                for xv, v, a, b in zip(xs, arr, lo, hi, strict=True)
            ]
        else:
            hover = [f"{name}<br>{x_title or 'x'}: {xv}<br>{v:.4g}" for xv, v in zip(xs, arr, strict=True)]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=arr.tolist(),
                mode="lines+markers" if len(xs) <= 60 else "lines",
                name=name,
                line={"color": colour, "dash": "dash" if name in dashed else "solid"},
                text=hover,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    for name, value in (hlines or {}).items():
        fig.add_hline(
            y=value, line={"dash": "dot", "color": "#444"}, annotation_text=name, annotation_position="top left"
        )
    return style(
        fig,
        title,
        height=height or 400,
        xaxis={"title": {"text": x_title}},
        yaxis={"title": {"text": y_title}},
        legend={"orientation": "h", "y": -0.2},
    )


def _probe_series(
    values: Any, metric: str | None, z: float
) -> tuple[Any, tuple[Any, Any] | None, list[str] | None, dict]:
    """(line, band or None, x labels or None, meta) of a probe Result or a plain tensor."""
    if hasattr(values, "scores"):
        result: Result = values
        if result.dims != ("site", "metric", "stat"):
            raise ResultError(f"probe_accuracy needs a probe result over (site, metric, stat); got {result.dims}")
        names = result.labels.get("metric") or []
        want = metric or result.metric or (names[0] if names else None)
        if want not in names:
            raise ResultError(f"probe result has no metric {want!r}; it has {names}")
        stats = result.labels.get("stat") or ["value", "se"]
        block = _array(result.scores[:, names.index(want)])  # (site, stat)
        line = block[:, stats.index("value")]
        band = None
        if "se" in stats:
            se = block[:, stats.index("se")]
            band = (line - z * se, line + z * se)
        return line, band, list(result.labels.get("site") or []), {"metric": want, **(result.meta or {})}
    arr = _array(values)
    if arr.ndim == 2:
        mean, std = arr.mean(1), arr.std(1)
        return mean, (mean - std, mean + std), None, {}
    return arr, None, None, {}


def probe_accuracy(
    accuracy: Result | Any,
    control: Result | Any = None,
    layers: Sequence[Any] | None = None,
    chance: float | None = None,
    metric: str | None = None,
    title: str | None = None,
    z: float = 1.96,
) -> Any:
    """Probe accuracy (or another probe metric) by layer, with error bands, a control and chance.

    ``accuracy`` / ``control``: a probe Result (band: ``z`` standard errors) or a tensor
    ``(layer,)`` / ``(layer, repeats)`` (band: one standard deviation over repeats).
    """
    line, band, sites, meta = _probe_series(accuracy, metric, z)
    xs = list(layers) if layers is not None else (sites or list(range(len(line))))
    series: dict[str, Any] = {"probe": line}
    bands = {"probe": band} if band is not None else {}
    dashed = []
    if control is not None:
        c_line, c_band, _, _ = _probe_series(control, meta.get("metric", metric), z)
        if len(c_line) != len(line):
            raise ResultError(f"control has {len(c_line)} layers but the probe has {len(line)}")
        series["control"] = c_line
        dashed.append("control")
        if c_band is not None:
            bands["control"] = c_band
    chance = chance if chance is not None else meta.get("chance")
    name = meta.get("metric") or metric or "accuracy"
    what = f"Probe {name} by layer" + (f" ({meta['method']} probe)" if meta.get("method") else "")
    return line_bands(
        xs,
        series,
        bands,
        title=title or what + ", test split",
        x_title="layer / site",
        y_title=name,
        dashed=dashed,
        hlines={"chance": float(chance)} if chance is not None else None,
    )
