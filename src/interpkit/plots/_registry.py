"""The figure of each result kind, registered in ``interpkit.results`` (which never imports plots)."""

from __future__ import annotations

from typing import Any

from interpkit.plots._basic import default_figure
from interpkit.plots._circuits import circuit_figure, curve_figure
from interpkit.plots._graphs import graph_figure
from interpkit.plots._qk import qk_heatmap, qk_loadings_figure
from interpkit.results import figure_for as figure_for
from interpkit.results import register_figure


def _curve(result: Any, **kwargs: Any) -> Any:
    return curve_figure(result)


register_figure("*", default_figure)
register_figure("faithfulness_curve", _curve)
register_figure("circuit", circuit_figure)
register_figure("qk", qk_heatmap)
register_figure("qk_loadings", qk_loadings_figure)
register_figure("attribution_graph", graph_figure)
