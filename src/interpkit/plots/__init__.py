"""Plotly figures from Results; every function returns a ``plotly.graph_objects.Figure``."""

from interpkit.plots._basic import bars as bars
from interpkit.plots._basic import figure_for as figure_for
from interpkit.plots._basic import heatmap as heatmap

__all__ = ["bars", "figure_for", "heatmap"]
