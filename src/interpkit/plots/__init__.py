"""Plotly figures from Results; every function returns a ``plotly.graph_objects.Figure``.

One style (see ``_style``): diverging colours centred on zero for signed effects, hover text with
the exact value, component and token, titles naming the metric and the patching direction.
Reports (:mod:`interpkit.plots.report`) put figures into one self-contained HTML file.
plotly itself is imported only when a figure is made. Every figure of the package lives here
(patching, attribution, attention, circuits, probing); ``Result.figure()`` and
``Circuit.figure()`` reach them through the registry of ``interpkit.results``, which
``_registry`` fills, so no engine imports this package.
"""

from interpkit.plots._attention import attention_pattern as attention_pattern
from interpkit.plots._attribution import dla_bars as dla_bars
from interpkit.plots._attribution import head_grid as head_grid
from interpkit.plots._attribution import logit_lens_table as logit_lens_table
from interpkit.plots._basic import bars as bars
from interpkit.plots._basic import default_figure as default_figure
from interpkit.plots._basic import fold_to_2d as fold_to_2d
from interpkit.plots._basic import heatmap as heatmap
from interpkit.plots._circuits import circuit_figure as circuit_figure
from interpkit.plots._circuits import curve_figure as curve_figure
from interpkit.plots._export import PlotExportError as PlotExportError
from interpkit.plots._export import save_static as save_static
from interpkit.plots._export import static_export_available as static_export_available
from interpkit.plots._graphs import graph_figure as graph_figure
from interpkit.plots._lines import line_bands as line_bands
from interpkit.plots._lines import probe_accuracy as probe_accuracy
from interpkit.plots._probing import accuracy_by_layer as accuracy_by_layer
from interpkit.plots._probing import das_figure as das_figure
from interpkit.plots._probing import inlp_figure as inlp_figure
from interpkit.plots._probing import learning_curve_figure as learning_curve_figure
from interpkit.plots._probing import pca_figure as pca_figure
from interpkit.plots._probing import removal_figure as removal_figure
from interpkit.plots._probing import selectivity_figure as selectivity_figure
from interpkit.plots._probing import steering_figure as steering_figure
from interpkit.plots._qk import qk_heatmap as qk_heatmap
from interpkit.plots._qk import qk_loadings_figure as qk_loadings_figure
from interpkit.plots._registry import figure_for as figure_for

__all__ = [
    "PlotExportError",
    "accuracy_by_layer",
    "attention_pattern",
    "bars",
    "circuit_figure",
    "curve_figure",
    "das_figure",
    "default_figure",
    "dla_bars",
    "figure_for",
    "fold_to_2d",
    "graph_figure",
    "head_grid",
    "heatmap",
    "inlp_figure",
    "learning_curve_figure",
    "line_bands",
    "logit_lens_table",
    "pca_figure",
    "probe_accuracy",
    "qk_heatmap",
    "qk_loadings_figure",
    "removal_figure",
    "save_static",
    "selectivity_figure",
    "static_export_available",
    "steering_figure",
]
